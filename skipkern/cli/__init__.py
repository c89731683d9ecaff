"""The ``skipkern`` command line (also ``python -m skipkern``).

    skipkern repro all --quick --out results     the main job: every experiment + report.md
    skipkern repro architectures --seeds 5       one experiment
    skipkern train --arch residual --epochs 20   one training run (checkpoint.pt, metrics.jsonl/csv)
    skipkern spectrum results/train/checkpoint.pt    Hessian eigenvalue density of a checkpoint
    skipkern diagnose results/train/checkpoint.pt    per-layer singularity diagnostics
    skipkern diagnose --model pkg.nets:resnet --data images   ... of your own nn.Module
    skipkern backends                             which kernels can run here
    skipkern bench                                run the benchmark scripts (bench/ of a source checkout)

Under ``torchrun --nproc_per_node=N -m skipkern ...`` the same commands run data-parallel on
torch.distributed (training under DDP, Hessian products all-reduced, rank 0 writes; ``diagnose``
runs on rank 0 alone). See README "Distributed".

Bad input (unknown experiment, a bad number, missing data folder, unwritable or busy output folder, a
checkpoint of another run) ends with one line on stderr and a non-zero exit; ``--debug`` shows the
traceback. Ctrl-C, even during start-up, prints one line and exits with status 130.

Modules: ``parser`` (flags and value checks), ``app`` (dispatch, error lines), one module per command
(``repro``, ``train``, ``spectrum``, ``diagnose``, ``tools``), ``outputs`` (folder ownership),
``overrides`` (``repro --set``), ``inputs`` (data and checkpoints), ``user_model`` (``diagnose --model``:
a user's own nn.Module), ``dist`` (torchrun).
This module imports nothing heavy: the console script imports it before any Ctrl-C guard exists.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from skipkern.cli.common import EXIT_INTERRUPT, CLIError

__all__ = ["main", "CLIError"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``skipkern`` console script; returns the exit status. torch and the rest are
    imported inside the guard, so Ctrl-C at any point prints one line and returns 130."""
    try:
        from skipkern.cli.app import run
        return run(argv)
    except KeyboardInterrupt:
        print("skipkern: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
