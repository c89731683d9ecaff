"""``skipkern spectrum CHECKPOINT``: the Hessian eigenvalue density of a saved net (stochastic Lanczos
quadrature, ``skipkern.training.measure.hessian_spectrum``, the pipeline the training loop uses too),
written beside the run by default (``<run>/spectrum/``)."""
from __future__ import annotations

from skipkern.cli.common import first_seed
from skipkern.cli.dist import on_every_rank
from skipkern.cli.inputs import first_samples, load_run
from skipkern.cli.outputs import beside_checkpoint, hold_output

__all__ = ["cmd_spectrum", "RESULT_FILES"]

RESULT_FILES = ("spectrum_summary.json", "spectrum_density.json", "spectrum_density.png")


def _fraction_line(summary: dict, key: str) -> str:
    line = f"{summary[key]:.4f} ± {summary[key + '_se']:.4f}"
    if key + "_lower" in summary and key + "_upper" in summary:
        line += f" [{summary[key + '_lower']:.4f}, {summary[key + '_upper']:.4f}]"
    return line


def cmd_spectrum(args) -> int:
    from skipkern import distributed as sd
    from skipkern.experiments.common import write_json
    from skipkern.plotting import new_figure, save_figure
    from skipkern.training.measure import hessian_spectrum

    model, ckpt, ds = on_every_rank(lambda: load_run(args), "loading the checkpoint and its data")
    x, y = first_samples(ds, args.samples)
    group = sd.resolve_group("default")
    with hold_output(beside_checkpoint(args, "spectrum"), "spectrum", results=RESULT_FILES, force=args.force) as out:
        dens, s = hessian_spectrum(model, x, y, eps=args.eps, num_probes=args.probes, num_steps=args.steps,
                                   seed=first_seed(args), backend=args.hessian_backend, process_group=group,
                                   progress=not args.no_progress)
        if not sd.is_main(group):  # identical float64 Lanczos state on every rank: rank 0 writes
            return 0
        dens.save(str(out / "spectrum_density.json"))
        fig, axes = new_figure(1, 1, width=6)
        dens.plot(ax=axes[0])
        mc = ckpt.get("model_config") or {}
        axes[0].set_title(f"Hessian eigenvalue density: {mc.get('arch')} net, epoch {ckpt.get('epoch')}")
        save_figure(fig, out, "spectrum_density")
        fractions = {k: v for k, v in s.items() if k.startswith("fraction_")}
        summary = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"), "model_config": mc,
                   "samples": s["samples"], "num_params": s["num_params"], "probes": args.probes, "steps": args.steps,
                   "eps": args.eps, **fractions, "hessian_backend": args.hessian_backend, "time_s": s["time"]}
        write_json(out / "spectrum_summary.json", summary)
    print(f"fraction of degenerate eigenvalues (|lambda| <= {args.eps:g}): {_fraction_line(s, 'fraction_degenerate')}")
    print(f"fraction of negative eigenvalues: {_fraction_line(s, 'fraction_negative')}")
    print(f"wrote {out / 'spectrum_density.json'}, {out / 'spectrum_density.png'}, {out / 'spectrum_summary.json'}")
    return 0
