"""The CLI under torchrun: failures that every rank agrees on, the rank tag of error lines, and leaving
the process group together."""
from __future__ import annotations

import logging
import os
import sys

from skipkern.cli.common import one_line

__all__ = ["on_every_rank", "rank_tag", "leave_group"]

log = logging.getLogger("skipkern")


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
        error = one_line(str(e) or type(e).__name__)
    sd.check_ok(error, what, group)
    return out


def rank_tag() -> str:
    """' (rank r of W)' under torchrun, '' in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""


def leave_group() -> None:
    """Destroy the process group ``setup`` joined, so the ranks leave together and cleanly. Imports
    nothing: when torch.distributed was never imported (e.g. Ctrl-C during start-up) there is no group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if dist.is_available() and dist.is_initialized():
        import gc
        try:
            gc.collect()  # free DDP reducers (and the process group they hold) while Python is alive
            dist.destroy_process_group()
        except Exception as e:  # noqa: BLE001 - leaving anyway; say why
            log.warning("destroy_process_group failed: %s", e)
