"""The "torch" backend: the plain-PyTorch reference, runs anywhere."""
from __future__ import annotations

from typing import Sequence

import torch

from skipkern.reference import skip_linear_bwd_ref, skip_linear_ref


def available() -> tuple[bool, str]:
    return True, "always available"


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    if not dtype.is_floating_point:
        return False, f"dtype {dtype} is not a floating type"
    return True, ""


def skip_linear_fwd(x, weight, bias, q, skip: str, activation: str):
    return skip_linear_ref(x, weight, bias, q, skip, activation)


def skip_linear_bwd(grad_y, x, weight, z, q, skip: str, activation: str, has_bias: bool):
    return skip_linear_bwd_ref(grad_y, x, weight, z, q, skip, activation, has_bias)
