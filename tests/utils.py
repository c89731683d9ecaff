"""Shared test helpers: which backends to test on which device, tolerances, comparisons."""
from __future__ import annotations

import os

import pytest
import torch

import skipkern

# One row per dtype: (rtol, atol, why).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10, "float64 accumulation; only summation order differs"),
    torch.float32: (2e-4, 2e-5, "float32 accumulation over K <= 257 terms (Triton fp32 dots are IEEE unless SKIPKERN_TRITON_TF32=1)"),
    torch.float16: (2e-2, 2e-2, "fp16 operands, fp32 accumulation"),
    torch.bfloat16: (5e-2, 5e-2, "bf16 operands (8-bit mantissa), fp32 accumulation"),
}


def required_backends() -> set:
    return {b.strip() for b in os.environ.get("SKIPKERN_REQUIRE", "").split(",") if b.strip()}


def backend_params(device: str = "cpu"):
    """pytest params for every backend that can run on ``device``: unavailable ones are skipped, or
    fail when listed in SKIPKERN_REQUIRE."""
    out = []
    for b in skipkern.backends.available():
        if device not in b.devices:
            continue
        if b.name == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        out.append(pytest.param(b.name, id=b.name))
    return out


def ensure_backend(name: str, device: str = "cpu") -> None:
    """Skip (or fail, if required) when backend ``name`` is unavailable."""
    status = {b.name: b for b in skipkern.backends.available()}[name]
    if not status.available:
        msg = f"backend {name} unavailable: {status.reason}"
        if name in required_backends():
            pytest.fail(msg + " (required by SKIPKERN_REQUIRE)")
        pytest.skip(msg)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    rtol, atol, _ = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")
