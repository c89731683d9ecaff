"""Extreme eigenvalues of a symmetric operator by Lanczos (float64, full reorthogonalisation).

One probe, with the basis kept in float64 and reorthogonalised twice per step; every ``check_every``
steps the Ritz pairs of T are computed and the run stops once the wanted k have residual norms
|beta_m s_mi| <= tol * max|theta| (Parlett, "The Symmetric Eigenvalue Problem", ch. 13). A breakdown
(an invariant subspace found) restarts from a fresh random vector orthogonal to the basis, so T
becomes block diagonal and the search continues in the complement. A single-vector Krylov space
holds one copy of a repeated eigenvalue, so multiplicities > 1 are not resolved.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import torch
from torch import Tensor

from skipkern.hessian.adapters import as_operator
from skipkern.hessian.lanczos import (LanczosRun, check_count, default_breakdown_tol, operator_apply,
                                      probe_seed, progress_bar, rademacher_probes)

log = logging.getLogger("skipkern")

__all__ = ["top_eigenvalues"]

_WHICH = ("LA", "SA", "LM")


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    key = {"LA": -theta, "SA": theta, "LM": -theta.abs()}[which]
    return torch.argsort(key)[:k]


def top_eigenvalues(op, k: int = 1, *, which: str = "LA", num_steps: Optional[int] = None, tol: float = 1e-10,
                    seed: Optional[int] = None, check_every: int = 5, return_eigenvectors: bool = False,
                    progress: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """The k extreme eigenvalues of a symmetric operator.

    Args:
        op: a symmetric operator (HessianOperator, DenseOperator, tensor, numpy array, scipy
            LinearOperator, any object with shape and matmat; skipkern.hessian.adapters).
        k: how many (1 <= k <= P).
        which: "LA" largest algebraic (default), "SA" smallest algebraic, "LM" largest magnitude.
        num_steps: most Lanczos steps (default min(P, max(200, 20 k))).
        tol: relative residual |A y - theta y| / max|theta| at which a Ritz pair counts as converged.
        seed: seed of the start vector.
        check_every: steps between convergence checks.
        return_eigenvectors: also return the Ritz vectors [P, k] (float64).
        progress: tqdm bar (only on a terminal).

    Returns:
        eigenvalues [k] float64 (descending for "LA" and "LM", ascending for "SA"), and with
        ``return_eigenvectors`` also [P, k] float64 unit eigenvectors. Logs a warning when the
        residuals did not reach ``tol`` within ``num_steps``.
    """
    op = as_operator(op)
    P = op.shape[0]
    check_count("k", k)
    if k > P:
        raise ValueError(f"k must be <= P={P}, got {k}")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    m = min(P, num_steps if num_steps is not None else max(200, 20 * k))
    seed = probe_seed(op, seed)  # the same start vector on every rank of a process group
    check_count("num_steps", m)
    if m < k:
        raise ValueError(f"num_steps must be >= k={k}, got {m}")
    run = LanczosRun(operator_apply(op), rademacher_probes(P, 1, seed, op.device), m,
                     breakdown_tol=default_breakdown_tol(op.dtype))
    gen = torch.Generator().manual_seed((seed if seed is not None else 0) + 1)
    converged = False
    with progress_bar(m, progress, "top eigenvalues") as bar:
        while run.i < m:
            run.step()
            bar.update(1)
            n = run.i
            if not bool(run.active[0]) and n < m:  # breakdown: continue in the orthogonal complement
                run.restart(torch.randn(P, generator=gen, dtype=torch.float64).to(op.device))
            if n >= k and (n % check_every == 0 or n == m):
                theta, res = _ritz(run, n)
                sel = _select(theta, k, which)
                scale = theta.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
                if bool((res[sel] <= tol * scale).all()):
                    converged = True
                    break
    n = run.i
    theta, res = _ritz(run, n)
    sel = _select(theta, k, which)
    if not converged and n < P:
        log.warning("top_eigenvalues: residuals %s above tol=%g after %d steps; raise num_steps",
                    [f"{float(r):.2e}" for r in res[sel]], tol, n)
    vals = theta[sel]
    if not return_eigenvectors:
        return vals
    T = _tridiag(run, n)
    _, U = torch.linalg.eigh(T)
    vecs = run.basis[0, :n].T @ U[:, sel].to(run.basis.device)
    return vals, vecs / vecs.norm(dim=0, keepdim=True)


def _tridiag(run: LanczosRun, n: int) -> Tensor:
    a = run.alphas[0, :n].cpu()
    b = run.betas[0, :n - 1].cpu()
    return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def _ritz(run: LanczosRun, n: int) -> tuple[Tensor, Tensor]:
    """Ritz values [n] and residual norms [n] = |beta_n * last component|."""
    theta, U = torch.linalg.eigh(_tridiag(run, n))
    beta = float(run.last_beta[0])  # the norm of the residual after step n (before any zeroing)
    return theta, (beta * U[-1]).abs()
