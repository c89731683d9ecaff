"""skip_mlp: a whole SkipMLP (no BatchNorm) as one op, ``skipkern::skip_mlp_fwd`` / ``skipkern::skip_mlp_bwd``.

The forward op returns (logits, H, Z): the hidden representations H [L, B, W] and pre-activations Z [L, B, W]
are written once by the kernel and saved for the backward. Backends: "triton" (kernels/skip_mlp.py: one
launch for the forward of all layers, one for the backward through them, three for the weight gradients) and
"torch" (the plain reference, skipkern.ops.skip_mlp_reference). Gradients:
- the usual case (a cotangent on the logits only) runs the backward op;
- a cotangent on H or Z (return_hidden outputs used in the loss), or a gradient asked of the fixed skip or
  hyper matrices, runs the vjp of the reference forward: correct, not fused;
- double backward: the backward op's own formula is the vjp of the reference backward, so Hessian-vector
  products through the op work (as plain torch, not fused).
``SkipMLP(..., fused="mlp")`` calls the op through skipkern.nn.fused_mlp.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import Tensor

from skipkern.ops._torch_compat import in_functorch_transform
from skipkern.ops.skip_mlp_reference import skip_mlp_bwd_ref, skip_mlp_ref
from skipkern.reference import ACTIVATIONS, SKIP_CODES, SKIPS, activation_code

log = logging.getLogger("skipkern")

__all__ = ["skip_mlp", "resolve", "check_fused", "FUSED_MODES"]

FUSED_MODES = (None, "mlp")
_logged: set = set()


# ---------------------------------------------------------------------------------------------- ops
def _kernels():
    from skipkern.kernels import skip_mlp as k
    return k


@torch.library.custom_op("skipkern::skip_mlp_fwd", mutates_args=())
def skip_mlp_fwd(x: Tensor, w_in: Tensor, b_in: Optional[Tensor], w: Tensor, b: Optional[Tensor],
                 q: Optional[Tensor], p: Optional[Tensor], c: Optional[Tensor], w_out: Tensor,
                 b_out: Optional[Tensor], skip: int, activation: int, backend: str,
                 precision: str) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [B, C], H [L, B, W], Z [L, B, W]); skip, activation: codes of skipkern.reference's table."""
    if backend == "torch":
        return skip_mlp_ref(x, w_in, b_in, w, b, q, p, c, w_out, b_out, SKIPS[skip], ACTIVATIONS[activation])
    return _kernels().skip_mlp_fwd(x, w_in, b_in, w, b, q, p, c, w_out, b_out, skip, activation, precision)


@skip_mlp_fwd.register_fake
def _(x, w_in, b_in, w, b, q, p, c, w_out, b_out, skip, activation, backend, precision):
    L, m, width = w.shape[0] + 1, x.shape[0], w_in.shape[0]
    return x.new_empty(m, w_out.shape[0]), x.new_empty(L, m, width), x.new_empty(L, m, width)


@torch.library.custom_op("skipkern::skip_mlp_bwd", mutates_args=())
def skip_mlp_bwd(g_out: Tensor, x: Tensor, w_in: Tensor, w: Tensor, q: Optional[Tensor], p: Optional[Tensor],
                 c: Optional[Tensor], w_out: Tensor, H: Tensor, Z: Tensor, skip: int, activation: int,
                 has_bias: bool, needs_dx: bool, backend: str,
                 precision: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW_in, db_in, dW, db, dW_out, db_out); dx is empty [0] unless needs_dx, the db's unless has_bias."""
    if backend == "torch":
        out = skip_mlp_bwd_ref(g_out, x, w_in, w, q, p, c, w_out, H, Z, SKIPS[skip], ACTIVATIONS[activation],
                               has_bias, needs_dx)
    else:
        out = _kernels().skip_mlp_bwd(g_out, x, w_in, w, q, p, c, w_out, H, Z, skip, activation, has_bias,
                                      needs_dx, precision)
    return tuple(x.new_empty(0) if t is None else t for t in out)


@skip_mlp_bwd.register_fake
def _(g_out, x, w_in, w, q, p, c, w_out, H, Z, skip, activation, has_bias, needs_dx, backend, precision):
    e = x.new_empty(0)
    width, c_out = w_in.shape[0], w_out.shape[0]
    return (torch.empty_like(x) if needs_dx else e, torch.empty_like(w_in), x.new_empty(width) if has_bias else e,
            torch.empty_like(w), x.new_empty(w.shape[:2]) if has_bias else e, torch.empty_like(w_out),
            x.new_empty(c_out) if has_bias else e)


# ----------------------------------------------------------------------------------------- autograd
def _vjp(fn, primals: list, cotangents: tuple) -> list:
    """vjp of ``fn`` (plain torch) at ``primals`` (None entries stay None) for the given cotangents."""
    where = [i for i, t in enumerate(primals) if t is not None]

    def f(*ts):
        full = list(primals)
        for i, t in zip(where, ts):
            full[i] = t
        return fn(*full)

    with torch.enable_grad():
        out, vjp_fn = torch.func.vjp(f, *[primals[i] for i in where])
    cot = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(out, cotangents))
    grads = vjp_fn(cot)
    res: list = [None] * len(primals)
    for i, g in zip(where, grads):
        res[i] = g
    return res


def _fwd_setup_context(ctx, inputs, output):
    x, w_in, b_in, w, b, q, p, c, w_out, b_out, skip, activation, backend, precision = inputs
    ctx.save_for_backward(x, w_in, b_in, w, b, q, p, c, w_out, b_out, output[1], output[2])
    ctx.meta = (skip, activation, backend, precision)
    ctx.set_materialize_grads(False)


def _fwd_backward(ctx, g_out, g_H, g_Z):
    x, w_in, b_in, w, b, q, p, c, w_out, b_out, H, Z = ctx.saved_tensors
    skip, activation, backend, precision = ctx.meta
    need = ctx.needs_input_grad
    tail = (None,) * 4
    if g_H is None and g_Z is None and not (need[5] or need[6] or need[7]):
        if g_out is None:
            return (None,) * 10 + tail
        has_bias = b_in is not None
        dx, dw_in, db_in, dw, db, dw_out, db_out = skip_mlp_bwd(
            g_out.contiguous(), x, w_in, w, q, p, c, w_out, H, Z, skip, activation, has_bias, need[0], backend,
            precision)
        nb = (lambda t: t if has_bias else None)
        return (dx if need[0] else None, dw_in, nb(db_in), dw, nb(db), None, None, None, dw_out, nb(db_out)) + tail
    sk, act = SKIPS[skip], ACTIVATIONS[activation]
    grads = _vjp(lambda *a: skip_mlp_ref(*a, sk, act), [x, w_in, b_in, w, b, q, p, c, w_out, b_out],
                 (g_out, g_H, g_Z))
    return tuple(g if n else None for g, n in zip(grads, need[:10])) + tail


skip_mlp_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _bwd_setup_context(ctx, inputs, output):
    g_out, x, w_in, w, q, p, c, w_out, H, Z, skip, activation, has_bias, needs_dx, backend, precision = inputs
    ctx.save_for_backward(g_out, x, w_in, w, q, p, c, w_out, H, Z)
    ctx.meta = (SKIPS[skip], ACTIVATIONS[activation], has_bias, needs_dx)
    ctx.set_materialize_grads(False)


def _bwd_backward(ctx, *cot):
    sk, act, has_bias, needs_dx = ctx.meta

    def f(*a):
        return tuple(t for t in skip_mlp_bwd_ref(*a, sk, act, has_bias, needs_dx) if t is not None)

    present = [(needs_dx, 0), (True, 1), (has_bias, 2), (True, 3), (has_bias, 4), (True, 5), (has_bias, 6)]
    grads = _vjp(f, list(ctx.saved_tensors), tuple(cot[i] for keep, i in present if keep))
    need = ctx.needs_input_grad
    return tuple(g if n else None for g, n in zip(grads, need[:10])) + (None,) * 6


skip_mlp_bwd.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ------------------------------------------------------------------------------------- public entry
def _log_once(key: tuple, msg: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


def _triton_status(device: torch.device, dtype: torch.dtype, width: int) -> tuple[bool, str]:
    try:
        k = _kernels()
    except Exception as exc:  # noqa: BLE001 - a missing or broken triton is a reason, not a crash
        return False, f"triton not importable ({type(exc).__name__}: {exc})"
    if device.type == "cpu" and not k.INTERPRET:
        return False, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before importing skipkern)"
    if device.type == "cuda" and k.INTERPRET:
        return False, "Triton is in interpreter mode (TRITON_INTERPRET=1): it would run GPU tensors on the host"
    if device.type not in ("cpu", "cuda"):
        return False, f"device type {device.type!r} is not supported (cuda, or cpu through the interpreter)"
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False, f"dtype {dtype} is not supported (float32, float64, float16, bfloat16)"
    if dtype == torch.bfloat16 and k.INTERPRET:
        return False, "bfloat16 dots are wrong in the Triton interpreter"
    if width > k.MAX_WIDTH:
        return False, f"width {width} > {k.MAX_WIDTH}, the widest the whole-MLP kernel keeps on chip"
    return True, ""


def resolve(backend: Optional[str], device: torch.device, dtype: torch.dtype, width: int) -> tuple[Optional[str], str]:
    """Which skip_mlp backend runs: ("triton" | "torch", "") or (None, why the per-layer path must run).

    backend: "auto"/None (then SKIPKERN_BACKEND): triton on CUDA tensors where it can run; "triton" (also
    CPU tensors through the interpreter; raises RuntimeError if it cannot run); "torch" (the reference);
    any other backend name has no whole-MLP kernel (per-layer path).
    """
    req = backend if backend not in (None, "auto") else (os.environ.get("SKIPKERN_BACKEND", "").strip() or "auto")
    if req == "torch":
        return "torch", ""
    if req not in ("auto", "triton"):
        return None, f"backend {req!r} has no whole-MLP kernel (triton and torch do)"
    ok, why = _triton_status(torch.device(device), dtype, width)
    if req == "triton":
        if not ok:
            raise RuntimeError(f"skip_mlp: backend 'triton' cannot run here: {why}. Use backend='torch', or "
                               f"fused=None for the per-layer path")
        return "triton", ""
    if ok and torch.device(device).type == "cpu":
        return None, "Triton on CPU tensors (the interpreter) runs only when asked for by name (backend='triton')"
    return ("triton", "") if ok else (None, why)


def check_fused(fused: Optional[str]) -> Optional[str]:
    """Validate SkipMLP's ``fused`` argument (None: per-layer ops; "mlp": the whole-MLP kernel)."""
    if fused not in FUSED_MODES:
        raise ValueError(f"fused must be None (one op per layer) or 'mlp' (one fused op for the whole net), "
                         f"got {fused!r}")
    return fused


def skip_mlp(x: Tensor, w_in: Tensor, b_in: Optional[Tensor], w: Tensor, b: Optional[Tensor], q: Optional[Tensor],
             p: Optional[Tensor], c: Optional[Tensor], w_out: Tensor, b_out: Optional[Tensor], skip: str = "identity",
             activation: str = "relu", backend: str = "auto", precision: str = "auto") -> tuple[Tensor, Tensor]:
    """The whole net of skipkern.ops.skip_mlp_reference in one fused op.

    Args:
        x [B, K0]; w_in [W, K0]; b_in [W]?; w [L-1, W, W]; b [L-1, W]?; q [L-1, W, W] (skip "dense");
            p [L-2, W, W] and c [L] (hyper-residual, or both None); w_out [C, W]; b_out [C]?. One dtype and
            device (c: float64 for float64 inputs, else float32).
        skip: "none", "identity" or "dense". activation: "relu", "identity", "tanh", "gelu".
        backend: "auto" (triton on CUDA), "triton" or "torch". precision: fp32 dots, "auto" (TF32 on the GPU
            unless SKIPKERN_TRITON_TF32=0), "ieee" or "tf32".

    Returns:
        (logits [B, C], H [L, B, W]: the hidden representations h_1 .. h_L).
    """
    from skipkern.kernels.precision import check_precision
    if skip not in SKIPS:
        raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
    act = activation_code(activation)
    precision = check_precision(precision)
    if (skip == "dense") != (q is not None):
        raise ValueError(f"q must be given exactly when skip='dense' (skip={skip!r}, q given: {q is not None})")
    name, why = resolve(backend, x.device, x.dtype, w_in.shape[0])
    if name is None:
        raise RuntimeError(f"skip_mlp cannot run with backend={backend!r} here: {why}")
    if in_functorch_transform(x, w_in, w, w_out):  # custom ops carry no torch.func rules: plain torch
        out, H, _ = skip_mlp_ref(x, w_in, b_in, w, b, q, p, c, w_out, b_out, skip, activation)
        return out, H
    out, H, _ = skip_mlp_fwd(x, w_in, b_in, w, b, q, p, c, w_out, b_out, SKIP_CODES[skip], act, name, precision)
    return out, H
