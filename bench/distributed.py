"""Strong scaling of one Lanczos step of the data-parallel Hessian.

One step = one ``HessianOperator.matmat`` of k probes over the whole data set (each rank its strided
share, ONE all-reduce of the [k, P] partial products and the sample count) plus the float64 full
reorthogonalisation of the k new vectors against a basis of ``--basis`` vectors (done redundantly on
every rank, as in ``lanczos``). The global problem is fixed (strong scaling); for W processes we
report the step time (the slowest rank's, median over repeats), the speed-up t_1 / t_W and the
efficiency t_1 / (W t_W), plus the product and reorthogonalisation parts and the time of one
all-reduce of the product's buffer alone (the communication cost inside the product), and rank 0's
CPU time in the product (its share of the work, which halves with W even when a busy machine does
not give every rank a free core).

CPU: W gloo processes of ``--threads`` torch threads each (default 1) on loopback, W in --procs
(default 1, 2 and powers of two up to the core count). CUDA: one rank per GPU with NCCL.
Model: SkipMLP(40 -> width x depth -> 10, residual), cross-entropy, fused HVP backend.

    python bench/distributed.py [--procs 1,2] [--samples 2000] [--width 64] [--depth 8] [--probes 8]
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_result_args, format_table, write_results  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, args, outdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import json

    import torch.distributed as dist
    import torch.nn.functional as F

    from skipkern import distributed as sd
    from skipkern.hessian import HessianOperator
    from skipkern.hessian.lanczos import LanczosRun, operator_apply, rademacher_probes
    from skipkern.nn import SkipMLP

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if world > 1:
        if cuda:
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    group = sd.resolve_group("default")
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 40, generator=g)
    y = torch.randint(0, 10, (args.samples,), generator=g)
    model = SkipMLP(40, args.width, args.depth, 10, arch="residual", seed=0).to(dev)
    xs, ys = x[rank::world].to(dev), y[rank::world].to(dev)
    op = HessianOperator(model, F.cross_entropy, (xs, ys), batch_size=args.batch_size, backend="fused",
                         dtype=torch.float32)
    P = op.shape[0]
    run = LanczosRun(operator_apply(op), rademacher_probes(P, args.probes, 0, dev), args.basis + args.repeats + 2)
    apply = operator_apply(op)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def barrier():
        if group is not None:
            dist.barrier()

    for _ in range(args.basis):  # build the basis the timed steps reorthogonalise against
        run.step()
    steps, prods, cpu = [], [], []
    for _ in range(args.repeats):
        V, idx = run.step_begin()
        barrier()
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        W = apply(V, idx)
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        cpu.append(c1 - c0)
        run.step_end(W)
        sync()
        t2 = time.perf_counter()
        # the step ends when the slowest rank ends: take the max over ranks
        times = torch.tensor([t2 - t0, t1 - t0], dtype=torch.float64)
        if group is not None:
            times = times.to(dev)
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
        steps.append(float(times[0]))
        prods.append(float(times[1]))
    # the communication alone: one all-reduce of the product's buffer ([k P] + count + flags, float64)
    reduces = []
    if group is not None:
        buf = torch.zeros(args.probes * P + 1 + world, dtype=torch.float64, device=dev)
        for _ in range(args.repeats):
            barrier()
            t0 = time.perf_counter()
            sd.all_reduce_sum(buf, group)
            sync()
            reduces.append(time.perf_counter() - t0)
    if rank == 0:
        with open(os.path.join(outdir, "r.json"), "w") as f:
            json.dump({"P": P, "step_s": steps, "matmat_s": prods, "alpha_last": float(run.alphas[0, run.i - 1]),
                       "allreduce_s": reduces, "matmat_cpu_s": cpu,
                       "local_samples": int(xs.shape[0])}, f)
    if group is not None:
        dist.destroy_process_group()


def run_world(world: int, args) -> dict:
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(_rank_main, args=(world, _free_port(), args, outdir), nprocs=world, join=True,
                           start_method="spawn")
        with open(os.path.join(outdir, "r.json")) as f:
            return json.load(f)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ncpu = os.cpu_count() or 1
    default_procs = sorted({1, 2} | {p for p in (4, 8, 16) if p <= ncpu})
    ap.add_argument("--procs", default=",".join(map(str, default_procs)), help="world sizes, comma list")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--basis", type=int, default=20, help="Lanczos vectors already in the basis")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    add_result_args(ap)
    args = ap.parse_args(argv)
    procs = [int(p) for p in args.procs.split(",")]
    if args.device == "cuda":
        procs = [p for p in procs if p <= torch.cuda.device_count()]
    rows, t1 = [], None
    for world in procs:
        r = run_world(world, args)
        step = statistics.median(r["step_s"])
        prod = statistics.median(r["matmat_s"])
        t1 = step if world == 1 else t1
        row = {"world": world, "backend": ("nccl" if args.device == "cuda" else "gloo") if world > 1 else "none",
               "device": args.device, "threads_per_rank": args.threads, "samples": args.samples,
               "samples_rank0": r["local_samples"], "P": r["P"], "probes": args.probes, "basis": args.basis,
               "step_ms": 1e3 * step, "step_min_ms": 1e3 * min(r["step_s"]), "matmat_ms": 1e3 * prod,
               "reorth_ms": 1e3 * (step - prod), "repeats": args.repeats, "alpha_last": r["alpha_last"],
               "allreduce_ms": 1e3 * statistics.median(r["allreduce_s"]) if r["allreduce_s"] else 0.0,
               "matmat_cpu_ms_rank0": 1e3 * statistics.median(r["matmat_cpu_s"])}
        if t1 is not None:
            row["speedup"] = t1 / step
            row["efficiency"] = t1 / (world * step)
        rows.append(row)
        print(f"W={world}: step {1e3 * step:.1f} ms", flush=True)
    print(format_table(rows, [("world", "W", "d"), ("step_ms", "step ms", ".1f"), ("matmat_ms", "matmat ms", ".1f"),
                              ("matmat_cpu_ms_rank0", "rank-0 CPU ms", ".1f"),
                              ("reorth_ms", "reorth ms", ".2f"),
                              ("allreduce_ms", "all-reduce ms", ".2f"), ("speedup", "speed-up", ".2f"),
                              ("efficiency", "efficiency", ".2f")]))
    path = write_results("distributed", rows, extra={"args": vars(args), "note": "strong scaling of one Lanczos "
                         "step: matmat (data pass + one all-reduce) + float64 reorthogonalisation"},
                         allow_dirty=args.allow_dirty)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
