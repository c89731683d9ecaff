"""The inputs of the commands: the experiment ``Context`` (device, backend, data, seeds, workers), the
up-front load of the data (a missing or malformed folder fails before any training), for ``spectrum``
and ``diagnose`` a checkpoint (file or run folder) with the data it was trained on, and for ``diagnose
--model`` a batch of inputs shaped for the user's own net."""
from __future__ import annotations

import os
from pathlib import Path

from skipkern.cli.common import CLIError
from skipkern.cli.parser import parse_seeds

__all__ = ["make_context", "check_data", "worker_count", "load_run", "first_samples", "model_inputs"]


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
    _need_data_dir(ctx.data, ctx.data_dir)
    ctx.dataset(n_train, n_test)


def _need_data_dir(data: str, data_dir) -> None:
    if data != "mnist1d" and data_dir is None and not os.environ.get("SKIPKERN_DATA_DIR"):
        raise CLIError(f"--data {data} needs --data-dir: the folder holding "
                       f"{'cifar-10-batches-py' if data == 'cifar10' else 'cifar-100-python'} (no downloads)")


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


_IMAGE_SHAPE = (3, 32, 32)  # CIFAR's layout (channels first); also the default of --data images


def model_inputs(args, model):
    """(x [--samples, *shape] on --device in the dtype of the model's weights, shape, description) for
    ``diagnose --model``: Gaussian noise (--random-input), images generated offline (--data images: the
    depth experiment's ``synthetic_images``), or --samples training samples of --data (CIFAR: a random
    subset, seed 0, as ``load_dataset`` draws it), each row reshaped to --input-shape (default: the
    data's own shape, 3,32,32 for CIFAR)."""
    import math
    import torch
    from skipkern.cli.common import first_seed
    from skipkern.data import load_dataset

    n, seed, shape = args.samples, first_seed(args), args.input_shape
    if args.random_input:
        if shape is None:
            raise CLIError("--random-input needs --input-shape (the shape of one sample, e.g. 3,32,32)")
        if args.data != "mnist1d" or args.data_dir is not None:
            raise CLIError(f"--random-input draws Gaussian inputs: drop --data {args.data}"
                           + (" / --data-dir" if args.data_dir is not None else ""))
        x = torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed))
        what = f"{n} standard Gaussian inputs (seed {seed})"
    elif args.data == "images":
        from skipkern.experiments.depth_conv import synthetic_images
        shape = shape or _IMAGE_SHAPE
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] < 3:
            raise CLIError(f"--data images makes square images [C, S, S] with S >= 3: --input-shape must be C,S,S, "
                           f"got {','.join(map(str, shape))}")
        x, _ = synthetic_images(n, channels=shape[0], size=shape[1], seed=seed)
        what = f"{n} images generated offline (10 classes, seed {seed})"
    else:
        _need_data_dir(args.data, args.data_dir)
        try:
            ds = load_dataset(args.data, data_dir=args.data_dir, n_train=n, n_test=0)
        except ValueError as e:
            raise CLIError(f"--data {args.data} (--samples {n}): {e}") from None
        shape = shape or (_IMAGE_SHAPE if args.data != "mnist1d" else (ds.in_features,))
        if math.prod(shape) != ds.in_features:
            raise CLIError(f"--input-shape {','.join(map(str, shape))} holds {math.prod(shape)} values per sample, "
                           f"but --data {args.data} has {ds.in_features}; use --data images (generated offline), "
                           f"another --data, or --random-input")
        x = ds.x_train[:n].reshape((-1,) + shape)
        what = f"{x.shape[0]} training samples of {args.data}"
    dtype = next((q.dtype for q in model.parameters() if q.is_floating_point()), torch.float32)
    return x.to(args.device, dtype), shape, what
