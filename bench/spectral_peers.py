"""The peers' Lanczos quadratures on an explicit symmetric matrix H, for bench/spectral_fractions.py.

Each returns the tridiagonal T [k, m, m] of k probes (float64 numpy); the leading j x j block of T is
that peer's own j-step run (Lanczos is incremental), so prefixes give every step budget. Install the
peers without their dependencies (README, Benchmarks): no CUDA torch is pulled.

- PyHessian 0.1 ``hessian.density(iter=m, n_v=k)``, run as published: Rademacher probes from torch's
  global generator, one probe at a time, Gram-Schmidt against all previous vectors once per step, T in
  float32. Its model is a flat parameter theta with loss theta^T H theta / 2, so its own autograd
  Hessian-vector product is exactly H v. torch.eig (removed in torch 2; PyHessian calls it on T) is
  shimmed by eigh, and the shim records T.
- curvlinops ``papyan2020traces.spectrum.fast_lanczos`` (Papyan 2020, no reorthogonalisation): its T
  is rebuilt from the eigenpairs it returns.
Both seed torch's global generator with PEER_SEED + seed, not seed: torch.manual_seed(0) is the stream a
SkipMLP(seed=0) drew its weights from, and curvlinops' Gaussian start vector would be those weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["pyhessian_quadrature", "curvlinops_quadrature"]

PEER_SEED = 1_000_003


class _Quadratic(nn.Module):
    """A 'model' with one flat parameter and output theta^T H theta / 2 (its Hessian is H)."""

    def __init__(self, H: torch.Tensor):
        super().__init__()
        self.H = H
        self.theta = nn.Parameter(torch.zeros(H.shape[0], dtype=H.dtype))

    def forward(self, _x):
        return 0.5 * self.theta @ (self.H @ self.theta)


def pyhessian_quadrature(H: torch.Tensor, k: int, m: int, seed: int) -> np.ndarray:
    from pyhessian import hessian
    recorded = []

    def eig(T, eigenvectors=True):  # torch.eig(T, eigenvectors=True) of PyHessian 0.1, for a symmetric T
        recorded.append(T.detach().double().cpu().numpy())
        w, U = torch.linalg.eigh(T)
        return torch.stack([w, torch.zeros_like(w)], 1), U

    saved = getattr(torch, "eig", None)
    torch.eig = eig
    try:
        torch.manual_seed(PEER_SEED + seed)
        model = _Quadratic(H)
        h = hessian(model, lambda out, _y: out, data=(torch.zeros(1), torch.zeros(1)), cuda=False)
        h.density(iter=m, n_v=k)
    finally:
        if saved is None:
            del torch.eig
        else:
            torch.eig = saved
    return np.stack(recorded)


def curvlinops_quadrature(H: torch.Tensor, k: int, m: int, seed: int) -> np.ndarray:
    from curvlinops.papyan2020traces.spectrum import fast_lanczos

    class Op:  # what fast_lanczos reads: shape, device, dtype and A @ v
        shape, device, dtype = tuple(H.shape), H.device, H.dtype

        def __matmul__(self, v):
            return H @ v

    torch.manual_seed(PEER_SEED + seed)
    out = []
    for _ in range(k):
        w, U = fast_lanczos(Op(), m)
        out.append(((U * w) @ U.T).double().cpu().numpy())
    return np.stack(out)
