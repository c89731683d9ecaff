"""Condition numbers of hidden representations (Oyedotun, Al Ismaeil and Aouada, IEEE TNNLS 2022):
plain deep nets reach numerically infinite condition numbers deep in the network, residual nets do not."""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from skipkern.diagnostics.capture import HiddenFn, capture_layers
from skipkern.diagnostics.result import LayerDiagnostics
from skipkern.diagnostics.singularities import _pick, numerical_rank_tol

log = logging.getLogger("skipkern.diagnostics")

__all__ = ["condition_numbers", "condition_numbers_from"]


def condition_numbers_from(layers: list, on: str = "hidden", tol_rule: str = "recipes") -> LayerDiagnostics:
    """``condition_numbers`` on already captured layers."""
    arr = {k: [] for k in ("condition_number", "log10_condition", "rank", "singular", "s_max", "s_min", "width")}
    for L in layers:
        a = _pick(L, on)
        if a.shape[0] < a.shape[1]:
            log.warning("condition_numbers: layer %s has B=%d < width=%d: its representation matrix cannot "
                        "have full column rank; use a batch larger than the width", L.name, *a.shape)
        if not bool(torch.isfinite(a).all()):  # SVD of NaN/inf fails; report the layer as unknown
            for k, v in (("condition_number", math.nan), ("log10_condition", math.nan), ("rank", -1),
                         ("singular", False), ("s_max", math.nan), ("s_min", math.nan), ("width", L.width)):
                arr[k].append(v)
            continue
        s = torch.linalg.svdvals(a)                        # float64, min(B, width) values, descending
        s_max, s_min = s[0].item(), s[-1].item()
        tol = numerical_rank_tol(s_max, tuple(a.shape), L.dtype, tol_rule)
        singular = s_max == 0.0 or s_min <= tol
        cond = math.inf if singular else s_max / s_min
        arr["condition_number"].append(cond)
        arr["log10_condition"].append(math.log10(cond) if math.isfinite(cond) else math.inf)
        arr["rank"].append(int((s > tol).sum()) if s_max > 0 else 0)
        arr["singular"].append(bool(singular))
        arr["s_max"].append(s_max)
        arr["s_min"].append(s_min)
        arr["width"].append(L.width)
    cond = np.asarray(arr["condition_number"], dtype=float)
    sing = np.asarray(arr["singular"], dtype=bool)
    finite = cond[np.isfinite(cond)]
    known = cond[~np.isnan(cond)]
    summary = {"singular_layers": int(sing.sum()),
               "first_singular_layer": int(np.argmax(sing)) + 1 if sing.any() else 0,
               "max_condition_number": float(known.max()) if known.size else math.nan,
               "max_finite_log10_condition": float(np.log10(finite.max())) if finite.size else math.nan,
               "median_log10_condition": float(np.median(np.log10(known))) if known.size else math.nan,
               "non_finite_layers": int(np.isnan(cond).sum())}
    params = {"on": on, "batch": int(layers[0].act.shape[0]),
              "tol_rule": tol_rule, "singular_when": "s_min <= numerical_rank_tol(s_max, (B, width), dtype, tol_rule)"}
    return LayerDiagnostics("condition_numbers", [L.name for L in layers], arr, summary, params)


def condition_numbers(model: nn.Module, x: torch.Tensor, *, on: str = "hidden", tol_rule: str = "recipes",
                      hidden_fn: Optional[HiddenFn] = None) -> LayerDiagnostics:
    """Condition number of each hidden layer's representation matrix H [B, width] (uncentred).

    kappa = s_max / s_min over the min(B, width) singular values, computed in float64. The matrix is
    numerically singular, and kappa reported as inf, when s_min is at or below the rank tolerance
    (``numerical_rank_tol``: default "recipes", s_max * eps * sqrt(B + width + 1) / 2; "numpy",
    s_max * max(B, width) * eps; eps of the model's dtype), or when H = 0.

    Args:
        model: SkipMLP or any module (see ``capture_layers``). x: evaluation batch [B, in], B > width.
        on: "hidden" (the layer's output, after skip; default) or "act" (pre-skip activation).
        tol_rule: "recipes" or "numpy" (see ``numerical_rank_tol``).

    Returns:
        LayerDiagnostics "condition_numbers": condition_number, log10_condition, rank, singular,
        s_max, s_min, width.
    """
    return condition_numbers_from(capture_layers(model, x, hidden_fn), on, tol_rule)
