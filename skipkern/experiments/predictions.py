"""The pre-registered predictions: for each of the paper's results, written before any run, the
statistic, the conditions, the predicted direction and the smallest effect that counts (or the band of
an "about equal" claim), and the seeds needed. The verdict rules are in ``verdicts``; the recipes only
supply the measured values. Changing an entry here after seeing data defeats its purpose: the git
history of this file is the registration record.

Units: accuracies are fractions (0.02 = 2 percentage points); degenerate fractions are fractions of
all P eigenvalues; correlations are Spearman's r_s. Accuracy is the final training accuracy, the
paper's metric. Effects are "a - b" over seeds of the same init family and budget.

Choices we made where the paper gives no number:
  - 2 percentage points of training accuracy is the smallest difference that counts between two
    architectures (below that, a 5-seed comparison on MNIST-1D is not a finding a reader would cite);
  - "about equal" (orthogonal vs identity skips) is a band of ±3 points; "only slightly worse"
    (malicious vs residual) and "comes close" (BiasReg + BN vs residual) are bands of ±5 points;
  - the degenerate fraction must differ by at least 1% of the eigenvalues, at the threshold
    |lambda| <= 0.01 x rms(lambda) (``spectra.TAU``), at the end of training;
  - a correlation counts from |r_s| = 0.1 on; result 3 needs 20 nets;
  - condition numbers: 1 decade at the last hidden layer, 0.02 decades per layer for the growth.
"""
from __future__ import annotations

from skipkern.experiments.verdicts import Prediction

__all__ = ["PREDICTIONS", "predictions_for", "ACC", "SEEDS", "NETS", "CEILING"]

ACC = 0.02        # smallest accuracy difference that counts (fraction)
SEEDS = 5         # seeds per condition
NETS = 20         # plain nets of result 3
CEILING = 0.995   # both conditions at or above this training accuracy: they cannot be separated


def _acc(key, result, text, a, b, kind="greater", smallest=ACC):
    return Prediction(key, result, text, "welch", a, b, kind, smallest, "final_train_acc", SEEDS, pct=True,
                      ceiling=None if kind == "band" else CEILING)


PREDICTIONS = [
    # result 0: the simplified two-unit model (no training-accuracy metric; gates do not apply)
    Prediction("0a", 0, "plain has more null Fisher directions than skip on the overlap line J1 = J2", "welch",
               "plain", "skip", "greater", 0.5, "fisher_nullity_overlap", SEEDS, gated=()),
    Prediction("0b", 0, "plain spends a larger share of steps stuck near h = 0 or |z| = 1 than skip", "welch",
               "plain", "skip", "greater", 0.02, "near_line_share", SEEDS, gated=()),
    # result 1: training accuracy hyper-residual >= residual > plain
    _acc("1a", 1, "residual trains better than plain", "residual", "plain"),
    _acc("1b", 1, "hyper-residual trains at least as well as residual (predicted: better)", "hyper_residual",
         "residual", smallest=0.0),
    # result 2: degenerate eigenvalue fraction plain > residual > hyper-residual
    Prediction("2a", 2, "plain has a larger degenerate fraction than residual", "welch", "plain", "residual",
               "greater", 0.01, "fraction_degenerate", SEEDS),
    Prediction("2b", 2, "residual has a larger degenerate fraction than hyper-residual", "welch", "residual",
               "hyper_residual", "greater", 0.01, "fraction_degenerate", SEEDS),
    # result 3: among plain nets, closer to singular manifolds -> trains worse (negative correlations)
    Prediction("3a", 3, "degenerate Hessian fraction (end of training) vs final training accuracy", "spearman",
               "fraction_degenerate", "final_train_acc", "less", 0.1, "r_s", NETS),
    Prediction("3b", 3, "elimination: dead-unit fraction (during training) vs final training accuracy", "spearman",
               "dead_fraction", "final_train_acc", "less", 0.1, "r_s", NETS),
    Prediction("3c", 3, "overlap: mean |cos| between unit activations (during training) vs final training accuracy",
               "spearman", "overlap", "final_train_acc", "less", 0.1, "r_s", NETS),
    Prediction("3d", 3, "linear dependence: 1 - participation ratio / width (during training) vs final training "
               "accuracy", "spearman", "linear_dependence", "final_train_acc", "less", 0.1, "r_s", NETS),
    # result 4: BiasReg beats plain and BiasL2Reg, stays below residual; + one BN layer comes close
    _acc("4a", 4, "BiasReg trains better than plain", "biasreg", "plain"),
    _acc("4b", 4, "BiasReg trains better than BiasL2Reg", "biasreg", "biasl2reg"),
    _acc("4c", 4, "residual trains better than BiasReg", "residual", "biasreg"),
    _acc("4d", 4, "BiasReg + one BN layer comes close to residual (within ±5 points)", "biasreg_bn", "residual",
         kind="band", smallest=0.05),
    # result 5: orthogonal ~ identity skips; degenerate skips worse; plain worst
    _acc("5a", 5, "orthogonal skips about equal identity skips (within ±3 points)", "orthogonal", "residual",
         kind="band", smallest=0.03),
    _acc("5b", 5, "orthogonal skips train better than the most degenerate skips", "orthogonal", "degenerate_max"),
    _acc("5c", 5, "the most degenerate skips still train better than plain", "degenerate_max", "plain"),
    Prediction("5d", 5, "accuracy falls as the degenerate fraction p grows (orthogonal = p 0)", "spearman",
               "p", "final_train_acc", "less", 0.1, "r_s", 3 * SEEDS),
    # result 6: malicious init trains only slightly worse than residual
    _acc("6a", 6, "malicious residual within ±5 points of residual", "malicious", "residual", kind="band",
         smallest=0.05),
    # result 7: condition numbers blow up with depth in plain nets, not in residual nets
    Prediction("7a", 7, "plain's last hidden representation is worse conditioned than residual's (log10 cond, "
               "after training)", "welch", "plain", "residual", "greater", 1.0, "log10_cond_last", SEEDS),
    Prediction("7b", 7, "log10 cond grows faster with depth in plain than in residual nets (decades per layer, "
               "after training)", "welch", "plain", "residual", "greater", 0.02, "log10_cond_slope", SEEDS),
]

_KEYS = [p.key for p in PREDICTIONS]
if len(set(_KEYS)) != len(_KEYS):  # an import-time check: registry keys name outcomes in results.json
    raise RuntimeError(f"duplicate prediction keys in {_KEYS}")


def predictions_for(result) -> list:
    """The registered predictions of one paper result (in registry order)."""
    return [p for p in PREDICTIONS if p.result == result]


# The predictions of the experiments after the neighbouring papers (connectivity, symmetry, depth), registered
# in their own file before their runs; listed here so that the report shows them with the others.
from skipkern.experiments.neighbour_predictions import NEIGHBOUR_PREDICTIONS  # noqa: E402

PREDICTIONS += NEIGHBOUR_PREDICTIONS
