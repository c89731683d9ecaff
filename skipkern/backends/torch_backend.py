"""The "torch" backend: the plain-PyTorch reference, runs anywhere (ops skip_linear and rop_epilogue)."""
from __future__ import annotations

from typing import Sequence

import torch

from skipkern.ops.rop_epilogue_reference import rop_epilogue_bwd_ref, rop_epilogue_fwd_ref
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATIONS, SKIPS


def available() -> tuple[bool, str]:
    return True, "always available"


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    if not dtype.is_floating_point:
        return False, f"dtype {dtype} is not a floating type"
    return True, ""


def skip_linear_fwd(x, weight, bias, q, skip: int, activation: int):
    """skip_linear_ref with the kinds given as codes (a code is the name's position in the table)."""
    return skip_linear_ref(x, weight, bias, q, SKIPS[skip], ACTIVATIONS[activation])


def skip_linear_bwd(grad_y, x, weight, z, q, skip: int, activation: int, has_bias: bool):
    return skip_linear_bwd_ref(grad_y, x, weight, z, q, SKIPS[skip], ACTIVATIONS[activation], has_bias)


# ------------------------------------------------------------------ rop_epilogue (fused R-op elementwise passes)
rop_epilogue_fwd = rop_epilogue_fwd_ref
rop_epilogue_bwd = rop_epilogue_bwd_ref
