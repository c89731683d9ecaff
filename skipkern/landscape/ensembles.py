"""Many small networks of one architecture trained at once, and the nets of the connectivity study.

``train_ensemble`` stacks the parameters of S models (``torch.func.stack_module_state``) and trains
them together: one ``vmap``-ed forward/backward per step on the same data, Adam on the stacked
tensors. Adam is element-wise and the loss is the sum of the S per-model losses, so every model gets
exactly the update it would get alone; only the arithmetic is shared.

``DeepSkipNet`` is our reading of the architecture of Wang, Shen, Zhao & Zhang (IJCAI 2020), "Is the
Skip Connection Provable to Reform the Neural Network Loss Landscape?": a deep ReLU branch plus,
with the skip, a two-layer ReLU branch of m hidden units from the input straight to the output,
    f(x) = deep(x) + [skip] v^T relu(U x + c),
    deep(x) = w^T relu(W_L ... relu(W_1 x + b_1) ... + b_L) + b_out.
The paper's exact widths are not public: the deep branch has ``depth`` hidden layers of
``deep_width`` units, and the experiment ties deep_width to m by default, so that the net without
the skip also grows with m (see skipkern/experiments/connectivity.py).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

__all__ = ["DeepSkipNet", "train_ensemble", "ensemble_losses", "relu_teacher"]


def _he_(layer: nn.Linear, gain: float, g: torch.Generator) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (gain / math.sqrt(layer.in_features)))
        layer.bias.zero_()


class DeepSkipNet(nn.Module):
    """Deep ReLU net [B, n] -> [B] with an optional two-layer ReLU branch from the input.

    Args:
        in_features: n. deep_width: units per hidden layer of the deep branch. depth: its hidden layers.
        skip_width: m, hidden units of the two-layer branch (0: no skip branch).
        seed: initialisation: He-normal (variance 2 / fan_in) hidden weights, variance 1 / fan_in output
            weights, zero biases.
    """

    def __init__(self, in_features: int, deep_width: int, depth: int, skip_width: int = 0, seed: int = 0):
        super().__init__()
        for name, v, lo in (("in_features", in_features, 1), ("deep_width", deep_width, 1), ("depth", depth, 1),
                            ("skip_width", skip_width, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        g = torch.Generator().manual_seed(int(seed))
        widths = [in_features] + [deep_width] * depth
        self.deep = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.deep_out = nn.Linear(deep_width, 1)
        for layer in self.deep:
            _he_(layer, math.sqrt(2.0), g)
        _he_(self.deep_out, 1.0, g)
        self.skip_width = skip_width
        if skip_width:
            self.skip_in = nn.Linear(in_features, skip_width)
            self.skip_out = nn.Linear(skip_width, 1, bias=False)
            _he_(self.skip_in, math.sqrt(2.0), g)
            with torch.no_grad():
                self.skip_out.weight.copy_(torch.randn(self.skip_out.weight.shape, generator=g) / math.sqrt(skip_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.deep:
            h = torch.relu(layer(h))
        out = self.deep_out(h)
        if self.skip_width:
            out = out + self.skip_out(torch.relu(self.skip_in(x)))
        return out.squeeze(-1)


def relu_teacher(n: int, input_dim: int, hidden: int, *, seed: int, n_test: int = 0) -> dict:
    """Teacher-student regression data: x ~ N(0, I_n), y = v^T relu(U x) with U ~ N(0, 1/n),
    v ~ N(0, 1/hidden), standardised to mean 0 and variance 1 on the training inputs.

    Returns {"train": (x [n, d], y [n]), "test": (x [n_test, d], y [n_test]), "teacher": {...}}."""
    g = torch.Generator().manual_seed(int(seed))
    U = torch.randn(hidden, input_dim, generator=g, dtype=torch.float64) / math.sqrt(input_dim)
    v = torch.randn(hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden)
    x = torch.randn(n + n_test, input_dim, generator=g, dtype=torch.float64)
    y = torch.relu(x @ U.T) @ v
    mu, sd = y[:n].mean(), y[:n].std().clamp_min(1e-12)
    y = (y - mu) / sd
    x, y = x.float(), y.float()
    return {"train": (x[:n], y[:n]), "test": (x[n:], y[n:]),
            "teacher": {"U": U.tolist(), "v": v.tolist(), "mean": float(mu), "std": float(sd)}}


def _stacked_loss(template: nn.Module, loss_fn: Callable):
    def one(params, buffers, x, y):
        return loss_fn(functional_call(template, (params, buffers), (x,)), y)
    return vmap(one, in_dims=(0, 0, None, None))


def train_ensemble(models: Sequence[nn.Module], loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *,
                   steps: int, lr: float = 1e-3, batch_size: Optional[int] = None, seed: int = 0,
                   lr_decay: str = "cosine", record_every: int = 0, progress: bool = False,
                   desc: str = "train") -> dict:
    """Train S models of one architecture together, in place (parameters written back).

    Args:
        models: S modules with identical parameter names and shapes (no BatchNorm).
        loss_fn: loss_fn(output, y) -> scalar mean. x [N, ...], y [N, ...]: training data.
        steps: Adam steps (full batch when batch_size is None, else mini-batches drawn with ``seed``,
            the same batches for every model). lr_decay: "cosine" (to 0 at the last step) or "none".
        record_every: keep the S losses every this many steps (0: only the last).

    Returns:
        {"final_loss": [S] training losses after the last step (full data, float64), "curve":
        [(step, [S] losses)], "steps": steps}.
    """
    if not models:
        raise ValueError("models must be a non-empty sequence of modules")
    if lr_decay not in ("cosine", "none"):
        raise ValueError(f"lr_decay must be 'cosine' or 'none', got {lr_decay!r}")
    template = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state(list(models))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    f = _stacked_loss(template, loss_fn)
    opt = torch.optim.Adam(params.values(), lr=float(lr))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(steps), 1)) if lr_decay == "cosine"
             else None)
    g = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    bs = n if batch_size is None else min(int(batch_size), n)
    curve = []
    for step in tqdm(range(int(steps)), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if bs < n:
            idx = torch.randperm(n, generator=g)[:bs].to(x.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        losses = f(params, buffers, xb, yb)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        if record_every and step % record_every == 0:
            curve.append((step, losses.detach().double().cpu().tolist()))
    with torch.no_grad():
        for s, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][s])
        final = f({k: v.detach() for k, v in params.items()}, buffers, x, y).double().cpu()
    curve.append((int(steps), final.tolist()))
    return {"final_loss": final.tolist(), "curve": curve, "steps": int(steps)}


@torch.no_grad()
def ensemble_losses(models: Sequence[nn.Module], loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> list:
    """[S] losses of S same-architecture models on (x, y), in one vmap-ed pass."""
    template = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state(list(models))
    return _stacked_loss(template, loss_fn)(params, buffers, x, y).double().cpu().tolist()
