"""skip_linear: y = act(x @ W^T + b) + S(x), as the custom ops ``skipkern::skip_linear_fwd`` and
``skipkern::skip_linear_bwd``.

The forward op returns (y, z) with z the pre-activation, saved for backward. The backward op's own
autograd formula is the vjp of the plain-torch backward formula (``skip_linear_bwd_ref``), so double
backward (Hessian-vector products through these layers) works on every backend, and any higher order
runs through plain torch. Backends are resolved in Python before the op is called, so the op receives a
concrete backend name. The skip kind and the activation are validated once, here at the entry, and travel
as the integer codes of skipkern.reference's table (SKIP_CODES, ACTIVATION_CODES) through the ops to
every backend, with the fp32 dot ``precision`` ("auto", "ieee", "tf32"; checked against the backend at the
entry). The backward op computes only the gradients autograd asks for (ctx.needs_input_grad): no dx for
an input that needs none (the first layer of a net fed with data), no dW for a frozen weight.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from skipkern import backends
from skipkern.kernels.precision import check_precision
from skipkern.ops import _torch_compat as _compat
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref
from skipkern.reference import ACTIVATIONS, SKIP_CODES, SKIPS, activation_code, skip_linear_composite

__all__ = ["skip_linear", "normalize_skip"]

SkipArg = Union[None, str, Tensor]


# ---------------------------------------------------------------------------------------------- ops
@torch.library.custom_op("skipkern::skip_linear_fwd", mutates_args=())
def skip_linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: Optional[Tensor],
                    skip: int, activation: int, backend: str, precision: str) -> tuple[Tensor, Tensor]:
    """Forward. x [B, K], weight [N, K], bias [N]?, q [N, K]? -> (y [B, N], z [B, N]).
    skip, activation: codes of SKIP_CODES / ACTIVATION_CODES; precision: "auto", "ieee" or "tf32"."""
    return _fwd_impl(x, weight, bias, q, skip, activation, backend, precision)


def _fwd_impl(x, weight, bias, q, skip, activation, backend, precision):
    y, z = backends.launcher(backend).skip_linear_fwd(x, weight, bias, q, skip, activation, precision=precision)
    if y.data_ptr() == z.data_ptr():  # identity activation, no skip: outputs must not alias
        y = y.clone()
    return y, z


@skip_linear_fwd.register_fake
def _(x, weight, bias, q, skip, activation, backend, precision):
    out = x.new_empty(x.shape[0], weight.shape[0])
    return out, torch.empty_like(out)


@torch.library.custom_op("skipkern::skip_linear_bwd", mutates_args=())
def skip_linear_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, z: Tensor, q: Optional[Tensor],
                    skip: int, activation: int, has_bias: bool, needs_dx: bool, needs_dw: bool, backend: str,
                    precision: str) -> tuple[Tensor, Tensor, Tensor]:
    """Backward. Returns (dx [B, K], dW [N, K], db [N]); dx / dW are empty [0] (never computed) unless
    needs_dx / needs_dw; db is zeros when has_bias is False."""
    return _bwd_impl(grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision)


def _bwd_impl(grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision):
    dx, dw, db = backends.launcher(backend).skip_linear_bwd(
        grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, precision=precision)
    if db is None:
        db = weight.new_zeros(weight.shape[0])
    return (x.new_empty(0) if dx is None else dx), (weight.new_empty(0) if dw is None else dw), db


@skip_linear_bwd.register_fake
def _(grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision):
    return (torch.empty_like(x) if needs_dx else x.new_empty(0),
            torch.empty_like(weight) if needs_dw else weight.new_empty(0), weight.new_empty(weight.shape[0]))


# ----------------------------------------------------------------------------------------- autograd
def _fwd_setup_context(ctx, inputs, output):
    x, weight, bias, q, skip, activation, backend, precision = inputs
    _, z = output
    ctx.save_for_backward(x, weight, z, q)
    ctx.meta = (skip, activation, bias is not None, backend, precision)
    ctx.set_materialize_grads(False)


def _fwd_backward(ctx, grad_y, grad_z, bwd=None):
    x, weight, z, q = ctx.saved_tensors
    skip, activation, has_bias, backend, precision = ctx.meta
    need_x, need_w, need_b, need_q = ctx.needs_input_grad[:4]
    need_b = need_b and has_bias
    dx = dw = db = dq = None
    if grad_y is not None:
        if need_x or need_w or need_b:  # only the gradients autograd asks for (no dx for a data input)
            bwd = skip_linear_bwd if bwd is None else bwd
            dx, dw, db = bwd(grad_y.contiguous(), x, weight, z, q, skip, activation, need_b, need_x, need_w, backend,
                             precision)
            dx, dw, db = (dx if need_x else None), (dw if need_w else None), (db if need_b else None)
        if q is not None and need_q:
            dq = grad_y.transpose(0, 1) @ x
    if grad_z is not None:  # only in higher-order graphs: z = x W^T + b is linear
        if need_x:
            dx = grad_z @ weight if dx is None else dx + grad_z @ weight
        if need_w:
            gw = grad_z.transpose(0, 1) @ x
            dw = gw if dw is None else dw + gw
        if need_b:
            gb = grad_z.sum(0)
            db = gb if db is None else db + gb
    return dx, dw, db, dq, None, None, None, None


skip_linear_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _bwd_setup_context(ctx, inputs, output):
    grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision = inputs
    ctx.save_for_backward(grad_y, x, weight, z, q)
    ctx.meta = (skip, activation, has_bias, needs_dx, needs_dw)


def _bwd_backward(ctx, g_dx, g_dw, g_db):
    grad_y, x, weight, z, q = ctx.saved_tensors
    skip, activation, has_bias, needs_dx, needs_dw = ctx.meta

    def f(gy, xx, w, zz, qq):
        dx, dw, db = skip_linear_bwd_ref(gy, xx, w, zz, qq, SKIPS[skip], ACTIVATIONS[activation], True)
        return dx, dw, db

    # An output that was not computed (empty [0]) or not used has a zero cotangent.
    cot = (
        g_dx if (g_dx is not None and needs_dx) else torch.zeros_like(x),
        g_dw if (g_dw is not None and needs_dw) else torch.zeros_like(weight),
        g_db if (g_db is not None and has_bias) else weight.new_zeros(weight.shape[0]),
    )
    qq = q if q is not None else weight.new_zeros(0)
    _, vjp_fn = torch.func.vjp(lambda gy, xx, w, zz, qa: f(gy, xx, w, zz, q if q is None else qa),
                               grad_y, x, weight, z, qq)
    d_gy, d_x, d_w, d_z, d_q = vjp_fn(cot)
    return d_gy, d_x, d_w, d_z, (d_q if q is not None else None), None, None, None, None, None, None, None


skip_linear_bwd.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ------------------------------------------------------------------------------------ eager path
# The same forward/backward as the custom ops above, as autograd.Functions. A custom-op call costs
# ~3x a Function call in eager mode (measured: 30 us vs 13 us forward, 184 us vs 61 us forward+backward
# at a tiny shape), which at width 128 is more than the fused kernel saves. Eager calls therefore take
# this path; torch.compile traces the custom ops (schema, fake tensors, opcheck).
# Old-style forward(ctx, ...): a Function with setup_context binds its arguments through
# inspect.signature on every call (~40 us). These Functions never run inside torch.func transforms
# (skip_linear routes those to the composite, vmapped backwards to the custom op).
class _SkipLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, q, skip, activation, backend, precision):
        out = _fwd_impl(x, weight, bias, q, skip, activation, backend, precision)
        _fwd_setup_context(ctx, (x, weight, bias, q, skip, activation, backend, precision), out)
        return out

    @staticmethod
    def backward(ctx, grad_y, grad_z):
        # A vmapped backward (autograd.functional.hessian(vectorize=True), is_grads_batched) needs the
        # custom op, which functorch can loop over; a plain Function would see batched tensors.
        batched = _compat.in_functorch_transform(grad_y, grad_z) or any(
            t is not None and _compat.is_transformed(t) for t in (grad_y, grad_z))
        return _fwd_backward(ctx, grad_y, grad_z, None if batched else _SkipLinearBwdFn.apply)


class _SkipLinearBwdFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision):
        args = (grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw, backend, precision)
        out = _bwd_impl(*args)
        _bwd_setup_context(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx, g_dx, g_dw, g_db):
        return _bwd_backward(ctx, g_dx, g_dw, g_db)


# ------------------------------------------------------------------------------------- public entry
@_compat.assume_constant_result
def _resolve(backend: str, device: torch.device, dtype: torch.dtype, x_shape: tuple, w_shape: tuple,
             precision: str) -> str:
    # Backend choice is host-side Python (imports, env, warnings): torch.compile treats it as a constant.
    name = backends.resolve("skip_linear", backend, device, dtype, (x_shape, w_shape), precision=precision)
    backends.launcher(name).check_precision(precision, dtype)  # "tf32" where it cannot be honoured raises
    return name


def normalize_skip(skip: SkipArg) -> tuple[str, Optional[Tensor]]:
    """Map the user-facing skip argument to (kind, Q): None/"none" -> ("none", None),
    "identity" -> ("identity", None), a tensor Q -> ("dense", Q)."""
    if skip is None or (isinstance(skip, str) and skip == "none"):
        return "none", None
    if isinstance(skip, str):
        if skip == "identity":
            return "identity", None
        raise ValueError(f"skip must be None, 'none', 'identity' or a tensor Q of shape [out, in]; got {skip!r}")
    if isinstance(skip, Tensor):
        return "dense", skip
    raise TypeError(f"skip must be None, 'none', 'identity' or a torch.Tensor; got {type(skip).__name__}")


def _check_inputs(x: Tensor, weight: Tensor, bias: Optional[Tensor], kind: str, q: Optional[Tensor],
                  activation: str) -> int:
    """Every user-facing check of skip_linear, in one place; returns the activation's code."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must have a floating dtype (float32, float64, float16, bfloat16), got {x.dtype}; "
                        f"convert with x.float()")
    act = activation_code(activation)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must have shape [..., in_features={weight.shape[1]}] to match weight "
                         f"{tuple(weight.shape)}, got {tuple(x.shape)}")
    others = [("weight", weight)]
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape [out_features={weight.shape[0]}], got {tuple(bias.shape)}")
        others.append(("bias", bias))
    if kind == "identity" and weight.shape[0] != weight.shape[1]:
        raise ValueError(f"skip='identity' needs in_features == out_features, got weight of shape "
                         f"{tuple(weight.shape)}; use a tensor Q [out, in] (e.g. skip='orthogonal' in SkipLinear)")
    if kind == "dense":
        if q.shape != weight.shape:
            raise ValueError(f"skip tensor Q must have shape [out, in] = {tuple(weight.shape)}, got {tuple(q.shape)}")
        others.append(("skip", q))
    for name, t in others:
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; all of x, weight, bias and Q must "
                            f"share one dtype (cast with .to({x.dtype}))")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    return act


def skip_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, skip: SkipArg = None,
                activation: str = "relu", backend: str = "auto", precision: Optional[str] = None) -> Tensor:
    """y = act(x @ weight^T + bias) + S(x), fused.

    Args:
        x: [..., in] floating tensor (float32/float64 everywhere; float16/bfloat16 on GPU backends).
        weight: [out, in]. bias: [out] or None.
        skip: None (no skip), "identity" (S(x) = x, needs in == out) or a tensor Q [out, in]
            (S(x) = x @ Q^T; Q is treated as a constant unless it requires grad).
        activation: "relu", "identity", "tanh" or "gelu" (exact erf form).
        backend: "auto", "torch", "cpp", "triton" or "cuda" (see skipkern.backends).
        precision: the fp32 products of this call, forward and backward. None (or "auto"): the backend's
            default (triton: TF32 tensor-core dots on the GPU unless SKIPKERN_TRITON_TF32=0; every other
            backend: IEEE). "ieee": IEEE fp32 on every backend (torch: needs
            torch.get_float32_matmul_precision() == "highest"). "tf32": TF32 dots, triton only (its
            interpreter on CPU tensors stays IEEE); the other backends raise ValueError. Other dtypes
            are unaffected (fp64 dots are fp64; fp16/bf16 accumulate in fp32).

    Returns:
        y [..., out], same dtype and device as x.

    The backward computes only the gradients autograd needs: with x.requires_grad False (the first layer of
    a net fed with data) no dx is computed on any backend, nor dW for a weight that needs no gradient.
    """
    kind, q = normalize_skip(skip)
    act = _check_inputs(x, weight, bias, kind, q, activation)
    precision = check_precision(precision)
    if _compat.in_functorch_transform(x, weight, bias, q):
        # Custom ops carry no torch.func (grad/vmap/jvp) rules: inside a transform run the same math as
        # plain differentiable torch ops. Logged once as backend "torch (torch.func composite)".
        backends.launcher("torch").check_precision(precision, x.dtype)
        backends.note_fallback("skip_linear", "torch.func transform active: plain-torch composite")
        return skip_linear_composite(x, weight, bias, q if kind == "dense" else (None if kind == "none" else kind),
                                     activation)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    n, k = weight.shape
    if x2.shape[0] == 0 or n == 0 or k == 0:
        name, precision = "torch", "auto"  # empty work: every backend would return the same empty/zero result
    else:
        name = _resolve(backend, x.device, x.dtype, tuple(x2.shape), (n, k), precision)
    fwd = skip_linear_fwd if torch.compiler.is_compiling() else _SkipLinearFn.apply
    y, _ = fwd(x2.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
               None if q is None else q.contiguous(), SKIP_CODES[kind], act, name, precision)
    return y.reshape(*lead, n)
