"""Parameters of a module as flat vectors, and the loss of many parameter vectors at once.

A path between two networks lives in parameter space: every point is one flat vector theta [P] holding
all of ``model.parameters()`` in registration order. ``LossEvaluator`` evaluates the loss of K such
vectors together (``torch.func.vmap`` over ``functional_call``), so the K pairs of a setting, or the K
pivots of a nudged elastic band, cost one batched forward pass instead of K.

Path arithmetic is done in float64 and each point is cast to the model's dtype just before the forward
pass, so the straight path from a net to itself reproduces the net bit for bit.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call, vmap

__all__ = ["ParamLayout", "LossEvaluator", "as_splits", "has_batchnorm", "stack_flat", "Split"]

Split = tuple  # (x [N, ...], y [N, ...])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class ParamLayout:
    """Names, shapes and dtype of a module's parameters; flat vectors <-> parameter dicts.

    Args:
        model: the template module; every path point is loaded into (a copy of) its architecture.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = list(model.named_parameters())
        if not named:
            raise ValueError(f"{type(model).__name__} has no parameters; there is no parameter space to connect in")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dtype = named[0][1].dtype
        self.device = named[0][1].device
        self.size = int(sum(self.numels))

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """All parameters of ``model`` (same architecture as the template) as one float64 vector [P]."""
        named = list(model.named_parameters())
        shapes = [tuple(p.shape) for _, p in named]
        if [n for n, _ in named] != self.names or shapes != self.shapes:
            raise ValueError(f"{type(model).__name__}: parameters differ from the first model's (names/shapes "
                             f"{list(zip(self.names, self.shapes))[:3]}...); both ends of a path need the same "
                             f"architecture")
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for _, p in named]).to(self.device)

    def unflatten(self, theta: torch.Tensor) -> dict:
        """theta [P] (any dtype) -> {name: tensor of the parameter's shape, in the model's dtype}."""
        parts = torch.split(theta.to(self.dtype), self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load(self, model: nn.Module, theta: torch.Tensor) -> nn.Module:
        """Copy theta [P] into ``model``'s parameters in place; returns the model."""
        with torch.no_grad():
            for p, v in zip(model.parameters(), self.unflatten(theta).values()):
                p.copy_(v)
        return model


def as_splits(data: Union[Split, Mapping[str, Split]], test_data: Optional[Split] = None) -> dict:
    """{"train": (x, y)[, "test": (x, y)]} from ``data`` = (x, y) or {"train": ..., "test": ...}."""
    if isinstance(data, Mapping):
        if "train" not in data:
            raise ValueError(f"data as a dict needs a 'train' entry (x, y), got keys {sorted(data)}")
        splits = {k: data[k] for k in ("train", "test") if k in data and data[k] is not None}
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        splits = {"train": tuple(data)}
    else:
        raise TypeError("data must be (x, y) or {'train': (x, y), 'test': (x, y)}, got "
                        f"{type(data).__name__}")
    if test_data is not None:
        splits["test"] = tuple(test_data)
    for k, (x, y) in splits.items():
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[0] != y.shape[0]:
            raise ValueError(f"{k} data must be two tensors (x [N, ...], y [N, ...]) with the same N, got "
                             f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} and "
                             f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    return splits


class LossEvaluator:
    """Mean loss of K parameter vectors on a data set, evaluated together.

    Args:
        model: template module (its buffers are used as they are, except with BatchNorm, see below).
        loss_fn: ``loss_fn(output, target) -> scalar``, the mean over the batch (F.mse_loss,
            F.cross_entropy); chunk losses are averaged weighted by chunk size.
        batch_size: evaluation chunk (None: the whole split at once).
    ``batch_loss(..., train_mode=True)`` runs the module in train mode while a curve is fitted (BatchNorm
    then uses batch statistics, as Garipov et al. train their curves); ``losses`` always runs in eval mode.
    With BatchNorm only K = 1 is supported: before each evaluation the running statistics are
    recomputed at that point on the training data (Garipov et al.), in a private copy of the model.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, layout: ParamLayout, batch_size: Optional[int] = None):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable(output, target) -> scalar, got {type(loss_fn).__name__}")
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.loss_fn, self.layout = loss_fn, layout
        self.batch_size = None if batch_size is None else int(batch_size)
        self.bn = has_batchnorm(model)
        self.buffers = {n: b for n, b in self.model.named_buffers()}

    def _single(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (self.layout.unflatten(theta), self.buffers), (x,))
        return self.loss_fn(out, y)

    def batch_loss(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, train_mode: bool = False
                   ) -> torch.Tensor:
        """Differentiable losses [K] of thetas [K, P] on one batch (x, y)."""
        self._check(thetas)
        self.model.train(train_mode)
        if thetas.shape[0] == 1:
            return self._single(thetas[0], x, y).reshape(1)
        return vmap(self._single, in_dims=(0, None, None), randomness="different")(thetas, x, y)

    @torch.no_grad()
    def losses(self, thetas: torch.Tensor, split: Split, bn_data: Optional[Split] = None) -> torch.Tensor:
        """Mean losses [K] (float64) of thetas [K, P] over a whole split, in eval mode. ``bn_data``:
        the data on which BatchNorm statistics are recomputed first (models with BatchNorm)."""
        self._check(thetas)
        x, y = split
        if self.bn:
            self._refresh_bn(thetas[0], bn_data if bn_data is not None else split)
        self.model.eval()
        n = x.shape[0]
        bs = n if self.batch_size is None else self.batch_size
        total = torch.zeros(thetas.shape[0], dtype=torch.float64, device=thetas.device)
        for i in range(0, n, bs):
            xb, yb = x[i:i + bs], y[i:i + bs]
            if thetas.shape[0] == 1:
                part = self._single(thetas[0], xb, yb).reshape(1)
            else:
                part = vmap(self._single, in_dims=(0, None, None))(thetas, xb, yb)
            total += part.to(torch.float64) * xb.shape[0]
        return total / n

    def _refresh_bn(self, theta: torch.Tensor, split: Split) -> None:
        self.layout.load(self.model, theta)
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        moms = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
        self.model.train()
        x = split[0]
        bs = x.shape[0] if self.batch_size is None else self.batch_size
        for i in range(0, x.shape[0], bs):
            self.model(x[i:i + bs])
        for m, mom in zip(bns, moms):
            m.momentum = mom
        self.buffers = {n: b for n, b in self.model.named_buffers()}

    def _check(self, thetas: torch.Tensor) -> None:
        if thetas.dim() != 2 or thetas.shape[1] != self.layout.size:
            raise ValueError(f"thetas must be [K, P={self.layout.size}], got {tuple(thetas.shape)}")
        if self.bn and thetas.shape[0] != 1:
            raise ValueError("models with BatchNorm are connected one pair at a time (their running statistics "
                             f"are recomputed per point); got K={thetas.shape[0]} parameter vectors")


def stack_flat(layout: ParamLayout, models: Sequence[nn.Module]) -> torch.Tensor:
    """[K, P] float64: the flat parameters of each model."""
    return torch.stack([layout.flatten(m) for m in models])
