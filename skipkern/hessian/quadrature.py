"""Per-probe bounds on the spectral distribution function from a Lanczos tridiagonal.

Lanczos from a unit probe v gives T_m (alphas, betas) and the residual norm beta_m. The spectral
measure mu_v = sum_i (u_i^T v)^2 delta_{lambda_i} has the moments e_1^T T^p e_1 for p <= 2m
(beta_m fixes the moment 2m). Among all measures with these moments, mu_v((-inf, t)) and
mu_v((-inf, t]) are confined to

    [ sum_{x_i < t} w_i ,  sum_{x_i <= t} w_i ]

where (x_i, w_i) is the (m+1)-node Gauss-Radau rule with a node fixed at t: T_m extended by beta_m
and a last diagonal entry chosen so that t is an eigenvalue (Golub, "Some modified matrix eigenvalue
problems", SIAM Rev. 1973). This is the Markov-Krein (Chebyshev-Markov-Stieltjes) inequality at its
sharpest: the gap is the Christoffel function at t, the mass the moments cannot place on either side
of t (Akhiezer, "The Classical Moment Problem", ch. 3; Karlin and Studden 1966, ch. 3). The plain
Gauss-node form (the estimate minus the last node below t, plus the first node above) is also valid
and is intersected with it for safety. A probe whose recurrence broke down (beta = 0) or spanned
its whole space has an exact quadrature: both bounds equal the Gauss value.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import eigh_tridiagonal

__all__ = ["gauss_rule", "cdf_bounds", "gauss_cdf_bounds"]


def gauss_rule(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes [n], weights [n]) of the Gauss rule of T = tridiag(beta, alpha, beta) (alpha [n],
    beta [n-1])."""
    if alpha.size == 1:
        return alpha.copy(), np.ones(1)
    x, U = eigh_tridiagonal(alpha, beta)
    return x, U[0] ** 2


def _radau_alpha(alpha: np.ndarray, beta: np.ndarray, b: float, t: float) -> float:
    """Last diagonal entry a of [[T, b e_n], [b e_n^T, a]] with eigenvalue t: a = t + b^2 / d_n, d_n
    the last pivot of the LDL^T factorisation of T - t I (so 1/d_n = [(T - t I)^{-1}]_nn)."""
    tiny = np.finfo(np.float64).tiny
    d = alpha[0] - t
    for i in range(1, alpha.size):
        d = (alpha[i] - t) - beta[i - 1] ** 2 / (d if d != 0 else tiny)
    return t + b * b / (d if d != 0 else tiny)


def gauss_cdf_bounds(nodes: np.ndarray, weights: np.ndarray, t: float) -> tuple[float, float]:
    """Gauss-node Chebyshev-Markov-Stieltjes bounds on mu((-inf, t)) and mu((-inf, t]): the mass below
    t minus the last node's weight at or below t, and the mass at or below t plus the first node's
    weight above t."""
    below = nodes <= t
    est = float(weights[below].sum())
    last = float(weights[below][np.argmax(nodes[below])]) if below.any() else 0.0
    first = float(weights[~below][np.argmin(nodes[~below])]) if (~below).any() else 0.0
    return max(est - last, 0.0), min(est + first, 1.0)


def cdf_bounds(alpha: np.ndarray, beta: np.ndarray, beta_last: float, t: float, exact: bool = False,
               rule: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """(lower, upper) bounds on mu_v((-inf, t)) and mu_v((-inf, t]) of one probe (module docstring).

    Args:
        alpha: [n] diagonal of T; beta: [n-1] off-diagonal; beta_last: the residual norm beta_n.
        t: the threshold (+-inf allowed).
        exact: the quadrature is exact (breakdown or full dimension): both bounds are the Gauss value.
        rule: the Gauss rule (nodes, weights) of T, if already computed.
    """
    if t == np.inf:
        return 1.0, 1.0
    if t == -np.inf:
        return 0.0, 0.0
    nodes, weights = rule if rule is not None else gauss_rule(alpha, beta)
    if exact or beta_last == 0.0:
        return float(weights[nodes < t].sum()), float(weights[nodes <= t].sum())
    g_lo, g_hi = gauss_cdf_bounds(nodes, weights, t)
    a = _radau_alpha(alpha, beta, beta_last, t)
    if not np.isfinite(a):  # t at a Gauss node to rounding: the Gauss-node bounds are the sharp ones
        return g_lo, g_hi
    x, U = eigh_tridiagonal(np.append(alpha, a), np.append(beta, beta_last))
    w = U[0] ** 2
    at = int(np.argmin(np.abs(x - t)))  # the prescribed node
    lo = float(w[(x < t) & (np.arange(x.size) != at)].sum())
    hi = lo + float(w[at])
    return max(lo, g_lo), min(hi, g_hi)
