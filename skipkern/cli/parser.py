"""The argument parser of every command, and the parsing of values: every number is checked here, before
any work starts (a bad value is one line on stderr naming the flag, exit status 2)."""
from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn, Optional

from skipkern.cli.common import EXIT_USAGE, CLIError, one_line

# `skipkern.experiments.registry.ORDER`, spelled out so that --help does not import torch (a test keeps them equal)
REPRO_EXPERIMENTS = ("simplified", "architectures", "skips", "malicious", "seeds", "biasreg", "skip_benefit",
                     "connectivity", "symmetry", "depth", "signal")

__all__ = ["build_parser", "parse_seeds", "parse_epochs", "int_at_least", "number_in"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``skipkern: error: argument --width: ... (see 'skipkern train --help')``."""

    def error(self, message: str) -> NoReturn:
        print(f"skipkern: error: {one_line(message)} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def int_at_least(low: int):
    """argparse type: an int >= ``low``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v
    return parse


def number_in(low: float, high: float = math.inf, *, low_open: bool = False):
    """argparse type: a finite number in [low, high] ((low, high] with ``low_open``)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high < math.inf else (f"> {low:g}" if low_open
                                                                                  else f">= {low:g}")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
            raise argparse.ArgumentTypeError(f"expected a finite number {span}, got {text}")
        return v
    return parse


POSITIVE, COUNT = int_at_least(1), int_at_least(0)


def _common(p: argparse.ArgumentParser, out_default: Optional[str], out_help: Optional[str] = None,
            more_data: str = "") -> None:
    from skipkern.data import DATASETS

    g = p.add_argument_group("common options")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    g.add_argument("--backend", default="auto",
                   help="skip_linear backend of the layers: auto (default), cpp, torch, triton, cuda")
    g.add_argument("--data", default="mnist1d", choices=DATASETS + ((more_data,) if more_data else ()),
                   help="data set: mnist1d (default, generated offline), cifar10, cifar100" + (
                       f", {more_data} (with --model: image-shaped data generated offline, smooth class templates "
                       f"shifted and noised, as the depth experiment's conv study uses)" if more_data else ""))
    g.add_argument("--data-dir", default=None,
                   help="CIFAR: folder with cifar-10-batches-py / cifar-100-python (or that folder itself); "
                        "MNIST-1D: cache folder")
    g.add_argument("--out", default=out_default, help=out_help or f"output folder (default: {out_default})")
    g.add_argument("--seeds", default=None,
                   help="seeds: a count N (seeds 0..N-1) or a comma list such as 0,3,7 (default: the recipe's)")
    g.add_argument("--quick", action="store_true", help="small, fast sizes (MNIST-1D on a 2-core CPU in minutes)")
    g.add_argument("--threads", type=COUNT, default=0,
                   help="torch CPU threads; 0 = auto: 1 on CPU (these small layers run fastest single-threaded), "
                        "torch's default otherwise")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    g.add_argument("-v", "--verbose", action="store_true", help="log which backends and paths ran")


def _add_train(sub) -> None:
    from skipkern.nn import ARCHS

    p = sub.add_parser("train", help="train one SkipMLP (checkpoint.pt, metrics.jsonl, metrics.csv)",
                       description="Train one net with Adam; an interrupted run resumes from --out/checkpoint.pt "
                                   "when every setting matches (else the differing settings are named).")
    p.add_argument("--arch", default="residual", choices=ARCHS, help=f"one of {', '.join(ARCHS)} (default residual)")
    p.add_argument("--init", default="glorot", choices=("glorot", "scaled"),
                   help="init family: glorot (the paper's Glorot normal, default) or scaled (O(1) hidden scale and "
                        "logits at any depth; see skipkern.nn.init)")
    p.add_argument("--depth", type=POSITIVE, default=20)
    p.add_argument("--width", type=POSITIVE, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--epochs", type=COUNT, default=None, help="default 20 (5 with --quick)")
    p.add_argument("--lr", type=number_in(0, low_open=True), default=5e-4)
    p.add_argument("--batch-size", type=POSITIVE, default=500)
    p.add_argument("--n-train", type=POSITIVE, default=None, help="training samples (default: the data set's default)")
    p.add_argument("--n-test", type=COUNT, default=None)
    p.add_argument("--degenerate-fraction", type=number_in(0, 1), default=0.5)
    p.add_argument("--malicious", action="store_true", help="W <- W - I on the square hidden layers before training")
    p.add_argument("--biasreg", type=float, nargs=3, metavar=("MU", "SIGMA", "LAM"), default=None,
                   help="add BiasReg (mu = sigma = 0: BiasL2Reg)")
    p.add_argument("--bn-layer", type=COUNT, action="append", default=[],
                   help="BatchNorm after this hidden layer (0-based)")
    p.add_argument("--diagnostics-every", type=COUNT, default=0)
    p.add_argument("--spectrum-at", default="", help="comma list of epochs for Hessian spectra, e.g. 0,10")
    p.add_argument("--spectrum-probes", type=POSITIVE, default=4)
    p.add_argument("--spectrum-steps", type=POSITIVE, default=40)
    p.add_argument("--spectrum-samples", type=POSITIVE, default=500)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    _common(p, "skipkern_train")


def _add_checkpoint_command(sub, name: str, helptext: str) -> None:
    from skipkern.nn import ARCHS

    where = {"spectrum": "<run folder>/spectrum", "diagnose": "<run folder>/diagnose; --model: <folder>/<stem>_diagnose "
             "beside the module file or --state-dict; skipkern_diagnose for a fresh net"}[name]
    p = sub.add_parser(name, help=helptext, description=helptext + ". CHECKPOINT is the checkpoint.pt written "
                       "by 'skipkern train' (or its folder). An earlier result in the output folder is never "
                       "overwritten silently: pass --force to replace it, or --out for another folder.")
    p.add_argument("checkpoint", nargs="?" if name == "diagnose" else None, default=None,
                   help="checkpoint.pt or its run folder" + (" (omit: a freshly initialised net from --arch/"
                                                             "--depth/--width)" if name == "diagnose" else ""))
    p.add_argument("--arch", default=None, choices=ARCHS, help="expected architecture (error if the checkpoint differs); "
                   "for diagnose without a checkpoint, the net to build (default residual)")
    p.add_argument("--samples", type=POSITIVE, default=500, help="training samples used (default 500)" + (
        "; with --model, the inputs of the batch" if name == "diagnose" else ""))
    p.add_argument("--force", action="store_true", help="overwrite an earlier result in the output folder")
    if name == "spectrum":
        p.add_argument("--probes", type=POSITIVE, default=8)
        p.add_argument("--steps", type=POSITIVE, default=60)
        p.add_argument("--eps", type=number_in(0), default=1e-3, help="|lambda| threshold of degenerate eigenvalues")
        p.add_argument("--hessian-backend", default="auto", choices=("auto", "fused", "generic"),
                       help="auto, fused or generic")
    else:
        p.add_argument("--depth", type=POSITIVE, default=None, help="fresh net: depth (default 20)")
        p.add_argument("--width", type=POSITIVE, default=None, help="fresh net: width (default 128)")
        _add_user_model(p)
    _common(p, None, f"output folder (default: {where})", more_data="images" if name == "diagnose" else "")


def _add_user_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "your own model (--model)", "Diagnose any torch.nn.Module: the outputs of chosen submodules on a batch of "
        "--samples inputs, captured by forward hooks (skipkern.diagnostics.diagnose_module). Writes elimination, "
        "overlap, linear_dependence and condition_numbers (.json/.csv/.png/.svg; no gradient norms) and "
        "diagnose_settings.json.")
    g.add_argument("--model", default=None, metavar="SPEC",
                   help="package.module:factory (a callable returning an nn.Module, importable from PYTHONPATH or "
                        "the current folder) or FILE written by torch.save(model, FILE) (needs --trust-model-file)")
    g.add_argument("--trust-model-file", action="store_true",
                   help="allow --model FILE: unpickling a whole module runs code stored in the file (torch.load "
                        "with weights_only=False), so only for files from a source you trust; the safe way is a "
                        "factory with --state-dict")
    g.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of the factory as a JSON object, e.g. '{\"blocks\": 4}'")
    g.add_argument("--state-dict", default=None, metavar="FILE",
                   help="weights to load (torch.save(model.state_dict(), FILE); loaded weights-only, no code)")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--modules", default=None, metavar="NAME,NAME",
                     help="submodules whose outputs are the layers, as named by model.named_modules() (e.g. "
                          "layer1,layer2); default: every activation module (nn.ReLU, nn.Tanh, ...; "
                          "capture_hidden's default)")
    sel.add_argument("--module-type", default=None, metavar="TYPE,TYPE",
                     help="every submodule of these classes (or subclasses), e.g. Conv2d,Linear or a class of "
                          "your own")
    g.add_argument("--flatten", default=None, choices=("channels", "features", "pool"),
                   help="outputs [B, C, H, W] as matrices: channels (default; [B H W, C], every sample and "
                        "position a row), features ([B, C H W]) or pool ([B, C], mean over positions)")
    g.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                   help="shape of one input sample, e.g. 3,32,32 or 40 (default: the data's, 3,32,32 for "
                        "cifar10/cifar100/images); the data's rows are reshaped to it")
    g.add_argument("--random-input", action="store_true",
                   help="inputs drawn from a standard Gaussian (seed: the first of --seeds) instead of --data; "
                        "needs --input-shape. Random inputs show the net's geometry at those inputs, not on data")


def _shape(text: str) -> tuple:
    """argparse type: '3,32,32' -> (3, 32, 32), positive ints."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas such as 3,32,32, got "
                                         f"{text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 3,32,32, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    from skipkern import __version__

    ap = _Parser(prog="skipkern", description="Fused skip-connection MLPs, Hessian spectra and the experiments of "
                 "Orhan & Pitkow, 'Skip Connections Eliminate Singularities'.",
                 epilog="Data-parallel on several processes/GPUs/machines: run the same command under "
                        "'torchrun --nproc_per_node=N -m skipkern ...' (README, Distributed).")
    ap.add_argument("--version", action="version", version=f"skipkern {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("repro", help="run paper experiments and write report.md",
                       description="Run one experiment or all of them; writes figures, raw numbers and report.md "
                                   f"into --out. Experiments: {', '.join(REPRO_EXPERIMENTS)}.")
    p.add_argument("experiment", help="experiment name, or 'all'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set steps=500 --set width=128 (repeatable; the value "
                        "must have the type of the recipe's default)")
    p.add_argument("--jobs", type=COUNT, default=0,
                   help="training runs at once, in worker processes; 0 = auto: one per CPU core (at most 4) on "
                        "CPU, 1 on CUDA")
    _common(p, "skipkern_results")
    _add_train(sub)
    _add_checkpoint_command(sub, "spectrum", "Hessian eigenvalue density of a saved checkpoint")
    _add_checkpoint_command(sub, "diagnose", "per-layer singularity diagnostics of a checkpoint, a fresh net, or "
                            "your own nn.Module (--model)")

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


def parse_epochs(text: str, flag: str) -> tuple:
    """'0,10' -> (0, 10): a comma list of epochs >= 0."""
    try:
        epochs = tuple(int(e) for e in text.split(",") if e.strip())
    except ValueError:
        raise CLIError(f"{flag} must be a comma list of epochs, got {text!r}") from None
    if any(e < 0 for e in epochs):
        raise CLIError(f"{flag} must list epochs >= 0, got {text!r}")
    return epochs
