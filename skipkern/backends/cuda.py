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

from skipkern.backends.tensor_checks import check_tensors, skip_linear_sizes
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
    if getattr(_C_cuda, "ABI", 1) != KERNEL_ABI:
        return False, (f"skipkern._C_cuda is a stale build (interface {getattr(_C_cuda, 'ABI', 1)}, expected "
                       f"{KERNEL_ABI}); rebuild with pip install -e .")
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
                    activation: int) -> tuple[Tensor, Tensor]:
    """Fused forward. x [B, K], weight [N, K], bias [N] or None, q [N, K] (dense skip) or None; contiguous,
    one CUDA device. skip, activation: codes of skipkern.reference.SKIP_CODES / ACTIVATION_CODES.

    Returns (y [B, N], z [B, N]): z = x W^T + b, y = act(z) + S(x).
    """
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
                    activation: int, has_bias: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Fused backward. grad_y, z [B, N]; x [B, K]; weight, q [N, K]; codes as in skip_linear_fwd.

    Returns (dx [B, K], dw [N, K], db [N] or None when has_bias is False).
    """
    b, k, n = _sizes(x, weight, q, skip)
    check_tensors("cuda", (("x", x, (b, k)), ("grad_y", grad_y, (b, n)), ("weight", weight, (n, k)),
                           ("z", z, (b, n)), ("q", q, (n, k))), _DTYPES)
    dx = torch.empty(b, k, dtype=x.dtype, device=x.device)
    dw = torch.empty(n, k, dtype=x.dtype, device=x.device)
    db = torch.empty(n, dtype=x.dtype, device=x.device) if has_bias else None
    if n == 0 or b == 0:
        dx.zero_(), dw.zero_()
        if db is not None:
            db.zero_()
        return dx, dw, db
    with torch.cuda.device(x.device):
        nbytes = _C_cuda.skip_linear_bwd_cuda_workspace_bytes(_DTYPES[x.dtype], b, k, n)
        ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
        _C_cuda.skip_linear_bwd_cuda(_DTYPES[x.dtype], grad_y.data_ptr(), x.data_ptr(), weight.data_ptr(),
                                     z.data_ptr(), _ptr(q), dx.data_ptr(), dw.data_ptr(), _ptr(db), ws.data_ptr(),
                                     b, k, n, skip, activation, torch.cuda.current_stream(x.device).cuda_stream)
    return dx, dw, db
