"""Shared test helpers: the tolerance table, which backends a test runs on (and SKIPKERN_REQUIRE), inputs
and comparisons against the float64 references."""
from __future__ import annotations

import os
from typing import Optional

import pytest
import torch

import skipkern

# One row per dtype: (rtol, atol, why). Results are compared with a float64 reference computed from the
# same (rounded) inputs. A sum over the batch (dW, db; B up to 4096) widens atol by max(1, terms / 16):
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


def ensure_backend(name: str, device: str = "cpu") -> None:
    """Skip when backend ``name`` is missing here (unbuilt, not importable, no device, no interpreter), or
    fail instead when SKIPKERN_REQUIRE lists it."""
    status = {b.name: b for b in skipkern.backends.available()}[name]
    if not status.available:
        msg = f"backend {name} unavailable: {status.reason}"
        if name in required_backends():
            pytest.fail(msg + " (required by SKIPKERN_REQUIRE)")
        pytest.skip(msg)


def require(name: str, op: str = "skip_linear", device: str = "cpu", dtype: torch.dtype = torch.float64,
            shapes: tuple = ()) -> None:
    """ensure_backend, then skip unless backend ``name`` runs ``op`` on ``device``/``dtype``: a dtype or
    device the backend does not support by design is a plain skip, never a failure."""
    ensure_backend(name, device)
    ok, reason = skipkern.backends.can_run(name, op, device, dtype, shapes)
    if not ok:
        pytest.skip(f"backend {name} does not run {op} on {device}/{dtype}: {reason}")


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


def launcher_params() -> list:
    """(backend, device) pairs whose skip_linear launchers are tested: every CPU backend, the cuda backend
    (skipped without a GPU, or failing under SKIPKERN_REQUIRE=cuda), triton on the GPU when there is one
    and else in the CPU interpreter, and the torch reference on the GPU too when there is one."""
    gpu = torch.cuda.is_available()
    pairs = [("torch", "cpu"), ("cpp", "cpu"), ("triton", "cuda" if gpu else "cpu"), ("cuda", "cuda")]
    pairs += [("torch", "cuda")] if gpu else []
    return [pytest.param(b, d, id=f"{b}-{d}") for b, d in pairs]


def compare_skip_linear_launcher(mod, device: str, dtype: torch.dtype, b: int, k: int, n: int, skip: str,
                                 act: str, bias: bool = True, seed: int = 0, **launch) -> None:
    """A backend's skip_linear launchers on fresh inputs (skip_linear_inputs, cast to dtype and device)
    against the float64 reference; see check_skip_linear_launcher."""
    x, w, bb, q, gy = (cast(t, dtype, device) for t in skip_linear_inputs(b, k, n, skip, bias, seed))
    check_skip_linear_launcher(mod, x, w, bb, q, gy, skip, act, **launch)


def check_skip_linear_launcher(mod, x: torch.Tensor, w: torch.Tensor, bb: Optional[torch.Tensor],
                               q: Optional[torch.Tensor], gy: torch.Tensor, skip: str, act: str, **launch) -> None:
    """Launchers ``mod.skip_linear_fwd / _bwd`` on these tensors (any strides the backend takes) against the
    float64 reference on the same values: forward (y, z), then the backward at the reference's z rounded
    to the dtype (so relu's mask is the same on both sides): dx, dW, db. ``launch``: extra launcher
    arguments (Triton's blocks / split)."""
    from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
    from skipkern.reference import ACTIVATION_CODES, SKIP_CODES

    dtype, (b, k), n, has_bias = x.dtype, x.shape, w.shape[0], bb is not None
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    sk, ac = SKIP_CODES[skip], ACTIVATION_CODES[act]
    what = f"{dtype} B={b} K={k} N={n} skip={skip} act={act} bias={has_bias}"
    y, z = mod.skip_linear_fwd(x, w, bb, q, sk, ac, **{k_: v for k_, v in launch.items() if k_ == "blocks"})
    y_ref, z_ref = skip_linear_ref(f64(x), f64(w), f64(bb), f64(q), skip, act)
    assert y.dtype == dtype and y.shape == (b, n) and z.shape == (b, n) and y.is_contiguous(), what
    assert_close(z, z_ref, dtype, f"z {what}")
    assert_close(y, y_ref, dtype, f"y {what}")
    z_in = z_ref.to(dtype)
    got = mod.skip_linear_bwd(gy, x, w, z_in, q, sk, ac, has_bias, **launch)
    ref = skip_linear_bwd_ref(f64(gy), f64(x), f64(w), f64(z_in), f64(q), skip, act, has_bias)
    for name, a, r, terms in zip(("dx", "dW", "db"), got, ref, (1, b, b)):  # dW, db: sums over the batch
        if r is None:
            assert a is None, f"{name} should be None without a bias ({what})"
        else:
            assert a.dtype == dtype, what
            assert_close(a, r, dtype, f"{name} {what}", terms=terms)


def sigint_default() -> None:
    """``preexec_fn`` for a subprocess that a test stops with SIGINT: a runner that starts the tests in the
    background (``cmd &`` without job control) passes SIGINT on as ignored, and Python then never raises
    KeyboardInterrupt; the default disposition lets the child install its handler as under a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

