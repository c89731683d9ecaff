"""The "cpp" backend: C++/OpenMP CPU kernels of skipkern._C (csrc/skip_linear.cpp, csrc/rop_epilogue.cpp).

Launchers check, allocate with torch and pass raw data pointers; the C++ never sees a torch tensor.
float32 and float64 on CPU tensors; the threads are OpenMP's (torch.set_num_threads sets both pools,
they share one libgomp).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from skipkern.backends.tensor_checks import check_tensors, ieee_only, skip_linear_sizes
from skipkern.reference import KERNEL_ABI

try:
    from skipkern import _C
    _IMPORT_ERROR = ""
except Exception as exc:  # a missing or broken build must be reported, not raised at import
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
# SKIP_LINEAR_OPTIONAL_GRADS: the backward skips a null dx / dW (an older build would write through it).
_KERNELS = ("skip_linear_fwd_cpu", "skip_linear_bwd_cpu", "cpu_kernel_info", "SKIP_LINEAR_OPTIONAL_GRADS")
_ROP_KERNELS = ("rop_epilogue_fwd_cpu", "rop_epilogue_bwd_cpu")  # checked per op: an old build keeps skip_linear
_MISSING = [] if _C is None else [k for k in _KERNELS if not hasattr(_C, k)]
_STALE = _C is not None and getattr(_C, "ABI", 1) != KERNEL_ABI
_ISA = _C.cpu_kernel_info()["isa"] if _C is not None and not _MISSING else ""


def available() -> tuple[bool, str]:
    """Whether skipkern._C imports and exports the CPU kernels."""
    if _C is None:
        return False, f"skipkern._C failed to import ({_IMPORT_ERROR}); rebuild with pip install -e ."
    if _MISSING:
        return False, f"skipkern._C lacks {_MISSING} (stale build?); rebuild with pip install -e ."
    if _STALE:
        return False, (f"skipkern._C is a stale build (interface {getattr(_C, 'ABI', 1)}, expected {KERNEL_ABI}); "
                       f"rebuild with python3 setup.py build_ext --inplace or pip install -e .")
    return True, f"C++ {_ISA}, {torch.get_num_threads()} OpenMP threads"  # cheap: runs on every resolve


def kernel_info() -> dict:
    """Build facts of the CPU kernels (SIMD ISA, threads, tile sizes); empty when unavailable."""
    return dict(_C.cpu_kernel_info()) if _C is not None and hasattr(_C, "cpu_kernel_info") else {}


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    """skip_linear and rop_epilogue on CPU tensors of float32/float64, any sizes."""
    if op not in ("skip_linear", "rop_epilogue"):
        return False, f"cpp backend has no op {op!r}"
    if op == "rop_epilogue" and any(not hasattr(_C, k) for k in _ROP_KERNELS):
        return False, f"skipkern._C lacks {list(_ROP_KERNELS)} (stale build?); rebuild with pip install -e ."
    if device_type != "cpu":
        return False, f"cpp backend runs on cpu tensors, not {device_type}"
    if dtype not in _DTYPES:
        return False, f"cpp backend supports float32 and float64, not {dtype}"
    return True, ""


def check_precision(precision: Optional[str], dtype: torch.dtype) -> str:
    """fp32 products here are IEEE: precision None / "auto" / "ieee" pass, "tf32" raises ValueError."""
    return ieee_only("cpp", precision)


def _sizes(x: Tensor, weight: Tensor, q: Optional[Tensor], skip: int) -> tuple[int, int, int]:
    if _C is None:
        raise RuntimeError(f"cpp backend unavailable: {available()[1]}")
    return skip_linear_sizes(x, weight, q, skip)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def skip_linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: Optional[Tensor], skip: int,
                    activation: int, precision: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """Fused forward. x [B, K], weight [N, K], bias [N] or None, q [N, K] (dense skip) or None; contiguous
    CPU float32/float64. skip, activation: codes of skipkern.reference.SKIP_CODES / ACTIVATION_CODES.
    precision: None / "auto" / "ieee" ("tf32" raises: see check_precision).

    Returns (y [B, N], z [B, N]): z = x W^T + b, y = act(z) + S(x).
    """
    check_precision(precision, x.dtype)
    b, k, n = _sizes(x, weight, q, skip)
    check_tensors("cpp", (("x", x, (b, k)), ("weight", weight, (n, k)), ("bias", bias, (n,)), ("q", q, (n, k))),
                  _DTYPES)
    y = torch.empty(b, n, dtype=x.dtype)
    z = torch.empty(b, n, dtype=x.dtype)
    if b == 0 or n == 0:
        return y, z
    _C.skip_linear_fwd_cpu(_DTYPES[x.dtype], x.data_ptr(), weight.data_ptr(), _ptr(bias), _ptr(q),
                           y.data_ptr(), z.data_ptr(), b, k, n, skip, activation)
    return y, z


def skip_linear_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, z: Tensor, q: Optional[Tensor], skip: int,
                    activation: int, has_bias: bool, needs_dx: bool = True, needs_dw: bool = True,
                    precision: Optional[str] = None) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Fused backward. grad_y, z [B, N]; x [B, K]; weight, q [N, K]; codes as in skip_linear_fwd.
    needs_dx / needs_dw False: that output is not computed (the kernel skips its GEMM) and comes back None.

    Returns (dx [B, K] or None, dw [N, K] or None, db [N] or None when has_bias is False).
    """
    check_precision(precision, x.dtype)
    b, k, n = _sizes(x, weight, q, skip)
    check_tensors("cpp", (("x", x, (b, k)), ("grad_y", grad_y, (b, n)), ("weight", weight, (n, k)),
                          ("z", z, (b, n)), ("q", q, (n, k))), _DTYPES)
    dx = torch.empty(b, k, dtype=x.dtype) if needs_dx else None
    dw = torch.empty(n, k, dtype=x.dtype) if needs_dw else None
    db = torch.empty(n, dtype=x.dtype) if has_bias else None
    if n == 0 or b == 0:  # nothing flows back (k == 0 still has a db, computed by the kernel)
        for t in (dx, dw, db):
            if t is not None:
                t.zero_()
        return dx, dw, db
    _C.skip_linear_bwd_cpu(_DTYPES[x.dtype], grad_y.data_ptr(), x.data_ptr(), weight.data_ptr(), z.data_ptr(),
                           _ptr(q), _ptr(dx), _ptr(dw), _ptr(db), b, k, n, skip, activation)
    return dx, dw, db


# ------------------------------------------------------------------ rop_epilogue (fused R-op elementwise passes)
def rop_epilogue_fwd(out: Tensor, d1: Tensor, d2: Optional[Tensor], skip_in: Optional[Tensor],
                     hsum: Optional[Tensor], c: float, t2_out: Optional[Tensor] = None) -> Optional[Tensor]:
    """One pass, in place: t2 = out * d2; out = out * d1 + skip_in + c * hsum (skipkern.ops.rop_epilogue).

    out, skip_in, hsum, t2_out [n, k, N]; d1, d2 [n, N]; contiguous CPU float32/float64.
    Returns t2 [n, k, N] (t2_out, or a new tensor) when d2 is given, else None.
    """
    n, k, N = out.shape
    check_tensors("cpp", (("out", out, (n, k, N)), ("d1", d1, (n, N)), ("d2", d2, (n, N)),
                          ("skip_in", skip_in, (n, k, N)), ("hsum", hsum, (n, k, N)), ("t2_out", t2_out, (n, k, N))),
                  _DTYPES)
    t2 = None if d2 is None else (t2_out if t2_out is not None else torch.empty_like(out))
    if out.numel():
        _C.rop_epilogue_fwd_cpu(_DTYPES[out.dtype], out.data_ptr(), d1.data_ptr(), _ptr(d2), _ptr(skip_in),
                                _ptr(hsum), _ptr(t2), float(c) if hsum is not None else 0.0, n, k, N)
    return t2


def rop_epilogue_bwd(rgh: Optional[Tensor], d1: Optional[Tensor], gh: Optional[Tensor], t2: Optional[Tensor],
                     out: Optional[Tensor] = None) -> Tensor:
    """One pass: out = rgh * d1 + gh * t2 (skipkern.ops.rop_epilogue). rgh, t2, out [n, k, N]; d1, gh [n, N]
    (d1 only with rgh, gh only with t2); contiguous CPU float32/float64."""
    ref = rgh if rgh is not None else t2
    n, k, N = ref.shape
    check_tensors("cpp", (("rgh", rgh, (n, k, N)), ("t2", t2, (n, k, N)), ("d1", d1, (n, N)), ("gh", gh, (n, N)),
                          ("out", out, (n, k, N))), _DTYPES)
    if out is None:
        out = torch.empty(n, k, N, dtype=ref.dtype)
    if out.numel():
        _C.rop_epilogue_bwd_cpu(_DTYPES[ref.dtype], _ptr(rgh), _ptr(d1), _ptr(gh), _ptr(t2), out.data_ptr(), n, k, N)
    return out
