"""torch.distributed helpers: process-group resolution, weighted all-reduce, and collective checks
that raise the same clear error on every rank instead of leaving some ranks hanging.

skipkern scales out on torch.distributed (NCCL on GPUs, gloo on CPUs) launched by torchrun; it has no
mechanism of its own. Every check here is itself a collective: all ranks take part, compare, and raise
together, so a bad shard or a mismatched model never deadlocks the job.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Optional, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("skipkern")

__all__ = [
    "resolve_group", "rank", "world_size", "is_main", "init_from_env", "all_reduce_sum",
    "gather_ints", "check_same", "check_nonempty", "DistributedError", "shard", "check_ok",
    "broadcast_object", "run_on_main", "shared_seed", "all_reduce_sums",
]


class DistributedError(RuntimeError):
    """Raised identically on every rank when ranks disagree or a shard is unusable."""


def resolve_group(group: Optional[object] = "default") -> Optional[object]:
    """The process group to use: ``None`` means single process; "default" means the default group
    when torch.distributed is initialised (else None); any other value is used as given."""
    if group is None:
        return None
    if isinstance(group, str):
        if group != "default":
            raise ValueError(f"process_group must be None, 'default' or a ProcessGroup, got {group!r}")
        return dist.group.WORLD if (dist.is_available() and dist.is_initialized()) else None
    return group


def world_size(group: Optional[object]) -> int:
    return 1 if group is None else dist.get_world_size(group)


def rank(group: Optional[object]) -> int:
    return 0 if group is None else dist.get_rank(group)


def is_main(group: Optional[object] = "default") -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and shows progress."""
    return rank(resolve_group(group)) == 0


def _comm_device(group: Optional[object]) -> torch.device:
    # NCCL only reduces CUDA tensors; gloo reduces CPU tensors.
    if group is not None and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, group: Optional[object]) -> torch.Tensor:
    """Sum ``t`` over the ranks of ``group`` (returns ``t`` itself when group is None)."""
    if group is None:
        return t
    dev = _comm_device(group)
    buf = t.to(dev) if t.device != dev else t.clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(t.device)


def gather_ints(value: int, group: Optional[object]) -> list[int]:
    """Every rank's integer ``value``, in rank order, on every rank."""
    if group is None:
        return [int(value)]
    n = world_size(group)
    dev = _comm_device(group)
    out = torch.zeros(n, dtype=torch.int64, device=dev)
    out[rank(group)] = int(value)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return [int(v) for v in out.tolist()]


def check_same(value: int, what: str, group: Optional[object]) -> None:
    """Raise DistributedError on every rank unless all ranks hold the same ``value``."""
    values = gather_ints(value, group)
    if len(set(values)) > 1:
        detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise DistributedError(f"ranks disagree on {what} ({detail}); every rank must build the same model")


def check_nonempty(count: int, what: str, group: Optional[object]) -> list[int]:
    """Every rank's sample count; raise DistributedError on every rank if any shard is empty."""
    counts = gather_ints(count, group)
    empty = [r for r, c in enumerate(counts) if c == 0]
    if empty:
        raise DistributedError(f"{what}: rank(s) {empty} hold an empty data shard (per-rank sample counts "
                               f"{counts}); give every rank at least one sample")
    return counts


def init_from_env(backend: Optional[str] = None, timeout_s: Optional[float] = None) -> Optional[object]:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1) and return it.

    Backend: "nccl" when CUDA is available, else "gloo" (override with ``backend`` or
    SKIPKERN_DIST_BACKEND). The timeout (default 600 s, SKIPKERN_DIST_TIMEOUT) bounds every collective,
    so a rank that dies cannot hang the others forever. Returns None in a single process.
    """
    if not dist.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if dist.is_initialized():
        return dist.group.WORLD
    backend = backend or os.environ.get("SKIPKERN_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get("SKIPKERN_DIST_TIMEOUT", 600)))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout)
    log.info("torch.distributed: rank %d of %d, backend %s", dist.get_rank(), dist.get_world_size(), backend)
    return dist.group.WORLD


def shard(x, group: Optional[object]):
    """This rank's strided share x[r::W] of the rows of ``x`` (a tensor or a sequence; ``x`` itself in
    one process). Strided like DistributedSampler, without padding: shares differ by at most one row,
    so a mean weighted by the ranks' row counts stays exact."""
    if group is None:
        return x
    return x[rank(group)::world_size(group)]


def all_reduce_sums(values: Sequence[float], group: Optional[object]) -> list[float]:
    """Sum a few Python numbers over the ranks in ONE float64 all-reduce (the numbers themselves when
    group is None). Used for exact global means: reduce (sum, count) pairs, divide afterwards."""
    if group is None:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return [float(v) for v in all_reduce_sum(t, group).tolist()]


def broadcast_object(obj: object, group: Optional[object], src: int = 0) -> object:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself when group is None)."""
    if group is None:
        return obj
    box = [obj if rank(group) == src else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src), group=group,
                               device=_comm_device(group))
    return box[0]


def check_ok(error: Optional[str], what: str, group: Optional[object]) -> None:
    """Raise DistributedError on every rank when any rank passes an ``error`` message (None: this rank
    is fine). Lets a rank that failed locally (a backend it cannot run, a file it cannot write) stop
    all ranks together instead of leaving the others waiting at the next collective."""
    if group is None:
        if error is not None:
            raise DistributedError(f"{what}: {error}")
        return
    failed = [r for r, f in enumerate(gather_ints(0 if error is None else 1, group)) if f]
    if not failed:
        return
    msgs: list = [None] * world_size(group)
    dist.all_gather_object(msgs, error, group=group)
    detail = "; ".join(f"rank {r}: {msgs[r]}" for r in failed)
    raise DistributedError(f"{what} failed on rank(s) {failed}: {detail}")


def run_on_main(fn, group: Optional[object]):
    """Run ``fn()`` on rank 0 only and return its result on every rank; an exception raised by ``fn``
    is re-raised (same type and message) on every rank. In a single process this is just ``fn()``.
    For work only rank 0 may do (writing files, reading a checkpoint that other nodes may not see)."""
    if group is None:
        return fn()
    payload = None
    if rank(group) == 0:
        try:
            payload = ("ok", fn())
        except Exception as exc:  # shipped to the other ranks, re-raised everywhere below
            payload = ("err", exc if _picklable(exc) else DistributedError(f"{type(exc).__name__}: {exc}"))
    try:
        kind, value = broadcast_object(payload, group)
        if kind == "err":
            raise value
        return value
    finally:
        # An exception held in a local of a frame on its own traceback is a reference cycle; it would
        # keep ``group`` alive past destroy_process_group, and gloo aborts when a process group is
        # freed at interpreter exit. Drop the references instead.
        payload = value = None


def _picklable(obj: object) -> bool:
    import pickle
    try:
        pickle.loads(pickle.dumps(obj))
        return True
    except Exception:
        return False


def shared_seed(seed: Optional[int], group: Optional[object]) -> Optional[int]:
    """``seed`` itself when given or in a single process; for seed None under a process group, one
    random seed drawn on rank 0 and broadcast, so random probes are the same on every rank."""
    if seed is not None or group is None or world_size(group) == 1:
        return seed
    drawn = int(torch.randint(0, 2**62, (1,)).item()) if rank(group) == 0 else 0
    return int(broadcast_object(drawn, group))
