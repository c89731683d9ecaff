# rop_epilogue in Triton: the elementwise passes of the fused R-op (skipkern.ops.rop_epilogue), one pass.
#
# Shapes (contiguous, one dtype): out, skip, hsum, t2, rgh [n, k, N]; d1, d2, gh [n, N] (broadcast over k).
#   forward  _rop_fwd_kernel: t2 = out * d2 (HAS_D2); out = out * d1 + skip + c * hsum, in place
#   backward _rop_bwd_kernel: out = rgh * d1 + gh * t2 (HAS_RGH / HAS_T2; at least one)
# Grid: one program per BLOCK consecutive elements of the flat [n * k * N] view; element e reads the
# factor at (e // (k * N)) * N + e % N. c (hyper coefficient) comes in as a 1-element tensor of the data
# dtype: a Python float argument would be typed fp32 and round the fp64 path. int32 offsets: the launcher
# refuses tensors of 2**31 elements or more.
"""Triton kernels and launchers for rop_epilogue (see the block comment above)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from skipkern.backends.tensor_checks import check_tensors

INT32_LIMIT = 2**31 - 1
_DTYPES = (torch.float32, torch.float64)


@triton.jit
def _rop_fwd_kernel(out_ptr, d1_ptr, d2_ptr, skip_ptr, hsum_ptr, t2_ptr, c_ptr, total, kN, N,
                    HAS_D2: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_HSUM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    foffs = (offs // kN) * N + offs % N  # row i of the [n, N] factors
    v = tl.load(out_ptr + offs, mask=mask, other=0.0)
    if HAS_D2:
        tl.store(t2_ptr + offs, v * tl.load(d2_ptr + foffs, mask=mask, other=0.0), mask=mask)
    acc = v * tl.load(d1_ptr + foffs, mask=mask, other=0.0)
    if HAS_SKIP:
        acc += tl.load(skip_ptr + offs, mask=mask, other=0.0)
    if HAS_HSUM:
        acc += tl.load(c_ptr) * tl.load(hsum_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def _rop_bwd_kernel(rgh_ptr, d1_ptr, gh_ptr, t2_ptr, out_ptr, total, kN, N,
                    HAS_RGH: tl.constexpr, HAS_T2: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    foffs = (offs // kN) * N + offs % N
    if HAS_RGH:
        acc = tl.load(rgh_ptr + offs, mask=mask, other=0.0) * tl.load(d1_ptr + foffs, mask=mask, other=0.0)
        if HAS_T2:
            acc += tl.load(gh_ptr + foffs, mask=mask, other=0.0) * tl.load(t2_ptr + offs, mask=mask, other=0.0)
    else:
        acc = tl.load(gh_ptr + foffs, mask=mask, other=0.0) * tl.load(t2_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc, mask=mask)


INTERPRET = type(_rop_fwd_kernel).__name__ == "InterpretedFunction"  # fixed when this module loads
# The interpreter runs each program as numpy ops: few large blocks are fastest there.
_BLOCK = 8192 if INTERPRET else 1024


def _check(specs: tuple) -> None:
    """Layout for the flat-indexed kernels (arguments were validated by skipkern.ops.rop_epilogue):
    contiguous, one dtype and device, CPU tensors only in the interpreter, int32-indexable."""
    check_tensors("triton", specs, _DTYPES)
    name, t, _ = next(s for s in specs if s[1] is not None)
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before skipkern.kernels."
                         "rop_epilogue is imported)")
    if t.numel() > INT32_LIMIT:
        raise ValueError(f"{name} has {t.numel()} elements, over the int32 indexing of the kernel (2**31)")


def rop_epilogue_fwd(out: torch.Tensor, d1: torch.Tensor, d2: Optional[torch.Tensor],
                     skip_in: Optional[torch.Tensor], hsum: Optional[torch.Tensor], c: float,
                     t2_out: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """In place on out [n, k, N]: t2 = out * d2; out = out * d1 + skip_in + c * hsum. Returns t2 or None.

    d1, d2 [n, N]; skip_in, hsum, t2_out [n, k, N]; contiguous float32/float64.
    """
    n, k, N = out.shape
    _check((("out", out, (n, k, N)), ("d1", d1, (n, N)), ("d2", d2, (n, N)), ("skip_in", skip_in, (n, k, N)),
            ("hsum", hsum, (n, k, N)), ("t2_out", t2_out, (n, k, N))))
    t2 = None if d2 is None else (t2_out if t2_out is not None else torch.empty_like(out))
    total = out.numel()
    if total == 0:
        return t2
    c_t = torch.full((1,), float(c) if hsum is not None else 0.0, dtype=out.dtype, device=out.device)
    _rop_fwd_kernel[(triton.cdiv(total, _BLOCK),)](
        out, d1, d2 if d2 is not None else out, skip_in if skip_in is not None else out,
        hsum if hsum is not None else out, t2 if t2 is not None else out, c_t, total, k * N, N,
        HAS_D2=d2 is not None, HAS_SKIP=skip_in is not None, HAS_HSUM=hsum is not None, BLOCK=_BLOCK)
    return t2


def rop_epilogue_bwd(rgh: Optional[torch.Tensor], d1: Optional[torch.Tensor], gh: Optional[torch.Tensor],
                     t2: Optional[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out [n, k, N] = rgh * d1 + gh * t2 (either product may be absent). rgh, t2, out [n, k, N]; d1 (with
    rgh), gh (with t2) [n, N]; contiguous float32/float64."""
    ref = rgh if rgh is not None else t2
    if rgh is None:
        d1 = None
    if t2 is None:
        gh = None
    n, k, N = ref.shape
    _check((("rgh", rgh, (n, k, N)), ("t2", t2, (n, k, N)), ("d1", d1, (n, N)), ("gh", gh, (n, N)),
            ("out", out, (n, k, N))))
    if out is None:
        out = torch.empty_like(ref)
    total = out.numel()
    if total == 0:
        return out
    _rop_bwd_kernel[(triton.cdiv(total, _BLOCK),)](
        rgh if rgh is not None else ref, d1 if d1 is not None else gh, gh if gh is not None else d1,
        t2 if t2 is not None else ref, out, total, k * N, N,
        HAS_RGH=rgh is not None, HAS_T2=t2 is not None, BLOCK=_BLOCK)
    return out
