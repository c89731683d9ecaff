# The precision policy of the Triton kernels' fp32 dots, one place for every op.
#
# On the GPU an fp32 tl.dot runs on the tensor cores in TF32 (10-bit mantissa products, fp32 accumulation)
# unless the user opts out; the interpreter (CPU tensors) always computes IEEE fp32. fp64 dots are fp64;
# fp16/bf16 dots have half-precision operands and fp32 accumulation whatever the policy.
# Opt-out, strongest first: the op's ``precision="ieee"`` argument, then SKIPKERN_TRITON_TF32=0 in the
# environment. SKIPKERN_TRITON_TF32=1 (or precision="tf32") asks for TF32 explicitly.
"""fp32 dot precision policy of the Triton kernels: TF32 on the GPU by default, IEEE on request."""
from __future__ import annotations

import os
from typing import Optional

import torch

PRECISIONS = ("auto", "ieee", "tf32")
ENV = "SKIPKERN_TRITON_TF32"


def check_precision(precision: Optional[str]) -> str:
    """Normalise the ``precision`` argument (None means "auto"); raises ValueError on anything else."""
    p = "auto" if precision is None else precision
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (fp32 dots: 'tf32' tensor cores or 'ieee' fp32), "
                         f"got {precision!r}")
    return p


def dot_precision(dtype: torch.dtype, interpret: bool, precision: Optional[str] = None) -> str:
    """tl.dot ``input_precision`` for operands of ``dtype``.

    Args:
        dtype: operand dtype. Only float32 has a choice; every other dtype gets "ieee" (which Triton
            ignores for fp16/bf16: their products are exact in fp32 accumulation).
        interpret: True under the Triton interpreter, which computes IEEE fp32 whatever is asked.
        precision: "auto" / None (environment, else TF32), "ieee" or "tf32".
    """
    p = check_precision(precision)
    if dtype != torch.float32 or interpret:
        return "ieee"
    if p == "auto":
        env = os.environ.get(ENV, "").strip()
        if env not in ("", "0", "1"):
            raise ValueError(f"{ENV} must be 0 (IEEE fp32 dots) or 1 (TF32), got {env!r}")
        p = "ieee" if env == "0" else "tf32"
    return p
