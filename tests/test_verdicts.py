"""The verdict rules themselves, on constructed inputs: a broken baseline is invalid, a null effect
inconclusive, a clear opposite effect not reproduced, a clear effect reproduced, and the band
("about equal") cases; the intervals against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from skipkern.experiments.verdicts import (INCONCLUSIVE, INVALID, NOT_REPRODUCED, REPRODUCED, Prediction, combine,
                                           correlation_interval, gate_condition, judge, welch_interval)

GREATER = Prediction("t1", 1, "a trains better than b", "welch", "a", "b", "greater", 0.02, "final_train_acc",
                     seeds=5, pct=True, ceiling=0.995)
BAND = Prediction("t2", 5, "a about equals b", "welch", "a", "b", "band", 0.03, "final_train_acc", seeds=5, pct=True)
NEG_CORR = Prediction("t3", 3, "x goes with lower y", "spearman", "x", "y", "less", 0.1, "r", seeds=20)


def _seeds(mean: float, spread: float = 0.01, n: int = 5) -> list:
    return list(mean + spread * np.linspace(-1, 1, n))


def _gates(**learned) -> dict:
    out = {}
    for name, ok in learned.items():
        acc = 0.9 if ok else 0.1
        out[name] = gate_condition(name, [2.3] * 5, [0.3 if ok else 2.3] * 5, [acc] * 5, num_classes=10)
    return out


def test_clear_effect_is_reproduced():
    o = judge(GREATER, {"a": _seeds(0.80), "b": _seeds(0.60)}, _gates(a=True, b=True))
    assert o.verdict == REPRODUCED and o.low > 0 and o.estimate == pytest.approx(0.2)


def test_null_effect_is_inconclusive():
    o = judge(GREATER, {"a": _seeds(0.70, 0.05), "b": _seeds(0.70, 0.05)[::-1]}, _gates(a=True, b=True))
    assert o.verdict == INCONCLUSIVE and o.low < 0 < o.high


def test_clear_opposite_effect_is_not_reproduced():
    o = judge(GREATER, {"a": _seeds(0.50), "b": _seeds(0.80)}, _gates(a=True, b=True))
    assert o.verdict == NOT_REPRODUCED and o.high < 0


def test_significant_but_too_small_effect_is_not_reproduced():
    o = judge(GREATER, {"a": _seeds(0.705, 0.001), "b": _seeds(0.70, 0.001)}, _gates(a=True, b=True))
    assert 0 < o.low and o.high < GREATER.smallest and o.verdict == NOT_REPRODUCED


def test_broken_baseline_is_invalid_even_when_the_other_side_wins():
    # the old one-sided rule called this "reproduced": b learned nothing, so a > b says nothing
    o = judge(GREATER, {"a": _seeds(0.80), "b": _seeds(0.10)}, _gates(a=True, b=False))
    assert o.verdict == INVALID and "not clearly above chance" in o.reason and "b" in o.reason
    # and an opposite effect against a broken condition is not a "not reproduced" either
    assert judge(GREATER, {"a": _seeds(0.10), "b": _seeds(0.80)}, _gates(a=False, b=True)).verdict == INVALID


def test_gate_reasons():
    g = gate_condition("res", [2000.0] * 3, [2100.0] * 3, [0.5] * 3, num_classes=10)
    assert not g.ok and "did not fall below its start" in g.reason
    g = gate_condition("plain", [2.3] * 3, [2.2] * 3, [0.15] * 3, num_classes=10)
    assert not g.ok and "above chance" in g.reason
    g = gate_condition("x", [2.3] * 2, [float("nan"), 0.5], [float("nan"), 0.8], num_classes=10)
    assert not g.ok and "diverged" in g.reason
    assert gate_condition("ok", [2.3] * 3, [0.4] * 3, [0.85] * 3, num_classes=10).ok


def test_too_few_seeds_and_ceiling_are_invalid():
    o = judge(GREATER, {"a": _seeds(0.8, n=3), "b": _seeds(0.6, n=3)}, _gates(a=True, b=True))
    assert o.verdict == INVALID and "registered" in o.reason
    o = judge(GREATER, {"a": [1.0] * 5, "b": [0.998] * 5}, _gates(a=True, b=True))
    assert o.verdict == INVALID and "ceiling" in o.reason


@pytest.mark.parametrize("diff,spread,expected", [(0.0, 0.005, REPRODUCED),     # interval inside ±3 points
                                                  (0.01, 0.005, REPRODUCED),
                                                  (0.10, 0.005, NOT_REPRODUCED),  # interval beyond +3 points
                                                  (-0.10, 0.005, NOT_REPRODUCED),
                                                  (0.02, 0.05, INCONCLUSIVE)])   # straddles the band's edge
def test_band_cases(diff, spread, expected):
    o = judge(BAND, {"a": _seeds(0.7 + diff, spread), "b": _seeds(0.7, spread)[::-1]}, _gates(a=True, b=True))
    assert o.verdict == expected, o


def test_bounds_widen_the_interval():
    # point values say a > b clearly, but each run's certified bounds overlap the other side's
    vals = {"a": _seeds(0.30, 0.002), "b": _seeds(0.20, 0.002)}
    tight = {"a": ([v - 0.01 for v in vals["a"]], [v + 0.01 for v in vals["a"]]),
             "b": ([v - 0.01 for v in vals["b"]], [v + 0.01 for v in vals["b"]])}
    loose = {"a": ([0.0] * 5, [0.9] * 5), "b": ([0.0] * 5, [0.9] * 5)}
    assert judge(GREATER, vals, bounds=tight).verdict == REPRODUCED
    o = judge(GREATER, vals, bounds=loose)
    assert o.verdict == INCONCLUSIVE and o.low < -0.5 and o.high > 0.5


def test_bounds_interval_stays_inside_what_the_bounds_allow():
    # bounds spanning [0, 1] for every run: the t interval alone would reach past +-1, a difference of
    # fractions cannot
    vals = {"a": _seeds(0.5, 0.2), "b": _seeds(0.5, 0.2)}
    lo, hi = [0.0, 0.0, 0.0, 0.2, 0.3], [1.0, 1.0, 1.0, 0.8, 0.7]
    o = judge(GREATER, vals, bounds={"a": (lo, hi), "b": (lo, hi)})
    assert o.low == pytest.approx(-1.0) and o.high == pytest.approx(1.0)


def test_correlation_rules():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    assert judge(NEG_CORR, {"x": x, "y": -x + 0.3 * rng.normal(size=30)}).verdict == REPRODUCED
    assert judge(NEG_CORR, {"x": x, "y": x + 0.3 * rng.normal(size=30)}).verdict == NOT_REPRODUCED
    assert judge(NEG_CORR, {"x": x, "y": rng.normal(size=30)}).verdict == INCONCLUSIVE
    assert judge(NEG_CORR, {"x": x[:8], "y": -x[:8]}).verdict == INVALID  # 8 points < 20 registered


def test_one_outlier_cannot_carry_a_correlation_unseen():
    x = np.r_[np.zeros(19), 10.0]
    y = np.r_[np.random.default_rng(1).normal(size=19), -10.0]
    c = correlation_interval(x + np.arange(20) * 1e-3, y)
    assert c["loo_max"] - c["loo_min"] >= 0  # reported either way
    c2 = correlation_interval(np.arange(20.0), -np.arange(20.0))
    assert c2["spearman_r"] == pytest.approx(-1) and c2["loo_min"] == pytest.approx(-1)


def test_intervals_match_scipy():
    a, b = [0.61, 0.65, 0.70, 0.66, 0.62], [0.50, 0.58, 0.52, 0.49, 0.61, 0.55]
    d, lo, hi, df = welch_interval(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(a) - np.mean(b))
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    x = np.arange(12.0)
    y = np.array([1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 12, 10.0])
    c = correlation_interval(x, y)
    r = sps.pearsonr(x, y)
    ci = r.confidence_interval(0.95)
    assert (c["pearson_low"], c["pearson_high"]) == pytest.approx((ci.low, ci.high))
    assert c["spearman_r"] == pytest.approx(sps.spearmanr(x, y).statistic)


def test_combine():
    ok = judge(GREATER, {"a": _seeds(0.8), "b": _seeds(0.6)}, _gates(a=True, b=True))
    null = judge(GREATER, {"a": _seeds(0.7, 0.05), "b": _seeds(0.7, 0.05)[::-1]})
    opp = judge(GREATER, {"a": _seeds(0.5), "b": _seeds(0.8)})
    bad = judge(GREATER, {"a": _seeds(0.8), "b": _seeds(0.1)}, _gates(a=True, b=False))
    assert combine([ok, ok])[0] == REPRODUCED
    assert combine([ok, null])[0] == INCONCLUSIVE
    assert combine([ok, opp, bad])[0] == NOT_REPRODUCED
    v, why = combine([ok, bad])
    assert v == INVALID and why == "did not learn: b"  # the outcome itself keeps the numbers
    assert "above chance" in bad.reason
    assert combine([])[0] == INCONCLUSIVE
    with pytest.raises(ValueError, match="kind"):
        Prediction("x", 1, "", "welch", "a", "b", ">=", 0.0, "m")
    assert math.isinf(welch_interval([1.0], [0.0])[1])
