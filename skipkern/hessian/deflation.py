"""Outlier deflation for SLQ: the extreme eigenpairs that sit far from the bulk, found by Lanczos, so
that SLQ spends its steps on the bulk (where the degenerate cluster lies) and not on the outliers.

A Hessian's spectrum often has a few huge outliers (lambda_max ~ 50x the bulk's edge on the paper's
nets). The Ritz grid of m Lanczos steps spans the whole spectrum, so near 0 it is ~range/m coarse;
deflating the outliers shrinks the range to the bulk's. Found here: one float64 Lanczos run with full
reorthogonalisation from a random start (Parlett, "The Symmetric Eigenvalue Problem", ch. 13), its
Ritz pairs checked every few steps:

- ``deflate="auto"``: along the run of converged Ritz values from the top (residual |beta_m s_mi| <=
  tol max|theta|), the outliers end where the span of what remains, theta_i - theta_min, drops most
  in relative terms, if that drop is at least 1 + ``gap`` (the gap between outliers and bulk); then
  the same from the bottom (span measured from the top that remains). The search stops when the set
  has not changed over two checks (after ``min_steps``) or after ``max_steps``.
- ``deflate=k``: the k Ritz pairs of largest magnitude, once converged (or at ``max_steps``).

A single-vector Krylov space holds one copy of a repeated eigenvalue, so a repeated outlier is
deflated once; its other copies stay in the bulk, where SLQ still counts them (nothing is lost).
The residual norms give rho = sqrt(sum r_i^2) >= ||A U - U Lambda||_2, the widening
skipkern.hessian.fractions applies to the thresholds.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from skipkern.hessian.lanczos import LanczosRun, default_breakdown_tol, progress_bar

log = logging.getLogger("skipkern")

__all__ = ["Deflation", "find_outliers", "sphere_probes", "probe_generator"]


@dataclass
class Deflation:
    """Deflated eigenpairs: values [d] (float64 numpy), vectors [P, d] (float64, on the operator's
    device, orthonormal), residual (bound on ||A U - U Lambda||_2), num_matvecs (operator-vector
    products the search took), steps (its Lanczos steps)."""
    values: np.ndarray
    vectors: Tensor
    residual: float
    num_matvecs: int
    steps: int
    info: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.values.size)

    def project(self, V: Tensor) -> Tensor:
        """Rows of V [ka, P] with their components along the deflated vectors removed (twice)."""
        if not self.count:
            return V
        U = self.vectors
        V = V.contiguous()
        for _ in range(2):
            V = torch.addmm(V, V @ U, U.T, alpha=-1.0)
        return V


def probe_generator(seed: Optional[int], stream: str) -> torch.Generator:
    """A CPU generator for the random vectors of ``stream`` ("sphere probes", "deflation start"), seeded
    from a hash of (stream, seed). Not torch.Generator().manual_seed(seed): that is the stream a model
    built with the same seed drew its weights from (skipkern.nn's Glorot normals), and a probe equal
    to the parameter vector is not independent of the Hessian at those parameters (measured: the first
    seed-0 probe had cosine 0.26 with a seed-0 SkipMLP's weights, 12x the 1/sqrt(P) of a random vector,
    and biased the fraction by 4 standard deviations). seed None: a random seed."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    digest = hashlib.blake2b(f"skipkern.hessian/{stream}/{int(seed)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def sphere_probes(P: int, k: int, gen: torch.Generator, device, deflation: Optional[Deflation] = None) -> Tensor:
    """k probes [k, P] float64 uniform on the unit sphere (of the deflated space): normalised Gaussians
    from a CPU generator (the same numbers on every device), projected off the deflated vectors."""
    g = torch.randn(k, P, generator=gen, dtype=torch.float64).to(device)
    if deflation is not None:
        g = deflation.project(g)
    return g / g.norm(dim=1, keepdim=True)


def _ritz(run: LanczosRun) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz values [n] ascending, residual norms [n] and eigenvectors of T [n, n] of the one probe."""
    n = int(run.lengths[0])
    a, b = run.alphas[0, :n].cpu(), run.betas[0, :n - 1].cpu()
    theta, S = torch.linalg.eigh(torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1))
    beta = float(run.betas[0, n - 1]) if bool(run.active[0]) else 0.0
    return theta, (beta * S[-1]).abs(), S


def _largest_jump(span: list[float], cap: int, gap: float) -> int:
    """How many of the values to peel: span[i] is the span left after peeling i of them (span[0] the
    full one); the count at the largest relative drop span[i-1] / span[i], if it is >= 1 + gap."""
    best, count = 1.0 + gap, 0
    for i in range(1, min(cap, len(span) - 1) + 1):
        ratio = span[i - 1] / max(span[i], 1e-300)
        if ratio >= best:
            best, count = ratio, i
    return count


def _auto_select(theta: Tensor, res: Tensor, tol: float, gap: float, cap: int) -> list[int]:
    """Indices (into ascending theta) of the outliers: at the top, the converged Ritz values above the
    largest relative drop of the span (theta_i - theta_min) along the converged run from the top, if
    that drop is at least 1 + gap; then the same at the bottom (span from the top that remains)."""
    n = theta.numel()
    scale = float(theta.abs().max()) or 1.0
    conv = (res <= tol * scale).tolist()
    th = theta.tolist()
    top = 0
    while top < n - 1 and conv[n - 1 - top]:
        top += 1
    k_top = _largest_jump([th[n - 1 - i] - th[0] for i in range(top + 1)], min(cap, top), gap)
    hi = th[n - 1 - k_top]
    bottom = 0
    while bottom < n - 1 - k_top and conv[bottom]:
        bottom += 1
    k_bot = _largest_jump([hi - th[i] for i in range(bottom + 1)], min(cap - k_top, bottom), gap)
    return [n - 1 - i for i in range(k_top)] + list(range(k_bot))


def find_outliers(op, deflate: Union[str, int], *, seed: Optional[int] = None, gap: float = 0.1,
                  tol: Optional[float] = None, min_steps: int = 30, max_steps: Optional[int] = None,
                  max_count: int = 64, check_every: int = 10, progress: bool = False) -> Deflation:
    """The eigenpairs to deflate (module docstring).

    Args:
        op: a CurvatureOperator (skipkern.hessian.adapters.as_operator) [P, P].
        deflate: "auto", or a count k >= 0 of largest-magnitude eigenpairs.
        seed: seed of the start vector.
        gap: relative span reduction an outlier must bring ("auto").
        tol: relative residual of a converged pair (default 1e-10 for float64 products, 50 eps else).
        min_steps, max_steps: Lanczos steps before the set may be final / at most (default min(P, 200)).
        max_count: at most this many pairs ("auto").
        check_every: steps between checks of the Ritz pairs.
    """
    P = op.shape[0]
    auto = deflate == "auto"
    if not auto and (isinstance(deflate, bool) or not isinstance(deflate, int) or deflate < 0):
        raise ValueError(f"deflate must be 'auto' or an int >= 0, got {deflate!r}")
    want = 0 if auto else int(deflate)
    empty = Deflation(np.zeros(0), torch.zeros(P, 0, dtype=torch.float64, device=op.device), 0.0, 0, 0)
    if not auto and want == 0:
        return empty
    if want >= P:
        raise ValueError(f"deflate={want} must be below the dimension P={P}")
    tol = tol if tol is not None else (1e-10 if op.dtype == torch.float64 else 50 * torch.finfo(op.dtype).eps)
    m = min(P - 1, max_steps if max_steps is not None else max(200, 3 * want + 60))
    gen = probe_generator(seed if seed is not None else 0, "deflation start")
    q0 = sphere_probes(P, 1, gen, op.device)
    before = getattr(op, "num_vectors", None)

    def apply(V: Tensor, idx: Tensor) -> Tensor:
        return op.matmat(V.T.to(op.dtype)).T

    run = LanczosRun(apply, q0, m, breakdown_tol=default_breakdown_tol(op.dtype))
    chosen, last = [], None
    with progress_bar(m, progress, "deflation") as bar:
        while not run.done:
            run.step()
            bar.update(1)
            n = run.i
            if n % check_every and not run.done:
                continue
            theta, res, _ = _ritz(run)
            if auto:
                chosen = _auto_select(theta, res, tol, gap, min(max_count, n - 1))
                sig = sorted(float(f"{float(theta[i]):.8g}") for i in chosen)  # indices shift as n grows
                if n >= min_steps and sig == last:
                    break
                last = sig
            else:
                order = torch.argsort(theta.abs(), descending=True)[:want].tolist()
                scale = float(theta.abs().max()) or 1.0
                chosen = order
                if len(order) == want and all(float(res[i]) <= tol * scale for i in order):
                    break
    theta, res, S = _ritz(run)
    if auto:
        chosen = _auto_select(theta, res, tol, gap, max_count)
    else:
        chosen = torch.argsort(theta.abs(), descending=True)[:want].tolist()
    steps = run.i
    matvecs = steps if before is None else int(op.num_vectors - before)
    if not chosen:
        empty.num_matvecs, empty.steps = matvecs, steps
        return empty
    n = int(run.lengths[0])
    U = run.basis[0, :n].T @ S[:, chosen].to(run.basis.device)  # Ritz vectors [P, d]
    U = torch.linalg.qr(U)[0].contiguous()  # orthonormal to working precision (they are, up to rounding)
    rho = math.sqrt(float((res[chosen] ** 2).sum()))
    vals = theta[chosen].numpy()
    log.info("hessian: deflated %d eigenvalues (%s) after %d Lanczos steps, residual %.2e", len(chosen),
             ", ".join(f"{v:.4g}" for v in sorted(vals, reverse=True)[:6]), steps, rho)
    return Deflation(vals, U, rho, matvecs, steps, {"mode": "auto" if auto else "count", "gap": gap, "tol": tol})
