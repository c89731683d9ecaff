"""The ``skipkern`` command line (also ``python -m skipkern``).

    skipkern repro all --quick --out results     the main job: every experiment + report.md
    skipkern repro architectures --seeds 5       one experiment
    skipkern train --arch residual --epochs 20   one training run (checkpoint.pt, metrics.jsonl/csv)
    skipkern spectrum results/train/checkpoint.pt    Hessian eigenvalue density of a checkpoint
    skipkern diagnose results/train/checkpoint.pt    per-layer singularity diagnostics
    skipkern backends                             which kernels can run here
    skipkern bench                                run the benchmark scripts (bench/ of a source checkout)

Under ``torchrun --nproc_per_node=N -m skipkern ...`` the same commands run data-parallel on
torch.distributed (training under DDP, Hessian products all-reduced, rank 0 writes; ``diagnose``
runs on rank 0 alone). See README "Distributed".

Bad input (unknown experiment, missing data folder, unwritable output folder, a checkpoint of another
architecture) ends with one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "CLIError"]

log = logging.getLogger("skipkern")
EXIT_ERROR, EXIT_INTERRUPT = 1, 130


class CLIError(Exception):
    """A user error the CLI reports as one line."""


# ------------------------------------------------------------------------------------------ parsing
def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    g.add_argument("--backend", default="auto",
                   help="skip_linear backend of the layers: auto (default), cpp, torch, triton, cuda")
    g.add_argument("--data", default="mnist1d", help="data set: mnist1d (default, generated offline), cifar10, cifar100")
    g.add_argument("--data-dir", default=None,
                   help="CIFAR: folder with cifar-10-batches-py / cifar-100-python (or that folder itself); "
                        "MNIST-1D: cache folder")
    g.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    g.add_argument("--seeds", default=None,
                   help="seeds: a count N (seeds 0..N-1) or a comma list such as 0,3,7 (default: the recipe's)")
    g.add_argument("--quick", action="store_true", help="small, fast sizes (MNIST-1D on a 2-core CPU in minutes)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads; 0 = auto: 1 on CPU (these small layers run fastest single-threaded), "
                        "torch's default otherwise")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    g.add_argument("-v", "--verbose", action="store_true", help="log which backends and paths ran")


def build_parser() -> argparse.ArgumentParser:
    from skipkern.nn import ARCHS

    ap = argparse.ArgumentParser(prog="skipkern", description="Fused skip-connection MLPs, Hessian spectra and the "
                                 "experiments of Orhan & Pitkow, 'Skip Connections Eliminate Singularities'.",
                                 epilog="Data-parallel on several processes/GPUs/machines: run the same command under "
                                        "'torchrun --nproc_per_node=N -m skipkern ...' (README, Distributed).")
    ap.add_argument("--version", action="version", version=f"skipkern {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("repro", help="run paper experiments and write report.md",
                       description="Run one experiment or all of them; writes figures, raw numbers and report.md "
                                   "into --out. Experiments: simplified, architectures, skips, malicious, seeds, "
                                   "biasreg.")
    p.add_argument("experiment", help="experiment name, or 'all'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set epochs=50 --set width=128 (repeatable)")
    p.add_argument("--jobs", type=int, default=0,
                   help="training runs at once, in worker processes; 0 = auto: one per CPU core (at most 4) on "
                        "CPU, 1 on CUDA")
    _common(p, "skipkern_results")

    p = sub.add_parser("train", help="train one SkipMLP (checkpoint.pt, metrics.jsonl, metrics.csv)",
                       description="Train one net with Adam; an interrupted run resumes from --out/checkpoint.pt.")
    p.add_argument("--arch", default="residual", help=f"one of {', '.join(ARCHS)} (default residual)")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (5 with --quick)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--n-train", type=int, default=None, help="training samples (default: the data set's default)")
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--degenerate-fraction", type=float, default=0.5)
    p.add_argument("--malicious", action="store_true", help="W <- W - I on the square hidden layers before training")
    p.add_argument("--biasreg", type=float, nargs=3, metavar=("MU", "SIGMA", "LAM"), default=None,
                   help="add BiasReg (mu = sigma = 0: BiasL2Reg)")
    p.add_argument("--bn-layer", type=int, action="append", default=[], help="BatchNorm after this hidden layer (0-based)")
    p.add_argument("--diagnostics-every", type=int, default=0)
    p.add_argument("--spectrum-at", default="", help="comma list of epochs for Hessian spectra, e.g. 0,10")
    p.add_argument("--spectrum-probes", type=int, default=4)
    p.add_argument("--spectrum-steps", type=int, default=40)
    p.add_argument("--spectrum-samples", type=int, default=500)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    _common(p, "skipkern_train")

    for name, helptext in (("spectrum", "Hessian eigenvalue density of a saved checkpoint"),
                           ("diagnose", "per-layer singularity diagnostics of a checkpoint (or a fresh net)")):
        p = sub.add_parser(name, help=helptext, description=helptext + ". CHECKPOINT is the checkpoint.pt written "
                           "by 'skipkern train' (or its folder).")
        p.add_argument("checkpoint", nargs="?" if name == "diagnose" else None, default=None,
                       help="checkpoint.pt or its run folder" + (" (omit: a freshly initialised net from --arch/"
                                                                 "--depth/--width)" if name == "diagnose" else ""))
        p.add_argument("--arch", default=None, help="expected architecture (error if the checkpoint differs); "
                       "for diagnose without a checkpoint, the net to build (default residual)")
        p.add_argument("--samples", type=int, default=500, help="training samples used (default 500)")
        if name == "spectrum":
            p.add_argument("--probes", type=int, default=8)
            p.add_argument("--steps", type=int, default=60)
            p.add_argument("--eps", type=float, default=1e-3, help="|lambda| threshold of degenerate eigenvalues")
            p.add_argument("--hessian-backend", default="auto", help="auto, fused or generic")
        else:
            p.add_argument("--depth", type=int, default=20)
            p.add_argument("--width", type=int, default=128)
        _common(p, f"skipkern_{name}")

    p = sub.add_parser("backends", help="list the skip_linear backends and whether they run here")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("bench", help="run the benchmark scripts in bench/ (source checkout)",
                       description="Run bench/<script>.py of the source checkout (all of them, or one, with its own "
                                   "arguments after the name, e.g. 'skipkern bench skip_layers --quick').")
    p.add_argument("--list", action="store_true", help="list the scripts and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("script", nargs="?", default=None, help="one script name (e.g. skip_layers); default all")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    return ap


def _version() -> str:
    from skipkern import __version__
    return __version__


def parse_seeds(text: Optional[str]) -> Optional[list]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]; None -> None."""
    if text is None:
        return None
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise CLIError(f"--seeds must be a positive count (e.g. 3) or a comma list of ints (e.g. 0,4,7), got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CLIError(f"--seeds must list distinct non-negative ints, got {text!r}")
    return seeds


def parse_set(items: Sequence[str]) -> dict:
    """--set key=value pairs; values parsed as JSON when they can be (numbers, lists), else strings."""
    import json
    out = {}
    for it in items:
        if "=" not in it:
            raise CLIError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------------------ set-up
def _setup(args) -> None:
    import torch
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="skipkern: %(message)s", stream=sys.stderr)
    device = getattr(args, "device", None)
    if device is not None:
        if device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available here; use --device cpu")
        elif not (device == "cpu" or device.startswith("cuda")):
            raise CLIError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join the process group
        from skipkern import distributed as sd
        sd.init_from_env()
        if not sd.is_main() and hasattr(args, "no_progress"):
            args.no_progress = True  # one progress display (rank 0)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 0:
            raise CLIError(f"--threads must be >= 0, got {threads}")
        if threads == 0 and args.device == "cpu":
            threads = 1  # widths <= 128: per-op overhead dominates; more threads only contend (10x slower when shared)
        if threads:
            torch.set_num_threads(threads)
        log.info("torch threads: %d", torch.get_num_threads())
    backend = getattr(args, "backend", None)
    if backend is not None and backend != "auto":
        from skipkern.backends import BACKENDS, available
        if backend not in BACKENDS:
            raise CLIError(f"--backend must be auto or one of {sorted(BACKENDS)}, got {backend!r}")
        status = {b.name: b for b in available()}[backend]
        if not status.available:
            raise CLIError(f"--backend {backend} cannot run here: {status.reason}")


def say(*args, **kwargs) -> None:
    """print on rank 0 only (every process in a single-process run): one console under torchrun."""
    from skipkern import distributed as sd
    if sd.is_main():
        print(*args, **kwargs)


def ensure_writable(path: os.PathLike) -> Path:
    """Create ``path`` and check a file can be written in it; CLIError naming the folder otherwise.
    Under torchrun rank 0 checks (it alone writes) and a failure raises the same error on every rank."""
    from skipkern import distributed as sd
    return sd.run_on_main(lambda: _check_writable(Path(path)), sd.resolve_group("default"))


def _check_writable(p: Path) -> Path:
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".skipkern_write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"cannot write to the output folder {p}: {e.strerror or e}")
    return p


def _jobs(args) -> int:
    jobs = getattr(args, "jobs", 1)
    if jobs < 0:
        raise CLIError(f"--jobs must be >= 0, got {jobs}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1  # under torchrun the ranks are the parallelism; no worker processes on top
    if jobs == 0:
        jobs = 1 if args.device.startswith("cuda") else max(1, min(4, os.cpu_count() or 1))
    return jobs


def _context(args, mode: str):
    from skipkern.experiments import Context
    return Context(out=Path(args.out), device=args.device, backend=args.backend, data=args.data,
                   data_dir=args.data_dir, seeds=parse_seeds(args.seeds), mode=mode,
                   progress=not args.no_progress, jobs=_jobs(args))


def on_every_rank(fn, what: str):
    """``fn()`` on every rank, with the ranks agreeing on failure: under torchrun a rank that fails
    locally (a data folder or checkpoint another machine lacks) makes every rank raise the same
    one-line error instead of leaving the others waiting at the next collective. ``fn()`` itself in
    a single process."""
    from skipkern import distributed as sd
    group = sd.resolve_group("default")
    if group is None:
        return fn()
    error = out = None
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - shared with the other ranks by check_ok below
        error = _one_line(str(e) or type(e).__name__)
    sd.check_ok(error, what, group)
    return out


def check_data(ctx, n_train, n_test) -> None:
    """Load the data once up front, so a missing or malformed folder fails before any training."""
    from skipkern.data import DATASETS
    if ctx.data not in DATASETS:
        raise CLIError(f"--data must be one of {', '.join(DATASETS)}, got {ctx.data!r}")
    if ctx.data != "mnist1d" and ctx.data_dir is None and not os.environ.get("SKIPKERN_DATA_DIR"):
        raise CLIError(f"--data {ctx.data} needs --data-dir: the folder holding "
                       f"{'cifar-10-batches-py' if ctx.data == 'cifar10' else 'cifar-100-python'} (no downloads)")
    ctx.dataset(n_train, n_test)


# ---------------------------------------------------------------------------------------- commands
def cmd_repro(args) -> int:
    from skipkern.experiments import ORDER, get_recipe
    from skipkern.report import write_report

    names = list(ORDER) if args.experiment == "all" else [args.experiment]
    recipes = [get_recipe(n) for n in names]  # unknown name: ValueError listing the known ones
    mode = "quick" if args.quick else "full"
    overrides = parse_set(args.set)
    unknown = [k for k in overrides if not any(k in r.configs[mode] for r in recipes)]
    if unknown:
        raise CLIError(f"--set: unknown setting(s) {unknown} for {', '.join(names)}; see "
                       f"skipkern/experiments/registry.py for the keys")
    ctx = _context(args, mode)
    ensure_writable(ctx.out)
    deep = [r for r in recipes if r.name != "simplified"]
    if deep:
        cfg = deep[0].config(mode, {k: v for k, v in overrides.items() if k in deep[0].configs[mode]})
        on_every_rank(lambda: check_data(ctx, cfg["n_train"], cfg["n_test"]), "loading the data")
    from skipkern import distributed as sd
    world = sd.world_size(ctx.group)
    say(f"skipkern repro {args.experiment} ({mode}) -> {ctx.out}  [device {ctx.device}, backend {ctx.backend}, "
        f"data {ctx.data}, " + (f"{world} torch.distributed ranks (DDP)" if world > 1 else f"{ctx.jobs} worker(s)")
        + "]", file=sys.stderr)
    try:
        timings, failed, total = _run_recipes(args, ctx, recipes, mode, overrides)
    finally:
        ctx.close()
    report = sd.run_on_main(lambda: write_report(ctx.out, timings=timings, command="skipkern " + " ".join(sys.argv[1:]),
                                                 total_s=total, failed=failed), ctx.group)
    say(f"report: {report}  (total {total / 60:.1f} min)")
    if failed:
        raise CLIError(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (details in {report})")
    return 0


def _run_recipes(args, ctx, recipes, mode: str, overrides: dict):
    from skipkern import distributed as sd
    timings, failed = {}, {}
    t_all = time.perf_counter()
    for i, r in enumerate(recipes, 1):
        say(f"[{i}/{len(recipes)}] {r.name}: {r.description}", file=sys.stderr)
        t0 = time.perf_counter()
        error = None
        try:
            res = r.run(ctx, {k: v for k, v in overrides.items() if k in r.configs[mode]})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken experiment must not cost the others (and the report)
            if args.debug or len(recipes) == 1:
                raise
            error = f"{type(e).__name__}: {e}"
        if ctx.group is not None:  # the ranks agree on the outcome (a write fails on rank 0 only)
            try:
                sd.check_ok(error, r.name, ctx.group)
            except sd.DistributedError as e:
                error = str(e)
        if error is not None:
            failed[r.name] = error
            say(f"  {r.name} FAILED: {_one_line(error)}", file=sys.stderr)
            continue
        timings[r.name] = time.perf_counter() - t0
        for f in res["findings"]:
            tag = f"result {f['result']}" if f["result"] else "simplified model"
            say(f"  {tag}: {f['verdict']}  ({timings[r.name]:.0f} s)", file=sys.stderr)
    return timings, failed, time.perf_counter() - t_all


def _load_checkpoint(args):
    from skipkern.train import load_checkpoint
    p = Path(args.checkpoint)
    if not p.exists():
        raise CLIError(f"checkpoint {p} does not exist (expected checkpoint.pt written by 'skipkern train', or its folder)")
    model, ckpt = load_checkpoint(p, device=args.device)
    mc = ckpt.get("model_config") or {}
    if args.arch is not None and mc.get("arch") != args.arch:
        raise CLIError(f"checkpoint {p} holds a {mc.get('arch')!r} net (depth {mc.get('depth')}, width "
                       f"{mc.get('width')}), not the requested --arch {args.arch!r}")
    return model, ckpt


def _load_checkpoint_and_data(args):
    model, ckpt = _load_checkpoint(args)
    return model, ckpt, _checkpoint_data(args, ckpt, model)


def _checkpoint_data(args, ckpt: dict, model):
    from skipkern.data import load_dataset
    d = ckpt.get("data", {})
    name = d.get("name", args.data)
    ds = load_dataset(name, data_dir=args.data_dir, n_train=d.get("n_train"), n_test=d.get("n_test"),
                      seed=int(d.get("seed", 0) or 0))
    if ds.in_features != model.in_features or ds.num_classes != model.out_features:
        raise CLIError(f"checkpoint net maps {model.in_features} -> {model.out_features}, but data {name!r} has "
                       f"{ds.in_features} features and {ds.num_classes} classes")
    return ds.to(args.device)


def _subset(ds, n: int):
    if n < 1:
        raise CLIError(f"--samples must be >= 1, got {n}")
    n = min(n, ds.n_train)
    return ds.x_train[:n], ds.y_train[:n]


def cmd_spectrum(args) -> int:
    import torch.nn.functional as F

    from skipkern import distributed as sd

    from skipkern.experiments.common import write_json
    from skipkern.hessian import HessianOperator, spectral_density
    from skipkern.plotting import new_figure, save_figure

    model, ckpt, ds = on_every_rank(lambda: _load_checkpoint_and_data(args), "loading the checkpoint and its data")
    x, y = _subset(ds, args.samples)
    out = ensure_writable(args.out)
    group = sd.resolve_group("default")
    if group is not None:  # under torchrun: each rank holds its strided shard; products all-reduce
        x, y = sd.shard(x, group), sd.shard(y, group)
    n_samples = sum(sd.gather_ints(x.shape[0], group))
    op = HessianOperator(model, F.cross_entropy, (x, y), backend=args.hessian_backend)
    seed = (parse_seeds(args.seeds) or [0])[0]
    t0 = time.perf_counter()
    dens = spectral_density(op, num_probes=args.probes, num_steps=args.steps, seed=seed,
                            progress=not args.no_progress)
    deg, deg_se = _mean_se(dens.fraction_degenerate(args.eps))
    neg, neg_se = _mean_se(dens.fraction_negative(args.eps))
    if not sd.is_main(group):  # identical float64 Lanczos state on every rank: rank 0 writes
        return 0
    dens.save(str(out / "spectrum_density.json"))
    fig, axes = new_figure(1, 1, width=6)
    dens.plot(ax=axes[0])
    axes[0].set_title(f"Hessian eigenvalue density: {ckpt.get('model_config', {}).get('arch')} net, epoch "
                      f"{ckpt.get('epoch')}")
    save_figure(fig, out, "spectrum_density")
    summary = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"), "model_config": ckpt.get("model_config"),
               "samples": n_samples, "num_params": int(op.shape[0]), "probes": args.probes, "steps": args.steps,
               "eps": args.eps, "fraction_degenerate": deg, "fraction_degenerate_se": deg_se,
               "fraction_negative": neg, "fraction_negative_se": neg_se, "time_s": time.perf_counter() - t0}
    write_json(out / "spectrum_summary.json", summary)
    print(f"fraction of degenerate eigenvalues (|lambda| <= {args.eps:g}): {deg:.4f} ± {deg_se:.4f}")
    print(f"fraction of negative eigenvalues: {neg:.4f} ± {neg_se:.4f}")
    print(f"wrote {out / 'spectrum_density.json'}, {out / 'spectrum_density.png'}, {out / 'spectrum_summary.json'}")
    return 0


def _mean_se(v) -> tuple:
    """A fraction from SpectralDensity: a float, a (mean, se) pair, or an object with mean/se."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return float(v[0]), float(v[1])
    if isinstance(v, dict):
        return float(v.get("mean", v.get("value"))), float(v.get("se", v.get("stderr", float("nan"))))
    for a, b in (("mean", "se"), ("value", "stderr"), ("mean", "stderr"), ("value", "se")):
        if hasattr(v, a):
            return float(getattr(v, a)), float(getattr(v, b, float("nan")))
    return float(v), float("nan")


def cmd_diagnose(args) -> int:
    from skipkern import distributed as sd
    from skipkern.diagnostics import diagnose
    from skipkern.plotting import new_figure, save_figure

    if not sd.is_main():  # single-process work on one model: under torchrun rank 0 does it alone
        return 0

    if args.checkpoint:
        model, ckpt, ds = _load_checkpoint_and_data(args)
        what = f"checkpoint {args.checkpoint} (epoch {ckpt.get('epoch')})"
    else:
        from skipkern.experiments import Context
        from skipkern.nn import SkipMLP
        ctx = Context(out=Path(args.out), device=args.device, backend=args.backend, data=args.data,
                      data_dir=args.data_dir)
        check_data(ctx, None, None)
        ds = ctx.dataset(None, None)
        seed = (parse_seeds(args.seeds) or [0])[0]
        model = SkipMLP(ds.in_features, args.width, args.depth, ds.num_classes, arch=args.arch or "residual",
                        backend=args.backend, seed=seed, device=args.device)
        what = f"a freshly initialised {model.arch} net (depth {args.depth}, width {args.width}, seed {seed})"
    x, y = _subset(ds, args.samples)
    out = _check_writable(Path(args.out))  # rank 0 alone here: not the collective ensure_writable
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


def cmd_train(args) -> int:
    from skipkern.nn import SkipMLP, malicious_init_
    from skipkern.regularizers import BiasReg
    from skipkern.train import TrainConfig, train

    seed = (parse_seeds(args.seeds) or [0])[0]
    width = args.width or (64 if args.quick else 128)
    epochs = args.epochs if args.epochs is not None else (5 if args.quick else 20)
    n_train = args.n_train if args.n_train is not None else (4000 if args.quick else None)
    try:
        spectrum_at = tuple(int(e) for e in args.spectrum_at.split(",") if e.strip())
    except ValueError:
        raise CLIError(f"--spectrum-at must be a comma list of epochs, got {args.spectrum_at!r}")
    out = ensure_writable(args.out)
    ctx = _context(args, "quick" if args.quick else "full")
    on_every_rank(lambda: check_data(ctx, n_train, args.n_test), "loading the data")
    data = ctx.dataset(n_train, args.n_test)
    model = SkipMLP(data.in_features, width, args.depth, data.num_classes, arch=args.arch,
                    degenerate_fraction=args.degenerate_fraction, batchnorm_layers=tuple(args.bn_layer),
                    backend=args.backend, seed=seed, device=args.device)
    if args.malicious:
        malicious_init_(model)
    reg = BiasReg(model, *args.biasreg, seed=seed) if args.biasreg else None
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device,
                      diagnostics_every=args.diagnostics_every, spectrum_at=spectrum_at,
                      spectrum_probes=args.spectrum_probes, spectrum_steps=args.spectrum_steps,
                      spectrum_samples=args.spectrum_samples, regularizer=reg, progress=not args.no_progress)
    say(f"training {args.arch} (depth {args.depth}, width {width}) on {data.name} ({data.n_train} samples) for "
        f"{epochs} epochs -> {out}", flush=True)
    res = train(model, data, cfg, out_dir=out, resume=not args.no_resume)
    f = res.final
    say(f"epoch {f.get('epoch')}: train acc {f.get('train_acc', float('nan')):.4f}, test acc "
        f"{f.get('test_acc', float('nan')):.4f}, train loss {f.get('train_loss', float('nan')):.4f}")
    say(f"wrote {out / 'checkpoint.pt'}, {out / 'metrics.jsonl'}, {out / 'metrics.csv'}")
    return 0


def cmd_backends(args) -> int:
    from skipkern.backends import available
    rows = [(b.name, "yes" if b.available else "no", ",".join(b.devices), b.reason) for b in available()]
    head = ("backend", "available", "devices", "details")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(head[:3], widths)) + "  " + head[3])
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def bench_scripts() -> tuple:
    """(bench folder, its benchmark scripts): every bench/*.py but helpers (common.py, _*.py)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if not bench.is_dir():
        return bench, []
    return bench, sorted(p for p in bench.glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


def cmd_bench(args) -> int:
    bench, scripts = bench_scripts()
    if not scripts:
        print(f"no benchmark scripts found in {bench}. They live in bench/ of a source checkout (git clone, then "
              f"pip install -e .); run one with: python bench/<name>.py, results go to bench/results/")
        return 0
    if args.list:
        for s in scripts:
            print(s.stem)
        return 0
    if args.script:
        scripts = [s for s in scripts if args.script in (s.stem, s.name)]
        if not scripts:
            raise CLIError(f"no benchmark script {args.script!r} in {bench}; run 'skipkern bench --list'")
    rc = 0
    for s in scripts:
        print(f"== python {s} {' '.join(args.script_args)}", flush=True)
        rc = max(rc, subprocess.call([sys.executable, str(s), *args.script_args]))
    return rc


COMMANDS = {"repro": cmd_repro, "train": cmd_train, "spectrum": cmd_spectrum, "diagnose": cmd_diagnose,
            "backends": cmd_backends, "bench": cmd_bench}


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``skipkern`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False)
    try:
        _setup(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("skipkern: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except Exception as e:
        if debug:
            raise
        expected = (CLIError, ValueError, TypeError, OSError, RuntimeError, ImportError, KeyError)
        if isinstance(e, expected) and str(e):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {e} (unexpected; rerun with --debug for the traceback)"
        print(f"skipkern: error{_rank_tag()}: {_one_line(msg)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        _leave_group()


def _rank_tag() -> str:
    """' (rank r of W)' under torchrun, '' in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""


def _leave_group() -> None:
    """Destroy the process group _setup joined, so the ranks leave together and cleanly."""
    import gc

    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        try:
            gc.collect()  # free DDP reducers (and the process group they hold) while Python is alive
            dist.destroy_process_group()
        except Exception as e:  # noqa: BLE001 - leaving anyway; say why
            log.warning("destroy_process_group failed: %s", e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
