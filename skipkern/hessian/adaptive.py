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

The exact route (``exact="auto"``, P <= ``max_dense``): when the next round would cost at least what
the rest of the matrix costs (P minus the directions already multiplied, which are reused), the
matrix is built and diagonalised instead (skipkern.hessian.dense). Thresholds far below what a
polynomial in the operator resolves would otherwise need more Lanczos products than P; with it the
driver never spends much more than P products plus the deflation search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union


from skipkern.hessian.dense import DENSE_BLOCK, MAX_DENSE_DIM, KnownSpan, dense_density
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
        num_probes, num_steps, num_deflated: the sizes of the last SLQ run.
        method: "slq", or "dense" when the exact route answered (every eigenvalue computed).
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
    method: str = "slq"

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
        how = ", exact: dense matrix" if self.method == "dense" else ""
        return f"{body} ({state}; {self.num_matvecs} products{how}, tol {self.tol:g})"


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
                      max_probes: int = 256, progress: bool = True, exact: Union[str, bool] = "auto",
                      max_dense: int = MAX_DENSE_DIM) -> FractionResult:
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
        exact: "auto" (default): build the matrix from products (reusing those spent) and count its
            eigenvalues once that is cheaper than the next round, when P <= max_dense; True: do so
            from the start (P products, no deflation search); False: never.
        max_dense: largest dimension of the "auto" exact route (it holds a few [P, P] float64 buffers).

    Returns:
        FractionResult (``.fractions``, ``.converged``, ``.num_matvecs``; ``.value``/``.lower``/``.upper``
        for a single interval).
    """
    ivs = _intervals(interval)
    if not (isinstance(tol, (int, float)) and 0 < tol <= 1):
        raise ValueError(f"tol must be a width in (0, 1], got {tol!r}")
    if not (isinstance(max_matvecs, int) and max_matvecs >= 1):
        raise ValueError(f"max_matvecs must be a positive int, got {max_matvecs!r}")
    if exact not in ("auto", True, False):
        raise ValueError(f"exact must be 'auto', True or False, got {exact!r}")
    if exact is True:
        dens = dense_density(op, progress=progress)
        return _dense_result(dens, ivs, confidence, tol, [], 0, 0, 0, dens.meta["num_matvecs"], 0)
    slq = make_slq(op, deflate, "sphere", seed, "full", progress)
    P, n = slq.P, slq.n
    if exact == "auto" and P <= max_dense:
        slq.known = KnownSpan(P, slq.op.dtype)
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
                            "width": max(f.width for f in fr.values()),
                            "values": {name: f.value for name, f in fr.items()},
                            **{name: [f.lower, f.upper] for name, f in fr.items()}})
            bar.n = min(slq.num_matvecs, max_matvecs)
            bar.refresh()
            worst = max(fr.values(), key=lambda f: f.width)
            if worst.width <= tol:
                converged = True
                break
            left = max_matvecs - slq.num_matvecs
            spanned = slq.m >= n
            if not spanned and (worst.quadrature_width >= worst.probe_width or slq.num_probes >= max_probes):
                new_m = min(n, max(slq.m + 10, int(slq.m * 1.5)))
                if slq.num_probes * (new_m - slq.m) > left:
                    new_m = slq.m + left // slq.num_probes
                step = ("extend", new_m, slq.num_probes * (new_m - slq.m)) if new_m > slq.m else None
            else:  # the probes that leave the probe part below what tol leaves beside the quadrature
                need = probes_for(max(tol - worst.quadrature_width, tol / 4), n, P, confidence)
                add = min(max_probes - slq.num_probes, max(need - slq.num_probes, 1), left // max(slq.m, 1))
                step = ("probes", add, add * slq.m) if add >= 1 else None
            if slq.known is not None and _dense_is_cheaper(slq.known, history, step, left, tol):
                dens = dense_density(slq.op, known=slq.known, progress=progress, prior_matvecs=slq.num_matvecs)
                slq.known = None
                return _dense_result(dens, ivs, confidence, tol, history, slq.num_probes, slq.m,
                                     0 if slq.deflation is None else slq.deflation.count, dens.meta["num_matvecs"],
                                     slq.num_products)
            if step is None:
                converged = False
                break
            if step[0] == "extend":
                slq.extend(step[1])
            else:
                slq.add_probes(step[1])
    d = slq.deflation
    dens = slq.density()
    return FractionResult(fr, dens, converged, slq.num_matvecs, slq.num_products, slq.num_probes, slq.m,
                          0 if d is None else d.count, float(tol), history)


def _forecast(history: list, tol: float) -> float:
    """Products at which the widest interval would reach ``tol``, from the last two rounds (a power law
    in the products; inf when the width did not shrink)."""
    if len(history) < 2:
        return 0.0
    (c1, w1), (c2, w2) = ((h["num_matvecs"], h["width"]) for h in history[-2:])
    if not (w2 < w1 and c2 > c1 and w2 > 0):
        return math.inf
    slope = math.log(w2 / w1) / math.log(c2 / c1)
    return c2 * (tol / w2) ** (1.0 / slope)


def _dense_is_cheaper(known: KnownSpan, history: list, step, left: int, tol: float) -> bool:
    """Whether to build the rest of the matrix now: it fits the budget, and it costs no more than the
    next round (or no round can run), or the widths' trend says the rounds would need more products
    than the dense route from here."""
    cheapest = known.P - known.seen  # the rest of the matrix if every product so far was independent
    ahead = step[2] if step is not None else math.inf
    if cheapest > left or (cheapest > ahead and known.seen < cheapest / 2):
        return False
    rest = known.P - known.rank()
    if rest > left:
        return False
    if rest <= ahead:
        return True
    # rent or buy: once the rounds have spent half of what the rest of the matrix costs, buy it unless
    # the trend says the rounds finish first (bounds the total by about 1.5 P when they would not)
    return known.seen >= rest / 2 and _forecast(history, tol) > history[-1]["num_matvecs"] + rest


def _dense_result(dens: SpectralDensity, ivs: dict, confidence: float, tol: float, history: list, probes: int,
                  steps: int, deflated: int, matvecs: int, products: int) -> FractionResult:
    fr = {name: dens.fraction_in(a, b, confidence=confidence) for name, (a, b) in ivs.items()}
    history = history + [{"num_matvecs": matvecs, "num_probes": probes, "num_steps": steps, "exact": True,
                          "width": max(f.width for f in fr.values()),
                          "values": {name: f.value for name, f in fr.items()},
                          **{name: [f.lower, f.upper] for name, f in fr.items()}}]
    products += math.ceil(dens.meta["dense"]["num_matvecs"] / DENSE_BLOCK)
    converged = max(f.width for f in fr.values()) <= tol
    return FractionResult(fr, dens, converged, matvecs, products, probes, steps, deflated, float(tol), history,
                          method="dense")
