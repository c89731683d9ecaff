"""Statistics shared by the experiments after the neighbouring papers (connectivity, symmetry, depth):
log-log slopes with stratified bootstrap intervals, paired t intervals, Newcombe's interval for a
difference of two proportions, and a thread-count guard for small-matrix work.

Bootstrap intervals are percentile intervals over ``n_boot`` resamples drawn with a fixed seed; the
resampling is stratified (values are resampled within each width), so every resample keeps the design.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["loglog_slope", "bootstrap_slope", "bootstrap_slope_difference", "bootstrap_mean_gap", "paired_t",
           "newcombe_difference", "threads", "LEVEL"]

LEVEL = 0.95


def _groups(values: Mapping[float, Sequence[float]]) -> dict:
    """{m: finite positive values as log10} (non-positive or non-finite values dropped)."""
    out = {}
    for m, v in values.items():
        a = np.asarray(v, dtype=float)
        a = a[np.isfinite(a) & (a > 0)]
        if a.size:
            out[float(m)] = np.log10(a)
    return out


def loglog_slope(values: Mapping[float, Sequence[float]]) -> tuple:
    """Least-squares slope and intercept of log10(value) on log10(m) over all points; (nan, nan) with
    fewer than two distinct m. ``values``: {m: [values]}."""
    g = _groups(values)
    if len(g) < 2:
        return math.nan, math.nan
    x = np.concatenate([np.full(v.size, math.log10(m)) for m, v in g.items()])
    y = np.concatenate(list(g.values()))
    k, b = np.polyfit(x, y, 1)
    return float(k), float(b)


def bootstrap_slope(values: Mapping[float, Sequence[float]], n_boot: int = 2000, seed: int = 0,
                    level: float = LEVEL, samples: bool = False) -> dict:
    """Slope of log10(value) on log10(m) with a percentile bootstrap interval (values resampled within
    each m). Returns {"slope", "intercept", "low", "high", "n_points", "n_dropped", "n_min"}, where
    n_dropped counts values that were <= 0 or not finite (they cannot go on a log axis) and n_min is
    the smallest number of points at any m; with ``samples`` also "samples", the bootstrap slopes."""
    g = _groups(values)
    total = sum(len(v) for v in values.values())
    n_points = sum(v.size for v in g.values())
    k, b = loglog_slope(values)
    out = {"slope": k, "intercept": b, "low": math.nan, "high": math.nan, "n_points": int(n_points),
           "n_dropped": int(total - n_points), "n_min": int(min((v.size for v in g.values()), default=0))}
    if len(g) < 2 or not math.isfinite(k):
        return out
    rng = np.random.default_rng(seed)
    x = {m: math.log10(m) for m in g}
    ks = np.empty(n_boot)
    for i in range(n_boot):
        xs, ys = [], []
        for m, v in g.items():
            ys.append(v[rng.integers(0, v.size, v.size)])
            xs.append(np.full(v.size, x[m]))
        ks[i] = np.polyfit(np.concatenate(xs), np.concatenate(ys), 1)[0]
    a = (1 - level) / 2
    out.update(low=float(np.quantile(ks, a)), high=float(np.quantile(ks, 1 - a)))
    if samples:
        out["samples"] = ks
    return out


def bootstrap_slope_difference(a: Mapping[float, Sequence[float]], b: Mapping[float, Sequence[float]],
                               n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """slope(a) - slope(b) of two independent log-log fits with a percentile interval from their
    independent bootstrap distributions. Returns {"difference", "low", "high", "n_min"}."""
    sa = bootstrap_slope(a, n_boot, seed, level, samples=True)
    sb = bootstrap_slope(b, n_boot, seed + 1, level, samples=True)
    out = {"difference": sa["slope"] - sb["slope"], "low": math.nan, "high": math.nan,
           "n_min": min(sa["n_min"], sb["n_min"])}
    if "samples" in sa and "samples" in sb:
        d = sa["samples"] - sb["samples"]
        q = (1 - level) / 2
        out.update(low=float(np.quantile(d, q)), high=float(np.quantile(d, 1 - q)))
    return out


def bootstrap_mean_gap(a: Mapping[float, Sequence[float]], b: Mapping[float, Sequence[float]], n_boot: int = 2000,
                       seed: int = 0, level: float = LEVEL) -> dict:
    """Mean over the widths m present in both of [mean log10 a(m) - mean log10 b(m)], with a stratified
    percentile bootstrap interval. Returns {"gap", "low", "high", "widths", "n_min"}."""
    ga, gb = _groups(a), _groups(b)
    ms = sorted(set(ga) & set(gb))
    out = {"gap": math.nan, "low": math.nan, "high": math.nan, "widths": ms,
           "n_min": int(min([ga[m].size for m in ms] + [gb[m].size for m in ms], default=0))}
    if not ms:
        return out
    out["gap"] = float(np.mean([ga[m].mean() - gb[m].mean() for m in ms]))
    rng = np.random.default_rng(seed)
    gaps = np.empty(n_boot)
    for i in range(n_boot):
        gaps[i] = np.mean([ga[m][rng.integers(0, ga[m].size, ga[m].size)].mean()
                           - gb[m][rng.integers(0, gb[m].size, gb[m].size)].mean() for m in ms])
    q = (1 - level) / 2
    out.update(low=float(np.quantile(gaps, q)), high=float(np.quantile(gaps, 1 - q)))
    return out


def paired_t(d: Sequence[float], level: float = LEVEL) -> tuple:
    """(mean, low, high, n) of paired differences ``d`` with Student's t interval (finite values only;
    one value: an infinitely wide interval; zero spread: the point itself)."""
    from scipy import stats as sps
    v = np.asarray([float(x) for x in d], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n == 1:
        return m, -math.inf, math.inf, 1
    se = float(v.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return m, m, m, n
    h = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return m, m - h, m + h, n


def _wilson(k: int, n: int, z: float) -> tuple:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, level: float = LEVEL) -> tuple:
    """(p1 - p2, low, high) with Newcombe's (1998, method 10) hybrid Wilson score interval for the
    difference of two independent proportions k1/n1 and k2/n2."""
    from scipy import stats as sps
    if n1 < 1 or n2 < 1:
        return math.nan, math.nan, math.nan
    z = float(sps.norm.ppf(0.5 + level / 2))
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson(k1, n1, z)
    l2, u2 = _wilson(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


@contextlib.contextmanager
def threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (None: leave as is), restoring the count after.
    Small batched matrix products (width <= 64) run many times slower with two threads than with one
    when the cores are shared, so the small-model experiments default to one."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
