"""The "torch" backend: the plain-PyTorch reference, runs anywhere (ops skip_linear and rop_epilogue)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from skipkern.backends.tensor_checks import ieee_only
from skipkern.ops.rop_epilogue_reference import rop_epilogue_bwd_ref, rop_epilogue_fwd_ref
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATIONS, SKIPS


def available() -> tuple[bool, str]:
    return True, "always available"


def supports(op: str, device_type: str, dtype: torch.dtype, shapes: Sequence) -> tuple[bool, str]:
    if not dtype.is_floating_point:
        return False, f"dtype {dtype} is not a floating type"
    return True, ""


def check_precision(precision: Optional[str], dtype: torch.dtype) -> str:
    """"tf32" raises ValueError; "ieee" needs torch's fp32 matmuls at "highest" (IEEE) precision for float32,
    since this backend runs torch's matmul as torch is configured (None / "auto": as configured)."""
    p = ieee_only("torch", precision)
    if p == "ieee" and dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        raise ValueError(f"precision='ieee' on the torch backend needs IEEE fp32 matmuls, but "
                         f"torch.get_float32_matmul_precision() is {torch.get_float32_matmul_precision()!r}; "
                         f"call torch.set_float32_matmul_precision('highest') or pass precision=None")
    return p


def skip_linear_fwd(x, weight, bias, q, skip: int, activation: int, precision: Optional[str] = None):
    """skip_linear_ref with the kinds given as codes (a code is the name's position in the table)."""
    check_precision(precision, x.dtype)
    return skip_linear_ref(x, weight, bias, q, SKIPS[skip], ACTIVATIONS[activation])


def skip_linear_bwd(grad_y, x, weight, z, q, skip: int, activation: int, has_bias: bool, needs_dx: bool = True,
                    needs_dw: bool = True, precision: Optional[str] = None):
    """skip_linear_bwd_ref; an output not needed (needs_dx, needs_dw, has_bias) is None and not computed."""
    check_precision(precision, x.dtype)
    return skip_linear_bwd_ref(grad_y, x, weight, z, q, SKIPS[skip], ACTIVATIONS[activation], has_bias,
                               needs_dx, needs_dw)


# ------------------------------------------------------------------ rop_epilogue (fused R-op elementwise passes)
rop_epilogue_fwd = rop_epilogue_fwd_ref
rop_epilogue_bwd = rop_epilogue_bwd_ref
