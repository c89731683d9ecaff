"""Capture the hidden layers of a network on an evaluation batch: incoming weights, the pre-skip
activation act(z) and the representation passed to the next layer.

How layers are found (in this order):
1. ``hidden_fn(model, x) -> [h_1, ..., h_L]`` given: each h_l [B, width_l] is both the activation and
   the representation. Incoming weights are matched to the Linear-like modules (nn.Linear, SkipLinear)
   in registration order when the first L of them have output widths equal to the h_l widths;
   otherwise the weight-based diagnostics of those layers are NaN (this is logged).
2. ``SkipMLP``: ``model(x, return_hidden=True)``; for hidden layer j its input u_j (x, or h_{j-1} after
   any BatchNorm) gives z_j = u_j W_j^T + b_j and the pre-skip activation act(z_j); the representation
   is h_j (after skip and BatchNorm). The linear output layer is not a hidden layer.
3. Any other module: forward hooks. Every SkipLinear with a non-identity activation is a hidden layer
   (act(z) recomputed from its input, representation = its output). Every activation module
   (nn.ReLU, GELU, Tanh, ...) is a hidden layer whose activation and representation are its output,
   with the incoming weights of the nn.Linear called just before it when the widths match. Functional
   activations (F.relu) are invisible to hooks: pass ``hidden_fn`` for such models.
The model runs in eval mode under no_grad (BatchNorm uses its running statistics) and its mode is
restored afterwards. Outputs of more than two dimensions are flattened to [B, features].

``capture_hidden(model, x, modules=...)`` is the general form for any module: the outputs of chosen
named submodules (by name, type or predicate), captured by forward hooks, each turned into a
representation matrix by ``flatten`` (conv feature maps [B, C, H, W]: "channels", the default, makes
every spatial position a row of C channel values, [B H W, C]; "features" one row per sample,
[B, C H W]; "pool" averages over positions, [B, C]). ``diagnose_module`` runs the singularity
diagnostics and condition numbers on them.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from skipkern.nn.skip_linear import SkipLinear
from skipkern.nn.skip_mlp import SkipMLP
from skipkern.reference import activation_ref

log = logging.getLogger("skipkern.diagnostics")

__all__ = ["CapturedLayer", "capture_layers", "eval_mode", "HiddenFn", "ACTIVATION_MODULES", "linear_modules",
           "capture_hidden", "captured_layers", "representation", "FLATTEN", "select_modules"]

HiddenFn = Callable[[nn.Module, torch.Tensor], list]

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid)


@dataclass
class CapturedLayer:
    """One hidden layer on the batch. Tensors are detached, on the CPU, in float64.

    Attributes:
        name: label. weight: [N, K] incoming weights or None. bias: [N] or None.
        act: [B, N] pre-skip activation act(z). hidden: [B, N] the representation passed on.
        dtype: dtype the model computed in (sets the eps of numerical-rank tolerances).
    """

    name: str
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    act: torch.Tensor
    hidden: torch.Tensor
    dtype: torch.dtype

    @property
    def width(self) -> int:
        return int(self.act.shape[1])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


def _f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Detached float64 CPU copy; 2-D and higher tensors flattened to [rows, features]."""
    if t is None:
        return None
    t = t.detach()
    if t.dim() > 2:
        t = t.reshape(t.shape[0], -1)
    return t.to("cpu", torch.float64)


def linear_modules(model: nn.Module) -> list:
    """(name, module) of every nn.Linear / SkipLinear in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, SkipLinear))]


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor batch, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch [B, ...] with B >= 1, got shape {tuple(x.shape)}")


def _from_skipmlp(model: SkipMLP, x: torch.Tensor) -> list:
    _, hidden = model(x, return_hidden=True)
    inputs = [x] + list(hidden[:-1])
    out = []
    for j, (layer, u, h) in enumerate(zip(model.hidden_layers, inputs, hidden)):
        z = u.to(torch.float64) @ layer.weight.to(torch.float64).transpose(0, 1)
        if layer.bias is not None:
            z = z + layer.bias.to(torch.float64)
        out.append(CapturedLayer(f"hidden_{j + 1}", _f64(layer.weight), _f64(layer.bias),
                                 _f64(activation_ref(z, layer.activation)), _f64(h), h.dtype))
    return out


def _from_hidden_fn(model: nn.Module, x: torch.Tensor, hidden_fn: HiddenFn) -> list:
    hs = list(hidden_fn(model, x))
    if not hs:
        raise ValueError("hidden_fn returned no hidden activations; it must return a list of [B, width] tensors")
    for i, h in enumerate(hs):
        if not isinstance(h, torch.Tensor) or h.dim() < 2 or h.shape[0] != x.shape[0]:
            raise ValueError(f"hidden_fn output {i} must be a [B={x.shape[0]}, width] tensor, got "
                             f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    lin = linear_modules(model)
    widths = [h.reshape(h.shape[0], -1).shape[1] for h in hs]
    matched = len(lin) >= len(hs) and all(m.weight.shape[0] == w for (_, m), w in zip(lin, widths))
    if not matched:
        log.info("hidden_fn: could not match %d hidden layers to Linear modules by width; weight-based "
                 "diagnostics will be NaN", len(hs))
    out = []
    for i, h in enumerate(hs):
        w = b = None
        if matched:
            w, b = lin[i][1].weight, lin[i][1].bias
        hh = _f64(h)
        out.append(CapturedLayer(lin[i][0] if matched else f"hidden_{i + 1}", _f64(w), _f64(b), hh, hh, h.dtype))
    return out


def _from_hooks(model: nn.Module, x: torch.Tensor) -> list:
    events: list = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, SkipLinear)) or isinstance(m, ACTIVATION_MODULES):
            def hook(mod, inp, outp, _name=name):
                events.append((_name, mod, inp[0] if inp else None, outp))
            handles.append(m.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for hd in handles:
            hd.remove()
    out, last_linear = [], None
    for name, mod, inp, outp in events:
        if isinstance(mod, SkipLinear):
            last_linear = None
            if mod.activation == "identity":  # an output layer
                continue
            z = inp.to(torch.float64) @ mod.weight.to(torch.float64).transpose(0, 1)
            if mod.bias is not None:
                z = z + mod.bias.to(torch.float64)
            out.append(CapturedLayer(name, _f64(mod.weight), _f64(mod.bias), _f64(activation_ref(z, mod.activation)),
                                     _f64(outp), outp.dtype))
        elif isinstance(mod, nn.Linear):
            last_linear = (mod, outp)
        else:
            a = _f64(outp)
            w = b = None
            if last_linear is not None and last_linear[0].weight.shape[0] == a.shape[1]:
                w, b = _f64(last_linear[0].weight), _f64(last_linear[0].bias)
            last_linear = None
            out.append(CapturedLayer(name, w, b, a, a, outp.dtype))
    if not out:
        raise ValueError(f"found no hidden layers in {type(model).__name__}: no SkipLinear or activation module "
                         f"(nn.ReLU, nn.Tanh, ...) ran in forward; pass hidden_fn(model, x) -> list of [B, width] "
                         f"tensors")
    return out


@torch.no_grad()
def capture_layers(model: nn.Module, x: torch.Tensor, hidden_fn: Optional[HiddenFn] = None) -> list:
    """The hidden layers of ``model`` on batch ``x`` [B, ...] as a list of ``CapturedLayer`` (see module
    docstring for how they are found)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_x(x)
    with eval_mode(model):
        if hidden_fn is not None:
            return _from_hidden_fn(model, x, hidden_fn)
        if isinstance(model, SkipMLP):
            return _from_skipmlp(model, x)
        return _from_hooks(model, x)


# ------------------------------------------------------------------- any module, by forward hooks
FLATTEN = ("channels", "features", "pool")


def representation(t: torch.Tensor, flatten: str = "channels") -> torch.Tensor:
    """A module output as a representation matrix [rows, features] (float64, CPU, detached).

    [B, N] stays as it is. [B, C, *S] (conv feature maps, S spatial): "channels" -> [B * prod(S), C]
    (every sample and position is a row of the C channel values; rows >> C, so the rank and condition
    number of the channel space are measurable with small batches), "features" -> [B, C * prod(S)] (one
    row per sample, needs B > C * prod(S) for full column rank), "pool" -> [B, C] (mean over S)."""
    if flatten not in FLATTEN:
        raise ValueError(f"flatten must be one of {FLATTEN}, got {flatten!r}")
    t = t.detach()
    if t.dim() < 2:
        raise ValueError(f"a hidden representation needs a batch and a feature dimension, got shape {tuple(t.shape)}")
    if t.dim() > 2:
        if flatten == "channels":
            t = t.movedim(1, -1).reshape(-1, t.shape[1])
        elif flatten == "features":
            t = t.reshape(t.shape[0], -1)
        else:
            t = t.reshape(t.shape[0], t.shape[1], -1).mean(-1)
    return t.to("cpu", torch.float64)


def select_modules(model: nn.Module, modules=None) -> list:
    """(name, module) pairs chosen by ``modules``: None (every activation module and every SkipLinear
    with an activation, the hook rule of ``capture_layers``), a sequence of names as in
    ``model.named_modules()``, a module type or tuple of types, or a callable(name, module) -> bool."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if modules is None:
        return [(n, m) for n, m in named if isinstance(m, ACTIVATION_MODULES)
                or (isinstance(m, SkipLinear) and m.activation != "identity")]
    types = isinstance(modules, tuple) and modules and all(isinstance(t, type) for t in modules)
    if isinstance(modules, type) or types:
        return [(n, m) for n, m in named if isinstance(m, modules)]
    if callable(modules):
        return [(n, m) for n, m in named if modules(n, m)]
    if isinstance(modules, str) or not all(isinstance(n, str) for n in modules):
        raise TypeError("modules must be None, a sequence of module names, a module type (or tuple of types) or a "
                        f"callable(name, module) -> bool, got {modules!r}")
    table = dict(named)
    missing = [n for n in modules if n not in table]
    if missing:
        raise ValueError(f"no submodule named {missing} in {type(model).__name__}; names look like "
                         f"{[n for n, _ in named][:8]}")
    return [(n, table[n]) for n in modules]


@torch.no_grad()
def _capture(model: nn.Module, x: torch.Tensor, modules, flatten: str) -> dict:
    """{name: (matrix, dtype the module computed in)} in call order (see ``capture_hidden``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_x(x)
    if flatten not in FLATTEN:
        raise ValueError(f"flatten must be one of {FLATTEN}, got {flatten!r}")
    chosen = select_modules(model, modules)
    if not chosen:
        raise ValueError(f"no submodule of {type(model).__name__} matches modules={modules!r}")
    out: dict = {}

    def hook(name):
        def fn(mod, inp, outp):
            if not isinstance(outp, torch.Tensor):
                raise TypeError(f"submodule {name!r} returned {type(outp).__name__}, not a tensor; choose modules "
                                f"that return one tensor")
            k, i = name, 1
            while k in out:
                i += 1
                k = f"{name}#{i}"
            out[k] = (representation(outp, flatten), outp.dtype)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in chosen]
    try:
        with eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def capture_hidden(model: nn.Module, x: torch.Tensor, modules=None, *, flatten: str = "channels") -> dict:
    """The outputs of chosen submodules of ``model`` on batch ``x`` [B, ...], by forward hooks.

    Args:
        modules: which submodules (see ``select_modules``; default: every activation module).
        flatten: how outputs of more than two dimensions become matrices (see ``representation``).

    Returns:
        {name: [rows, features] float64 tensor} in the order the modules ran; a module that runs more
        than once (one nn.ReLU shared by the layers of a block) gives "name", "name#2", ...
    The model runs in eval mode (BatchNorm with running statistics) under no_grad, mode restored after.
    """
    return {k: m for k, (m, _) in _capture(model, x, modules, flatten).items()}


def captured_layers(model: nn.Module, x: torch.Tensor, modules=None, flatten: str = "channels") -> list:
    """``capture_hidden`` as ``CapturedLayer`` objects (act = hidden = the matrix, no weights) for the
    ``*_from`` diagnostics; each keeps the dtype its module computed in (it sets rank tolerances)."""
    return [CapturedLayer(k, None, None, m, m, dt) for k, (m, dt) in _capture(model, x, modules, flatten).items()]
