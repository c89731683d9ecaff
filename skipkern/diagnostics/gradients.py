"""Per-layer gradient norms (vanishing gradients in plain and BiasReg nets; docs/paper.md)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skipkern.diagnostics.capture import eval_mode
from skipkern.diagnostics.result import LayerDiagnostics
from skipkern.nn.skip_mlp import SkipMLP

__all__ = ["gradient_norms", "weighted_layers"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_layers(model: nn.Module) -> list:
    """(name, module) of the layers whose gradients are reported: for SkipMLP its hidden layers
    ("hidden_1" ...) and the output layer ("output"); otherwise every module with a direct parameter
    ``weight`` of two or more dimensions (Linear, SkipLinear, Conv), in registration order."""
    if isinstance(model, SkipMLP):
        names = [f"hidden_{j + 1}" for j in range(model.depth)] + ["output"]
        return list(zip(names, model.layers))
    out = []
    for name, m in model.named_modules():
        w = m._parameters.get("weight")
        if isinstance(w, nn.Parameter) and w.dim() >= 2:
            out.append((name, m))
    return out


def gradient_norms(model: nn.Module, loss_fn: Optional[LossFn], x: torch.Tensor, y: torch.Tensor) -> LayerDiagnostics:
    """Frobenius norms of the gradient of ``loss_fn(model(x), y)`` with respect to each layer's weight
    and bias, without touching the parameters' ``.grad`` (uses torch.autograd.grad). The model runs in
    eval mode (BatchNorm with running statistics) and its mode is restored.

    Args:
        model: SkipMLP or any module (see ``weighted_layers``). loss_fn: (logits, y) -> scalar; None
            means cross entropy. x: [B, in]. y: targets [B].

    Returns:
        LayerDiagnostics "gradient_norms": weight_grad_norm, bias_grad_norm (NaN without a bias),
        weight_norm; summary: total_grad_norm, first_last_ratio (first / last layer weight-grad norm),
        min and max layer norms.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be tensors with the same batch size, got "
                         f"{getattr(x, 'shape', type(x))} and {getattr(y, 'shape', type(y))}")
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    layers = weighted_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer with a weight parameter")
    params, index = [], []
    for i, (_, m) in enumerate(layers):
        for kind in ("weight", "bias"):
            p = m._parameters.get(kind)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                params.append(p)
                index.append((i, kind))
    with eval_mode(model), torch.enable_grad():
        loss = loss_fn(model(x), y)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    wg = [math.nan] * len(layers)
    bg = [math.nan] * len(layers)
    for (i, kind), g in zip(index, grads):
        v = 0.0 if g is None else torch.linalg.vector_norm(g.detach().to(torch.float64)).item()
        (wg if kind == "weight" else bg)[i] = v
    wn = [torch.linalg.vector_norm(m.weight.detach().to(torch.float64)).item() for _, m in layers]
    w = np.asarray(wg, dtype=float)
    total = math.sqrt(float(np.nansum(w ** 2) + np.nansum(np.asarray(bg, dtype=float) ** 2)))
    summary = {"loss": float(loss.item()), "total_grad_norm": total,
               "first_last_ratio": float(w[0] / w[-1]) if w[-1] > 0 else math.inf,
               "min_weight_grad_norm": float(np.nanmin(w)), "max_weight_grad_norm": float(np.nanmax(w))}
    return LayerDiagnostics("gradient_norms", [n for n, _ in layers],
                            {"weight_grad_norm": wg, "bias_grad_norm": bg, "weight_norm": wn}, summary,
                            {"batch": int(x.shape[0]), "mode": "eval"})
