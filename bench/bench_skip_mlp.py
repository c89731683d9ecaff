"""Benchmark: the paper's nets at batch 500 on a GPU: one training step, the whole MLP, one layer.

Parts (``--part``):
  step   one Adam training step (forward, cross-entropy, backward, update) of a residual SkipMLP,
         --shape cifar100 (3072 -> 128 x 20 -> 100) or mnist1d (40 -> 128 x 20 -> 10)
  mlp    forward + backward of the whole net (no optimizer), same shapes
  layer  one residual relu layer, B 500, 128 x 128, forward and forward + backward (dx included)
Providers:
  torch eager                  the same net in plain torch ops: cuBLAS GEMMs plus eager elementwise epilogues
  torch eager + CUDA graph     that step captured and replayed (skipkern.capture.TrainStep(mode="graph"))
  torch.compile                torch.compile(model), default mode; reduce-overhead: TrainStep(mode="compile")
  skipkern layers [+ graph]    SkipMLP(fused=None): one fused op per layer (backend auto)
  skipkern mlp [+ graph]       SkipMLP(fused="mlp"): the whole-MLP Triton kernel
Every step provider uses torch's fused Adam; fp32 GEMMs may use TF32 everywhere (cuBLAS allow_tf32 and the
Triton default), and one "ieee" row shows the fused path without it. Before timing, each provider's first
loss and updated input-layer weights are compared with torch eager's (``rel_err``). Times: medians of
triton.testing.do_bench (CUDA events, L2 flushed before each call) on the GPU; bench.common.measure on the CPU.
``--smoke`` runs tiny shapes on whatever device is there (CPU: the Triton interpreter for "skipkern mlp"),
to check this script without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU smoke runs: the fused kernel through the interpreter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_result_args, env_info, format_table, measure, summarize, write_results  # noqa: E402
from skipkern.capture import TrainStep  # noqa: E402
from skipkern.nn import SkipMLP  # noqa: E402
from skipkern.ops import skip_linear  # noqa: E402
from skipkern.reference import skip_linear_composite  # noqa: E402

SHAPES = {"cifar100": (3072, 128, 20, 100), "mnist1d": (40, 128, 20, 10)}
SMOKE_SHAPES = {"cifar100": (48, 16, 3, 10), "mnist1d": (8, 16, 3, 4)}
BATCH, SMOKE_BATCH = 500, 24
STEP_PROVIDERS = {  # name: (model kind, TrainStep mode); the order they run in (a timeout keeps the first)
    "torch eager": ("eager", "eager"),
    "skipkern mlp + CUDA graph": ("mlp", "graph"),
    "torch eager + CUDA graph": ("eager", "graph"),
    "skipkern layers + CUDA graph": ("layers", "graph"),
    "skipkern mlp": ("mlp", "eager"),
    "skipkern layers": ("layers", "eager"),
    "skipkern mlp + CUDA graph (ieee)": ("mlp-ieee", "graph"),
    "torch.compile": ("compiled", "eager"),
    "torch.compile reduce-overhead": ("eager", "compile"),
}
GPU_ONLY = ("graph", "compile", "compiled")


class RowSink(list):
    """Result rows, rewritten to ``path`` (as {"env", "rows"}) after every row, so that a run stopped by its
    timeout still leaves the rows it finished."""

    def __init__(self, path):
        super().__init__()
        self.path = None if path is None else Path(path)
        self.env = env_info()

    def append(self, row: dict) -> None:
        super().append(row)
        if self.path is not None:
            self.path.write_text(json.dumps({"env": self.env, "rows": list(self)}, indent=1, default=str) + "\n")

    def __iadd__(self, rows):
        for r in rows:
            self.append(r)
        return self


class EagerMLP(torch.nn.Module):
    """A SkipMLP's layers run as plain torch ops (F.linear = cuBLAS, eager activation and skip add): the
    torch-eager baseline. Shares the parameters of ``model``."""

    def __init__(self, model: SkipMLP):
        super().__init__()
        if model.n_hyper or len(model.norms):
            raise ValueError("EagerMLP covers SkipMLPs without hyper-residual terms or BatchNorm")
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.inner.layers:
            x = skip_linear_composite(x, layer.weight, layer.bias, layer.skip_arg, layer.activation)
        return x


def make_model(kind: str, shape: tuple, device: str) -> torch.nn.Module:
    """A residual SkipMLP of ``shape`` = (in, width, depth, out), seed 0, in the provider's form."""
    k0, width, depth, c = shape
    fused = "mlp" if kind.startswith("mlp") else None
    backend = "triton" if fused and device == "cpu" else "auto"  # CPU: the interpreter, asked for by name
    model = SkipMLP(k0, width, depth, c, arch="residual", seed=0, init="scaled", fused=fused, backend=backend,
                    device=device)
    if kind == "mlp-ieee":
        model.precision = "ieee"
    if kind in ("eager", "compiled"):
        model = EagerMLP(model)
    return torch.compile(model) if kind == "compiled" else model


def timer(fn: Callable, device: str, budget_s: float) -> dict:
    if device == "cuda":
        import triton.testing
        times = triton.testing.do_bench(fn, warmup=max(5, int(budget_s * 100)), rep=max(20, int(budget_s * 1000)),
                                        return_mode="all")
        return summarize(list(times))
    return measure(fn, device="cpu", warmup=1, min_repeats=2, max_repeats=20, budget_s=budget_s)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def bench_step(shape_name: str, device: str, providers: list, smoke: bool, budget_s: float, rows: list) -> list:
    shape = (SMOKE_SHAPES if smoke else SHAPES)[shape_name]
    b = SMOKE_BATCH if smoke else BATCH
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, shape[0], generator=g).to(device)
    y = torch.randint(0, shape[3], (b,), generator=g).to(device)
    ref = None
    for name in providers:
        kind, mode = STEP_PROVIDERS[name]
        row = dict(part="step", shape=shape_name, batch=b, provider=name)
        if device != "cuda" and (mode in GPU_ONLY or kind in GPU_ONLY):
            rows.append(dict(row, status="skipped (needs CUDA)"))
            continue
        try:
            t0 = time.perf_counter()
            model = make_model(kind, shape, device)
            step = TrainStep(model, mode=mode)
            loss = step(x, y)
            w0 = next(model.parameters()).detach().clone()
            if ref is None:
                ref = (loss.detach().clone(), w0)
            row.update(rel_err_loss=_rel(loss, ref[0]), rel_err_w_in=_rel(w0, ref[1]),
                       setup_s=time.perf_counter() - t0, mode_used=step.mode_used,
                       path=getattr(getattr(model, "inner", model), "fused_path", None))
            row.update(timer(lambda: step(x, y), device, budget_s), status="ok")
        except Exception as exc:  # noqa: BLE001 - one provider failing must not hide the others
            row.update(status=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
        rows.append(row)
    return rows


def bench_mlp(shape_name: str, device: str, providers: list, smoke: bool, budget_s: float, rows: list) -> list:
    shape = (SMOKE_SHAPES if smoke else SHAPES)[shape_name]
    b = SMOKE_BATCH if smoke else BATCH
    x = torch.randn(b, shape[0], device=device)
    y = torch.randint(0, shape[3], (b,), device=device)
    for name, kind in (("torch eager", "eager"), ("torch.compile", "compiled"), ("skipkern layers", "layers"),
                       ("skipkern mlp", "mlp")):
        if name not in providers:
            continue
        row = dict(part="mlp fwd+bwd", shape=shape_name, batch=b, provider=name)
        if device != "cuda" and kind in GPU_ONLY:
            rows.append(dict(row, status="skipped (needs CUDA)"))
            continue
        try:
            model = make_model(kind, shape, device)
            params = list(model.parameters())

            def run():
                for p in params:
                    p.grad = None
                torch.nn.functional.cross_entropy(model(x), y).backward()
            run()
            row.update(timer(run, device, budget_s), status="ok")
        except Exception as exc:  # noqa: BLE001
            row.update(status=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
        rows.append(row)
    return rows


def bench_layer(device: str, providers: list, smoke: bool, budget_s: float, rows: list) -> list:
    b, w = (SMOKE_BATCH, 16) if smoke else (BATCH, 128)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, w, generator=g).to(device).requires_grad_(True)
    wt = (torch.randn(w, w, generator=g) / w ** 0.5).to(device).requires_grad_(True)
    bias = torch.zeros(w, device=device, requires_grad=True)
    gy = torch.randn(b, w, device=device)
    fns = {"torch eager": lambda: skip_linear_composite(x, wt, bias, "identity", "relu")}
    if device == "cuda":
        fns["torch.compile"] = torch.compile(lambda: skip_linear_composite(x, wt, bias, "identity", "relu"))
    for be in ("cuda", "triton", "cpp"):
        fns[f"skipkern {be}"] = (lambda be=be: skip_linear(x, wt, bias, "identity", "relu", backend=be))
    for name, f in fns.items():
        if name not in providers and not (name.startswith("skipkern") and "skipkern layers" in providers):
            continue
        for mode in ("forward", "fwd+bwd"):
            row = dict(part=f"layer {mode}", shape=f"{b}x{w}x{w}", batch=b, provider=name)
            try:
                def run(f=f, mode=mode):
                    if mode == "forward":
                        with torch.no_grad():
                            return f()
                    x.grad = wt.grad = bias.grad = None
                    f().backward(gy)
                run()
                row.update(timer(run, device, budget_s), status="ok")
            except Exception as exc:  # noqa: BLE001 - e.g. a backend that does not run here
                row.update(status=f"skipped: {type(exc).__name__}: {str(exc)[:200]}")
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("step", "mlp", "layer", "all"), default="all")
    ap.add_argument("--shape", choices=tuple(SHAPES) + ("both",), default="both")
    ap.add_argument("--providers", default=",".join(STEP_PROVIDERS), help="comma-separated provider names")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script; CPU works)")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of timing per provider")
    ap.add_argument("--json", default=None, help="write rows here (default: bench/results/)")
    add_result_args(ap)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # the torch baselines get TF32 GEMMs like the Triton default
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = [p for p in providers if p not in STEP_PROVIDERS]
    if unknown:
        ap.error(f"unknown providers {unknown}; choose from {list(STEP_PROVIDERS)}")
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    rows = RowSink(args.json)
    for part in (("step", "mlp", "layer") if args.part == "all" else (args.part,)):
        if part == "layer":
            bench_layer(device, providers, args.smoke, args.budget, rows)
            continue
        for s in shapes:
            fn = bench_step if part == "step" else bench_mlp
            fn(s, device, providers, args.smoke, args.budget, rows)
    cols = [("part", "part", "s"), ("shape", "shape", "s"), ("provider", "provider", "s"),
            ("median_ms", "median ms", ".4f"), ("rel_err_loss", "rel err", ".1e"), ("status", "status", "s")]
    print(format_table([dict(r, status=str(r.get("status", ""))[:70]) for r in rows], cols))
    if not args.json:
        print("wrote", write_results("skip_mlp", list(rows), {"smoke": args.smoke}, allow_dirty=args.allow_dirty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
