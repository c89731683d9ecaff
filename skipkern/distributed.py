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
    "gather_ints", "check_same", "check_nonempty", "DistributedError", "shard_indices",
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


def shard_indices(n: int, group: Optional[object], *, seed: Optional[int] = None) -> Sequence[int]:
    """This rank's indices of ``n`` samples, strided like DistributedSampler (no padding, so shards may
    differ by one and the weighted mean over ranks stays exact). Shuffled first when ``seed`` is given."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else torch.arange(n)
    return idx[rank(group)::world_size(group)]
