"""Pieces every command shares: the one-line error type, rank-0 printing, and the set-up of device,
threads, backend and (under torchrun) the process group. Imports only the standard library at module
level, so that the entry point stays cheap to import."""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["CLIError", "say", "one_line", "setup", "first_seed", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPT"]

log = logging.getLogger("skipkern")
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPT = 1, 2, 130


class CLIError(Exception):
    """A user error the CLI reports as one line."""


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def say(*args, **kwargs) -> None:
    """print on rank 0 only (every process in a single-process run): one console under torchrun."""
    from skipkern import distributed as sd
    if sd.is_main():
        print(*args, **kwargs)


def first_seed(args) -> int:
    """The first of --seeds (0 when not given): the seed of single-net commands."""
    from skipkern.cli.parser import parse_seeds
    return (parse_seeds(getattr(args, "seeds", None)) or [0])[0]


def setup(args) -> None:
    """Logging, --device (auto resolved), the process group under torchrun, --threads and --backend,
    checked before any work."""
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
