"""The training loop of the paper's deep-net experiments: Adam (lr 5e-4, batch 500, all parameters),
per-epoch metrics, diagnostics and Hessian spectra, checkpoints, resume.

Output folder (``out_dir``), owned by the run while it trains (``skipkern.runlock``):
    metrics.jsonl, metrics.csv   one record per epoch (``skipkern.training.metrics``).
    checkpoint.pt   model, optimizer, RNG states, epoch, step, config, history, the model's constructor
                    arguments and the run's identity, rewritten atomically after every epoch
                    (``skipkern.training.checkpoint``; resume rules in ``skipkern.training.resume``).
    spectra/        the Hessian densities at ``spectrum_at`` epochs.
A run is repeatable: the mini-batch order comes from a torch.Generator seeded with ``config.seed``
and the fixed evaluation subsets from independent seeded streams; resuming restores the generator,
so 2 epochs + 2 resumed epochs give the same metrics as 4 epochs straight.

Data parallel: when torch.distributed is initialised (e.g. launched by torchrun and
``skipkern.distributed.init_from_env()``), ``train`` runs the model under DistributedDataParallel:
each rank takes its share of every global mini-batch and the gradient is the exact global batch mean
(``skipkern.training.ddp``); metrics are exact global means over the ranks' shares; diagnostics and
spectra (one Hessian product all-reduce per Lanczos step) are the same on every rank; only rank 0
holds the folder's lock, writes files, logs records and shows progress; a resume reads the checkpoint
on rank 0 and broadcasts it, so other nodes need not see rank 0's disk.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from skipkern import distributed as sd
from skipkern.data.base import Dataset
from skipkern.diagnostics import from_json_safe, json_safe, weighted_layers
from skipkern.nn.skip_mlp import SkipMLP
from skipkern.runlock import lock_folder
from skipkern.training import ddp
from skipkern.training.checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, model_config, read_checkpoint, save_checkpoint
from skipkern.training.config import TrainConfig, TrainResult
from skipkern.training.measure import EpochMeasures
from skipkern.training.metrics import METRICS_CSV, METRICS_JSONL, emit, write_metrics
from skipkern.training.resume import check_resume, run_identity

logger = logging.getLogger("skipkern.train")

__all__ = ["train", "resolve_device"]


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device without CUDA raises ValueError."""
    if str(device) == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device 'auto' -> %s", dev)
        return dev
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


class _RunFolder:
    """The output folder of a run: its lock (rank 0), the resume read, and each epoch's files.
    Every method is collective under a process group (rank 0 does the work, the others get its result
    or its exception)."""

    def __init__(self, out_dir: Union[str, os.PathLike], group: Optional[object]):
        self.path, self.group = Path(out_dir), group
        self.ckpt_path = self.path / CHECKPOINT
        self.lock = lock_folder(self.path, "training run") if sd.rank(group) == 0 else None
        self.synced = False  # metrics.jsonl matches the history up to its last record

    def open(self, resume: bool, identity: dict, config: TrainConfig, map_location) -> Optional[dict]:
        """Take the folder and return the checkpoint to resume (None: start fresh)."""
        def on_main() -> Optional[dict]:
            self.lock.acquire()
            try:
                for name in (CHECKPOINT, METRICS_JSONL, METRICS_CSV):  # partial files of a crashed writer
                    (self.path / (name + ".tmp")).unlink(missing_ok=True)
                if self.ckpt_path.exists() and resume:
                    ckpt = read_checkpoint(self.ckpt_path, map_location=map_location)
                    check_resume(ckpt, self.ckpt_path, identity, config)
                    return ckpt
                if self.ckpt_path.exists():
                    logger.info("resume=False: starting over, %s will be overwritten", self.ckpt_path)
                return None
            except BaseException:
                self.lock.release()
                raise

        return sd.run_on_main(on_main, self.group)

    def write(self, state: Callable[[], dict], history: list) -> None:
        """Publish the checkpoint ``state()`` (built on rank 0 only) and the metrics of ``history``."""
        def on_main() -> None:
            save_checkpoint(self.ckpt_path, state())
            # the first write of this call rewrites metrics.jsonl (dropping lines past a resumed checkpoint)
            write_metrics(self.path, history, append_last=self.synced)
            self.synced = True

        sd.run_on_main(on_main, self.group)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


class _GradNorms:
    """Per-layer (weight, bias) gradient norms summed over an epoch's steps, one fused kernel per step."""

    def __init__(self, model: nn.Module, device: torch.device):
        layers = weighted_layers(model)
        self.names = [nm for nm, _ in layers]
        self.pairs = [(m._parameters.get("weight"), m._parameters.get("bias")) for _, m in layers]
        # flat list of the tracked tensors and their slot in the [layers, 2] (weight, bias) table
        tracked = [(i, j, p) for i, pair in enumerate(self.pairs) for j, p in enumerate(pair) if p is not None]
        self.params = [p for _, _, p in tracked]
        self.slots = torch.tensor([i * 2 + j for i, j, _ in tracked], dtype=torch.long, device=device)
        self.sum = torch.zeros(len(self.pairs) * 2, dtype=torch.float64, device=device)

    def add(self) -> None:
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):  # torch._foreach_norm: one kernel, as clip_grad_norm_ uses
            norms = torch.stack(torch._foreach_norm(grads)).to(torch.float64)
        else:
            norms = torch.stack([torch.linalg.vector_norm(g).to(torch.float64) if g is not None
                                 else torch.zeros((), dtype=torch.float64, device=p.device)
                                 for g, p in zip(grads, self.params)])
        self.sum.index_add_(0, self.slots, norms)

    def record(self, steps: int) -> dict:
        """The epoch's mean norms (and reset for the next epoch)."""
        g = (self.sum / steps).view(-1, 2).cpu()
        self.sum.zero_()
        return {"layers": self.names, "weight": g[:, 0].tolist(),
                "bias": [v if pair[1] is not None else math.nan for v, pair in zip(g[:, 1].tolist(), self.pairs)]}


def _check_args(model: nn.Module, data: Dataset, config: Optional[TrainConfig]) -> TrainConfig:
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a skipkern.data.Dataset, got {type(data).__name__}")
    if isinstance(model, SkipMLP) and (model.in_features != data.in_features or model.out_features != data.num_classes):
        raise ValueError(f"model maps {model.in_features} -> {model.out_features} but data {data.name!r} has "
                         f"{data.in_features} features and {data.num_classes} classes")
    return config


def train(model: nn.Module, data: Dataset, config: Optional[TrainConfig] = None, *,
          out_dir: Union[str, os.PathLike, None] = None, resume: bool = True, log: Any = None,
          model_kwargs: Optional[dict] = None, loss_fn: Optional[Callable] = None,
          process_group: Optional[object] = "default", identity: Optional[dict] = None) -> TrainResult:
    """Train ``model`` on ``data`` with Adam; log, checkpoint and resume.

    Args:
        model: SkipMLP (or any classifier [B, in] -> logits [B, classes]); moved to ``config.device``.
        data: a ``Dataset`` (moved to the device once, whole).
        config: ``TrainConfig`` (default: its defaults).
        out_dir: folder for metrics.jsonl, metrics.csv, checkpoint.pt (None: nothing written). The run
            holds the folder's lock while it trains; another live run there raises FolderInUseError.
        resume: continue from out_dir/checkpoint.pt when present: the checkpoint's run identity (model,
            initial weights, settings, data; ``skipkern.training.resume``) must match this run's and
            its epoch must not exceed ``config.epochs``, else ValueError naming what differs. False
            starts over and overwrites.
        log: None (module logger), a logging.Logger, or a callable receiving each epoch's record.
        model_kwargs: constructor arguments stored in the checkpoint (default ``model_config(model)``).
        loss_fn: (logits, y) -> batch-mean loss, default cross entropy.
        process_group: "default" (the default group when torch.distributed is initialised, else one
            process), None (one process even if initialised) or a ProcessGroup: data-parallel
            training under DDP (module docstring). Every rank passes the same model, data and config;
            the result is the same on every rank.
        identity: further settings that shaped the run outside ``model`` and ``config`` (e.g.
            {"malicious": True}); recorded in the checkpoint and compared on resume.

    Returns:
        TrainResult with one record per epoch: epoch, step, batch_loss (mean mini-batch loss),
        reg_penalty, train_loss/train_acc, test_loss/test_acc (when evaluated), grad_norm (per-layer
        weight/bias gradient norms averaged over the epoch's steps), diagnostics (when due: every
        ``LayerDiagnostics`` as a dict), spectrum (when due: fractions with standard errors), times.
        A run stopped by max_steps mid-epoch records that epoch as partial and resumes at the next.
    """
    config = _check_args(model, data, config)
    group = sd.resolve_group(process_group)
    device = ddp.rank_device(resolve_device(config.device), group)
    model.to(device)
    if data.device != device:
        data = data.to(device)
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    if isinstance(config.regularizer, nn.Module):
        config.regularizer.to(device)  # fixed targets (BiasReg buffers) live next to the biases
    mcfg = model_kwargs if model_kwargs is not None else model_config(model)
    ident = run_identity(model, mcfg, config, data, identity)  # the initial weights, before any resume
    folder = _RunFolder(out_dir, group) if out_dir is not None else None
    ckpt = folder.open(resume, ident, config, device if group is None else "cpu") if folder is not None else None
    try:
        return _Trainer(model, data, config, loss_fn, group, device, folder, mcfg, ident, log).run(ckpt)
    finally:
        if folder is not None:
            folder.close()


def adam(params: list, lr: float) -> torch.optim.Optimizer:
    """torch's Adam, its fused implementation where every parameter allows it (floating, CPU or CUDA): the
    same update in one kernel instead of a dozen foreach passes (a third of a small net's step on a CPU)."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class _Trainer:
    """The state of one call of ``train``: optimizer, batch-order generator, history, step."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig, loss_fn: Callable,
                 group: Optional[object], device: torch.device, folder: Optional[_RunFolder], mcfg: Optional[dict],
                 ident: dict, log: Any):
        self.model, self.data, self.config, self.loss_fn = model, data, config, loss_fn
        self.group, self.device, self.folder, self.mcfg, self.ident = group, device, folder, mcfg, ident
        self.log = log
        self.reg = config.regularizer
        self.opt = adam([p for p in model.parameters() if p.requires_grad], config.lr)
        self.gen = torch.Generator().manual_seed(int(config.seed))
        self.measure = EpochMeasures(model, data, config, loss_fn, group, None if folder is None else folder.path)
        self.grads = _GradNorms(model, device)
        self.history: list = []
        self.step = 0
        self.main = sd.rank(group) == 0

    def restore(self, ckpt: dict) -> int:
        """Load a resumed checkpoint's state; returns its epoch."""
        self.model.load_state_dict(ckpt["model_state"])
        self.opt.load_state_dict(ckpt["optimizer_state"])
        self.gen.set_state(ckpt["rng"]["shuffle"].cpu())
        if ckpt.get("regularizer_state") is not None and hasattr(self.reg, "load_state_dict"):
            self.reg.load_state_dict(ckpt["regularizer_state"])
        self.history = [from_json_safe(r) for r in ckpt["history"]]  # stored strict-JSON style
        self.step = int(ckpt["step"])
        epoch = int(ckpt["epoch"])
        logger.info("resuming from %s at epoch %d (step %d)", self.folder.ckpt_path, epoch, self.step)
        return epoch

    def persist(self, epoch: int, stopped: bool) -> None:
        if self.folder is not None:
            self.folder.write(lambda: self.checkpoint_state(epoch, stopped), self.history)

    def checkpoint_state(self, epoch: int, stopped: bool) -> dict:
        return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "step": self.step, "model_state": self.model.state_dict(),
                 "optimizer_state": self.opt.state_dict(), "rng": {"shuffle": self.gen.get_state()},
                 "config": json_safe(self.config.to_dict()), "model_config": self.mcfg,
                 "model_class": type(self.model).__name__, "history": [json_safe(r) for r in self.history],
                 "data": json_safe(self.data.describe()), "identity": self.ident,
                 "regularizer_state": self.reg.state_dict() if hasattr(self.reg, "state_dict") else None,
                 "stopped_early": stopped}

    def finish_record(self, rec: dict, stopped: bool) -> None:
        self.history.append(rec)
        self.persist(rec["epoch"], stopped)
        if self.main:
            emit(self.log, rec)

    def run(self, ckpt: Optional[dict]) -> TrainResult:
        from tqdm.auto import tqdm

        c = self.config
        epoch0 = self.restore(ckpt) if ckpt is not None else 0
        fwd = self.model if self.group is None else ddp.wrap_ddp(self.model, self.device, self.group)
        t_start = time.perf_counter()
        if not self.history:
            rec0 = {"epoch": 0, "step": 0}
            self.measure(0, rec0, force_eval=True)
            rec0["elapsed"] = time.perf_counter() - t_start
            self.finish_record(rec0, False)
        show = c.progress and sys.stderr.isatty() and self.main
        bar = tqdm(total=c.epochs, initial=min(epoch0, c.epochs), disable=not show, unit="epoch",
                   desc=f"train {getattr(self.model, 'arch', type(self.model).__name__)}")
        diverged = bool(self.history[-1].get("diverged"))
        stopped = diverged or (c.max_steps is not None and self.step >= c.max_steps)
        try:
            for epoch in range(epoch0 + 1, c.epochs + 1):
                if stopped:
                    break
                t0 = time.perf_counter()
                rec, stopped, diverged = self.train_epoch(fwd, epoch)
                if not diverged:
                    self.measure(epoch, rec, force_eval=(epoch == c.epochs) or stopped)
                rec["epoch_time"] = time.perf_counter() - t0
                rec["elapsed"] = time.perf_counter() - t_start
                self.finish_record(rec, stopped)
                bar.update(1)
                bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("batch_loss", "train_acc") if k in rec})
        finally:
            bar.close()
            if fwd is not self.model:
                # DDP's constructor leaves a reference cycle (through its own frame) that keeps the wrapper,
                # and so the process group, alive until a garbage collection; a gloo group still alive at
                # interpreter exit can abort the process after the work is done. Free it now.
                fwd = None
                gc.collect()
        final = next((r for r in reversed(self.history) if "train_acc" in r), self.history[-1])
        return TrainResult(history=self.history, final=final, path=None if self.folder is None else str(self.folder.path),
                           config=c.to_dict(), model_config=self.mcfg, stopped_early=stopped, diverged=diverged)

    def train_epoch(self, fwd: nn.Module, epoch: int) -> tuple[dict, bool, bool]:
        """One pass over the training set (or up to max_steps). Returns (record, stopped, diverged)."""
        c, d, dev = self.config, self.data, self.device
        self.model.train()
        perm = torch.randperm(d.n_train, generator=self.gen).to(dev)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        pen_sum = torch.zeros((), dtype=torch.float64, device=dev)
        seen = steps = 0
        stopped = False
        for i in range(0, d.n_train, c.batch_size):
            idx = perm[i:i + c.batch_size]
            if self.group is None:
                loss = self.loss_fn(self.model(d.x_train[idx]), d.y_train[idx])
                total, n_local = loss, idx.shape[0]
            else:  # this rank's rows of the global batch, scaled so DDP's mean is the global mean
                loss, total, n_local = ddp.local_batch_loss(fwd, self.model, self.loss_fn, d.x_train, d.y_train,
                                                            idx, self.group)
            if self.reg is not None:
                pen = self.reg(self.model)
                total = total + pen
                pen_sum += pen.detach().to(torch.float64)
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            self.grads.add()
            self.opt.step()
            loss_sum += loss.detach().to(torch.float64) * n_local
            seen += idx.shape[0]
            steps += 1
            self.step += 1
            if c.max_steps is not None and self.step >= c.max_steps:
                stopped = True
                break
        if self.group is not None:  # the ranks' shares of the epoch's loss sum
            loss_sum = sd.all_reduce_sum(loss_sum, self.group)
        diverged = not math.isfinite(float(loss_sum))
        if diverged:  # NaN/inf weights: diagnostics and spectra would only fail; stop here
            logger.warning("epoch %d: the training loss is not finite (%s); stopping", epoch, float(loss_sum))
            stopped = True
        rec = {"epoch": epoch, "step": self.step, "batch_loss": float(loss_sum) / seen}
        if self.reg is not None:
            rec["reg_penalty"] = float(pen_sum) / steps
        rec["grad_norm"] = self.grads.record(steps)
        if stopped and seen < d.n_train:
            rec["partial"] = True
        if diverged:
            rec["diverged"] = True
        return rec, stopped, diverged
