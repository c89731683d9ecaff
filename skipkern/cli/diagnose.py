"""``skipkern diagnose [CHECKPOINT]``: per-layer singularity diagnostics (elimination, overlap, linear
dependence, condition numbers, gradient norms) of a saved net, written beside the run by default
(``<run>/diagnose/``), or of a freshly initialised net (``skipkern_diagnose/``). Single-process work
on one model: under torchrun rank 0 does it alone."""
from __future__ import annotations

from pathlib import Path

from skipkern.cli.common import first_seed
from skipkern.cli.inputs import check_data, first_samples, load_run
from skipkern.cli.outputs import beside_checkpoint, hold_output

__all__ = ["cmd_diagnose"]


def _fresh_net(args):
    """(model, data, description) of a freshly initialised net from --arch/--depth/--width/--seeds."""
    from skipkern.experiments import Context
    from skipkern.nn import SkipMLP

    ctx = Context(out=Path(args.out or "skipkern_diagnose"), device=args.device, backend=args.backend,
                  data=args.data, data_dir=args.data_dir)
    check_data(ctx, None, None)
    ds = ctx.dataset(None, None)
    seed = first_seed(args)
    model = SkipMLP(ds.in_features, args.width, args.depth, ds.num_classes, arch=args.arch or "residual",
                    backend=args.backend, seed=seed, device=args.device)
    return model, ds, f"a freshly initialised {model.arch} net (depth {args.depth}, width {args.width}, seed {seed})"


def cmd_diagnose(args) -> int:
    from skipkern import distributed as sd
    from skipkern.diagnostics import DIAGNOSTICS, diagnose
    from skipkern.plotting import new_figure, save_figure

    if not sd.is_main():
        return 0
    if args.checkpoint:
        model, ckpt, ds = load_run(args)
        what = f"checkpoint {args.checkpoint} (epoch {ckpt.get('epoch')})"
        out_dir = beside_checkpoint(args, "diagnose")
    else:
        model, ds, what = _fresh_net(args)
        out_dir = Path(args.out or "skipkern_diagnose")
    x, y = first_samples(ds, args.samples)
    earlier = tuple(f"{name}.json" for name in DIAGNOSTICS)
    with hold_output(out_dir, "diagnostics", results=earlier, force=args.force, group=None) as out:
        res = diagnose(model, x, y)
        print(f"diagnostics of {what} on {x.shape[0]} training samples:")
        for name, d in res.items():
            d.save_json(out / f"{name}.json")
            d.save_csv(out / f"{name}.csv")
            fig, axes = new_figure(1, 1, width=6)
            d.plot(ax=axes[0])
            save_figure(fig, out, name)
            s = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.summary.items())
            print(f"  {name}: {s}")
    print(f"wrote <name>.json/.csv/.png/.svg for each diagnostic into {out}")
    return 0
