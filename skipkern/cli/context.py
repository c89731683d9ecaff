"""The experiment ``Context`` of a command (device, backend, data, seeds, workers) and the up-front load
of its data, so that a missing or malformed data folder fails before any training."""
from __future__ import annotations

import os
from pathlib import Path

from skipkern.cli.common import CLIError
from skipkern.cli.parser import parse_seeds

__all__ = ["make_context", "check_data", "worker_count"]


def worker_count(args) -> int:
    """--jobs resolved: 1 under torchrun (the ranks are the parallelism), 0 = one per core (at most 4)
    on CPU and 1 on CUDA."""
    jobs = getattr(args, "jobs", 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    if jobs == 0:
        jobs = 1 if args.device.startswith("cuda") else max(1, min(4, os.cpu_count() or 1))
    return jobs


def make_context(args, mode: str):
    from skipkern.experiments import Context
    return Context(out=Path(args.out), device=args.device, backend=args.backend, data=args.data,
                   data_dir=args.data_dir, seeds=parse_seeds(args.seeds), mode=mode,
                   progress=not args.no_progress, jobs=worker_count(args))


def check_data(ctx, n_train, n_test) -> None:
    """Load the data once up front, so a missing or malformed folder fails before any training."""
    if ctx.data != "mnist1d" and ctx.data_dir is None and not os.environ.get("SKIPKERN_DATA_DIR"):
        raise CLIError(f"--data {ctx.data} needs --data-dir: the folder holding "
                       f"{'cifar-10-batches-py' if ctx.data == 'cifar10' else 'cifar-100-python'} (no downloads)")
    ctx.dataset(n_train, n_test)
