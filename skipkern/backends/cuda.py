"""The "cuda" backend: CUDA C++ kernels of skipkern._C_cuda (csrc/cuda/skip_linear_cuda.cu).

Built only where CUDA is usable (see setup.py). Launchers check, allocate outputs (and the backward's
partial-sum workspace) with torch, and pass raw device pointers plus the current stream, so the kernels
run in stream order with the surrounding torch work and under CUDA-graph capture. float32, float64,
float16 and bfloat16; the half types accumulate in float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from skipkern.backends.tensor_checks import check_tensors, ieee_only, skip_linear_sizes
from skipkern.reference import KERNEL_ABI

try:
    from skipkern import _C_cuda
    _IMPORT_ERROR = ""
except Exception as exc:  # not built on machines without CUDA: reported by available()
    _C_cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
           torch.bfloat16: "bfloat16"}
# Column tiles go on gridDim.y (<= 65535 tiles of 64), sizes are passed as int32.
_MAX_WIDTH = 65535 * 64
_MAX_INT = 2 ** 31 - 1


def available() -> tuple[bool, str]:
    """Whether skipkern._C_cuda imports and a CUDA device is visible to torch."""
    if _C_cuda is None:
        return False, (f"skipkern._C_cuda not built or not importable ({_IMPORT_ERROR}); it builds only where "
                       f"nvcc and a GPU are present (or SKIPKERN_FORCE_CUDA=1)")
    if getattr(_C_cuda, "ABI", 1) != KERNEL_ABI or not hasattr(_C_cuda, "SKIP_LINEAR_OPTIONAL_GRADS"):
        return False, (f"skipkern._C_cuda is a stale build (interface {getattr(_C_cuda, 'ABI', 1)}, expected "
                       f"{KERNEL_ABI} with optional backward outputs); rebuild with pip install -e .")
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (CPU-only torch or no GPU)"
    return True, f"CUDA kernels on {torch.cuda.get_device_name()}"


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    """skip_linear on CUDA tensors of float32/float64/float16/bfloat16 with widths < 65535 * 64."""
    if op != "skip_linear":
        return False, f"cuda backend has no op {op!r}"
    if device_type != "cuda":
        return False, f"cuda backend runs on cuda tensors, not {device_type}"
    if dtype not in _DTYPES:
        return False, f"cuda backend supports {sorted(_DTYPES.values())}, not {dtype}"
    if shapes:
        (b, k), (n, _) = shapes
        if max(k, n) > _MAX_WIDTH:
            return False, f"width {max(k, n)} exceeds the cuda kernels' limit {_MAX_WIDTH}; use backend='torch'"
        if b * max(k, n) > _MAX_INT or n * k > _MAX_INT:
            return False, f"sizes B={b}, K={k}, N={n} overflow the kernels' int32 indexing; use backend='torch'"
    return True, ""


def check_precision(precision: Optional[str], dtype: torch.dtype) -> str:
    """The kernels multiply on the CUDA cores in the accumulator type (no tensor cores), so fp32 is IEEE:
    precision None / "auto" / "ieee" pass, "tf32" raises ValueError (backend='triton' has TF32)."""
    return ieee_only("cuda", precision)


def _sizes(x: Tensor, weight: Tensor, q: Optional[Tensor], skip: int) -> tuple[int, int, int]:
    ok, reason = available()
    if not ok:
        raise RuntimeError(f"cuda backend unavailable: {reason}")
    b, k, n = skip_linear_sizes(x, weight, q, skip)
    if x.device.type != "cuda":
        raise ValueError(f"x must be a cuda tensor for the cuda backend, got device {x.device}")
    ok, reason = supports("skip_linear", "cuda", x.dtype, ((b, k), (n, k)))
    if not ok:
        raise ValueError(reason)
    return b, k, n


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def skip_linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: Optional[Tensor], skip: int,
                    activation: int, precision: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """Fused forward. x [B, K], weight [N, K], bias [N] or None, q [N, K] (dense skip) or None; contiguous,
    one CUDA device. skip, activation: codes of skipkern.reference.SKIP_CODES / ACTIVATION_CODES.
    precision: None / "auto" / "ieee" ("tf32" raises: see check_precision).

    Returns (y [B, N], z [B, N]): z = x W^T + b, y = act(z) + S(x).
    """
    check_precision(precision, x.dtype)
    b, k, n = _sizes(x, weight, q, skip)
    check_tensors("cuda", (("x", x, (b, k)), ("weight", weight, (n, k)), ("bias", bias, (n,)), ("q", q, (n, k))),
                  _DTYPES)
    y = torch.empty(b, n, dtype=x.dtype, device=x.device)
    z = torch.empty(b, n, dtype=x.dtype, device=x.device)
    if b == 0 or n == 0:
        return y, z
    with torch.cuda.device(x.device):
        _C_cuda.skip_linear_fwd_cuda(_DTYPES[x.dtype], x.data_ptr(), weight.data_ptr(), _ptr(bias), _ptr(q),
                                     y.data_ptr(), z.data_ptr(), b, k, n, skip, activation,
                                     torch.cuda.current_stream(x.device).cuda_stream)
    return y, z


def skip_linear_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, z: Tensor, q: Optional[Tensor], skip: int,
                    activation: int, has_bias: bool, needs_dx: bool = True, needs_dw: bool = True,
                    precision: Optional[str] = None) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Fused backward. grad_y, z [B, N]; x [B, K]; weight, q [N, K]; codes as in skip_linear_fwd.
    needs_dx False: the dx GEMM is not launched and dx comes back None; needs_dw False: dw is None (the dW
    GEMM still runs for db when has_bias, and not at all otherwise).

    Returns (dx [B, K] or None, dw [N, K] or None, db [N] or None when has_bias is False).
    """
    check_precision(precision, x.dtype)
    b, k, n = _sizes(x, weight, q, skip)
    check_tensors("cuda", (("x", x, (b, k)), ("grad_y", grad_y, (b, n)), ("weight", weight, (n, k)),
                           ("z", z, (b, n)), ("q", q, (n, k))), _DTYPES)
    dx = torch.empty(b, k, dtype=x.dtype, device=x.device) if needs_dx else None
    dw = torch.empty(n, k, dtype=x.dtype, device=x.device) if needs_dw else None
    db = torch.empty(n, dtype=x.dtype, device=x.device) if has_bias else None
    if n == 0 or b == 0:
        for t in (dx, dw, db):
            if t is not None:
                t.zero_()
        return dx, dw, db
    with torch.cuda.device(x.device):
        reduce = dw is not None or db is not None  # the dW GEMM's split partials live in the workspace
        nbytes = _C_cuda.skip_linear_bwd_cuda_workspace_bytes(_DTYPES[x.dtype], b, k, n) if reduce else 0
        ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
        _C_cuda.skip_linear_bwd_cuda(_DTYPES[x.dtype], grad_y.data_ptr(), x.data_ptr(), weight.data_ptr(),
                                     z.data_ptr(), _ptr(q), _ptr(dx), _ptr(dw), _ptr(db), ws.data_ptr(),
                                     b, k, n, skip, activation, torch.cuda.current_stream(x.device).cuda_stream)
    return dx, dw, db
