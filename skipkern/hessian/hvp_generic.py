"""Generic Hessian-vector products of any nn.Module through torch.func.

For one batch (x [n, ...], y [n, ...]) and k directions Vt [k, P] (flat, in the operator's parameter
order), the product is forward-over-reverse, ``jvp(grad(loss))``, vmapped over the k directions:
one forward/backward graph shared by all directions, the tangents batched. Directions and rows are
chunked to fit ``memory_budget``; the result is the Hessian of the batch's sum-form loss (each row
chunk's loss times its mean denominator for a "mean" loss, times 1 for a "sum" loss; see
skipkern.hessian.reduction), so chunking never changes it.
Parameters outside the selected set and buffers enter as constants.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from skipkern.hessian.reduction import Reduction

__all__ = ["GenericHVP", "batch_loss_grad", "functorch_safe_loss"]

log = logging.getLogger("skipkern")

# Bytes model of one chunk: _ACT_FACTOR copies of the activations per direction (tangent, gradient,
# tangent of the gradient, temporaries) and _PARAM_FACTOR copies of P per direction.
_ACT_FACTOR = 6
_PARAM_FACTOR = 4


def _state(model: nn.Module, names: Sequence[str], dtype: torch.dtype) -> tuple[dict, dict]:
    """(selected params, constants: other params and buffers), detached and cast to dtype."""
    sel = set(names)

    def cast(t: Tensor) -> Tensor:
        t = t.detach()
        return t.to(dtype) if t.dtype.is_floating_point else t

    named = dict(model.named_parameters())
    params = {n: cast(named[n]) for n in names}
    consts = {n: cast(p) for n, p in named.items() if n not in sel}
    consts.update({n: cast(b) for n, b in model.named_buffers()})
    return params, consts


def _mse_composite(reduction: str) -> Callable:
    def mse(out: Tensor, target: Tensor) -> Tensor:
        sq = (out - target) ** 2
        return sq.mean() if reduction == "mean" else sq.sum()
    return mse


def functorch_safe_loss(loss_fn: Callable) -> Callable:
    """torch 2.x: jvp(grad(F.mse_loss)) raises "ZeroTensors are immutable" (mse_loss's double-backward
    writes into the zero tangent of the target). The same loss written as ((out - target)**2).mean()
    differentiates fine, so MSE losses are swapped for it (logged); every other loss is used as given."""
    if isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction in ("mean", "sum"):
        red = loss_fn.reduction
    elif loss_fn is F.mse_loss:
        red = "mean"
    else:
        return loss_fn
    log.info("hessian: generic hvp uses ((out - target)**2).%s() for %s (torch.func cannot take "
             "jvp(grad(mse_loss)))", red, type(loss_fn).__name__)
    return _mse_composite(red)


def _loss_function(model: nn.Module, loss_fn: Callable, consts: dict, x: Tensor, y: Tensor,
                   batch_index: int) -> Callable:
    def f(p: dict):
        loss = loss_fn(functional_call(model, {**consts, **p}, (x,)), y)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor (the batch mean), got "
                             f"{type(loss).__name__}{'' if not isinstance(loss, Tensor) else tuple(loss.shape)} "
                             f"on batch {batch_index}")
        return loss, loss.detach()
    return f


def _check_finite(loss: Tensor, batch_index: int) -> None:
    if not bool(torch.isfinite(loss)):
        raise ValueError(f"loss is {float(loss)} (not finite) on data batch {batch_index}; "
                         f"check the inputs, targets and parameters for NaN/inf")


def batch_loss_grad(model: nn.Module, loss_fn: Callable, names: Sequence[str], dtype: torch.dtype,
                    x: Tensor, y: Tensor, batch_index: int = 0) -> tuple[Tensor, Tensor]:
    """(batch loss, flat gradient [P]) of one batch."""
    params, consts = _state(model, names, dtype)
    g, loss = grad(_loss_function(model, loss_fn, consts, x, y, batch_index), has_aux=True)(params)
    _check_finite(loss, batch_index)
    return loss, torch.cat([g[n].reshape(-1) for n in names])


class GenericHVP:
    """Batched HVPs of any module by torch.func (forward-over-reverse, vmap over directions)."""

    def __init__(self, model: nn.Module, loss_fn: Callable, names: Sequence[str], dtype: torch.dtype,
                 reduction: Reduction):
        self.model, self.names, self.dtype, self.reduction = model, list(names), dtype, reduction
        self.loss_fn = functorch_safe_loss(loss_fn)
        self._act_per_row = None

    def _activations_per_row(self, x: Tensor) -> int:
        """Output elements per input row over all leaf modules (measured once, on <= 8 rows)."""
        if self._act_per_row is None:
            count = [0]
            rows = min(x.shape[0], 8)

            def hook(_m, _i, out):
                if isinstance(out, Tensor):
                    count[0] += out.numel()

            leaves = [m for m in self.model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                params, consts = _state(self.model, self.names, self.dtype)
                with torch.no_grad():
                    functional_call(self.model, {**consts, **params}, (x[:rows],))
            finally:
                for h in handles:
                    h.remove()
            self._act_per_row = max(1, count[0] // rows + int(x[0].numel()))
        return self._act_per_row

    def chunks(self, x: Tensor, k: int, memory_budget: int) -> tuple[int, int]:
        """(rows per chunk, directions per chunk) so one chunk fits ``memory_budget`` bytes."""
        isz = torch.finfo(self.dtype).bits // 8
        act = self._activations_per_row(x)
        P = sum(int(t.numel()) for t in dict(self.model.named_parameters()).values())
        budget = memory_budget / isz
        n = x.shape[0]
        one = _ACT_FACTOR * act * 2  # per row: primal + one direction
        rows = n if one * n + _PARAM_FACTOR * P <= budget else max(1, int((budget - _PARAM_FACTOR * P) // one))
        per_dir = _ACT_FACTOR * act * rows + _PARAM_FACTOR * P
        kc = int(max(1, min(k, (budget - _ACT_FACTOR * act * rows) // per_dir)))
        return min(rows, n), kc

    def batch_hvp(self, x: Tensor, y: Tensor, Vt: Tensor, memory_budget: int, batch_index: int = 0) -> Tensor:
        """Hessian of the batch's sum-form loss times each row of Vt [k, P] -> [k, P]."""
        k = Vt.shape[0]
        rows, kc = self.chunks(x, k, memory_budget)
        params, consts = _state(self.model, self.names, self.dtype)
        sizes = [params[n].numel() for n in self.names]
        out = torch.zeros_like(Vt)
        n = x.shape[0]
        for r0 in range(0, n, rows):
            xr, yr = x[r0:r0 + rows], y[r0:r0 + rows]
            weight = self.reduction.factor(yr)
            if weight == 0:  # a chunk whose targets are all ignored: no term (its mean loss is nan)
                continue
            g = grad(_loss_function(self.model, self.loss_fn, consts, xr, yr, batch_index), has_aux=True)

            def hvp(v: dict):
                _, tangent, loss = jvp(g, (params,), (v,), has_aux=True)
                return tangent, loss

            batched = vmap(hvp, out_dims=(0, None))
            for c0 in range(0, k, kc):
                chunk = Vt[c0:c0 + kc]
                pieces = torch.split(chunk, sizes, dim=1)
                v = {nm: pc.reshape(chunk.shape[0], *params[nm].shape) for nm, pc in zip(self.names, pieces)}
                tangent, loss = batched(v)
                if c0 == 0:
                    _check_finite(loss, batch_index)
                flat = torch.cat([tangent[nm].reshape(chunk.shape[0], -1) for nm in self.names], dim=1)
                out[c0:c0 + kc].add_(flat, alpha=weight)
        return out
