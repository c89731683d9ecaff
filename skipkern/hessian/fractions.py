"""Certified spectral fractions: the fraction of eigenvalues in an interval S = [a, b] with an
interval [lower, upper] that holds with a stated confidence, accounting for both errors of SLQ.

With d deflated eigenvalues Lambda (skipkern.hessian.deflation) and n = P - d, the SLQ measure of
probe j is (n/P) mu_j + (1/P) sum_Lambda delta, mu_j the spectral measure of the deflated operator
at probe u_j, so the fraction is F = (#{Lambda in S} + n E[mu_j(S)]) / P.

1. Quadrature. Per probe, mu_j(S) lies in [L_j, U_j] (skipkern.hessian.quadrature: the sharp
   Markov-Krein bounds from the Gauss-Radau rule at a and b). Deterministic.
2. Probes. g_j = mu_j(S) are i.i.d. with mean G = E[mu_j(S)], and mean(L) <= mean(g) <= mean(U).
   - Probes uniform on the unit sphere of the (deflated) space of dimension n: g_j ~ Beta(r/2, (n-r)/2)
     exactly, which is sub-Gaussian with variance proxy 1/(4(n/2 + 1)) (Marchal and Arbel, Electron.
     Commun. Probab. 2017), so P(|mean(g) - G| >= c) <= 2 exp(-c^2 k (n + 2)), whatever F is.
   - Rademacher probes (no deflation): Cortinovis and Kressner (Found. Comput. Math. 2022):
     P(|mean(g) - G| >= c) <= 2 exp(-k n c^2 / (8 (m + c))), m = min(G, 1 - G); the interval is the
     set of G consistent with it (searched on a grid, rounded outwards).
   Hoeffding (range 1) would be valid too but is ~sqrt(n)x wider. These bounds use the distribution
   of the quadratic forms and need no variance estimate. So with probability >= confidence:
   G in [mean(L) - c, mean(U) + c]. ``bound="t"`` uses Student-t intervals on the per-probe L_j and
   U_j instead (narrower when P is small; asymptotic, not a guarantee).
3. Deflation residual and rounding. The deflated eigenpairs have residual R = A U - U Lambda; the
   spectrum combined above is exactly that of A' = A - (R U^T + U R^T), whose eigenvalues are within
   rho = ||R||_2 of A's (Weyl). Products in a working precision move eigenvalues by a rounding amount
   too (``rounding_floor``). Both widen S: the lower bound counts S shrunk by rho, the upper S grown
   by rho.
4. When every eigenvalue is known (all deflated, or built densely by skipkern.hessian.dense) the
   fraction is a count: no probe or quadrature error, S widened and shrunk by rho only.
The point estimate (Gauss rule) lies inside; which of quadrature and probes contributes more to the
width is reported, and ``resolved`` is False when the quadrature part exceeds max(resolution, probe
part) or S's edges lie within the rounding floor of 0 (eps too small for this run).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np


__all__ = ["Fraction", "certify", "probe_interval", "RESOLUTION"]

RESOLUTION = 0.01  # quadrature width up to which a fraction counts as resolved


@dataclass(frozen=True)
class Fraction:
    """A spectral fraction with its uncertainty.

    Attributes:
        value: the Gauss-quadrature point estimate.
        stderr: its standard error across probes (NaN with one probe).
        lower, upper: the certified interval (holds with probability >= ``confidence``).
        confidence: the interval's confidence level.
        quadrature_width: the part of upper - lower due to the quadrature (and deflation residual).
        probe_width: the part due to the finite number of probes.
        dominant: "quadrature" or "probes", whichever part is larger.
        resolved: False when the run cannot resolve S (see ``note``).
        note: a sentence on what limits the interval and what to do about it.
        interval: S = (a, b).
    Unpacks and indexes as (value, stderr), like the old Estimate.
    """

    value: float
    stderr: float
    lower: float
    upper: float
    confidence: float
    quadrature_width: float
    probe_width: float
    dominant: str
    resolved: bool
    note: str
    interval: tuple

    def __iter__(self) -> Iterator[float]:
        return iter((self.value, self.stderr))

    def __getitem__(self, i: int) -> float:
        return (self.value, self.stderr)[i]

    def __len__(self) -> int:
        return 2

    def __float__(self) -> float:
        return float(self.value)

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def __str__(self) -> str:
        flag = "" if self.resolved else " (unresolved)"
        return f"{self.value:.4f} [{self.lower:.4f}, {self.upper:.4f}]{flag}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interval"] = [float(x) for x in self.interval]
        return d


def probe_interval(lo_j: np.ndarray, hi_j: np.ndarray, n: int, probe: str, confidence: float,
                   bound: str = "rigorous") -> tuple[float, float]:
    """[lo, hi] containing G = E[mu_j(S)] with probability >= confidence, from the per-probe lower and
    upper bounds lo_j, hi_j [k] (module docstring, point 2)."""
    k, lbar, ubar = lo_j.size, float(lo_j.mean()), float(hi_j.mean())
    if bound == "t":
        if k < 2:
            return 0.0, 1.0
        from scipy.stats import t as student
        q = float(student.ppf(0.5 + confidence / 2, k - 1)) / math.sqrt(k)
        return max(0.0, lbar - q * float(lo_j.std(ddof=1))), min(1.0, ubar + q * float(hi_j.std(ddof=1)))
    if bound != "rigorous":
        raise ValueError(f"bound must be 'rigorous' or 't', got {bound!r}")
    L = math.log(2.0 / (1.0 - confidence))
    if probe == "sphere":
        c = math.sqrt(L / (k * (n + 2)))
        return max(0.0, lbar - c), min(1.0, ubar + c)
    if probe != "rademacher":
        raise ValueError(f"probe must be 'sphere' or 'rademacher', got {probe!r}")
    step = 1e-4
    G = np.linspace(0.0, 1.0, 10001)
    m = np.minimum(G, 1.0 - G)
    c = (8 * L + np.sqrt(64 * L * L + 32 * k * n * L * m)) / (2 * k * n)  # k n c^2 = 8 L (m + c)
    ok_lo, ok_hi = G >= lbar - c, G <= ubar + c
    lo = float(G[ok_lo].min()) - step if ok_lo.any() else 0.0
    hi = float(G[ok_hi].max()) + step if ok_hi.any() else 1.0
    return max(0.0, lo), min(1.0, hi)


def _mean_bounds(dens, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe [L_j, U_j] on mu_j([a, b]) (and of the open/half-open variants)."""
    la, ua = dens.cdf_bounds(a)
    lb, ub = dens.cdf_bounds(b)
    return np.maximum(0.0, lb - ua), np.minimum(1.0, ub - la)


def certify(dens, a: float, b: float, gauss: np.ndarray, *, confidence: float = 0.95,
            resolution: float = RESOLUTION, bound: str = "rigorous") -> Fraction:
    """The Fraction of eigenvalues in S = [a, b] of a SpectralDensity (module docstring).

    Args:
        dens: a SpectralDensity.
        a, b: S's edges (+-inf allowed).
        gauss: [k] per-probe Gauss point estimates of the fraction (combined measure, with the strict or
            closed edges the caller means).
        confidence: level of the interval (0 < confidence < 1).
        resolution: quadrature width up to which the fraction counts as resolved.
        bound: "rigorous" (default) or "t" (module docstring, point 2).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    P, lam = dens.dim, dens.deflated
    n = P - lam.size
    k = dens.num_probes
    rho = dens.threshold_uncertainty()
    value = float(gauss.mean())
    if n == 0:  # every eigenvalue known (deflated, or a dense route): counts, widened by rho only
        return _counted(dens, a, b, value, rho, confidence)
    stderr = float(gauss.std(ddof=1) / math.sqrt(k)) if k > 1 else float("nan")
    if not dens.has_tridiagonals():  # a file saved before the tridiagonals were kept: Gauss-node bounds
        lo_in, hi_out = dens.gauss_node_bounds(a - rho, b + rho)
        lo_j, hi_j = lo_in, hi_out
        in_cnt = out_cnt = 0
    else:
        shrunk = (a + rho, b - rho)
        lo_j = _mean_bounds(dens, *shrunk)[0] if shrunk[0] <= shrunk[1] else np.zeros(k)
        hi_j = _mean_bounds(dens, a - rho, b + rho)[1]
        in_cnt = int(((lam >= a + rho) & (lam <= b - rho)).sum())
        out_cnt = int(((lam >= a - rho) & (lam <= b + rho)).sum())
    lbar, ubar = float(lo_j.mean()), float(hi_j.mean())
    glo, ghi = probe_interval(lo_j, hi_j, n, dens.probe, confidence, bound)
    lower = max(0.0, min(value, (in_cnt + n * glo) / P))
    upper = min(1.0, max(value, (out_cnt + n * ghi) / P))
    quad = max(0.0, (out_cnt + n * ubar) / P - (in_cnt + n * lbar) / P)
    probe_w = max(0.0, (upper - lower) - quad)
    dominant = "quadrature" if quad >= probe_w else "probes"
    floor = dens.rounding_floor()
    edges = [abs(x) for x in (a, b) if math.isfinite(x)]
    tiny = any(0.0 < e <= floor for e in edges)
    resolved = quad <= max(resolution, probe_w) and not tiny
    steps = int(dens.meta.get("num_steps", 0))
    if tiny:
        note = (f"S's edge {min(e for e in edges if e > 0):.3g} lies within the rounding floor {floor:.3g} of the "
                f"{dens.meta.get('product_dtype', '?')} products: eigenvalues this close to 0 cannot be told apart; "
                f"raise eps or use float64 products")
    elif not resolved:
        note = (f"quadrature-limited: {steps} Lanczos steps leave {quad:.3g} of the width unresolved (probes "
                f"{probe_w:.3g}); add Lanczos steps (spectral_fraction adds them until the width is below tol) "
                f"or widen S")
    else:
        note = f"{dominant}-dominated width {upper - lower:.3g} at {confidence:.0%} confidence"
    return Fraction(value, stderr, lower, upper, confidence, quad, probe_w, dominant, resolved, note, (a, b))


def _counted(dens, a: float, b: float, value: float, rho: float, confidence: float) -> Fraction:
    """The Fraction of a density that holds every eigenvalue (no probes, no quadrature)."""
    lam, P = dens.deflated, dens.dim
    lower = min(value, float(((lam >= a + rho) & (lam <= b - rho)).sum()) / P)
    upper = max(value, float(((lam >= a - rho) & (lam <= b + rho)).sum()) / P)
    note = (f"exact: all {P} eigenvalues; {upper - lower:.3g} of width from eigenvalues within the rounding "
            f"{rho:.3g} of S's edges" if upper > lower else f"exact: all {P} eigenvalues")
    return Fraction(value, 0.0, lower, upper, confidence, upper - lower, 0.0, "quadrature", True, note, (a, b))
