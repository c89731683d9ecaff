"""The "triton" backend: Triton kernels from ``skipkern.kernels.skip_linear`` and ``.rop_epilogue``.

Runs CUDA tensors on the GPU, or CPU tensors through the Triton interpreter when ``TRITON_INTERPRET=1``
was set before the kernels were imported (tests, CI; slow). float32/float64 everywhere; float16/bfloat16
on the GPU only. fp32 dots use TF32 on the GPU unless ``SKIPKERN_TRITON_TF32=0`` or ``precision="ieee"``
(kernels/precision.py; the interpreter is always IEEE);
``SKIPKERN_TRITON_AUTOTUNE=1`` times the GPU tile sizes once per problem shape (kernels/tuning.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import logging

import torch

log = logging.getLogger("skipkern")

try:  # a missing or broken triton must show up as a reason, not as an import error of the registry
    import triton as _triton

    from skipkern.kernels import rop_epilogue as _rop
    from skipkern.kernels import skip_linear as _k
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # noqa: BLE001 - any failure (ImportError, driver probing) means "unavailable"
    _k = _rop = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.float16, torch.bfloat16)


def available() -> tuple[bool, str]:
    """(True, how it runs) when triton imports and either a CUDA device exists or the interpreter is on."""
    if _k is None:
        return False, f"triton not importable ({_IMPORT_ERROR})"
    if _k.INTERPRET:
        return True, f"triton {_triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors, slow"
    if torch.cuda.is_available():
        return True, f"triton {_triton.__version__} on CUDA"
    return False, ("no CUDA device, and TRITON_INTERPRET was not 1 when skipkern.kernels.skip_linear was "
                   "imported (set it before importing skipkern to run Triton on CPU tensors)")


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    """Whether the Triton kernels run ``op`` for this device type, dtype and shapes ((B, K), (N, K)
    for skip_linear; ((n, k, N),) for rop_epilogue)."""
    if op == "rop_epilogue":
        return _supports_rop(device_type, dtype, shapes)
    if op != "skip_linear":
        return False, f"the triton backend implements skip_linear and rop_epilogue, not {op!r}"
    ok, reason = available()
    if not ok:
        return False, reason
    if device_type == "cpu" and not _k.INTERPRET:
        return False, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before import)"
    if device_type == "cuda" and _k.INTERPRET:
        return False, "Triton is in interpreter mode (TRITON_INTERPRET=1): it would run GPU tensors on the host"
    if device_type not in ("cpu", "cuda"):
        return False, f"device type {device_type!r} is not supported (cuda, or cpu through the interpreter)"
    if dtype in _HALVES and device_type != "cuda":
        return False, f"{dtype} runs only on CUDA (bf16 tl.dot is wrong in the interpreter); use float32"
    if dtype not in _FLOATS + _HALVES:
        return False, f"dtype {dtype} is not supported (float32, float64; float16, bfloat16 on CUDA)"
    if len(shapes) == 2:
        (b, k), (n, _) = shapes
        if max(b * n, b * k, n * k) > _k.INT32_LIMIT:
            return False, f"B={b}, N={n}, K={k} exceeds the int32 indexing of the Triton kernels (2**31 elements)"
    return True, ""


_noted: set = set()


def check_precision(precision: Optional[str], dtype: torch.dtype) -> str:
    """Every precision runs: None / "auto" (TF32 fp32 dots on the GPU unless SKIPKERN_TRITON_TF32=0), "ieee",
    "tf32". The interpreter computes IEEE fp32 whatever is asked; a "tf32" request there is logged once."""
    from skipkern.kernels.precision import check_precision as normalise

    p = normalise(precision)
    if p == "tf32" and _k is not None and _k.INTERPRET and "interp" not in _noted:
        _noted.add("interp")
        log.info("skip_linear: precision='tf32' under the Triton interpreter runs IEEE fp32 dots (no TF32 on CPU)")
    return p


def skip_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], q: Optional[torch.Tensor],
                    skip: int, activation: int, precision: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, N], z [B, N]) from x [B, K], weight [N, K], bias [N]?, q [N, K]?; skip / activation codes;
    precision of the fp32 dots (see kernels.skip_linear)."""
    return _k.skip_linear_fwd(x, weight, bias, q, skip, activation, precision=precision)


def skip_linear_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor,
                    q: Optional[torch.Tensor], skip: int, activation: int, has_bias: bool, needs_dx: bool = True,
                    needs_dw: bool = True, precision: Optional[str] = None
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dx [B, K], dW [N, K], db [N]), None where not needed: needs_dx False launches no dx kernel
    (see kernels.skip_linear.skip_linear_bwd)."""
    return _k.skip_linear_bwd(grad_y, x, weight, z, q, skip, activation, has_bias, precision=precision,
                              needs_dx=needs_dx, needs_dw=needs_dw)


# ------------------------------------------------------------------ rop_epilogue (fused R-op elementwise passes)
def _supports_rop(device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    """rop_epilogue: CUDA tensors, or CPU tensors through the interpreter; float32/float64; < 2**31 elements."""
    ok, reason = available()
    if not ok:
        return False, reason
    if device_type == "cpu" and not _rop.INTERPRET:
        return False, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before import)"
    if device_type == "cuda" and _rop.INTERPRET:
        return False, "Triton is in interpreter mode (TRITON_INTERPRET=1): it would run GPU tensors on the host"
    if device_type not in ("cpu", "cuda"):
        return False, f"device type {device_type!r} is not supported (cuda, or cpu through the interpreter)"
    if dtype not in _FLOATS:
        return False, f"rop_epilogue supports float32 and float64, not {dtype}"
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= int(s)
        if numel > _rop.INT32_LIMIT:
            return False, f"shape {tuple(shape)} exceeds the int32 indexing of the kernel (2**31 elements)"
    return True, ""


def rop_epilogue_fwd(out: torch.Tensor, d1: torch.Tensor, d2: Optional[torch.Tensor],
                     skip_in: Optional[torch.Tensor], hsum: Optional[torch.Tensor], c: float,
                     t2_out: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """In place on out [n, k, N]: t2 = out * d2; out = out * d1 + skip_in + c * hsum (see kernels.rop_epilogue)."""
    return _rop.rop_epilogue_fwd(out, d1, d2, skip_in, hsum, c, t2_out)


def rop_epilogue_bwd(rgh: Optional[torch.Tensor], d1: Optional[torch.Tensor], gh: Optional[torch.Tensor],
                     t2: Optional[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out [n, k, N] = rgh * d1 + gh * t2 (see kernels.rop_epilogue)."""
    return _rop.rop_epilogue_bwd(rgh, d1, gh, t2, out)
