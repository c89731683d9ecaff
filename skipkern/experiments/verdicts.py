"""Pre-registered, two-sided verdicts with sanity gates.

A ``Prediction`` is written in code before any data exist (``predictions.PREDICTIONS``): which
statistic, which conditions, the predicted direction and the smallest effect that counts (or, for
"about equal" claims, the band the effect must stay inside), and how many seeds it needs. ``judge``
turns measured values into an ``Outcome`` with a 95% interval and one of four verdicts:

    reproduced       direction claims: the interval excludes zero on the predicted side;
                     band claims: the interval lies inside the band
    not reproduced   the interval excludes the predicted effect: for direction claims it lies below
                     the smallest effect that counts (a clear opposite effect included), for band
                     claims it lies outside the band
    inconclusive     anything else (the interval is too wide to tell)
    invalid          a condition the comparison uses failed its sanity gate (``Gate``: training
                     accuracy not clearly above chance, or the loss never fell below its start), or
                     fewer seeds than registered; never a win or a loss

Statistics: differences of means use Welch's t interval (unequal variances, Welch-Satterthwaite
degrees of freedom); correlations use Spearman's rank correlation with the Fisher-z interval and the
Bonett-Wright (2000) standard error sqrt((1 + r^2 / 2) / (n - 3)), with Pearson's r (plain Fisher z)
reported beside it. Where per-run values carry certified lower/upper bounds (quadrature bounds of a
spectral fraction), the interval is taken from the bounds: its lower end from (lower_a vs upper_b),
its upper end from (upper_a vs lower_b), so the verdict holds for every value the bounds allow.
There are no one-sided "at least as good" rules: they pass when nothing happened.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["Prediction", "Outcome", "Gate", "judge", "judge_interval", "combine", "gate_condition", "welch_interval",
           "correlation_interval", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "INVALID", "VERDICTS", "LEVEL"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, INVALID = "reproduced", "not reproduced", "inconclusive", "invalid"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, INVALID)
LEVEL = 0.95
KINDS = ("greater", "less", "band")
STATISTICS = ("welch", "spearman", "interval")  # interval: effect + 95% interval from the recipe (judge_interval)


@dataclass(frozen=True)
class Prediction:
    """One pre-registered prediction.

    Attributes:
        key: short id ("1a"). result: the paper result it belongs to (1-7, 0 for the simplified model,
            or a name for results outside the paper's seven). text: the claim in words.
        statistic: "welch" (effect = mean(a) - mean(b) over seeds) or "spearman" (effect = rank
            correlation between the values of ``a`` (x) and ``b`` (y), paired per run).
        a, b: condition names (for "spearman": the two measures).
        kind: "greater" (effect > 0 predicted), "less" (effect < 0) or "band" (effect inside
            [-band, band]: "about equal", "only slightly worse", "comes close").
        smallest: for "greater"/"less", the smallest effect that counts (>= 0, in the metric's units);
            for "band", the band's half-width.
        metric: what is compared ("final_train_acc", ...). pct: print the metric in percentage points.
        seeds: runs needed per condition (correlations: points).
        gated: conditions whose sanity gate applies (default: a and b for "welch", none for "spearman").
        ceiling: for "welch" direction claims on a bounded metric (accuracy): when both means reach it,
            the comparison is invalid (the budget cannot separate two nets that both fit the data).
    """

    key: str
    result: object
    text: str
    statistic: str
    a: str
    b: str
    kind: str
    smallest: float
    metric: str
    seeds: int = 5
    pct: bool = False
    gated: Optional[tuple] = None
    ceiling: Optional[float] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Prediction.kind must be one of {KINDS}, got {self.kind!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"Prediction.statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if not (self.smallest >= 0 and math.isfinite(self.smallest)):
            raise ValueError(f"Prediction.smallest must be a finite number >= 0, got {self.smallest!r}")
        if self.kind == "band" and self.smallest <= 0:
            raise ValueError("a band prediction needs smallest > 0 (the band's half-width)")

    @property
    def gates(self) -> tuple:
        if self.gated is not None:
            return tuple(self.gated)
        return (self.a, self.b) if self.statistic == "welch" else ()

    def rule(self) -> str:
        """The decision rule in words (for the report)."""
        u = (lambda v: f"{v * 100:.3g} points") if self.pct else (lambda v: f"{v:.3g}")
        eff = f"{self.a} - {self.b}" if self.statistic == "welch" else f"r_s({self.a}, {self.b})"
        if self.statistic == "interval":
            eff = self.a if self.b in ("", "0") else f"{self.a} - {self.b}"
        if self.kind == "band":
            return (f"{eff} inside ±{u(self.smallest)}: reproduced if the 95% interval lies inside the band, "
                    f"not reproduced if it lies outside it")
        side = ">" if self.kind == "greater" else "<"
        far = f"{'' if self.kind == 'greater' else '-'}{u(self.smallest)}"
        return (f"{eff} {side} 0: reproduced if the 95% interval excludes 0 on that side, not reproduced if it "
                f"excludes every effect beyond {far} (the smallest that counts)")


@dataclass
class Gate:
    """Sanity gate of one condition: ``ok`` False makes every comparison using it invalid."""

    condition: str
    ok: bool
    reason: str = ""
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    """A prediction judged on data: the estimate, its 95% interval, n per side, the verdict and why."""

    key: str
    text: str
    verdict: str
    reason: str
    estimate: float
    low: float
    high: float
    n: tuple
    rule: str
    detail: str = ""
    pct: bool = False
    failed: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"invalid ({self.reason})" if self.verdict == INVALID else self.verdict

    def interval_text(self) -> str:
        k, unit = (100.0, " pts") if self.pct else (1.0, "")
        if not math.isfinite(self.estimate):
            return "n/a"
        return f"{self.estimate * k:+.3g}{unit} [{self.low * k:+.3g}, {self.high * k:+.3g}]"


# ------------------------------------------------------------------------------------- statistics
def _finite(v: Sequence[float]) -> np.ndarray:
    a = np.asarray([float(x) for x in v], dtype=float)
    return a[np.isfinite(a)]


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple:
    """(mean(a) - mean(b), low, high, df) with Welch's t interval. With one value on a side that side
    contributes no variance; with zero variance on both sides the interval is the point itself."""
    from scipy import stats as sps
    a, b = _finite(a), _finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    d = float(a.mean() - b.mean())
    va = a.var(ddof=1) / a.size if a.size > 1 else 0.0
    vb = b.var(ddof=1) / b.size if b.size > 1 else 0.0
    se2 = va + vb
    if se2 == 0.0:
        if a.size + b.size <= 2:  # one run against one run: no noise estimate at all
            return d, -math.inf, math.inf, math.nan
        return d, d, d, math.inf
    num = se2 ** 2
    den = (va ** 2 / (a.size - 1) if a.size > 1 else 0.0) + (vb ** 2 / (b.size - 1) if b.size > 1 else 0.0)
    df = num / den if den > 0 else math.inf
    t = float(sps.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(sps.norm.ppf(0.5 + level / 2))
    half = t * math.sqrt(se2)
    return d, d - half, d + half, df


def correlation_interval(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict:
    """Spearman r_s with its Fisher-z interval (Bonett-Wright standard error) and Pearson r with its
    Fisher-z interval, over the finite pairs; plus the range of r_s when any one point is left out
    (one point must not carry the result)."""
    from scipy import stats as sps
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    out = {"n": n, "spearman_r": math.nan, "spearman_low": math.nan, "spearman_high": math.nan,
           "spearman_p": math.nan, "pearson_r": math.nan, "pearson_low": math.nan, "pearson_high": math.nan,
           "pearson_p": math.nan, "loo_min": math.nan, "loo_max": math.nan}
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    z = float(sps.norm.ppf(0.5 + level / 2))
    s = sps.spearmanr(x, y)
    p = sps.pearsonr(x, y)
    rs, rp = float(s.statistic), float(p.statistic)

    def fisher(r: float, se: float) -> tuple:
        c = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
        return math.tanh(c - z * se), math.tanh(c + z * se)

    lo_s, hi_s = fisher(rs, math.sqrt((1 + rs * rs / 2) / (n - 3)))
    lo_p, hi_p = fisher(rp, 1 / math.sqrt(n - 3))
    loo = [sps.spearmanr(np.delete(x, i), np.delete(y, i)).statistic for i in range(n)]
    loo = [v for v in loo if np.isfinite(v)]
    out.update(spearman_r=rs, spearman_low=lo_s, spearman_high=hi_s, spearman_p=float(s.pvalue), pearson_r=rp,
               pearson_low=lo_p, pearson_high=hi_p, pearson_p=float(p.pvalue),
               loo_min=float(min(loo)) if loo else math.nan, loo_max=float(max(loo)) if loo else math.nan)
    return out


# ------------------------------------------------------------------------------------------ gates
def gate_condition(name: str, init_loss: Sequence[float], final_loss: Sequence[float], final_acc: Sequence[float],
                   num_classes: int, margin: float = 0.1) -> Gate:
    """Did condition ``name`` learn? Fails when its mean final training accuracy is not at least
    ``margin`` above chance (1 / num_classes), or when its mean final training loss is not below its
    mean initial loss, or when a run diverged (non-finite final loss). Values are per seed."""
    acc, lf, li = (np.asarray(v, dtype=float) for v in (final_acc, final_loss, init_loss))
    chance = 1.0 / num_classes
    nums = {"chance": chance, "margin": margin, "mean_final_acc": float(np.nanmean(acc)) if acc.size else math.nan,
            "mean_init_loss": float(np.nanmean(li)) if li.size else math.nan,
            "mean_final_loss": float(np.nanmean(lf)) if lf.size else math.nan, "n": int(acc.size)}
    reasons = []
    if acc.size == 0:
        reasons.append(f"{name}: no runs")
    if np.any(~np.isfinite(lf)) or np.any(~np.isfinite(acc)):
        reasons.append(f"{name}: {int(np.sum(~np.isfinite(lf)))} run(s) diverged")
    if acc.size and not nums["mean_final_acc"] >= chance + margin:
        reasons.append(f"{name} not clearly above chance (training accuracy {nums['mean_final_acc']:.1%} vs chance "
                       f"{chance:.0%} + {margin * 100:.0f} points)")
    if lf.size and not nums["mean_final_loss"] < nums["mean_init_loss"]:
        reasons.append(f"{name}'s loss did not fall below its start ({nums['mean_final_loss']:.3g} vs "
                       f"{nums['mean_init_loss']:.3g})")
    return Gate(name, not reasons, "; ".join(reasons), nums)


# ---------------------------------------------------------------------------------------- verdicts
def _decide(pred: Prediction, low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if pred.kind == "band":
        if -pred.smallest <= low and high <= pred.smallest:
            return REPRODUCED
        if high < -pred.smallest or low > pred.smallest:
            return NOT_REPRODUCED
        return INCONCLUSIVE
    s = 1.0 if pred.kind == "greater" else -1.0
    lo, hi = sorted((s * low, s * high))  # the interval in the predicted direction's units
    if hi < pred.smallest:
        return NOT_REPRODUCED
    if lo > 0:
        return REPRODUCED
    return INCONCLUSIVE


def judge(pred: Prediction, values: Mapping[str, Sequence[float]], gates: Optional[Mapping[str, Gate]] = None,
          bounds: Optional[Mapping[str, tuple]] = None, level: float = LEVEL) -> Outcome:
    """Judge ``pred`` on ``values`` ({condition or measure: per-run values}).

    Args:
        gates: {condition: Gate}; a failed gate of a condition in ``pred.gates`` makes the outcome invalid.
        bounds: {condition: (lower values, upper values)} certified per-run bounds ("welch" only): the
            interval then covers every value the bounds allow (module docstring).
    """
    if pred.statistic == "interval":
        raise ValueError(f"prediction {pred.key} has statistic 'interval': judge it with judge_interval")
    gates = gates or {}
    failed = [c for c in pred.gates if c in gates and not gates[c].ok]
    bad = [gates[c].reason for c in failed]
    rule = pred.rule()
    if pred.statistic == "welch":
        a, b = _finite(values.get(pred.a, ())), _finite(values.get(pred.b, ()))
        n = (int(a.size), int(b.size))
        est, low, high, _ = welch_interval(a, b, level)
        detail = ""
        if bounds and pred.a in bounds and pred.b in bounds:
            (la, ua), (lb, ub) = bounds[pred.a], bounds[pred.b]
            _, low, _, _ = welch_interval(la, ub, level)
            _, _, high, _ = welch_interval(ua, lb, level)
            detail = "interval covers the quadrature bounds of every run"
            if not (math.isfinite(low) and math.isfinite(high)):
                low, high = -math.inf, math.inf
            # the t interval can reach past what the bounds allow at all (a difference of fractions beyond +-1)
            la, ua, lb, ub = (_finite(v) for v in (la, ua, lb, ub))
            if la.size and ua.size and lb.size and ub.size:
                low, high = max(low, float(la.min() - ub.max())), min(high, float(ua.max() - lb.min()))
        short = [f"{c}: n = {k} < {pred.seeds} registered" for c, k in zip((pred.a, pred.b), n) if k < pred.seeds]
        if (pred.ceiling is not None and pred.kind != "band" and a.size and b.size
                and min(a.mean(), b.mean()) >= pred.ceiling):
            short.append(f"both at the ceiling (means >= {pred.ceiling:g}): the budget cannot separate them")
    else:
        c = correlation_interval(values.get(pred.a, ()), values.get(pred.b, ()), level)
        n = (c["n"],)
        est, low, high = c["spearman_r"], c["spearman_low"], c["spearman_high"]
        detail = (f"Pearson r = {c['pearson_r']:.2f} [{c['pearson_low']:.2f}, {c['pearson_high']:.2f}]; r_s with any "
                  f"one point left out: {c['loo_min']:.2f} to {c['loo_max']:.2f}") if c["n"] >= 4 else ""
        short = [f"{c['n']} points < {pred.seeds} registered"] if c["n"] < pred.seeds else []
    if bad or short:
        verdict, reason = INVALID, "; ".join(bad + short)
    else:
        verdict = _decide(pred, low, high)
        reason = "" if verdict != INCONCLUSIVE else (
            "no finite interval" if not (math.isfinite(low) and math.isfinite(high)) else "interval too wide")
    if short:
        failed = failed + ["seeds" if "registered" in m else "ceiling" for m in short]
    return Outcome(pred.key, pred.text, verdict, reason, float(est), float(low), float(high), n, rule, detail, pred.pct,
                   failed)


def combine(outcomes: Sequence[Outcome]) -> tuple:
    """(verdict, reason) of a paper result from its predictions' outcomes: not reproduced if any valid
    one is; else invalid if any is (with the reasons); else reproduced if all are; else inconclusive."""
    if not outcomes:
        return INCONCLUSIVE, "nothing measured"
    vs = [o.verdict for o in outcomes]
    if NOT_REPRODUCED in vs:
        return NOT_REPRODUCED, ", ".join(o.key for o in outcomes if o.verdict == NOT_REPRODUCED) + " not reproduced"
    if INVALID in vs:
        return INVALID, invalid_summary(outcomes)
    if all(v == REPRODUCED for v in vs):
        return REPRODUCED, ""
    return INCONCLUSIVE, ", ".join(o.key for o in outcomes if o.verdict == INCONCLUSIVE) + " inconclusive"


def judge_interval(pred: Prediction, estimate: float, low: float, high: float, n: tuple, *, detail: str = "",
                   invalid: Sequence[str] = ()) -> Outcome:
    """Judge ``pred`` on an effect and its 95% interval computed by the recipe (a bootstrap interval of a
    fitted slope, an exact enumeration whose interval is the point itself): the same two-sided rule as
    ``judge``. ``n``: the sample sizes behind the interval; fewer than ``pred.seeds`` in the first makes
    the outcome invalid, as do the reasons in ``invalid`` (failed sanity gates)."""
    short = [f"{n[0]} < {pred.seeds} registered"] if n and n[0] < pred.seeds else []
    bad = list(invalid) + short
    if bad:
        verdict, reason = INVALID, "; ".join(bad)
    else:
        verdict = _decide(pred, float(low), float(high))
        reason = "" if verdict != INCONCLUSIVE else (
            "no finite interval" if not (math.isfinite(low) and math.isfinite(high)) else "interval too wide")
    return Outcome(pred.key, pred.text, verdict, reason, float(estimate), float(low), float(high), tuple(n),
                   pred.rule(), detail, pred.pct)


def invalid_summary(outcomes: Sequence[Outcome]) -> str:
    """Short reason of an invalid result: which conditions did not learn, and whether seeds were too
    few or both sides sat at the ceiling (each outcome's ``reason`` has the numbers)."""
    bad = [o for o in outcomes if o.verdict == INVALID]
    names = list(dict.fromkeys(c for o in bad for c in getattr(o, "failed", []) if c not in ("seeds", "ceiling")))
    parts = [f"did not learn: {', '.join(names)}"] if names else []
    if any("seeds" in getattr(o, "failed", []) for o in bad):
        parts.append("fewer seeds than registered")
    if any("ceiling" in getattr(o, "failed", []) for o in bad):
        parts.append("both sides at the accuracy ceiling")
    if not parts:  # outcomes made invalid by a caller (e.g. a whole-experiment gate)
        parts = list(dict.fromkeys(o.reason for o in bad))
    return "; ".join(parts)
