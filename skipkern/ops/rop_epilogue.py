"""rop_epilogue: the elementwise passes of the fused R-op (skipkern.hessian.hvp_fused), one pass each.

Shapes: the R-tensors out, skip_in, hsum, t2, rgh are [n, k, N] (n rows, k directions, width N); the
per-row factors d1 = act'(z), d2 = act''(z), gh = d loss / d h are [n, N] and broadcast over k.
    forward  (per hidden layer, in place): t2 = out * d2 (d2 given); out = out * d1 + skip_in + c * hsum
    backward: out = rgh * d1 + gh * t2 (either product may be absent, not both)

This module is the op's entry: it validates the arguments once, resolves the backend through the
registry (``backend=``, then SKIPKERN_BACKEND, then auto: cpp on CPU tensors, triton on CUDA, torch
otherwise; the registry logs which one ran) and calls that backend's launcher, which only checks the
memory layout its kernel needs. The reference is skipkern.ops.rop_epilogue_reference.
Not a torch custom op: it writes its inputs in place and runs inside the analytic R-op only (no autograd,
no torch.compile), where an eager custom-op call would cost more than the pass it fuses.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from skipkern import backends
from skipkern.backends.tensor_checks import check_tensors

__all__ = ["rop_epilogue_fwd", "rop_epilogue_bwd", "resolve_backend", "check_fwd", "check_bwd"]


def check_fwd(out: Tensor, d1: Tensor, d2: Optional[Tensor], skip_in: Optional[Tensor],
              hsum: Optional[Tensor], c: float, t2_out: Optional[Tensor]) -> tuple[int, int, int]:
    """Validate rop_epilogue_fwd's arguments; returns (n, k, N)."""
    if not isinstance(out, Tensor) or out.dim() != 3:
        raise ValueError(f"out must be a 3-D tensor [n, k, N], got "
                         f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    if not out.dtype.is_floating_point:
        raise TypeError(f"out must have a floating dtype, got {out.dtype}")
    if d1 is None:
        raise ValueError("d1 (act'(z) [n, N]) is required, got None")
    if hsum is not None and not isinstance(c, (int, float)):
        raise TypeError(f"c must be a Python float, got {type(c).__name__}")
    if t2_out is not None and d2 is None:
        raise ValueError("t2_out is given but d2 is None (t2 = out * d2 needs d2)")
    n, k, N = out.shape
    check_tensors("rop_epilogue", (("out", out, (n, k, N)), ("d1", d1, (n, N)), ("d2", d2, (n, N)),
                                   ("skip_in", skip_in, (n, k, N)), ("hsum", hsum, (n, k, N)),
                                   ("t2_out", t2_out, (n, k, N))), dtypes=None, contiguous=False)
    return n, k, N


def check_bwd(rgh: Optional[Tensor], d1: Optional[Tensor], gh: Optional[Tensor], t2: Optional[Tensor],
              out: Optional[Tensor]) -> tuple[int, int, int]:
    """Validate rop_epilogue_bwd's arguments; returns (n, k, N)."""
    if rgh is None and t2 is None:
        raise ValueError("rgh and t2 cannot both be None (the result would be zero)")
    if rgh is not None and d1 is None:
        raise ValueError("rgh is given but d1 is None (rgh * d1 needs d1)")
    if t2 is not None and gh is None:
        raise ValueError("t2 is given but gh is None (gh * t2 needs gh)")
    ref = rgh if rgh is not None else t2
    if not isinstance(ref, Tensor) or ref.dim() != 3:
        raise ValueError(f"{'rgh' if rgh is not None else 't2'} must be a 3-D tensor [n, k, N], got "
                         f"{list(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__}")
    if not ref.dtype.is_floating_point:
        raise TypeError(f"{'rgh' if rgh is not None else 't2'} must have a floating dtype, got {ref.dtype}")
    n, k, N = ref.shape
    check_tensors("rop_epilogue", (("rgh", rgh, (n, k, N)), ("t2", t2, (n, k, N)),
                                   ("d1", d1 if rgh is not None else None, (n, N)),
                                   ("gh", gh if t2 is not None else None, (n, N)), ("out", out, (n, k, N))),
                  dtypes=None, contiguous=False)
    return n, k, N


def resolve_backend(backend: Optional[str], device: torch.device, dtype: torch.dtype,
                    shape: Sequence[int]) -> str:
    """The backend that runs rop_epilogue on [n, k, N] = ``shape`` tensors of this device and dtype
    (``backend``: None/"auto" or a name; see skipkern.backends.resolve)."""
    return backends.resolve("rop_epilogue", backend, device, dtype, (tuple(shape),))


def rop_epilogue_fwd(out: Tensor, d1: Tensor, d2: Optional[Tensor] = None, skip_in: Optional[Tensor] = None,
                     hsum: Optional[Tensor] = None, c: float = 0.0, t2_out: Optional[Tensor] = None,
                     backend: Optional[str] = "auto") -> Optional[Tensor]:
    """In place on out [n, k, N]: t2 = out * d2; out = out * d1 + skip_in + c * hsum, in one pass.

    Args:
        out: [n, k, N] R z (the GEMM result), overwritten with R h of the next layer. Floating dtype; the
            cpp and triton kernels need every tensor contiguous.
        d1: [n, N] act'(z).   d2: [n, N] act''(z) or None.
        skip_in: [n, k, N] R h of the identity skip, or None.   hsum: [n, k, N] or None, scaled by c.
        t2_out: [n, k, N] buffer for t2 (allocated when None and d2 is given).
        backend: "auto", None, "torch", "cpp" or "triton".
    Returns:
        t2 [n, k, N] = (R z) * act''(z) when d2 is given, else None.
    """
    shape = check_fwd(out, d1, d2, skip_in, hsum, c, t2_out)
    name = resolve_backend(backend, out.device, out.dtype, shape)
    return backends.launcher(name).rop_epilogue_fwd(out, d1, d2, skip_in, hsum, c, t2_out)


def rop_epilogue_bwd(rgh: Optional[Tensor], d1: Optional[Tensor], gh: Optional[Tensor], t2: Optional[Tensor],
                     out: Optional[Tensor] = None, backend: Optional[str] = "auto") -> Tensor:
    """R delta = rgh * d1 + gh * t2 into out [n, k, N] (allocated when None), in one pass.

    Args:
        rgh: [n, k, N] R (d loss / d h) or None.   d1: [n, N] act'(z) (needed with rgh).
        gh: [n, N] d loss / d h (needed with t2).   t2: [n, k, N] act''(z) R z or None.
        backend: as in rop_epilogue_fwd.
    Returns:
        out [n, k, N].
    """
    shape = check_bwd(rgh, d1, gh, t2, out)
    ref = rgh if rgh is not None else t2
    name = resolve_backend(backend, ref.device, ref.dtype, shape)
    return backends.launcher(name).rop_epilogue_bwd(rgh, d1 if rgh is not None else None,
                                                    gh if t2 is not None else None, t2, out)
