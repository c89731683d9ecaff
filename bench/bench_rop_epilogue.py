"""rop_epilogue benchmark under pytest-benchmark: the fused R-op's elementwise passes, providers side by side,
modes forward / backward / full, speed and peak memory.

Providers: "torch" (the reference skipkern.ops.rop_epilogue_reference, the torch ops the fused HVP ran
before the op existed: the baseline), "torch.compile" (the same functions compiled), and the op
skipkern.ops.rop_epilogue with backend "cpp" or "triton" (a provider that cannot run here is skipped with
its reason; Triton on CPU tensors is the interpreter, not measured). Modes: "forward" (in place on out:
t2 = out * d2; out = out * d1 + skip_in + c * hsum), "backward" (out = rgh * d1 + gh * t2), "full" (one
layer's forward then backward). Variants: "relu-residual" (act'' = 0: no t2; an identity skip) and
"tanh-hyper" (every operand: t2, identity skip, hyper-residual sum). Shapes [n, k, N]: a 500-row chunk of
the fused HVP with k = 16 and 64 directions at width 128, float64 (the Hessian's dtype). ``out`` is restored
untimed before every in-place call. One benchmark group per (mode, variant, shape).

    python3 -m pytest bench/bench_rop_epilogue.py --benchmark-json=bench/results/rop_epilogue-<tag>.json
    pytest-benchmark compare --group-by=group --columns=min,median,iqr OLD.json NEW.json

Also ``python3 bench/<this file> [options]`` or ``skipkern bench <name> [options]``. Not collected by the plain
``python3 -m pytest`` run (testpaths = tests). On a shared machine set OMP_NUM_THREADS=1: two-thread ops
stall whenever another process holds a core.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_benchmark, skip_unless_backend_runs  # noqa: E402
from skipkern import backends  # noqa: E402
from skipkern.ops import rop_epilogue_bwd, rop_epilogue_fwd  # noqa: E402
from skipkern.ops.rop_epilogue_reference import rop_epilogue_bwd_ref, rop_epilogue_fwd_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float64
PROVIDERS = ("torch", "torch.compile", "cpp", "triton")
MODES = ("forward", "backward", "full")
VARIANTS = ("relu-residual", "tanh-hyper")
SHAPES = ((500, 16, 128), (500, 64, 128))  # (n, k, N)
_compiled = {}


def epilogue_fns(provider: str):
    """(fwd, bwd) with the reference's signatures for a provider; skips the test when it cannot run here."""
    if provider == "torch":
        return rop_epilogue_fwd_ref, rop_epilogue_bwd_ref
    if provider == "torch.compile":
        if not _compiled:
            _compiled["f"] = (torch.compile(rop_epilogue_fwd_ref), torch.compile(rop_epilogue_bwd_ref))
        return _compiled["f"]
    skip_unless_backend_runs("rop_epilogue", provider, DEVICE, DTYPE)
    return (lambda *a: rop_epilogue_fwd(*a, backend=provider),
            lambda *a: rop_epilogue_bwd(*a, backend=provider))


def make_call(fwd, bwd, mode: str, variant: str, n: int, k: int, N: int):
    """(setup, call) of one mode: setup restores the in-place operand ``out`` (untimed) before each call."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DTYPE).to(DEVICE)  # noqa: E731
    hyper = variant == "tanh-hyper"
    out0, d1, skip_in = r(n, k, N), r(n, N), r(n, k, N)
    d2, hsum, t2 = (r(n, N), r(n, k, N), r(n, k, N)) if hyper else (None, None, None)
    rgh, gh, res = r(n, k, N), r(n, N), torch.empty(n, k, N, dtype=DTYPE, device=DEVICE)
    out, t2_buf = out0.clone(), (torch.empty_like(out0) if hyper else None)

    def restore():
        out.copy_(out0)
        return (), {}

    if mode == "forward":
        return restore, lambda: fwd(out, d1, d2, skip_in, hsum, 0.3, t2_buf)
    if mode == "backward":
        return None, lambda: bwd(rgh, d1, gh, t2, res)

    def full():
        t = fwd(out, d1, d2, skip_in, hsum, 0.3, t2_buf)
        return bwd(rgh, d1, gh, t, res)
    return restore, full


@pytest.mark.parametrize("n,k,N", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rop_epilogue(benchmark, provider, mode, variant, n, k, N):
    setup, call = make_call(*epilogue_fns(provider), mode, variant, n, k, N)
    run_benchmark(benchmark, "rop_epilogue", provider, mode, setup, call, DEVICE, DTYPE, variant=variant, n=n, k=k,
                  N=N)
    if provider in ("cpp", "triton"):
        assert backends.last_used("rop_epilogue") == provider  # the measured call ran that backend


if __name__ == "__main__":  # python bench/<this file> [pytest / pytest-benchmark options], or skipkern bench
    raise SystemExit(pytest.main([__file__, "-p", "no:cacheprovider", *sys.argv[1:]]))
