"""The three singularities of the paper (docs/paper.md), measured per hidden layer on an evaluation batch.

- elimination: units that are never active (J_a = 0 or a bias that keeps z < 0), measured on the
  pre-skip activation act(z), since a skip input keeps h non-zero even when the unit itself is dead;
- overlap: coinciding units, by cosine similarity of incoming weight rows and of activation columns;
- linear dependence: participation ratio and numerical rank of the activation covariance.
All statistics are computed in float64. See ``capture.py`` for how hidden layers are found.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from skipkern.diagnostics.capture import CapturedLayer, HiddenFn, capture_layers
from skipkern.diagnostics.result import LayerDiagnostics

__all__ = ["elimination", "overlap", "linear_dependence", "elimination_from", "overlap_from",
           "linear_dependence_from", "cosine_stats", "numerical_rank_tol", "REPRESENTATIONS", "TOL_RULES"]

REPRESENTATIONS = ("hidden", "act")


def _pick(layer: CapturedLayer, on: str) -> torch.Tensor:
    if on not in REPRESENTATIONS:
        raise ValueError(f"on must be one of {REPRESENTATIONS}, got {on!r}")
    return layer.hidden if on == "hidden" else layer.act


TOL_RULES = ("recipes", "numpy")


def numerical_rank_tol(s_max: float, shape: tuple, dtype: torch.dtype, rule: str = "recipes") -> float:
    """Singular values at or below this count as zero (numerical rank, singular matrices).

    eps is that of the dtype the model computed in, not float64: float32 rounding of the activations
    (~1e-7 relative) must not count as an independent direction even though the SVD runs in float64.
    Rules (both from numpy.linalg.matrix_rank's documentation), for a matrix of shape (M, N):
        "recipes" (default): S.max() * eps * sqrt(M + N + 1) / 2 (Numerical Recipes), about the size of
            the rounding error of the stored matrix;
        "numpy": S.max() * max(M, N) * eps (numpy's default), more conservative. With float32 and
            B = 500 it flags kappa > 1.7e4 as singular, which already calls the well-conditioned
            (float64-checked) representations of a deep residual net at initialisation singular;
            hence not our default.
    """
    eps = float(torch.finfo(dtype).eps)
    if rule == "recipes":
        return float(s_max) * eps * 0.5 * math.sqrt(shape[0] + shape[1] + 1)
    if rule == "numpy":
        return float(s_max) * max(shape) * eps
    raise ValueError(f"tol_rule must be one of {TOL_RULES}, got {rule!r}")


# -------------------------------------------------------------------------------------- elimination
def elimination_from(layers: list, threshold: float = 0.0, rare: float = 0.01,
                     weight_eps: float = 1e-3) -> LayerDiagnostics:
    """``elimination`` on already captured layers."""
    if not 0.0 < rare <= 1.0:
        raise ValueError(f"rare must lie in (0, 1], got {rare}")
    arr = {k: [] for k in ("dead_fraction", "rare_fraction", "mean_activity", "dead_units", "width",
                           "weight_norm_mean", "small_weight_fraction")}
    for L in layers:
        active = L.act > threshold                         # [B, N]
        activity = active.to(torch.float64).mean(0)        # fraction of samples each unit is active in
        dead = ~active.any(0)
        arr["dead_fraction"].append(dead.to(torch.float64).mean().item())
        arr["rare_fraction"].append((activity < rare).to(torch.float64).mean().item())
        arr["mean_activity"].append(activity.mean().item())
        arr["dead_units"].append(int(dead.sum()))
        arr["width"].append(L.width)
        if L.weight is None:
            arr["weight_norm_mean"].append(math.nan)
            arr["small_weight_fraction"].append(math.nan)
        else:
            norms = torch.linalg.vector_norm(L.weight, dim=1)
            arr["weight_norm_mean"].append(norms.mean().item())
            arr["small_weight_fraction"].append((norms < weight_eps).to(torch.float64).mean().item())
    dead_frac = np.asarray(arr["dead_fraction"])
    summary = {"mean_dead_fraction": float(dead_frac.mean()), "max_dead_fraction": float(dead_frac.max()),
               "dead_units": int(sum(arr["dead_units"])), "units": int(sum(arr["width"])),
               "layers_with_dead_units": int((dead_frac > 0).sum()),
               "mean_rare_fraction": float(np.mean(arr["rare_fraction"]))}
    params = {"threshold": threshold, "rare": rare, "weight_eps": weight_eps, "measured_on": "act",
              "batch": int(layers[0].act.shape[0])}
    return LayerDiagnostics("elimination", [L.name for L in layers], arr, summary, params)


def elimination(model: nn.Module, x: torch.Tensor, threshold: float = 0.0, *, rare: float = 0.01,
                weight_eps: float = 1e-3, hidden_fn: Optional[HiddenFn] = None) -> LayerDiagnostics:
    """Eliminated (dead) units per hidden layer.

    Args:
        model: SkipMLP or any module (see ``capture_layers``). x: evaluation batch [B, in].
        threshold: a unit is active on a sample when act(z) > threshold; measured on the pre-skip
            activation act(z) (for a plain net without BatchNorm that is the hidden output itself).
        rare: also count units active in fewer than this fraction of samples (dead units included).
        weight_eps: incoming weight rows with norm below this count as zero rows (J_a ~ 0).

    Returns:
        LayerDiagnostics "elimination", arrays: dead_fraction, rare_fraction, mean_activity,
        dead_units, width, weight_norm_mean, small_weight_fraction (NaN without known weights).
    """
    return elimination_from(capture_layers(model, x, hidden_fn), threshold, rare, weight_eps)


# ------------------------------------------------------------------------------------------ overlap
def cosine_stats(v: torch.Tensor, eps: float) -> tuple[float, float, float, int, int]:
    """Cosine similarities between the rows of v [n, d] over pairs i < j, ignoring zero rows (whose
    direction is undefined). Returns (mean |c|, fraction of pairs with c > 1 - eps, max c, i, j) with
    (i, j) the most similar pair in original row indices; (nan, nan, nan, -1, -1) with < 2 usable rows."""
    norms = torch.linalg.vector_norm(v, dim=1)
    keep = torch.nonzero(norms > 0).flatten()
    if keep.numel() < 2:
        return math.nan, math.nan, math.nan, -1, -1
    u = v[keep] / norms[keep, None]
    c = (u @ u.transpose(0, 1)).clamp_(-1.0, 1.0)
    iu = torch.triu_indices(c.shape[0], c.shape[0], offset=1)
    pairs = c[iu[0], iu[1]]
    k = int(torch.argmax(pairs))
    return (pairs.abs().mean().item(), (pairs > 1.0 - eps).to(torch.float64).mean().item(), pairs[k].item(),
            int(keep[iu[0, k]]), int(keep[iu[1, k]]))


def overlap_from(layers: list, eps: float = 1e-3) -> LayerDiagnostics:
    """``overlap`` on already captured layers."""
    if not 0.0 < eps < 2.0:
        raise ValueError(f"eps must lie in (0, 2), got {eps}")
    arr: dict = {}
    for src in ("weight", "act", "hidden"):
        for k in ("mean_abs_cos", "frac_near1", "max_cos", "closest_i", "closest_j"):
            arr[f"{src}_{k}"] = []
    for L in layers:
        sources = {"weight": L.weight, "act": L.act.transpose(0, 1), "hidden": L.hidden.transpose(0, 1)}
        for src, v in sources.items():
            stats = cosine_stats(v, eps) if v is not None else (math.nan, math.nan, math.nan, -1, -1)
            for k, s in zip(("mean_abs_cos", "frac_near1", "max_cos", "closest_i", "closest_j"), stats):
                arr[f"{src}_{k}"].append(s)
    summary = {}
    for src in ("weight", "hidden"):
        mx = np.asarray(arr[f"{src}_max_cos"], dtype=float)
        near = np.asarray(arr[f"{src}_frac_near1"], dtype=float)
        summary[f"{src}_max_cos"] = float(np.nanmax(mx)) if np.isfinite(mx).any() else math.nan
        summary[f"{src}_mean_frac_near1"] = float(np.nanmean(near)) if np.isfinite(near).any() else math.nan
        mac = np.asarray(arr[f"{src}_mean_abs_cos"], dtype=float)
        summary[f"{src}_mean_abs_cos"] = float(np.nanmean(mac)) if np.isfinite(mac).any() else math.nan
    return LayerDiagnostics("overlap", [L.name for L in layers], arr, summary,
                            {"eps": eps, "batch": int(layers[0].act.shape[0])})


def overlap(model: nn.Module, x: torch.Tensor, eps: float = 1e-3, *,
            hidden_fn: Optional[HiddenFn] = None) -> LayerDiagnostics:
    """Overlapping units per hidden layer: cosine similarity c between units, over pairs i < j.

    Measured on three sets of vectors per layer: incoming weight rows (``weight_*``, the paper's
    J_a = J_b), pre-skip activation columns act(z)[:, a] over the batch (``act_*``) and representation
    columns h[:, a] (``hidden_*``, what the next layer sees; a skip makes coinciding units differ here).
    Zero vectors (dead units, zero rows) are left out since their direction is undefined.

    Returns:
        LayerDiagnostics "overlap", arrays per source: *_mean_abs_cos (mean |c|), *_frac_near1 (fraction
        of pairs with c > 1 - eps), *_max_cos (the closest pair's c), *_closest_i / *_closest_j (its
        unit indices, 0-based; -1 when undefined).
    """
    return overlap_from(capture_layers(model, x, hidden_fn), eps)


# -------------------------------------------------------------------------------- linear dependence
def linear_dependence_from(layers: list, tol: Optional[float] = None, on: str = "hidden",
                           tol_rule: str = "recipes") -> LayerDiagnostics:
    """``linear_dependence`` on already captured layers."""
    arr = {k: [] for k in ("participation_ratio", "normalized_pr", "rank", "rank_deficit", "width")}
    for L in layers:
        a = _pick(L, on)
        if not bool(torch.isfinite(a).all()):  # SVD of NaN/inf fails; report the layer as unknown
            for k, v in (("participation_ratio", math.nan), ("normalized_pr", math.nan), ("rank", -1),
                         ("rank_deficit", -1), ("width", L.width)):
                arr[k].append(v)
            continue
        centered = a - a.mean(0, keepdim=True)
        s = torch.linalg.svdvals(centered)
        lam = s ** 2 / max(a.shape[0] - 1, 1)             # covariance eigenvalues
        total = lam.sum().item()
        pr = total ** 2 / (lam ** 2).sum().item() if total > 0 else 0.0
        # Rounding error sits in the stored (uncentred) activations, so the tolerance scales with their
        # norm, not with the spread left after centring (a large common offset hides small directions).
        s_ref = torch.linalg.matrix_norm(a, ord=2).item() if tol is None else 0.0
        t = numerical_rank_tol(s_ref, tuple(a.shape), L.dtype, tol_rule) if tol is None else float(tol)
        rank = int((s > t).sum()) if s.max().item() > 0 else 0
        arr["participation_ratio"].append(pr)
        arr["normalized_pr"].append(pr / L.width)
        arr["rank"].append(rank)
        arr["rank_deficit"].append(L.width - rank)
        arr["width"].append(L.width)
    pr = np.asarray(arr["participation_ratio"], dtype=float)
    ok = np.isfinite(pr)
    summary = {"mean_participation_ratio": float(pr[ok].mean()) if ok.any() else math.nan,
               "min_participation_ratio": float(pr[ok].min()) if ok.any() else math.nan,
               "mean_normalized_pr": float(np.asarray(arr["normalized_pr"])[ok].mean()) if ok.any() else math.nan,
               "min_rank": int(min(r for r, o in zip(arr["rank"], ok) if o)) if ok.any() else -1,
               "total_rank_deficit": int(sum(d for d, o in zip(arr["rank_deficit"], ok) if o)),
               "non_finite_layers": int((~ok).sum())}
    params = {"tol": f"rule {tol_rule!r} with eps of the model dtype" if tol is None else tol, "on": on,
              "batch": int(layers[0].act.shape[0])}
    return LayerDiagnostics("linear_dependence", [L.name for L in layers], arr, summary, params)


def linear_dependence(model: nn.Module, x: torch.Tensor, tol: Optional[float] = None, *, on: str = "hidden",
                      tol_rule: str = "recipes", hidden_fn: Optional[HiddenFn] = None) -> LayerDiagnostics:
    """Linear dependence among the units of each hidden layer.

    From the singular values s of the centred activation matrix [B, width] (covariance eigenvalues
    lambda = s^2 / (B - 1)): the participation ratio (sum lambda)^2 / sum lambda^2 (between 1 and the
    width; a unit that is a combination of others removes a direction) and the numerical rank, the
    count of s above ``tol``. The default tolerance is relative to the largest singular value of the
    uncentred matrix, where the rounding error lives.

    Args:
        tol: absolute threshold on the singular values of the centred matrix; None uses ``tol_rule``
            ("recipes" or "numpy", see ``numerical_rank_tol``) with eps of the model's dtype.
        on: "hidden" (the representation passed on, default) or "act" (pre-skip activation act(z)).

    Returns:
        LayerDiagnostics "linear_dependence": participation_ratio, normalized_pr (= PR / width), rank,
        rank_deficit (= width - rank), width. Needs B > width for a full rank to be possible.
    """
    return linear_dependence_from(capture_layers(model, x, hidden_fn), tol, on, tol_rule)
