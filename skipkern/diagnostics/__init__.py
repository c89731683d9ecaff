"""Per-layer singularity diagnostics on an evaluation batch (docs/paper.md, "What skipkern runs").

Each function takes a model (SkipMLP, or any nn.Module whose hidden activations can be captured: see
``capture_layers``) and a batch, and returns a ``LayerDiagnostics`` (per-layer numpy arrays, scalar
summaries, save_json / save_csv / plot). ``diagnose`` runs all of them from one forward pass.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from skipkern.diagnostics.any_module import diagnose_module
from skipkern.diagnostics.capture import ACTIVATION_MODULES, CapturedLayer, capture_hidden, capture_layers, eval_mode
from skipkern.diagnostics.conditioning import condition_numbers, condition_numbers_from
from skipkern.diagnostics.gradients import gradient_norms, weighted_layers
from skipkern.diagnostics.result import LayerDiagnostics, from_json_safe, json_safe
from skipkern.diagnostics.singularities import (elimination, elimination_from, linear_dependence,
                                                linear_dependence_from, overlap, overlap_from)

__all__ = ["LayerDiagnostics", "elimination", "overlap", "linear_dependence", "condition_numbers",
           "gradient_norms", "diagnose", "capture_layers", "CapturedLayer", "eval_mode", "weighted_layers",
           "json_safe", "from_json_safe", "DIAGNOSTICS", "ACTIVATION_MODULES", "capture_hidden", "diagnose_module"]

DIAGNOSTICS = ("elimination", "overlap", "linear_dependence", "condition_numbers", "gradient_norms")


def diagnose(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
             loss_fn: Optional[Callable] = None, *, hidden_fn: Optional[Callable] = None, threshold: float = 0.0,
             eps: float = 1e-3, tol: Optional[float] = None, on: str = "hidden",
             tol_rule: str = "recipes") -> dict:
    """Run every diagnostic on batch ``x`` [B, in] from one capture of the hidden layers.

    Args:
        y: targets [B]; when given, ``gradient_norms`` runs too (loss_fn None: cross entropy).
        threshold: activity threshold of ``elimination``. eps: ``overlap``'s 1 - eps similarity cut.
        tol: ``linear_dependence``'s rank tolerance. on: representation used by linear_dependence and
            condition_numbers ("hidden" or "act"). tol_rule: their default rank tolerance ("recipes"
            or "numpy", see ``skipkern.diagnostics.singularities.numerical_rank_tol``).

    Returns:
        {"elimination", "overlap", "linear_dependence", "condition_numbers"[, "gradient_norms"]}
        -> LayerDiagnostics.
    """
    layers = capture_layers(model, x, hidden_fn)
    out = {"elimination": elimination_from(layers, threshold),
           "overlap": overlap_from(layers, eps),
           "linear_dependence": linear_dependence_from(layers, tol, on, tol_rule),
           "condition_numbers": condition_numbers_from(layers, on, tol_rule)}
    if y is not None:
        out["gradient_norms"] = gradient_norms(model, loss_fn, x, y)
    return out
