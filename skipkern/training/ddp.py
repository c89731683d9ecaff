"""Data-parallel pieces of the training loop: DistributedDataParallel wrapping, the per-rank share of
each mini-batch with exact global-mean gradients (evaluation: ``skipkern.training.measure.evaluate``).

How a step is split. Every rank draws the same epoch permutation (same seed) and walks the same
global mini-batches of ``batch_size`` rows; rank r takes rows r, r+W, r+2W, ... of each (a strided
share of the permutation, as DistributedSampler strides; when W divides the batch size this is the
same as rank r iterating perm[r::W] in batches of batch_size / W). Shares may differ by one row, so
each rank scales its batch-mean loss by W n_r / n (n_r its rows, n the global batch's): DDP averages
gradients over the W ranks, giving sum_r n_r g_r / n, the exact gradient of the global batch mean,
i.e. the single-process step up to floating-point summation order. A rank whose share is empty (a
last batch with fewer rows than ranks) runs a zero-weighted forward on one row, in eval mode, so it
still takes part in DDP's gradient all-reduce.

BatchNorm. On CUDA, BatchNorm layers become SyncBatchNorm (batch statistics over all ranks' rows,
as in one process). SyncBatchNorm does not run on CPU, so on CPU (gloo) each rank normalises with
its own share's statistics (DDP's usual behaviour; logged); running statistics come from rank 0.
"""
from __future__ import annotations

import inspect
import logging
from typing import Callable, Optional

import torch
from torch import nn

from skipkern import distributed as sd

logger = logging.getLogger("skipkern.train")

__all__ = ["rank_device", "wrap_ddp", "local_batch_loss"]


def rank_device(device: torch.device, group: Optional[object]) -> torch.device:
    """Under a process group, a bare "cuda" means this rank's GPU (set by ``init_from_env`` from
    LOCAL_RANK), so DDP gets an explicit device index."""
    if group is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


_warned = {"cpu_batchnorm": False}


def wrap_ddp(model: nn.Module, device: torch.device, group: object) -> nn.Module:
    """``model`` (already on ``device``) wrapped in DistributedDataParallel over ``group``.

    Checks collectively that every rank holds the same number of parameters first (DistributedError
    on every rank otherwise). DDP broadcasts rank 0's parameters and buffers at construction, so all
    ranks start from rank 0's weights; buffers are re-broadcast at each forward only when the model
    has BatchNorm running statistics (fixed skip matrices never change)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    sd.check_same(sum(p.numel() for p in model.parameters()), "the model's parameter count", group)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
        logger.info("ddp: %d BatchNorm layer(s) -> SyncBatchNorm (global batch statistics)", len(bns))
    elif bns and sd.rank(group) == 0 and not _warned["cpu_batchnorm"]:  # once, on rank 0
        _warned["cpu_batchnorm"] = True
        logger.warning("ddp on %s: SyncBatchNorm needs a GPU, so each rank's BatchNorm uses the statistics of "
                       "its own share of the batch (training differs slightly from one process)", device.type)
    # torch >= 2.13 renames broadcast_buffers to forward_sync_buffers (both still sync at construction)
    sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            else "broadcast_buffers")
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, process_group=group,
              **{sync: bool(bns)})
    logger.info("ddp: rank %d of %d on %s", sd.rank(group), sd.world_size(group), device)
    return ddp


def local_batch_loss(fwd: nn.Module, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                     idx: torch.Tensor, group: object) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's share of the global mini-batch ``idx`` [n].

    Args:
        fwd: the DDP-wrapped model (its forward/backward take part in the gradient all-reduce).
        model: the wrapped module itself (its mode is switched for a zero-weight forward).
        x, y: the whole training set [N, ...], [N]; idx: the global batch's row indices [n].

    Returns:
        (loss, scaled, n_r): the batch-mean loss of this rank's n_r rows (a detached 0 when n_r = 0),
        the loss to backpropagate (scaled by W n_r / n, see the module docstring), and n_r.
    """
    world, r, n = sd.world_size(group), sd.rank(group), idx.shape[0]
    mine = idx[r::world]
    n_r = int(mine.shape[0])
    if n_r:
        loss = loss_fn(fwd(x[mine]), y[mine])
        return loss, loss * (world * n_r / n), n_r
    from skipkern.diagnostics import eval_mode

    with eval_mode(model):  # one row, weight 0: no BatchNorm update, zero gradient contribution
        dummy = loss_fn(fwd(x[idx[:1]]), y[idx[:1]])
    return torch.zeros((), dtype=dummy.dtype, device=dummy.device), dummy * 0.0, 0
