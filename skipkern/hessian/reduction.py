"""How a loss reduces over the rows of a batch, so that the Hessian is that of the loss the user's
``loss_fn`` defines on ALL the data, however the data is split into batches and chunks.

With reduction "sum" the full-data loss is the sum of the batch losses: every batch and row chunk
has weight 1. With "mean" it is sum_b d_b L_b / sum_b d_b, where d_b is the batch's denominator of
the mean: its number of rows, or for cross-entropy / NLL with integer targets the number of targets
that are not ``ignore_index`` (weighted by the class weights when given), as torch computes it. The
HVP backends return the Hessian of the batch's *sum form* (d_b L_b for "mean", L_b for "sum") and
the operator divides the total by sum_b d_b for "mean" (curvlinops weights batches the same way).

The reduction is read from ``loss_fn.reduction`` (nn losses), from a ``reduction`` keyword of a
functools.partial or the default of a ``reduction`` parameter in the signature (torch.nn.functional
losses); for any other callable it is measured once, on the first product: the loss of a few rows
twice over equals the loss of those rows ("mean") or twice it ("sum"). Anything else is an error
naming the fix (pass ``reduction=``).
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("skipkern")

__all__ = ["Reduction", "resolve_reduction", "measure_reduction", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum")
_CLASS_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASS_FUNCTIONS = (F.cross_entropy, F.nll_loss)


@dataclass
class Reduction:
    """kind "mean" | "sum" | "auto" (not known yet: set once measured on the first batch; the operator
    and its HVP backend share this object); for class losses the ``ignore_index`` and class ``weight``
    that enter torch's mean denominator."""
    kind: str
    ignore_index: Optional[int] = None
    weight: Optional[Tensor] = None

    def denominator(self, y: Tensor) -> float:
        """d_b of a batch with targets ``y``: what torch divides the summed loss by for "mean"."""
        if self.ignore_index is not None and not y.dtype.is_floating_point:
            valid = y != self.ignore_index
            if self.weight is not None:
                w = self.weight.to(y.device)
                return float(w[y.clamp(0, w.numel() - 1)][valid].sum())
            return float(valid.sum())
        return float(y.shape[0])

    def factor(self, y: Tensor) -> float:
        """Weight of a batch's (or chunk's) loss in the sum form: d_b for "mean", 1 for "sum"."""
        if self.kind == "auto":
            raise RuntimeError("the loss reduction has not been measured yet")
        return self.denominator(y) if self.kind == "mean" else 1.0


def _class_loss_fields(loss_fn: Callable) -> tuple[Optional[int], Optional[Tensor]]:
    base = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    if isinstance(loss_fn, _CLASS_LOSSES):
        return loss_fn.ignore_index, loss_fn.weight
    if base in _CLASS_FUNCTIONS:
        kw = loss_fn.keywords if isinstance(loss_fn, functools.partial) else {}
        return kw.get("ignore_index", -100), kw.get("weight")
    return None, None


def _declared(loss_fn: Callable) -> Optional[str]:
    """The reduction a loss declares (attribute, partial keyword or signature default), else None."""
    red = getattr(loss_fn, "reduction", None)
    if isinstance(red, str):
        return red
    if isinstance(loss_fn, functools.partial):
        if "reduction" in loss_fn.keywords:
            return loss_fn.keywords["reduction"]
        loss_fn = loss_fn.func
    try:
        p = inspect.signature(loss_fn).parameters.get("reduction")
    except (TypeError, ValueError):
        return None
    return p.default if p is not None and isinstance(p.default, str) else None


def resolve_reduction(loss_fn: Callable, reduction: Optional[str] = None) -> Reduction:
    """The Reduction of ``loss_fn``: ``reduction`` when given ("mean" or "sum"), else what the loss
    declares, else "auto" (measured on the first batch by ``measure_reduction``).

    Raises:
        ValueError: a reduction that is not a scalar mean or sum (e.g. "none").
    """
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be None (read from loss_fn), 'mean' or 'sum', got {reduction!r}")
    declared = reduction if reduction is not None else _declared(loss_fn)
    if declared == "batchmean":  # KLDivLoss: the sum divided by the number of rows
        declared = "mean"
    if declared is not None and declared not in REDUCTIONS:
        raise ValueError(f"loss_fn has reduction={declared!r}, which does not give a scalar loss; the Hessian "
                         f"needs reduction='mean' or 'sum' (e.g. {type(loss_fn).__name__}(reduction='mean'))")
    ignore, weight = _class_loss_fields(loss_fn)
    return Reduction(declared or "auto", ignore, None if weight is None else weight.detach())


def measure_reduction(loss_fn: Callable, outputs: Tensor, targets: Tensor, batch_index: int = 0) -> str:
    """"mean" or "sum", from the loss of up to 8 rows compared with the loss of those rows twice over.

    Args:
        outputs: [n, ...] model outputs of one batch; targets: [n, ...] its targets.
    Raises:
        ValueError: the ratio is neither 1 nor 2 (or the loss is zero or not finite there).
    """
    r = min(int(outputs.shape[0]), 8)
    out, y = outputs[:r].detach(), targets[:r]
    with torch.no_grad():
        one = loss_fn(out, y)
        two = loss_fn(torch.cat([out, out]), torch.cat([y, y]))
    if not (isinstance(one, Tensor) and one.dim() == 0 and isinstance(two, Tensor) and two.dim() == 0):
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(one).__name__}"
                         f"{tuple(one.shape) if isinstance(one, Tensor) else ''} on batch {batch_index}")
    a, b = float(one), float(two)
    ratio = b / a if a != 0 and abs(a) < float("inf") else float("nan")
    tol = 1e-3 if outputs.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
    if abs(ratio - 1.0) <= tol:
        kind = "mean"
    elif abs(ratio - 2.0) <= 2 * tol:
        kind = "sum"
    else:
        raise ValueError(f"cannot tell how loss_fn reduces over rows: on {r} rows of batch {batch_index} the loss "
                         f"is {a:.6g}, and {b:.6g} on those rows twice over (ratio {ratio:.6g}; 1 means a mean, "
                         f"2 a sum); pass reduction='mean' or 'sum' to HessianOperator")
    log.info("hessian: loss_fn %s reduces by %s over rows (measured: loss ratio %.6g on duplicated rows)",
             getattr(loss_fn, "__name__", type(loss_fn).__name__), kind, ratio)
    return kind
