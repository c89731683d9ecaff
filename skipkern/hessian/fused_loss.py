"""The losses the fused R-op knows (softmax cross-entropy and MSE, "mean" or "sum"): which they are,
the per-row weights of a batch's sum-form loss, and the loss, its logit gradient and its logit-space
Hessian operator (skipkern.hessian.hvp_fused)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["loss_spec", "row_weights", "loss_terms"]


def loss_spec(loss_fn: Callable) -> tuple[Optional[tuple], str]:
    """((kind, reduction, ignore_index), "") for a loss the fused backend handles, else (None, reason)."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.weight is not None:
            return None, "nn.CrossEntropyLoss with class weights"
        if loss_fn.label_smoothing != 0.0:
            return None, "nn.CrossEntropyLoss with label_smoothing"
        if loss_fn.reduction not in ("mean", "sum"):
            return None, f"nn.CrossEntropyLoss(reduction={loss_fn.reduction!r}) is not a scalar loss"
        return ("ce", loss_fn.reduction, loss_fn.ignore_index), ""
    if loss_fn is F.cross_entropy:
        return ("ce", "mean", -100), ""
    if isinstance(loss_fn, nn.MSELoss):
        if loss_fn.reduction not in ("mean", "sum"):
            return None, f"nn.MSELoss(reduction={loss_fn.reduction!r}) is not a scalar loss"
        return ("mse", loss_fn.reduction, None), ""
    if loss_fn is F.mse_loss:
        return ("mse", "mean", None), ""
    return None, (f"loss_fn {type(loss_fn).__name__} is not one the fused R-op knows (nn.CrossEntropyLoss, "
                  f"F.cross_entropy, nn.MSELoss, F.mse_loss)")


def row_weights(spec: tuple, logits_shape: tuple, y: Tensor, batch_index: int, dtype: torch.dtype) -> Tensor:
    """Per-row weights w_r [n] of the batch's sum-form loss sum_r w_r ell_r (skipkern.hessian.reduction:
    for a "mean" loss the batch mean times its denominator, for a "sum" loss the sum)."""
    kind, red, ignore = spec
    n, C = logits_shape
    if kind == "ce" and not y.dtype.is_floating_point:
        if y.shape != (n,):
            raise ValueError(f"cross-entropy targets must be class indices [n={n}], got {tuple(y.shape)} "
                             f"on batch {batch_index}")
        valid = y != ignore
        bad = valid & ((y < 0) | (y >= C))
        if bool(bad.any()):
            raise ValueError(f"cross-entropy targets must lie in [0, {C}) on batch {batch_index}")
        return valid.to(dtype)  # ignored rows weigh 0 in the sum and in the mean's denominator
    if y.shape != (n, C):
        what = "cross-entropy probability" if kind == "ce" else "MSE"
        raise ValueError(f"{what} targets must have the outputs' shape {(n, C)}, got {tuple(y.shape)} "
                         f"on batch {batch_index}")
    scale = 1.0 / C if (kind == "mse" and red == "mean") else 1.0  # torch's MSE mean is over n * C
    return torch.full((n,), scale, dtype=dtype, device=y.device)


def loss_terms(spec: tuple, logits: Tensor, y: Tensor, w: Tensor):
    """(loss, g = d loss / d logits [n, C], Hop: R logits [n, k, C] -> R g [n, k, C], the tensors
    Hop holds)."""
    kind = spec[0]
    if kind == "mse":
        diff = logits - y
        loss = (w * (diff * diff).sum(1)).sum()
        g = (2.0 * w)[:, None] * diff
        w2 = (2.0 * w)[:, None, None]
        return loss, g, lambda u: u * w2, [w2]
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    if y.dtype.is_floating_point:
        t, s = y, y.sum(1)
    else:
        t = torch.zeros_like(logits).scatter_(1, y.clamp(0, logits.shape[1] - 1)[:, None], 1.0)
        s = torch.ones_like(w)
    loss = -(w * (t * logp).sum(1)).sum()
    g = w[:, None] * (s[:, None] * p - t)
    ws = (w * s)[:, None, None]
    pk = p[:, None, :]

    def hop(u: Tensor) -> Tensor:  # w s (diag(p) - p p^T) u, per row and direction
        return ws * pk * (u - (u * pk).sum(-1, keepdim=True))
    return loss, g, hop, [ws, pk]
