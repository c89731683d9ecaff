"""``skipkern diagnose [CHECKPOINT]``: per-layer singularity diagnostics (elimination, overlap, linear
dependence, condition numbers, gradient norms) of a saved net, written beside the run by default
(``<run>/diagnose/``), or of a freshly initialised net (``skipkern_diagnose/``). With ``--model SPEC``
the net is the user's own ``nn.Module`` (a pickled module file or ``package.module:factory``): the
outputs of chosen submodules are captured by forward hooks and diagnosed
(``skipkern.diagnostics.diagnose_module``), written beside the module file or --state-dict by default.
Single-process work on one model: under torchrun rank 0 does it alone."""
from __future__ import annotations

from pathlib import Path

from skipkern.cli.common import CLIError, first_seed
from skipkern.cli.inputs import check_data, first_samples, load_run, model_inputs
from skipkern.cli.outputs import beside_checkpoint, hold_output

__all__ = ["cmd_diagnose"]

# flags of --model (argparse dest); each is refused without --model rather than silently ignored
_MODEL_ONLY = ("trust_model_file", "model_kwargs", "state_dict", "modules", "module_type", "flatten", "input_shape",
               "random_input")


def _check_flags(args) -> None:
    if args.model is None:
        given = ["--" + k.replace("_", "-") for k in _MODEL_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise CLIError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --model SPEC only (your "
                           f"own nn.Module); a CHECKPOINT or a fresh net is diagnosed on its hidden layers")
        if args.data == "images":
            raise CLIError("--data images applies to --model only: a SkipMLP takes flat data (--data mnist1d, "
                           "cifar10 or cifar100)")
        return
    if args.checkpoint:
        raise CLIError(f"give a CHECKPOINT ({args.checkpoint}) or --model SPEC, not both")
    fresh = [f for f, v in (("--arch", args.arch), ("--depth", args.depth), ("--width", args.width)) if v is not None]
    if fresh:
        raise CLIError(f"{', '.join(fresh)} describe{'s' if len(fresh) == 1 else ''} a fresh SkipMLP; --model "
                       f"{args.model} brings its own net")


def _fresh_net(args):
    """(model, data, description) of a freshly initialised net from --arch/--depth/--width/--seeds."""
    from skipkern.experiments import Context
    from skipkern.nn import SkipMLP

    ctx = Context(out=Path(args.out or "skipkern_diagnose"), device=args.device, backend=args.backend,
                  data=args.data, data_dir=args.data_dir)
    check_data(ctx, None, None)
    ds = ctx.dataset(None, None)
    seed = first_seed(args)
    depth, width = args.depth or 20, args.width or 128
    model = SkipMLP(ds.in_features, width, depth, ds.num_classes, arch=args.arch or "residual",
                    backend=args.backend, seed=seed, device=args.device)
    return model, ds, f"a freshly initialised {model.arch} net (depth {depth}, width {width}, seed {seed})"


def _write(out: Path, res: dict) -> None:
    """<name>.json/.csv/.png/.svg of each diagnostic in ``res``, and its summary on stdout. Figures leave
    out arrays with no value (the weight-based ones of --model, whose incoming weights are unknown) and
    name the layers on the axis when there are few."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from skipkern.diagnostics.result import MAIN_KEYS
    from skipkern.plotting import new_figure, save_figure

    for name, d in res.items():
        d.save_json(out / f"{name}.json")
        d.save_csv(out / f"{name}.csv")
        fig, axes = new_figure(1, 1, width=6)
        keys = [k for k in MAIN_KEYS.get(name, d.arrays) if k in d.arrays and not np.isnan(d[k].astype(float)).all()]
        ax = d.plot(ax=axes[0], keys=keys or None)
        if len(d.layers) <= 16:
            ax.set_xticks(np.arange(1, len(d.layers) + 1), d.layers, rotation=30, ha="right", fontsize="small")
            ax.set_xlabel("layer")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        save_figure(fig, out, name)
        s = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.summary.items())
        print(f"  {name}: {s}")


def _diagnose_model(args, earlier: tuple) -> Path:
    """``diagnose --model``: load the user's net, build the inputs, check one forward pass, capture the
    chosen submodules' outputs and write the diagnostics and diagnose_settings.json."""
    import json

    import torch

    from skipkern import __version__
    from skipkern.cli.user_model import check_forward, default_out, load_user_model, module_selection
    from skipkern.diagnostics import diagnose_module, json_safe

    model, what = load_user_model(args.model, trust=args.trust_model_file, kwargs_json=args.model_kwargs,
                                  state_dict=args.state_dict, device=args.device)
    x, shape, inputs = model_inputs(args, model)
    shape_text = ",".join(map(str, shape))
    check_forward(model, x, f"--input-shape {shape_text}" if args.input_shape else f"the shape of --data {args.data}"
                  + ("" if args.data == "images" else "; set another with --input-shape"))
    modules = module_selection(model, args.modules, args.module_type)
    flatten = args.flatten or "channels"
    with hold_output(default_out(args), "diagnostics", results=earlier, force=args.force, group=None) as out:
        res = diagnose_module(model, x, modules, flatten=flatten)
        layers = res["condition_numbers"].layers
        print(f"diagnostics of {what} on {inputs} (shape {shape_text}), {len(layers)} layers "
              f"({', '.join(layers[:8])}{', ...' if len(layers) > 8 else ''}), flattened as {flatten}:")
        _write(out, res)
        settings = dict(model=args.model, model_class=type(model).__name__, model_kwargs=args.model_kwargs,
                        state_dict=args.state_dict, modules=args.modules, module_type=args.module_type,
                        default_modules="every activation module" if modules is None else None, flatten=flatten,
                        input_shape=list(shape), inputs=inputs, random_input=args.random_input, data=None if
                        args.random_input else args.data, samples=int(x.shape[0]), seed=first_seed(args),
                        dtype=str(x.dtype), device=args.device, layers=list(layers), skipkern=__version__,
                        torch=torch.__version__)
        (out / "diagnose_settings.json").write_text(json.dumps(json_safe(settings), indent=1))
    return out


def cmd_diagnose(args) -> int:
    from skipkern import distributed as sd
    from skipkern.diagnostics import DIAGNOSTICS, diagnose

    if not sd.is_main():
        return 0
    _check_flags(args)
    earlier = tuple(f"{name}.json" for name in DIAGNOSTICS)
    if args.model is not None:
        out = _diagnose_model(args, earlier)
        print(f"wrote <name>.json/.csv/.png/.svg for each diagnostic and diagnose_settings.json into {out}")
        return 0
    if args.checkpoint:
        model, ckpt, ds = load_run(args)
        what = f"checkpoint {args.checkpoint} (epoch {ckpt.get('epoch')})"
        out_dir = beside_checkpoint(args, "diagnose")
    else:
        model, ds, what = _fresh_net(args)
        out_dir = Path(args.out or "skipkern_diagnose")
    x, y = first_samples(ds, args.samples)
    with hold_output(out_dir, "diagnostics", results=earlier, force=args.force, group=None) as out:
        res = diagnose(model, x, y)
        print(f"diagnostics of {what} on {x.shape[0]} training samples:")
        _write(out, res)
    print(f"wrote <name>.json/.csv/.png/.svg for each diagnostic into {out}")
    return 0
