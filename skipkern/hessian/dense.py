"""The whole spectrum from P operator-vector products: the exact route of ``spectral_fraction``.

When certifying a fraction would take more Lanczos products than the dimension P (thresholds far
below what a polynomial in the operator can resolve), it is cheaper to build the matrix: P products,
then ``torch.linalg.eigvalsh``. Products already spent are reused: given pairs (V, W = A V) whose rows
span r directions, only the P - r directions orthogonal to them are multiplied, so the Krylov vectors of
an SLQ run are not wasted and the total stays at about P.

Reconstruction: with B = [Q, C] orthonormal (Q spanning the known V, C its complement),
A = (A B) B^T, where A Q is a linear combination of the known W. The rounding of the products (and
of that combination) leaves A_rec = A + E; the antisymmetric part of E is measured (A_rec - A_rec^T) / 2
and its Frobenius norm, plus the eigensolver's rounding, is the eigenvalue uncertainty reported
(``residual``; the symmetric part of E is not observable, so this is an estimate, not a bound).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from skipkern.hessian.adapters import as_operator
from skipkern.hessian.density import SpectralDensity
from skipkern.hessian.lanczos import progress_bar

__all__ = ["dense_matrix", "dense_density", "KnownSpan", "known_rtol", "MAX_DENSE_DIM", "DENSE_BLOCK"]

# Known directions are kept when their singular value is above this share of the largest: eps^(1/3) of
# the product dtype, so the rounding of the products is amplified to at most eps^(2/3) (relative).
KNOWN_RTOL = {torch.float64: float(np.finfo(np.float64).eps) ** (1 / 3), torch.float32: float(np.finfo(np.float32).eps) ** (1 / 3)}
DENSE_BLOCK = 64  # columns per product when building the matrix
MAX_DENSE_DIM = 6144  # default largest P of the exact route: at most three [P, P] float64 buffers (0.9 GB)
# at a time, plus the products kept (2 x [products, P])


def known_rtol(dtype: torch.dtype) -> float:
    """The share of the largest singular value below which known directions are recomputed."""
    return KNOWN_RTOL.get(dtype, KNOWN_RTOL[torch.float32])


def _known_basis(V: Tensor, W: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """(Q [P, r] orthonormal spanning the well-conditioned part of V's rows, A Q [P, r]) from V, W [s, P]
    in one SVD (one solve: the rounding of W is amplified at most 1 / rtol times)."""
    U, S, Zt = torch.linalg.svd(V, full_matrices=False)  # V = U S Z^T, so Z = V^T U S^-1
    keep = S > rtol * S[0]
    return Zt[keep].T.contiguous(), W.T @ (U[:, keep] / S[keep])


class KnownSpan:
    """The vectors multiplied so far (rows V [s, P]) and their products (W = A V): what the dense route
    reuses. ``rank()`` is the numerical rank of their span (singular values above ``known_rtol`` of the
    largest): the Krylov spaces of different probes overlap (they all contain the converged extreme
    eigenvectors), so it is often well below the count.

    Args:
        P: dimension; dtype: dtype of the products (sets the drop threshold).
    """

    def __init__(self, P: int, dtype: torch.dtype):
        self.P, self.rtol = P, known_rtol(dtype)
        self.seen = 0  # vectors offered
        self._V: list[Tensor] = []
        self._W: list[Tensor] = []
        self._rank = (0, 0)  # (seen, rank) of the last rank() call

    def add(self, V: Tensor, W: Tensor) -> None:
        """Offer rows V [d, P] with W = A V [d, P]."""
        self._V.append(V.to(torch.float64))
        self._W.append(W.to(torch.float64))
        self.seen += V.shape[0]

    def rank(self) -> int:
        if self._rank[0] != self.seen:
            S = torch.linalg.svdvals(torch.cat(self._V))
            self._rank = (self.seen, int((S > self.rtol * S[0]).sum()))
        return self._rank[1]

    def basis(self) -> tuple[Tensor, Tensor]:
        """(Q [P, r] orthonormal, A Q [P, r]) from every pair offered (one SVD of all of them)."""
        if not self._V:
            return torch.zeros(self.P, 0, dtype=torch.float64), torch.zeros(self.P, 0, dtype=torch.float64)
        return _known_basis(torch.cat(self._V), torch.cat(self._W), self.rtol)


def dense_matrix(op, *, known: Optional[Union[KnownSpan, tuple[Tensor, Tensor]]] = None, block: int = DENSE_BLOCK,
                 progress: bool = True) -> tuple[Tensor, float, int]:
    """The symmetric matrix of ``op`` in float64, from products (reusing ``known`` ones).

    Args:
        op: any symmetric operator skipkern.hessian.adapters accepts.
        known: optional (V [s, P], W [s, P]) with W = A V row by row, or a KnownSpan of them (e.g. the
            vectors an SLQ run multiplied); their span is not multiplied again.
        block: columns per product.
        progress: tqdm bar over the products.

    Returns:
        (A [P, P] float64 symmetrised, asym: ||antisymmetric part||_F of the reconstruction,
        num_matvecs: products spent here).
    """
    op = as_operator(op)
    P = op.shape[0]
    dev = op.device
    if not isinstance(known, KnownSpan):
        span = KnownSpan(P, op.dtype)
        if known is not None:
            span.add(*known)
        known = span
    Q, AQ = (t.to(dev) for t in known.basis())
    r = Q.shape[1]
    AB = torch.empty(P, P, dtype=torch.float64, device=dev)  # A B, B = [Q', C] orthonormal
    if r:
        B, R = torch.linalg.qr(Q, mode="complete")  # B[:, :r] R[:r] = Q: the complement comes with it
        AB[:, :r] = torch.linalg.solve_triangular(R[:r], AQ, upper=True, left=False)
    else:
        B = torch.eye(P, dtype=torch.float64, device=dev)
    del Q, AQ
    with progress_bar(P - r, progress, "dense matrix") as bar:
        for j in range(r, P, block):
            cols = B[:, j:j + block]
            AB[:, j:j + block] = op.matmat(cols.to(op.dtype)).to(torch.float64)
            bar.update(cols.shape[1])
    A = AB @ B.T
    del AB, B
    asym = 0.5 * float(torch.linalg.matrix_norm(A - A.T))
    A.add_(A.T.clone()).mul_(0.5)
    return A, asym, P - r


def dense_density(op, *, known: Optional[Union[KnownSpan, tuple[Tensor, Tensor]]] = None, progress: bool = True,
                  meta: Optional[dict] = None, prior_matvecs: int = 0) -> SpectralDensity:
    """Every eigenvalue of ``op``, as a SpectralDensity whose fractions are exact counts.

    The eigenvalues [P] are held as the density's deflated part (nothing left to estimate), so
    ``fraction_in`` and the others return counts with zero probe error, widened only by the
    reconstruction's rounding (``meta["dense"]["residual"]``). Costs P - r products (r: directions of
    ``known`` reused) and O(P^3) time; ``prior_matvecs`` are added to the reported count.
    """
    op = as_operator(op)
    A, asym, used = dense_matrix(op, known=known, progress=progress)
    ev = torch.linalg.eigvalsh(A).cpu().numpy()
    P = ev.size
    scale = float(np.abs(ev).max()) if P else 0.0
    # eigvalsh is backward stable: each eigenvalue within ~P eps ||A|| of the reconstructed matrix's
    residual = asym + P * float(np.finfo(np.float64).eps) * scale
    info = {"probe": "exact", "num_probes": 0, "num_matvecs": int(prior_matvecs + used), "num_steps": 0,
            "product_dtype": str(op.dtype).replace("torch.", ""),
            "dense": {"residual": residual, "num_matvecs": int(used), "reused": int(P - used), "asymmetry": asym}}
    info.update(meta or {})
    nodes, weights = ev[None, :], np.full((1, P), 1.0 / P)
    sigma = max(1e-2 * (float(ev[-1] - ev[0]) if P > 1 else 0.0), 1e-12 * max(scale, 1.0))
    grid = np.linspace(ev[0] - 5 * sigma, ev[-1] + 5 * sigma, 1000)
    return SpectralDensity(nodes, weights, P, sigma, grid, meta=info, deflated=ev)
