"""Plain-PyTorch reference of rop_epilogue, the elementwise passes of the fused R-op
(skipkern.hessian.hvp_fused): the spec, the "torch" backend and the test oracle.

R-tensors out, skip_in, hsum, t2, rgh are [n, k, N]; the per-row factors d1 = act'(z), d2 = act''(z),
gh = d loss / d h are [n, N] and broadcast over the k directions:
    forward (in place)  t2 = out * d2;  out = out * d1 + skip_in + c * hsum
    backward            out = rgh * d1 + gh * t2
These are the torch ops the fused R-op ran before the op existed; the cpp and triton kernels fuse them
into one pass (their rounding may differ by an FMA). Arguments are validated by skipkern.ops.rop_epilogue.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["rop_epilogue_fwd_ref", "rop_epilogue_bwd_ref"]


def rop_epilogue_fwd_ref(out: torch.Tensor, d1: torch.Tensor, d2: Optional[torch.Tensor] = None,
                         skip_in: Optional[torch.Tensor] = None, hsum: Optional[torch.Tensor] = None,
                         c: float = 0.0, t2_out: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """In place on out [n, k, N]: t2 = out * d2; out = out * d1 + skip_in + c * hsum.

    Args:
        out: [n, k, N] R z (the GEMM result), overwritten with R h of the next layer.
        d1: [n, N] act'(z).   d2: [n, N] act''(z) or None.
        skip_in: [n, k, N] R h of the identity skip, or None.   hsum: [n, k, N] or None, scaled by c.
        t2_out: [n, k, N] buffer for t2 (allocated when None and d2 is given).
    Returns:
        t2 [n, k, N] = (R z) * act''(z) when d2 is given, else None.
    """
    t2 = None
    if d2 is not None:
        t2 = torch.mul(out, d2[:, None, :], out=t2_out) if t2_out is not None else out * d2[:, None, :]
    out.mul_(d1[:, None, :])
    if skip_in is not None:
        out.add_(skip_in)
    if hsum is not None:
        out.add_(hsum, alpha=c)
    return t2


def rop_epilogue_bwd_ref(rgh: Optional[torch.Tensor], d1: Optional[torch.Tensor], gh: Optional[torch.Tensor],
                         t2: Optional[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """R delta = rgh * d1 + gh * t2 into out [n, k, N] (allocated when None).

    Args:
        rgh: [n, k, N] R (d loss / d h) or None.   d1: [n, N] act'(z) (needed with rgh).
        gh: [n, N] d loss / d h (needed with t2).   t2: [n, k, N] act''(z) R z or None.
    Returns:
        out [n, k, N].
    """
    ref = rgh if rgh is not None else t2
    if out is None:
        out = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
    if rgh is not None:
        torch.mul(rgh, d1[:, None, :], out=out)
        if t2 is not None:
            out.addcmul_(gh[:, None, :], t2)
    else:
        torch.mul(t2, gh[:, None, :], out=out)
    return out
