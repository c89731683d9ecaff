"""The inputs of ``spectrum`` and ``diagnose``: a checkpoint (file or run folder), the data it was
trained on, and the first --samples training samples."""
from __future__ import annotations

from pathlib import Path

from skipkern.cli.common import CLIError

__all__ = ["load_run", "first_samples"]


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
