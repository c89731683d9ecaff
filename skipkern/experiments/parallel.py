"""Run independent training runs in worker processes (``Context.jobs`` > 1).

The deep-net runs are small (widths 64-128): one run cannot keep two cores busy, and torch's
intra-op threads only contend at these sizes. Two single-threaded worker processes on a 2-core CPU
train two runs at once instead. Workers are spawned once per context (``pool(ctx)``), rebuild the
context from its fields, keep their own data cache, and report every finished epoch through a queue
(with its step count) so the parent's progress bar moves per epoch. Results are the same as in-process runs: each run is
seeded by its spec alone.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue as _queue
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Callable, Optional

log = logging.getLogger("skipkern")

__all__ = ["pool", "shutdown", "run_specs"]

_worker: dict = {}


def _init_worker(ctx_fields: dict, ticks, threads: int) -> None:
    import warnings

    import torch

    from skipkern.experiments.common import Context
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="skipkern")
    _worker["ctx"] = Context(**ctx_fields)
    _worker["ticks"] = ticks


def _run_one(spec, token: int) -> dict:
    from skipkern.experiments.runs import train_run
    ticks = _worker["ticks"]

    def on_epoch(rec: dict) -> None:
        if rec.get("epoch", 0) > 0:
            ticks.put((token, int(rec.get("step", 0))))

    return train_run(spec, _worker["ctx"], on_epoch)


def pool(ctx) -> ProcessPoolExecutor:
    """The context's worker pool (created on first use, ``ctx.jobs`` processes)."""
    if ctx._pool is None:
        spawn = mp.get_context("spawn")  # fork would copy torch's thread pools: unsafe
        ticks = spawn.Queue()
        fields = dict(out=str(ctx.out), device=ctx.device, backend=ctx.backend, data=ctx.data,
                      data_dir=ctx.data_dir, seeds=ctx.seeds, mode=ctx.mode, progress=False, jobs=1)
        ctx._pool = ProcessPoolExecutor(ctx.jobs, mp_context=spawn, initializer=_init_worker,
                                        initargs=(fields, ticks, 1))
        ctx._ticks = ticks
        log.info("started %d worker processes", ctx.jobs)
    return ctx._pool


def shutdown(ctx) -> None:
    if getattr(ctx, "_pool", None) is not None:
        ctx._pool.shutdown(wait=True, cancel_futures=True)
        ctx._pool = None


def run_specs(ctx, specs: list, on_tick: Callable[[int, int], None], on_done: Callable[[int, dict], None],
              on_start: Optional[Callable[[int], None]] = None) -> list:
    """Train ``specs`` in the pool; ``on_tick(i, step)`` per finished epoch of spec i, ``on_done(i, record)``
    when spec i finishes. Returns the records in the order of ``specs``."""
    ex = pool(ctx)
    futures: dict[Future, int] = {}
    for i, s in enumerate(specs):
        futures[ex.submit(_run_one, s, i)] = i
        if on_start is not None:
            on_start(i)
    out: list = [None] * len(specs)
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        _drain(ctx, on_tick)
        for f in done:
            i = futures[f]
            out[i] = f.result()  # re-raises a worker's exception here
            on_done(i, out[i])
    _drain(ctx, on_tick)
    return out


def _drain(ctx, on_tick) -> None:
    while True:
        try:
            on_tick(*ctx._ticks.get_nowait())
        except _queue.Empty:
            return
