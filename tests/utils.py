"""Shared test helpers: the tolerance table, which backends a test runs on (and SKIPKERN_REQUIRE), inputs
and comparisons against the float64 references."""
from __future__ import annotations

import os
from typing import Optional

import pytest
import torch

import skipkern

# One row per dtype: (rtol, atol, why). Results are compared with a float64 reference computed from the
# same (rounded) inputs. A sum over many terms (dW, db over the batch) widens atol by max(1, terms / 16):
# its rounding error grows with the number of terms while the entries stay O(1).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10, "float64 accumulation; only the summation order differs"),
    torch.float32: (2e-4, 2e-5, "float32 accumulation over K <= 520 terms (Triton fp32 dots are IEEE here)"),
    torch.float16: (2e-2, 2e-2, "fp16 operands and stores (11-bit mantissa), fp32 accumulation"),
    torch.bfloat16: (5e-2, 5e-2, "bf16 operands and stores (8-bit mantissa), fp32 accumulation"),
}


def required_backends() -> set:
    """Backends named in SKIPKERN_REQUIRE (e.g. "cpp,triton"): a test that cannot run one fails."""
    return {b.strip() for b in os.environ.get("SKIPKERN_REQUIRE", "").split(",") if b.strip()}


def backend_params(device: str = "cpu") -> list:
    """One pytest param per registered backend that runs on ``device``, available here or not: the test
    calls ``require`` (or ``ensure_backend``), which skips an unavailable one, or fails when it is required."""
    return [pytest.param(b.name, id=b.name) for b in skipkern.backends.available() if device in b.devices]


def require(name: str, op: str = "skip_linear", device: str = "cpu", dtype: torch.dtype = torch.float64,
            shapes: tuple = ()) -> None:
    """Skip unless backend ``name`` runs ``op`` on ``device``/``dtype``. A backend that is missing here
    (unbuilt, not importable, no device, no interpreter) fails the test instead when SKIPKERN_REQUIRE lists
    it; a dtype or device the backend does not support by design is a plain skip."""
    status = {b.name: b for b in skipkern.backends.available()}[name]
    if not status.available:
        msg = f"backend {name} unavailable: {status.reason}"
        if name in required_backends():
            pytest.fail(msg + " (required by SKIPKERN_REQUIRE)")
        pytest.skip(msg)
    ok, reason = skipkern.backends.can_run(name, op, device, dtype, shapes)
    if not ok:
        pytest.skip(f"backend {name} does not run {op} on {device}/{dtype}: {reason}")


def ensure_backend(name: str, device: str = "cpu") -> None:
    """Skip (or fail, if required) when backend ``name`` is unavailable."""
    status = {b.name: b for b in skipkern.backends.available()}[name]
    if not status.available:
        msg = f"backend {name} unavailable: {status.reason}"
        if name in required_backends():
            pytest.fail(msg + " (required by SKIPKERN_REQUIRE)")
        pytest.skip(msg)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "",
                 terms: int = 1, equal_nan: bool = False) -> None:
    """actual (any dtype) against the float64 ``expected`` within TOLERANCES[dtype]; ``terms``: the length
    of the sums behind each entry (widens atol, see TOLERANCES)."""
    rtol, atol, _ = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol * max(1.0, terms / 16),
                               equal_nan=equal_nan, msg=lambda m: f"{what}: {m}")


def cast(t: Optional[torch.Tensor], dtype: torch.dtype, device: str = "cpu") -> Optional[torch.Tensor]:
    """t as a fresh tensor of ``dtype`` on ``device`` (None stays None)."""
    return None if t is None else t.to(device=device, dtype=dtype, copy=True)


def skip_linear_inputs(b: int, k: int, n: int, skip: str, bias: bool = True, seed: int = 0) -> tuple:
    """float64 (x [B, K], W [N, K], b [N]?, Q [N, K]?, grad_y [B, N]), weights scaled by 1/sqrt(K) to keep
    the pre-activations O(1); Q only for skip "dense"."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    s = 1.0 / max(k, 1) ** 0.5
    x, w = r(b, k), r(n, k) * s
    bb = r(n) if bias else None
    q = r(n, k) * s if skip == "dense" else None
    return x, w, bb, q, r(b, n)
