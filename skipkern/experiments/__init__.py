"""The paper's experiments as named, parameterised recipes (see ``registry.RECIPES``).

    from skipkern.experiments import Context, get_recipe
    ctx = Context(out="results", mode="quick")
    get_recipe("architectures").run(ctx)

Each writes results.json, a CSV and PNG/SVG figures to <out>/<name>/; ``skipkern.report`` turns them
into report.md. What each paper result predicts is registered in ``predictions.PREDICTIONS`` and
judged by the two-sided rules of ``verdicts``.
"""
from skipkern.experiments.common import (INCONCLUSIVE, INVALID, NOT_REPRODUCED, PAPER_CLAIMS, REPRODUCED, Context,
                                         Finding, compare, correlation, stats, verdict)
from skipkern.experiments.predictions import PREDICTIONS, predictions_for
from skipkern.experiments.registry import DEEP_BASE, ORDER, RECIPES, Recipe, get_recipe, recipe_config
from skipkern.experiments.runs import RunSpec, train_run
from skipkern.experiments.verdicts import Gate, Outcome, Prediction, combine, gate_condition, judge

__all__ = ["Context", "Recipe", "RECIPES", "ORDER", "DEEP_BASE", "get_recipe", "recipe_config", "RunSpec",
           "train_run", "Finding", "compare", "correlation", "stats", "verdict", "PAPER_CLAIMS", "REPRODUCED",
           "NOT_REPRODUCED", "INCONCLUSIVE", "INVALID", "PREDICTIONS", "predictions_for", "Prediction", "Outcome",
           "Gate", "judge", "combine", "gate_condition"]
