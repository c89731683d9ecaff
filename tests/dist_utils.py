"""Launch N gloo processes on loopback from a test, bounded in time, cleaned up on failure.

``run_ranks(fn, world_size, *args)`` runs ``fn(rank, world_size, *args)`` in fresh processes with the
default process group initialised (gloo, 127.0.0.1, a free port, a short collective timeout) and
returns the per-rank return values. An exception on any rank is re-raised in the test with that rank's
traceback; a rank that outlives ``timeout`` s gets every process killed and fails the test.
"""
from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import time
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, outdir, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    import torch
    torch.set_num_threads(1)
    result = {"ok": False}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        result = {"ok": True, "value": fn(rank, world_size, *args)}
    except BaseException as exc:  # reported to the parent, which fails the test
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # noqa: BLE001 - reported with the result
                result.setdefault("teardown", repr(exc))
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
        # Leave without running interpreter/C++ static teardown: gloo's threads can abort there
        # ("terminate called without an active exception") after the work is done and reported.
        os._exit(0)


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0, expect_error: bool = False):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks.

    Returns the list of per-rank values, or with ``expect_error`` the list of per-rank error strings
    (every rank must have raised).
    """
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(world_size, _free_port(), outdir, fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"distributed test did not finish within {timeout} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        results = []
        for r in range(world_size):
            with open(os.path.join(outdir, f"rank{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    if expect_error:
        bad = [r for r, res in enumerate(results) if res["ok"]]
        assert not bad, f"ranks {bad} did not raise"
        return [res["error"] for res in results]
    for r, res in enumerate(results):
        if not res["ok"]:
            raise AssertionError(f"rank {r} failed: {res['error']}\n{res['tb']}")
    return [res["value"] for res in results]
