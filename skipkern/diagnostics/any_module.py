"""Singularity diagnostics and condition numbers of any ``nn.Module``'s hidden representations.

    from skipkern.diagnostics import capture_hidden, diagnose_module
    reps = capture_hidden(resnet, images, modules=["layer1", "layer2", "layer3", "layer4"])
    res = diagnose_module(resnet, images, modules=["layer1", "layer2", "layer3", "layer4"])
    res["condition_numbers"]["log10_condition"], res["condition_numbers"].summary["first_singular_layer"]

The layers are the outputs of the chosen submodules, captured by forward hooks and flattened as
``capture.representation`` says (conv feature maps: one row per sample and position by default).
No incoming weights are known, so the weight-based parts of ``elimination`` and ``overlap`` are NaN;
activity, activation overlap, linear dependence and condition numbers are measured on the outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from skipkern.diagnostics.capture import captured_layers
from skipkern.diagnostics.conditioning import condition_numbers_from
from skipkern.diagnostics.singularities import elimination_from, linear_dependence_from, overlap_from

__all__ = ["diagnose_module"]


def diagnose_module(model: nn.Module, x: torch.Tensor, modules=None, *, flatten: str = "channels",
                    threshold: float = 0.0, eps: float = 1e-3, tol: Optional[float] = None,
                    tol_rule: str = "recipes") -> dict:
    """Every representation diagnostic of ``model`` on batch ``x`` [B, ...] from one forward pass.

    Args:
        modules: submodules whose outputs are the layers (names, types or a predicate; default every
            activation module; see ``capture.select_modules``).
        flatten: "channels", "features" or "pool" for outputs with more than two dimensions.
        threshold: activity threshold of ``elimination`` (a unit is dead if its output never exceeds it;
            meaningful for outputs of ReLU-like modules). eps: ``overlap``'s 1 - eps similarity cut.
        tol, tol_rule: rank tolerance of ``linear_dependence`` and ``condition_numbers`` (None: the rule
            "recipes" or "numpy" with eps of the dtype each module computed in).

    Returns:
        {"elimination", "overlap", "linear_dependence", "condition_numbers"} -> LayerDiagnostics, one
        entry per captured layer (named after its module).
    """
    layers = captured_layers(model, x, modules, flatten)
    return {"elimination": elimination_from(layers, threshold),
            "overlap": overlap_from(layers, eps),
            "linear_dependence": linear_dependence_from(layers, tol, "hidden", tol_rule),
            "condition_numbers": condition_numbers_from(layers, "hidden", tol_rule)}
