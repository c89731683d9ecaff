"""skip_linear benchmark under pytest-benchmark: providers side by side, modes forward / backward / full,
speed and peak memory.

Providers: "torch" (the plain-torch layer skipkern.reference.skip_linear_composite, eager: the baseline),
"torch.compile" (the same function compiled; compile time stays in the untimed warm-up), and the op
skipkern.ops.skip_linear with backend "cpp", "triton" or "cuda" (glue and autograd included). A provider
that cannot run here is skipped with its reason (Triton on CPU tensors is the interpreter, a correctness
tool, not measured). Modes: "forward" (no autograd graph), "backward" (the gradients of x, W, b from a
fixed grad_output, through a graph built once), "full" (forward with graph, then backward). Peak memory
(bytes above what is allocated before a call) goes to each row's extra_info, with the device, load average
and thread count. One benchmark group per (mode, shape), so the providers of a group sit side by side.

    python3 -m pytest bench/bench_skip_linear.py --benchmark-json=bench/results/skip_linear-<tag>.json
    pytest-benchmark compare --group-by=group --columns=min,median,iqr OLD.json NEW.json
    python3 -m pytest bench/bench_skip_linear.py -k "cpp and forward" --benchmark-min-rounds=20

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
from skipkern.ops import skip_linear  # noqa: E402
from skipkern.reference import skip_linear_composite  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float32
PROVIDERS = ("torch", "torch.compile", "cpp", "triton", "cuda")
MODES = ("forward", "backward", "full")
# (batch, width, skip): the paper's layer (500 x 128), a dense orthogonal skip, a wider and longer one.
SHAPES = ((500, 128, "identity"), (500, 128, "dense"), (4096, 512, "identity"))
_compiled = {}


def layer_fn(provider: str):
    """f(x, w, b, skip, activation) -> y for a provider; skips the test when it cannot run here."""
    if provider == "torch":
        return skip_linear_composite
    if provider == "torch.compile":
        if "f" not in _compiled:
            _compiled["f"] = torch.compile(skip_linear_composite)
        return _compiled["f"]
    skip_unless_backend_runs("skip_linear", provider, DEVICE, DTYPE)
    return lambda x, w, b, skip, act: skip_linear(x, w, b, skip, act, backend=provider)


def make_call(fn, mode: str, batch: int, width: int, skip: str, activation: str = "relu"):
    """(setup, call) of one mode, inputs made once (seeded). ``setup`` (None, or untimed before every call,
    returning call's arguments) builds the graph that "backward" differentiates: a compiled backward may
    run only once per graph (donated buffers), so every timed backward gets a fresh one."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, DTYPE)  # noqa: E731
    x, w, b, gy = r(batch, width), r(width, width) / width ** 0.5, r(width), r(batch, width)
    s = torch.linalg.qr(r(width, width).double())[0].to(DTYPE) if skip == "dense" else skip
    leaves = [t.requires_grad_() for t in (x, w, b)]
    if mode == "forward":
        def call():
            with torch.no_grad():
                return fn(x, w, b, s, activation)
        return None, call
    if mode == "backward":
        def setup():
            return (fn(x, w, b, s, activation),), {}

        def call(y):
            return torch.autograd.grad(y, leaves, gy)
        return setup, call

    def call():
        return torch.autograd.grad(fn(x, w, b, s, activation), leaves, gy)
    return None, call


@pytest.mark.parametrize("batch,width,skip", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_skip_linear(benchmark, provider, mode, batch, width, skip):
    setup, call = make_call(layer_fn(provider), mode, batch, width, skip)
    run_benchmark(benchmark, "skip_linear", provider, mode, setup, call, DEVICE, DTYPE, batch=batch, width=width,
                  skip=skip)
    if provider not in ("torch", "torch.compile"):
        assert backends.last_used("skip_linear") == provider  # the measured call ran that backend


if __name__ == "__main__":  # python bench/<this file> [pytest / pytest-benchmark options], or skipkern bench
    raise SystemExit(pytest.main([__file__, "-p", "no:cacheprovider", *sys.argv[1:]]))
