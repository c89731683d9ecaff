"""The inputs of the commands: the experiment ``Context`` (device, backend, data, seeds, workers), the
up-front load of the data (a missing or malformed folder fails before any training), and for ``spectrum``
and ``diagnose`` a checkpoint (file or run folder) with the data it was trained on."""
from __future__ import annotations

import os
from pathlib import Path

from skipkern.cli.common import CLIError
from skipkern.cli.parser import parse_seeds

__all__ = ["make_context", "check_data", "worker_count", "load_run", "first_samples"]


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


def load_run(args):
    """(model in eval mode on --device, checkpoint dict, its data set on --device). One-line errors for a
    missing or unreadable checkpoint, another --arch than requested, and data that do not fit the net."""
    from skipkern.data import load_dataset
    from skipkern.train import load_checkpoint

    p = Path(args.checkpoint)
    if not p.exists():
        raise CLIError(f"checkpoint {p} does not exist (expected checkpoint.pt written by 'skipkern train', or its "
                       f"folder)")
    model, ckpt = load_checkpoint(p, device=args.device)
    mc = ckpt.get("model_config") or {}
    if args.arch is not None and mc.get("arch") != args.arch:
        raise CLIError(f"checkpoint {p} holds a {mc.get('arch')!r} net (depth {mc.get('depth')}, width "
                       f"{mc.get('width')}), not the requested --arch {args.arch!r}")
    d = ckpt.get("data") or {}
    name = d.get("name", args.data)
    ds = load_dataset(name, data_dir=args.data_dir, n_train=d.get("n_train"), n_test=d.get("n_test"),
                      seed=int(d.get("seed", 0) or 0))
    if ds.in_features != model.in_features or ds.num_classes != model.out_features:
        raise CLIError(f"checkpoint net maps {model.in_features} -> {model.out_features}, but data {name!r} has "
                       f"{ds.in_features} features and {ds.num_classes} classes")
    return model, ckpt, ds.to(args.device)


def first_samples(ds, n: int):
    """The first ``n`` training samples (all of them when there are fewer): x [n, in], y [n]."""
    n = min(n, ds.n_train)
    return ds.x_train[:n], ds.y_train[:n]
