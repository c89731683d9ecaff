"""The whole-MLP path of SkipMLP(..., fused="mlp"): its layers (``layer_specs()``) as the stacked tensors of
the skip_mlp op.

Weights and biases are stacked on every call (autograd splits the gradients back onto each layer's
parameters); the fixed skip matrices Q_j, the hyper-residual P_k and the coefficients c_j are stacked once and
reused while those buffers keep their storage and version. Where the op cannot run (BatchNorm layers, a
torch.func transform, a backend with no whole-MLP kernel, CPU tensors without backend="triton"),
``fused_forward`` returns None, logs the reason once and records it in ``model.fused_path``; the module then
runs its per-layer path.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

from skipkern.ops._torch_compat import in_functorch_transform
from skipkern.ops.skip_mlp import resolve, skip_mlp_fwd
from skipkern.reference import SKIP_CODES, activation_code

log = logging.getLogger("skipkern")

__all__ = ["fused_forward", "mlp_tensors"]
_logged: set = set()


def _fixed(model, specs: list, device: torch.device, dtype: torch.dtype) -> dict:
    """Stacked Q [L-1, W, W], P [L-2, W, W] and c [L] of ``model``, cached while the buffers are unchanged."""
    qs = [s["skip_weight"] for s in specs[1:-1] if s["skip_weight"] is not None]
    ps = [s["hyper_source"] for s in specs if s["hyper_source"] is not None]
    compiling = torch.compiler.is_compiling()
    key = (device, dtype) + tuple((t.data_ptr(), t._version) for t in qs + ps) if not compiling else None
    cache = model.__dict__.setdefault("_fused_cache", {})
    if key is not None and cache.get("key") == key:
        return cache["val"]
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    val = {"q": torch.stack(qs).to(dtype) if qs else None, "p": torch.stack(ps).to(dtype) if ps else None,
           "c": (torch.tensor([s["hyper_coefficient"] for s in specs[:-1]], dtype=cdt, device=device)
                 if ps else None)}
    if key is not None:
        cache.update(key=key, val=val)
    return val


def mlp_tensors(model, specs: list, device: torch.device, dtype: torch.dtype) -> dict:
    """The skip_mlp op's tensor arguments for ``model`` (a SkipMLP) from its ``layer_specs()``: w_in, b_in,
    w, b, q, p, c, w_out, b_out."""
    hidden = specs[1:-1]
    first, last = specs[0], specs[-1]
    width = model.width
    w = (torch.stack([s["weight"] for s in hidden]) if hidden else first["weight"].new_empty(0, width, width))
    b = None
    if first["bias"] is not None:
        b = torch.stack([s["bias"] for s in hidden]) if hidden else first["bias"].new_empty(0, width)
    return dict(w_in=first["weight"], b_in=first["bias"], w=w, b=b, **_fixed(model, specs, device, dtype),
                w_out=last["weight"], b_out=last["bias"])


def _why_not(model, specs: list, x: Tensor) -> Optional[str]:
    """Why the whole-MLP op cannot express this net (None if it can)."""
    if any(s["norm"] is not None for s in specs):
        return "BatchNorm layers (batchnorm_layers) are not fused"
    if in_functorch_transform(x, specs[0]["weight"]):
        return "torch.func transform active (custom ops have no functorch rules)"
    hidden, first, last = specs[1:-1], specs[0], specs[-1]
    if (first["skip"] != "none" or last["skip"] != "none" or last["activation"] != "identity"
            or any(s["skip"] != specs[1]["skip"] or s["activation"] != first["activation"] for s in hidden)):
        return "layers differ from the SkipMLP pattern (one skip kind and activation for every hidden layer)"
    return None


def fused_forward(model, x: Tensor, return_hidden: bool = False):
    """SkipMLP forward through the skip_mlp op, or None where it cannot run (reason logged once).

    Returns:
        logits [B, out_features], or (logits, [h_1 .. h_depth] each [B, width]) with return_hidden.
    """
    specs = model.layer_specs()
    why = _why_not(model, specs, x)
    name = None
    if why is None:
        name, why = resolve(model.layers[0].backend, x.device, x.dtype, model.width)
    if name is None:
        model.fused_path = f"layer ({why})"
        key = (why, x.device.type)
        if key not in _logged:
            _logged.add(key)
            log.info("SkipMLP(fused='mlp'): per-layer path: %s", why)
        return None
    t = mlp_tensors(model, specs, x.device, x.dtype)
    skip = specs[1]["skip"] if len(specs) > 2 else "none"
    precision = getattr(model, "precision", "auto")
    out, H, _ = skip_mlp_fwd(x.contiguous(), t["w_in"], t["b_in"], t["w"], t["b"], t["q"], t["p"], t["c"],
                             t["w_out"], t["b_out"], SKIP_CODES[skip], activation_code(specs[0]["activation"]),
                             name, precision)
    model.fused_path = f"mlp ({name})"
    key = ("ran", name, x.device.type, x.dtype)
    if key not in _logged:
        _logged.add(key)
        log.info("SkipMLP(fused='mlp'): whole-MLP op, backend=%s (device=%s, dtype=%s)", name, x.device.type,
                 str(x.dtype).replace("torch.", ""))
    return (out, list(H.unbind(0))) if return_hidden else out
