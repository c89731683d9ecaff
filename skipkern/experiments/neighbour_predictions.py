"""Pre-registered predictions of the three experiments after the neighbouring papers, written before any
of their runs (the git history of this file is the registration record; see ``predictions.py`` for the
paper's own results and ``verdicts.py`` for the two-sided rules).

    connectivity  Wang, Shen, Zhao & Zhang (IJCAI 2020): a deep ReLU net with a skip (a two-layer ReLU
                  branch of m units from the input) inherits the landscape of the two-layer net: nearly
                  connected sub-level sets, and bad local minima no deeper than O(m^((eta - 1) / n)).
    symmetry      Orhan (2017, arXiv:1701.09175 v1-v4): skips break the permutation symmetry of a layer's
                  units (adjacent skips) and also the rescaling symmetry between layers (DenseNet-style
                  skips); other ways of breaking symmetries help too.
    depth         Oyedotun, Al Ismaeil & Aouada (IEEE TNNLS 2022): plain nets' hidden representations
                  lose rank with depth (numerically infinite condition numbers deep in 164-layer nets);
                  residual nets' never do, their condition numbers start high and fall to moderate values.

Choices we made where the papers give no number (each is the smallest effect that counts):
  - barriers and bad-minimum depths are compared on log10 scales: a slope of 0.1 decades per decade of m,
    a difference of 0.1 decades (26%) between architectures;
  - exact enumerations (the binary toy) have no sampling noise: their interval is the point itself, and a
    count must change by a factor 2 (1 bit) to count; the local-minimum fraction by a factor 1.26 (0.1
    decades) averaged over teacher tasks (paired t interval over teachers);
  - training accuracy: 2 points, as for the paper's results (``predictions.ACC``);
  - condition numbers: 1 decade at the last hidden layer (as result 7a); early-vs-late fall in residual
    nets: 0.5 decades; singular-layer prevalence: a difference of 0.5 in the fraction of nets.
"""
from __future__ import annotations

from skipkern.experiments.predictions import ACC, CEILING, SEEDS
from skipkern.experiments.verdicts import Prediction

__all__ = ["NEIGHBOUR_PREDICTIONS", "prediction"]

PAIRS = 5      # independent pairs of solutions per width (connectivity)
NETS = 20      # independently trained nets per setting (bad-minimum depths)
TEACHERS = 10  # teacher tasks of the binary toy
TOY, DEEP = "symmetry (binary toy)", "symmetry (deep nets)"  # the result names of the symmetry findings

NEIGHBOUR_PREDICTIONS = [
    # connectivity (Wang et al.): judged once per input dimension n; bootstrap intervals over pairs / nets
    Prediction("C1", "connectivity", "with the skip, the barrier of the trained Bezier path falls as m grows (slope "
               "of log10 barrier on log10 m, per input dimension n)", "interval", "slope[skip]", "0", "less", 0.1,
               "d log10 barrier / d log10 m", PAIRS, gated=()),
    Prediction("C2", "connectivity", "the skip lowers the Bezier barrier (mean over m of log10 barrier without minus "
               "with the skip, per n)", "interval", "log10 barrier[plain]", "log10 barrier[skip]", "greater", 0.1,
               "decades", PAIRS, gated=()),
    Prediction("C3", "connectivity", "bad minima of the skip net get shallower as m grows (slope of log10 of the mean "
               "excess final training loss over the best of the nets, per n)", "interval", "slope[skip excess loss]",
               "0", "less", 0.1, "d log10 excess / d log10 m", NETS, gated=()),
    Prediction("C4", "connectivity", "the exponent (eta - 1) / n: the barrier falls faster with m at the smallest n "
               "than at the largest (slope difference)", "interval", "slope[skip, smallest n]",
               "slope[skip, largest n]", "less", 0.1, "d log10 barrier / d log10 m", PAIRS, gated=()),
    # symmetry (Orhan 2017): binary toy, exact enumeration
    Prediction("S1", TOY, "adjacent-layer skips make more configurations distinct: more distinct functions "
               "than plain (log2 count)", "interval", "log2 functions[adjacent]", "log2 functions[plain]", "greater",
               1.0, "bits", 1, gated=()),
    Prediction("S2", TOY, "DenseNet-style skips make still more configurations distinct than adjacent skips "
               "(log2 count)", "interval", "log2 functions[dense]", "log2 functions[adjacent]", "greater", 1.0,
               "bits", 1, gated=()),
    Prediction("S3", TOY, "skips shrink the class of configurations computing a random configuration's "
               "function (log2 of the size-weighted mean class size, plain minus adjacent)", "interval",
               "log2 class size[plain]", "log2 class size[adjacent]", "greater", 1.0, "bits", 1, gated=()),
    Prediction("S4", TOY, "skips leave fewer local minima under single-weight flips (log10 of the fraction "
               "of configurations, plain minus adjacent, mean over teacher tasks)", "interval",
               "log10 local-min fraction[plain]", "log10 local-min fraction[adjacent]", "greater", 0.1, "decades",
               TEACHERS, gated=()),
    # symmetry, deep nets: a non-skip symmetry breaker helps too (per init family)
    Prediction("S5", DEEP, "BiasReg (fixed random per-unit bias targets, no skip) trains better than plain",
               "welch", "biasreg", "plain", "greater", ACC, "final_train_acc", SEEDS, pct=True, ceiling=CEILING),
    Prediction("S6", DEEP, "residual skips train better than plain (the skip side of the same comparison)",
               "welch", "residual", "plain", "greater", ACC, "final_train_acc", SEEDS, pct=True, ceiling=CEILING),
    # depth (Oyedotun et al.): per init family, after training, at the largest depth
    Prediction("D1", "depth", "at the largest depth, plain nets' last hidden representation is worse conditioned "
               "than residual nets' (log10 condition number, singular capped at 1/eps)", "welch", "plain",
               "residual", "greater", 1.0, "log10_cond_last", 3, gated=()),
    Prediction("D2", "depth", "at the largest depth, more plain than residual nets have a numerically singular "
               "hidden layer (difference of fractions, Newcombe interval)", "interval", "singular fraction[plain]",
               "singular fraction[residual]", "greater", 0.5, "fraction of nets", 3, gated=()),
    Prediction("D3", "depth", "residual nets' condition numbers fall from early to late layers (mean log10 cond of "
               "the first quarter minus the last quarter of layers, largest depth)", "interval",
               "log10 cond[first quarter]", "log10 cond[last quarter]", "greater", 0.5, "decades", 3, gated=()),
]

_KEYS = [p.key for p in NEIGHBOUR_PREDICTIONS]
if len(set(_KEYS)) != len(_KEYS):
    raise RuntimeError(f"duplicate prediction keys in {_KEYS}")


def prediction(key: str) -> Prediction:
    """The registered prediction ``key``."""
    for p in NEIGHBOUR_PREDICTIONS:
        if p.key == key:
            return p
    raise KeyError(f"no registered prediction {key!r}; registered: {_KEYS}")
