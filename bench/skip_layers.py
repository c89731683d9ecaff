"""Benchmark: forward and forward+backward of SkipLinear and SkipMLP on every provider usable here.

Providers (per device):
  torch          the same math in plain torch ops (skipkern.reference.skip_linear_composite per layer):
                 "torch eager", the baseline of every ratio
  torch.compile  torch.compile of that function (default mode; compile time excluded)
  <backend>      the skipkern modules with backend=<backend> (cpp on CPU; cuda, triton on GPU): the user's
                 path, custom op + autograd glue included
  <backend>-kernels  the same backend's launchers chained by hand (forward, then the backward of each
                 layer in reverse), no autograd: the kernels' own cost, for comparison with the glue

Modes: forward (under torch.no_grad) and fwd+bwd (loss gradient from a fixed grad_output, parameter
gradients cleared untimed before each call). Times are medians of repeated calls after warm-up; the
calls of all providers of one configuration are interleaved round-robin, so that load from other
processes on a shared machine falls on all of them alike; the garbage collector is off inside timed
calls (as in timeit) and runs between rounds; and a configuration whose medians sit far
above their minima (another process took a core) is measured again (--attempts); rows record the
attempt, its median/min ratio and the load average.

    python bench/skip_layers.py            # full run (a few minutes on 2 CPU cores)
    python bench/skip_layers.py --quick    # one small configuration per model
Writes bench/results/skip_layers-<device>-<date>.json (see bench/common.py).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (add_result_args, check_tree, env_info, format_table, measure, summarize,  # noqa: E402
                          write_results)
from skipkern import backends  # noqa: E402
from skipkern.nn import SkipLinear, SkipMLP  # noqa: E402
from skipkern.ops.skip_linear import normalize_skip  # noqa: E402
from skipkern.reference import SKIP_CODES, activation_code, skip_linear_composite  # noqa: E402

MODES = ("forward", "fwd+bwd")
DISTURBED = 1.5  # a median above this multiple of its minimum marks a run disturbed by other load


def eager_layers(layers) -> Callable:
    """Plain-torch forward through SkipLinear layers (their parameters and skip buffers)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = skip_linear_composite(x, layer.weight, layer.bias, layer.skip_arg, layer.activation)
        return x
    return run


def kernel_chain(name: str, layers) -> Callable:
    """Forward (and, with grad_y, backward) through the backend's launchers, no autograd."""
    launch = backends.launcher(name)
    spec = []
    for layer in layers:
        kind, q = normalize_skip(layer.skip_arg)
        spec.append((layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), SKIP_CODES[kind],
                     q, activation_code(layer.activation)))

    def run(x: torch.Tensor, grad_y: Optional[torch.Tensor] = None):
        saved = []  # (input, z) per layer, kept only when a backward follows (as autograd would)
        for w, b, kind, q, act in spec:
            q = None if q is None else q.detach()
            y, z = launch.skip_linear_fwd(x, w, b, q, kind, act)
            if grad_y is not None:
                saved.append((x, z))
            x = y
        if grad_y is None:
            return x
        g = grad_y
        for (w, b, kind, q, act), (xin, z) in zip(reversed(spec), reversed(saved)):
            g, _, _ = launch.skip_linear_bwd(g, xin, w, z, None if q is None else q.detach(), kind, act,
                                             b is not None)
        return g
    return run


def build(model: str, batch: int, width: int, skip: str, depth: int, backend: str, device: str):
    """The module under test, with the same seed for every provider (identical parameters)."""
    kw = dict(backend=backend, device=device)
    if model == "SkipLinear":
        mod = SkipLinear(width, width, skip=skip, seed=0, **kw)
        layers = [mod]
    else:
        mod = SkipMLP(width, width, depth, 10, arch=skip, seed=0, **kw)
        layers = list(mod.layers)
    return mod, layers


def providers_for(device: str, with_compile: bool, only: Optional[set]) -> list:
    names = ["torch"] + (["torch.compile"] if with_compile else [])
    for b in backends.available():
        if b.available and b.name != "torch" and device in b.devices and not (b.name == "triton" and device == "cpu"):
            names += [b.name, f"{b.name}-kernels"]
    return [n for n in names if only is None or n in only]


def _callables(prov: str, model: str, batch: int, width: int, skip: str, depth: int, device: str,
               x: torch.Tensor, grad_y: torch.Tensor) -> dict:
    """{mode: (call, setup)} for one provider; every provider gets identical parameters (seed 0)."""
    backend = prov if prov in backends.BACKENDS else "torch"  # other providers only use the parameters
    mod, layers = build(model, batch, width, skip, depth, backend, device)
    params = list(mod.parameters())
    xin = x.clone().requires_grad_(model == "SkipLinear")  # SkipLinear: dx too; MLP: data needs none
    if prov == "torch":
        f = eager_layers(layers)
    elif prov == "torch.compile":
        f = torch.compile(eager_layers(layers))
    elif prov.endswith("-kernels"):
        f = kernel_chain(prov[: -len("-kernels")], layers)
    else:
        f = mod

    def clear():
        for p in params:
            p.grad = None
        xin.grad = None

    def forward():
        with torch.no_grad():
            return f(x)

    def fwd_bwd():
        if prov.endswith("-kernels"):
            return f(x, grad_y)
        f(xin).backward(grad_y)

    return {"forward": (forward, clear), "fwd+bwd": (fwd_bwd, clear)}


def bench_case(model: str, batch: int, width: int, skip: str, depth: int, device: str, providers: list,
               budget: float) -> list:
    """Times every (provider, mode) of one configuration. Calls are interleaved round-robin across
    providers, so load from other processes on a shared machine spreads evenly over all of them."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, width, generator=g).to(device)
    grad_y = torch.randn(batch, width if model == "SkipLinear" else 10, generator=g).to(device)
    if "torch.compile" in providers:
        # Every configuration compiles the same function code: start each from an empty dynamo cache,
        # or the recompile limit would silently send later configurations back to eager.
        torch._dynamo.reset()
    calls = {}
    for prov in providers:
        for mode, (call, setup) in _callables(prov, model, batch, width, skip, depth, device, x, grad_y).items():
            measure(call, device=device, setup=setup, warmup=2, min_repeats=1, max_repeats=1)  # warm-up/compile
            calls[(prov, mode)] = (call, setup)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {key: [] for key in calls}
    # As timeit does: no cyclic garbage collection inside timed calls. Its cost scales with every live
    # Python object of the process (torch.compile leaves millions), not with the op being timed.
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while min(len(t) for t in times.values()) < 5 or (
                time.perf_counter() - start < budget * len(calls) and min(len(t) for t in times.values()) < 200):
            for key, (call, setup) in calls.items():
                setup()
                sync()
                t0 = time.perf_counter()
                call()
                sync()
                times[key].append((time.perf_counter() - t0) * 1e3)
            gc.collect(0)  # the young generation only, between rounds, untimed
    finally:
        gc.enable()
    rows = []
    for (prov, mode), ts in times.items():
        rows.append(dict(model=model, batch=batch, width=width, depth=depth if model == "SkipMLP" else 1,
                         skip=skip, mode=mode, provider=prov, **summarize(ts)))
    for mode in MODES:
        base = next(r["median_ms"] for r in rows if r["mode"] == mode and r["provider"] == "torch")
        for r in rows:
            if r["mode"] == mode:
                r["speedup_vs_eager"] = base / r["median_ms"]
    for r in sorted(rows, key=lambda r: r["mode"]):
        print(f"  {model:10s} B={batch:<5d} W={width:<4d} {skip:10s} {r['mode']:8s} {r['provider']:14s} "
              f"{r['median_ms']:9.3f} ms  x{r['speedup_vs_eager']:.2f}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small configuration per model, short budget")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile provider")
    ap.add_argument("--providers", default=None, help="comma-separated subset of providers")
    ap.add_argument("--budget", type=float, default=None, help="seconds of repeats per measurement")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--attempts", type=int, default=3,
                    help="repeat a configuration whose timings look disturbed by other processes")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (also the cpp kernels' OpenMP threads); default: torch's")
    ap.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    ap.add_argument("--only", default=None,
                    help="comma-separated configurations MODEL:B:W:SKIP, e.g. SkipLinear:4096:256:identity")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the measured configurations' rows in today's results file")
    add_result_args(ap)
    args = ap.parse_args(argv)
    name = "skip_layers" if not args.threads else f"skip_layers-{args.threads}thread"
    if not args.no_save:
        try:
            check_tree(name, args.allow_dirty)  # before the run, not after it
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None

    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.providers.split(",")) if args.providers else None
    providers = providers_for(args.device, not args.no_compile, only)
    if args.quick:
        cases = [("SkipLinear", 500, 128, "identity"), ("SkipMLP", 500, 128, "residual")]
        budget = args.budget or 0.3
    else:
        cases = [("SkipLinear", b, w, s) for s in ("identity", "orthogonal") for b in (500, 4096)
                 for w in (128, 256, 512)]
        cases += [("SkipMLP", b, w, "residual") for b in (500, 4096) for w in (128, 256, 512)]
        budget = args.budget or 1.0
    if args.only:
        wanted = {tuple(c.split(":")) for c in args.only.split(",")}
        cases = [c for c in cases if (c[0], str(c[1]), str(c[2]), c[3]) in wanted]
        if not cases:
            raise SystemExit(f"--only matched no configuration: {args.only}")
    env = env_info()  # the load average here is the one at the start; write_results records the end
    print(f"device={args.device} ({env.get('gpu', env['cpu_model'])}), torch {env['torch']} with "
          f"{env['torch_threads']} threads, providers: {', '.join(providers)}", flush=True)
    rows = []
    for model, batch, width, skip in cases:
        # On a shared machine another process can take a core mid-measurement (every call of a 2-thread
        # op then waits for a scheduler tick). Such a run shows medians far above the minima: repeat the
        # configuration (up to --attempts times) and keep the least disturbed attempt.
        best, best_worst = None, float("inf")
        for attempt in range(1, args.attempts + 1):
            got = bench_case(model, batch, width, skip, args.depth, args.device, providers, budget)
            worst = max(r["median_ms"] / r["min_ms"] for r in got)
            for r in got:
                r.update(attempt=attempt, median_over_min=worst,
                         loadavg_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            if worst < best_worst:
                best, best_worst = got, worst
            if worst < DISTURBED:
                break
            print(f"  (disturbed: a median is {worst:.1f}x its minimum; attempt {attempt} of {args.attempts})",
                  flush=True)
        rows += best
    cols = [("model", "model", "s"), ("batch", "B", "d"), ("width", "W", "d"), ("skip", "skip", "s"),
            ("mode", "mode", "s"), ("provider", "provider", "s"), ("median_ms", "median ms", ".3f"),
            ("min_ms", "min ms", ".3f"), ("iqr_ms", "iqr ms", ".3f"), ("repeats", "n", "d"),
            ("speedup_vs_eager", "x eager", ".2f")]
    print()
    print(format_table(rows, cols))
    if not args.no_save:
        extra = {"quick": args.quick, "depth": args.depth, "providers": providers, "argv": sys.argv[1:],
                 "gc_disabled_in_timed_calls": True,
                 "loadavg_at_start": env["loadavg_1_5_15"]}
        if args.merge:
            rows, extra = _merge(name, rows, extra, env)
        path = write_results(name, rows, extra, allow_dirty=args.allow_dirty)
        print(f"\nwrote {path}")


def _merge(name: str, rows: list, extra: dict, env: dict) -> tuple:
    """Today's earlier results with the configurations measured now replaced; each run is listed."""
    import datetime
    import json
    from bench.common import RESULTS_DIR
    path = RESULTS_DIR / f"{name}-{env['device']}-{datetime.date.today().isoformat()}.json"
    if not path.exists():
        return rows, extra
    old = json.loads(path.read_text())
    key = lambda r: (r["model"], r["batch"], r["width"], r["skip"], r["depth"])  # noqa: E731
    new_keys = {key(r) for r in rows}
    kept = [r for r in old["rows"] if key(r) not in new_keys]
    runs = old["extra"].get("runs", [dict(old["extra"], date=old["env"]["date"])])
    extra = dict(extra, runs=runs + [dict(extra, date=env["date"], configurations=sorted(map(str, new_keys)))])
    return kept + rows, extra


if __name__ == "__main__":
    main()
