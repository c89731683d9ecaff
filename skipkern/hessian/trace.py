"""Stochastic trace estimation of a symmetric operator with standard errors.

- "hutchinson": Hutchinson, "A stochastic estimator of the trace of the influence matrix for
  Laplacian smoothing splines" (1990): tr(A) ~ mean_j z_j^T A z_j over Rademacher z_j; one product.
- "hutch++": Meyer, Musco, Musco and Woodruff, "Hutch++: optimal stochastic trace estimation"
  (SOSA 2021): the exact trace on the range Q of A S (S: num_probes/3 Rademacher vectors) plus
  Hutchinson on the deflated remainder (I - QQ^T) A (I - QQ^T); three products.
Products run in the operator's dtype; the estimate is accumulated in float64.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from skipkern.hessian.adapters import as_operator
from skipkern.hessian.density import Estimate
from skipkern.hessian.lanczos import check_count, probe_seed

__all__ = ["trace", "rademacher"]


def rademacher(P: int, k: int, seed: Optional[int], device=None) -> Tensor:
    """[P, k] float64 Rademacher (+-1) matrix from a CPU generator (seeded: same on every device)."""
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    z = torch.randint(0, 2, (P, k), generator=g, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)
    return z.to(device)


def _mm(op, V: Tensor) -> Tensor:
    return op.matmat(V.to(op.dtype)).to(torch.float64)


def _mean_se(x: Tensor) -> Estimate:
    k = x.numel()
    se = float(x.std(unbiased=True) / math.sqrt(k)) if k > 1 else float("nan")
    return Estimate(float(x.mean()), se)


def trace(op, num_probes: int, method: str = "hutchinson", seed: Optional[int] = None) -> Estimate:
    """Estimate tr(A) of a symmetric operator.

    Args:
        op: a symmetric operator (HessianOperator, DenseOperator, tensor, numpy array, scipy
            LinearOperator, any object with shape and matmat; skipkern.hessian.adapters).
        num_probes: matrix-vector products to spend (>= 1; >= 3 for "hutch++", split in thirds).
        method: "hutchinson" or "hutch++".
        seed: seed of the Rademacher vectors.

    Returns:
        Estimate(value, stderr): stderr is the sample std of the per-probe terms / sqrt(count)
        (for hutch++ the deflated part's; the projected part is exact). NaN with a single probe.
    """
    check_count("num_probes", num_probes)
    op = as_operator(op)
    P = op.shape[0]
    seed = probe_seed(op, seed)  # the same probes on every rank of a process group
    if method == "hutchinson":
        Z = rademacher(P, num_probes, seed, op.device)
        return _mean_se((Z * _mm(op, Z)).sum(0))
    if method == "hutch++":
        check_count("num_probes (hutch++ needs 3 or more)", num_probes, 3)
        s = num_probes // 3
        g = num_probes - 2 * s
        Z = rademacher(P, s + g, seed, op.device)
        S, G = Z[:, :s], Z[:, s:]
        Q, _ = torch.linalg.qr(_mm(op, S))
        exact = float((Q * _mm(op, Q)).sum())
        Gd = G - Q @ (Q.T @ G)
        per = (Gd * _mm(op, Gd)).sum(0)
        est = _mean_se(per)
        return Estimate(exact + est.value, est.stderr)
    raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
