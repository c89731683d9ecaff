"""``spectral_fraction``: certified fractions of eigenvalues in given intervals, to a requested
width, with as few operator-vector products as the bounds allow.

After the outlier deflation (skipkern.hessian.deflation), probes uniform on the sphere of the
deflated space give a probe error that is known in advance (skipkern.hessian.fractions: the
half-width c = sqrt(log(2/delta) / (k (n + 2))) depends only on k and n). The run starts with the
probes that spend half of ``tol`` on it, at most four: on Hessians the quadrature error dominates
and shrinks only slowly with the steps (measured in bench/spectral_fractions.py: a few probes with
long runs beat many probes with short ones for the same products), so steps come first. Lanczos steps
are added (x1.5 at a time) while the quadrature part of the widest interval dominates (it shrinks with
the steps, to zero when they span the space); when the probe part dominates, exactly the probes that
bring it below what ``tol`` leaves are added (run up to the current steps). The loop stops at
convergence or before a step would exceed ``max_matvecs``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from skipkern.hessian.density import SpectralDensity
from skipkern.hessian.fractions import Fraction
from skipkern.hessian.lanczos import progress_bar
from skipkern.hessian.slq import make_slq

__all__ = ["spectral_fraction", "FractionResult"]

Interval = tuple[float, float]
START_PROBES = 4


@dataclass
class FractionResult:
    """What ``spectral_fraction`` returns.

    Attributes:
        fractions: {name: Fraction} (name "fraction" for a single interval).
        density: the SpectralDensity of the final run (nodes, weights, tridiagonals, deflation).
        converged: every interval is narrower than tol.
        num_matvecs: operator-vector products used (Hessian-vector products for a HessianOperator),
            deflation search included; num_products: operator calls (data passes).
        num_probes, num_steps, num_deflated: the final run's sizes.
        history: per round, {"num_matvecs", "num_probes", "num_steps", "values": {name: point estimate},
            name: [lower, upper], ...} (with a smaller max_matvecs the same run stops at or just after
            one of these rounds).
    With one interval, ``value``, ``stderr``, ``lower``, ``upper`` read that interval's Fraction.
    """

    fractions: dict
    density: SpectralDensity
    converged: bool
    num_matvecs: int
    num_products: int
    num_probes: int
    num_steps: int
    num_deflated: int
    tol: float
    history: list = field(default_factory=list)

    @property
    def fraction(self) -> Fraction:
        if len(self.fractions) != 1:
            raise AttributeError(f"{len(self.fractions)} intervals were asked; read .fractions[name]")
        return next(iter(self.fractions.values()))

    value = property(lambda self: self.fraction.value)
    stderr = property(lambda self: self.fraction.stderr)
    lower = property(lambda self: self.fraction.lower)
    upper = property(lambda self: self.fraction.upper)

    def __str__(self) -> str:
        body = ", ".join(f"{k}: {v}" for k, v in self.fractions.items())
        state = "converged" if self.converged else "NOT converged (budget spent)"
        return f"{body} ({state}; {self.num_matvecs} products, tol {self.tol:g})"


def _intervals(interval) -> dict[str, Interval]:
    if isinstance(interval, dict):
        items = list(interval.items())
    elif isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval):
        items = [("fraction", interval)]
    elif isinstance(interval, (list, tuple)) and interval:
        items = [(f"[{a:g}, {b:g}]", (a, b)) for a, b in interval]
    else:
        raise ValueError(f"interval must be (lo, hi), a list of them or {{name: (lo, hi)}}, got {interval!r}")
    out = {}
    for name, iv in items:
        try:
            a, b = float(iv[0]), float(iv[1])
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"interval {name!r} must be a pair (lo, hi), got {iv!r}") from None
        if math.isnan(a) or math.isnan(b) or a > b:
            raise ValueError(f"interval {name!r} must have lo <= hi, got ({a}, {b})")
        out[str(name)] = (a, b)
    return out


def probes_for(width: float, n: int, P: int, confidence: float) -> int:
    """Sphere probes whose part of the certified width is at most ``width``: 2 c n / P <= width."""
    c = max(width, 1e-12) * P / (2.0 * n)
    return max(1, math.ceil(math.log(2.0 / (1.0 - confidence)) / (c * c * (n + 2))))


def spectral_fraction(op, interval, *, tol: float = 0.02, max_matvecs: int = 20000, deflate: Union[str, int] = "auto",
                      seed: Optional[int] = None, confidence: float = 0.95, num_steps: int = 20,
                      max_probes: int = 256, progress: bool = True) -> FractionResult:
    """Certified fractions of eigenvalues of a symmetric operator in closed intervals, adaptively.

    Args:
        op: a symmetric operator (HessianOperator, DenseOperator, tensor, numpy array, scipy
            LinearOperator, any object with shape and matmat).
        interval: (lo, hi) (+-inf allowed), a list of them, or {name: (lo, hi)}; e.g.
            {"degenerate": (-eps, eps), "negative": (-inf, -eps)}.
        tol: stop when every certified interval [lower, upper] is narrower than this.
        max_matvecs: budget of operator-vector products (Hessian-vector products), deflation included.
        deflate: "auto" (default), a count, or 0 (skipkern.hessian.deflation).
        seed: seed of the probes and of the deflation search.
        confidence: level of the certified intervals.
        num_steps: Lanczos steps of the first round.
        max_probes: most probes.
        progress: tqdm bar (only on a terminal).

    Returns:
        FractionResult (``.fractions``, ``.converged``, ``.num_matvecs``; ``.value``/``.lower``/``.upper``
        for a single interval).
    """
    ivs = _intervals(interval)
    if not (isinstance(tol, (int, float)) and 0 < tol <= 1):
        raise ValueError(f"tol must be a width in (0, 1], got {tol!r}")
    if not (isinstance(max_matvecs, int) and max_matvecs >= 1):
        raise ValueError(f"max_matvecs must be a positive int, got {max_matvecs!r}")
    slq = make_slq(op, deflate, "sphere", seed, "full", progress)
    P, n = slq.P, slq.n
    k = min(max_probes, probes_for(tol / 2, n, P, confidence), START_PROBES)
    m = max(2, min(num_steps, n))
    if slq.num_matvecs + k * m > max_matvecs:  # the budget is small: fewer probes first
        k = max(1, min(k, (max_matvecs - slq.num_matvecs) // m))
    history: list = []
    with progress_bar(max_matvecs, progress, "spectral fraction") as bar:
        slq.add_probes(k)
        slq.extend(m)
        while True:
            dens = slq.density(grid=2)  # the smoothed density only once, at the end
            fr = {name: dens.fraction_in(a, b, confidence=confidence) for name, (a, b) in ivs.items()}
            history.append({"num_matvecs": slq.num_matvecs, "num_probes": slq.num_probes, "num_steps": slq.m,
                            "values": {name: f.value for name, f in fr.items()},
                            **{name: [f.lower, f.upper] for name, f in fr.items()}})
            bar.n = min(slq.num_matvecs, max_matvecs)
            bar.refresh()
            worst = max(fr.values(), key=lambda f: f.width)
            if worst.width <= tol:
                converged = True
                break
            left = max_matvecs - slq.num_matvecs
            exact = slq.m >= n
            if not exact and (worst.quadrature_width >= worst.probe_width or slq.num_probes >= max_probes):
                new_m = min(n, max(slq.m + 10, int(slq.m * 1.5)))
                if slq.num_probes * (new_m - slq.m) > left:
                    new_m = slq.m + left // slq.num_probes
                if new_m <= slq.m:
                    converged = False
                    break
                slq.extend(new_m)
            else:  # the probes that leave the probe part below what tol leaves beside the quadrature
                need = probes_for(max(tol - worst.quadrature_width, tol / 4), n, P, confidence)
                add = min(max_probes - slq.num_probes, max(need - slq.num_probes, 1), left // max(slq.m, 1))
                if add < 1:
                    converged = False
                    break
                slq.add_probes(add)
    d = slq.deflation
    dens = slq.density()
    return FractionResult(fr, dens, converged, slq.num_matvecs, slq.num_products, slq.num_probes, slq.m,
                          0 if d is None else d.count, float(tol), history)
