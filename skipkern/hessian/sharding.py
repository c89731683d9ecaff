"""Data-parallel pieces of ``HessianOperator``: shard sizes, the device check, collective set-up and
the one all-reduce per product.

Each rank holds its own shard of the data. A product computes the rank's partial sum
S_r = sum_b H_b V (H_b the Hessian of batch b's sum-form loss, skipkern.hessian.reduction) and its
count n_r (the mean's denominator); ONE float64 all-reduce of [S_r (flat), n_r, one failure flag per
rank] gives sum_r S_r / sum_r n_r for a "mean" loss (sum_r S_r for a "sum" loss), the exact Hessian
of the loss over the union of the shards, on every rank (uneven shards weighted exactly). The reduction
runs in float64 whatever the product dtype (the Lanczos state's precision; the count stays exact).
A rank whose partial product raises still joins that all-reduce with its flag set, so every rank
sees the failure and raises DistributedError naming the rank and its error (one more small exchange,
only on failure) instead of waiting for a collective that never comes.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from skipkern import distributed as sd

__all__ = ["shard_size", "check_device", "collective_setup", "reduced_mean"]


def _is_pair(t: Any) -> bool:
    return isinstance(t, (tuple, list)) and len(t) >= 2 and isinstance(t[0], Tensor) and isinstance(t[1], Tensor)


def shard_size(batches: Any, peek: bool) -> Optional[int]:
    """Rows of a list of (inputs, targets) batches or of a DataLoader with a sized sampler (e.g. a
    DistributedSampler); ``len`` (batches) of another sized iterable; for an unsized iterable 1 or 0,
    whether it yields a batch (read one when ``peek``, else None)."""
    if isinstance(batches, (list, tuple)) and all(_is_pair(t) for t in batches):
        return sum(int(t[0].shape[0]) for t in batches)
    sampler, bs = getattr(batches, "sampler", None), getattr(batches, "batch_size", None)
    if sampler is not None and bs and hasattr(sampler, "__len__"):  # a DataLoader: rows it will yield
        n = len(sampler)
        return n - n % bs if getattr(batches, "drop_last", False) else n
    if hasattr(batches, "__len__"):
        return len(batches)
    return int(next(iter(batches), None) is not None) if peek else None


def check_device(op) -> None:
    """Raise RuntimeError when the operator's tensors cannot run where they are: parameters on several
    devices, an NCCL process group with the model off the GPU, or (generic HVP, which runs the model's
    own layers) a skip_linear backend forced onto a device it does not run on."""
    devs = sorted({str(p.device) for p in op._params})
    if len(devs) > 1:
        raise RuntimeError(f"the parameters lie on several devices {devs}; move the model to one device")
    group = op.process_group
    if group is not None and torch.distributed.get_backend(group) == "nccl" and op.device.type != "cuda":
        raise RuntimeError(f"the process group's backend is NCCL, which reduces CUDA tensors, but the model is on "
                           f"{op.device}; move it to this rank's GPU (cuda:LOCAL_RANK) or use a gloo group")
    if op.backend == "generic":
        from skipkern import backends
        forced = {m.backend for m in op.model.modules()
                  if hasattr(m, "skip") and getattr(m, "backend", "auto") not in (None, "auto")}
        for name in sorted(forced):  # raises RuntimeError naming the usable alternatives
            backends.resolve("skip_linear", name, op.device, op.dtype)


def collective_setup(setup: Callable[[], None], group: object, what: str) -> None:
    """Run this rank's ``setup()``; if it raises on ANY rank, raise DistributedError on every rank
    (naming the ranks and their errors, chained to the local error where there is one)."""
    err = None
    try:
        setup()
    except Exception as e:  # noqa: BLE001 - reported on every rank just below
        err = e
    try:
        sd.check_ok(None if err is None else f"{type(err).__name__}: {err}", what, group)
    except sd.DistributedError as de:
        raise de from err
    finally:
        err = None  # no frame <-> traceback cycle holding ``group`` (see skipkern.distributed.run_on_main)


def reduced_mean(op, partial: Callable[[Any], tuple[Tensor, float]], arg: Any, shape: tuple, what: str,
                 divide: Callable[[], bool] = lambda: True) -> Tensor:
    """sum_r S_r / sum_r n_r (or sum_r S_r when ``divide()`` is False, asked after ``partial``) as
    float64 of ``shape``, where this rank's (S_r, n_r) = ``partial(arg)`` (S_r of ``shape``), with ONE
    all-reduce over ``op.process_group``; counts one data pass."""
    group = op.process_group
    world, r = sd.world_size(group), sd.rank(group)
    err, part, n = None, None, 0
    try:
        part, n = partial(arg)
    except Exception as e:  # noqa: BLE001 - joins the all-reduce flagged, so every rank raises below
        err = e
    size = int(np.prod(shape))
    buf = torch.zeros(size + 1 + world, dtype=torch.float64, device=op.device)
    if err is None:
        buf[:size] = part.reshape(-1)
        buf[size] = n
    else:
        buf[size + 1 + r] = 1.0
    buf = sd.all_reduce_sum(buf, group)
    if bool((buf[size + 1:] != 0).any()):  # some rank failed: all raise, naming it and its error
        msg = None if err is None else f"{type(err).__name__}: {err}"
        try:
            sd.check_ok(msg, f"HessianOperator {what}", group)
        except sd.DistributedError as de:
            raise de from err
        finally:
            err = None  # no frame <-> traceback cycle holding ``group`` (see skipkern.distributed.run_on_main)
    total = float(buf[size])
    if total == 0:
        raise ValueError("the data holds no batches on any rank")
    op.data_passes += 1
    return (buf[:size] / total if divide() else buf[:size]).view(shape)
