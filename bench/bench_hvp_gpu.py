"""Benchmark: Hessian-vector products of the paper's CIFAR-100 net on a GPU, and what TF32/bf16 products do
to the spectrum.

Parts (``--part``):
  time       k = 8 and 64 directions over 10,000 samples of a residual SkipMLP 3072 -> 128 x 20 -> 100
             (synthetic Gaussian inputs, random labels: the cost does not depend on the data). Providers:
             skipkern hvp-gpu [tf32|bf16]  GPUFusedHVP: chunks from the GPU's memory, fused R-layer kernels
             skipkern fused                FusedHVP with the default 1 GiB budget: cuBLAS GEMMs + epilogue
                                           kernels per layer and chunk (the "cuBLAS + eager epilogue" path)
             torch eager (torch.func)      the generic backend: vmapped forward-over-reverse products
             Times are steady-state products (the primal pass cached, as in Lanczos).
  precision  spectral density (stochastic Lanczos quadrature) of a residual SkipMLP 40 -> 128 x 20 -> 10 on
             2,000 samples with products in fp64, fp32, tf32 and bf16: fractions of degenerate
             (|lambda| <= 1e-4 lambda_max) and negative eigenvalues, and the top Ritz values, against fp64.
--smoke: tiny shapes (CPU: the Triton interpreter), to check this script without a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_skip_mlp import RowSink  # noqa: E402
from bench.common import add_result_args, format_table, summarize, write_results  # noqa: E402
from skipkern.hessian import HessianOperator, spectral_density  # noqa: E402
from skipkern.hessian.hvp_gpu import gpu_operator  # noqa: E402
from skipkern.nn import SkipMLP  # noqa: E402


def _time(fn, device: str, repeats: int) -> dict:
    fn()  # warm-up: compilation, workspace, primal cache
    times = []
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def _data(n: int, d: int, c: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, d, generator=g).to(device=device, dtype=dtype),
            torch.randint(0, c, (n,), generator=g).to(device))


def part_time(device: str, smoke: bool, rows: list) -> list:
    shape, n, ks = ((12, 16, 3, 5), 64, (2, 4)) if smoke else ((3072, 128, 20, 100), 10_000, (8, 64))
    model = SkipMLP(*shape, arch="residual", seed=0, init="scaled", device=device)
    data = _data(n, shape[0], shape[3], device)
    providers = {
        "skipkern hvp-gpu": lambda: gpu_operator(model, F.cross_entropy, data, products="fp32"),
        "skipkern hvp-gpu tf32": lambda: gpu_operator(model, F.cross_entropy, data, products="tf32"),
        "skipkern hvp-gpu bf16": lambda: gpu_operator(model, F.cross_entropy, data, products="bf16"),
        "skipkern fused": lambda: HessianOperator(model, F.cross_entropy, data, backend="fused"),
        "torch eager (torch.func)": lambda: HessianOperator(model, F.cross_entropy, data, backend="generic"),
    }
    # the target (k = 64) and the GPU path first, the slow baselines last: a timeout keeps what matters
    order = [(k, name) for name in list(providers)[:3] for k in ks[::-1]]
    order += [(k, name) for name in list(providers)[3:] for k in ks]
    for k, name in order:
        make = providers[name]
        row = dict(part="hvp", shape=f"k={k} n={n}", provider=name, k=k, samples=n)
        if device != "cuda" and name.endswith("bf16"):
            rows.append(dict(row, status="skipped (bf16 needs a GPU)"))
            continue
        if name.startswith("torch") and k > ks[0] and not smoke:
            rows.append(dict(row, status=f"not measured at k={k} (seconds per product; see k={ks[0]})"))
            continue
        try:
            op = make()
            V = torch.randn(op.shape[0], k, device=device)
            slow = name.startswith("torch") or name == "skipkern fused"
            row.update(_time(lambda op=op, V=V: op @ V, device, 2 if slow or smoke else 10), status="ok")
            row["ms_per_direction"] = row["median_ms"] / k
            op = V = None  # free the workspace before the next provider
        except Exception as exc:  # noqa: BLE001 - one provider failing must not hide the others
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    rows.append(dict(part="hvp", shape=f"k={ks[-1]} n={n}", provider="torch.compile",
                     status="not measured: compiling the vmapped forward-over-reverse product takes minutes"))
    return rows


def _frac(est) -> float:
    return float(getattr(est, "value", est[0] if isinstance(est, tuple) else est))


def part_precision(device: str, smoke: bool, rows: list) -> list:
    shape, n, probes, steps = ((8, 16, 3, 4), 48, 2, 12) if smoke else ((40, 128, 20, 10), 2000, 2, 40)
    ref = None
    for products in ("fp64", "fp32", "tf32", "bf16"):
        row = dict(part="hvp precision", shape=f"{shape} n={n}", provider=f"products {products}")
        if products == "bf16" and device != "cuda":
            rows.append(dict(row, status="skipped (bf16 needs a GPU)"))
            continue
        try:
            dt = torch.float64 if products == "fp64" else torch.float32
            model = SkipMLP(*shape, arch="residual", seed=0, init="scaled", device=device, dtype=dt)
            data = _data(n, shape[0], shape[3], device, dt)
            op = gpu_operator(model, F.cross_entropy, data, dtype=dt,
                              products="fp32" if products == "fp64" else products)
            t0 = time.perf_counter()
            dens = spectral_density(op, num_probes=probes, num_steps=steps, seed=0, progress=False)
            nodes = torch.as_tensor(dens.nodes).flatten()
            lam_max = float(nodes.abs().max())
            top = sorted(nodes.tolist())[-3:][::-1]
            row.update(seconds=time.perf_counter() - t0, lambda_max=lam_max, top_ritz=top,
                       fraction_degenerate=_frac(dens.fraction_degenerate(1e-4 * lam_max)),
                       fraction_negative=_frac(dens.fraction_negative(1e-4 * lam_max)), status="ok")
            if ref is None:
                ref = row
            row["top_ritz_rel_err_vs_fp64"] = [abs(a - b) / abs(b) for a, b in zip(top, ref["top_ritz"])]
            row["fraction_degenerate_diff_vs_fp64"] = row["fraction_degenerate"] - ref["fraction_degenerate"]
            row["fraction_negative_diff_vs_fp64"] = row["fraction_negative"] - ref["fraction_negative"]
        except Exception as exc:  # noqa: BLE001
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("time", "precision", "all"), default="all")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script; CPU works)")
    ap.add_argument("--json", default=None, help="write rows here (default: bench/results/)")
    add_result_args(ap)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = RowSink(args.json)
    if args.part in ("time", "all"):
        part_time(device, args.smoke, rows)
    if args.part in ("precision", "all"):
        part_precision(device, args.smoke, rows)
    cols = [("part", "part", "s"), ("shape", "shape", "s"), ("provider", "provider", "s"),
            ("median_ms", "median ms", ".3f"), ("fraction_degenerate", "frac deg", ".4f"),
            ("fraction_negative", "frac neg", ".4f"), ("status", "status", "s")]
    print(format_table([dict(r, status=str(r.get("status", ""))[:70]) for r in rows], cols))
    if not args.json:
        print("wrote", write_results("hvp_gpu", list(rows), {"smoke": args.smoke}, allow_dirty=args.allow_dirty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
