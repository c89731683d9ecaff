"""The training loop of the paper's deep-net experiments: Adam (lr 5e-4, batch 500, all parameters),
per-epoch metrics, diagnostics and Hessian spectra, checkpoints, resume.

Output folder (``out_dir``):
    metrics.jsonl   one JSON object per epoch (epoch 0 = the initial model), per-layer data included;
                    strict JSON (inf/nan as the strings "inf"/"nan").
    metrics.csv     the scalar fields of the same records (nested keys joined with "."), one row each.
    checkpoint.pt   model, optimizer, RNG states, epoch, step, config, history and the model's
                    constructor arguments (``model_config``), rewritten atomically after every epoch.
    spectra/        the Hessian densities at ``spectrum_at`` epochs (when skipkern.hessian can save).
A run is repeatable: the mini-batch order comes from a torch.Generator seeded with ``config.seed``
and the fixed evaluation subsets from independent seeded streams; resuming restores the generator,
so 2 epochs + 2 resumed epochs give the same metrics as 4 epochs straight.

Data parallel: when torch.distributed is initialised (e.g. launched by torchrun and
``skipkern.distributed.init_from_env()``), ``train`` runs the model under DistributedDataParallel:
each rank takes its share of every global mini-batch and the gradient is the exact global batch mean
(``skipkern.train_dist``); metrics are exact global means over the ranks' shares; diagnostics and
spectra (one Hessian product all-reduce per Lanczos step) are the same on every rank; only rank 0
writes files, logs records and shows progress; a resume reads the checkpoint on rank 0 and broadcasts
it, so other nodes need not see rank 0's disk.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from skipkern import distributed as sd
from skipkern import train_dist
from skipkern.data.base import Dataset
from skipkern.diagnostics import diagnose, from_json_safe, json_safe, weighted_layers
from skipkern.nn.skip_mlp import SkipMLP

logger = logging.getLogger("skipkern.train")

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "model_config", "build_model", "load_checkpoint",
           "read_metrics", "spectrum_fractions"]

# Config fields that change the optimisation trajectory: a resumed run must agree on them.
RESUME_KEYS = ("batch_size", "lr", "seed", "regularizer")


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults follow the paper where it is specific (Adam, lr 5e-4,
    batch 500); the rest are ours.

    Attributes:
        epochs: passes over the training set. batch_size, lr: Adam on all parameters.
        seed: mini-batch order and the fixed evaluation subsets (model weights are seeded by the model).
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
        eval_every: evaluate train/test loss and accuracy every this many epochs (and at the last).
        train_eval_samples: training accuracy on a fixed random subset of this size (None: full set).
        eval_batch_size: batch size of evaluation passes.
        diagnostics_every: run ``skipkern.diagnostics.diagnose`` every this many epochs (0: off; the
            initial model counts as epoch 0). diag_batch: samples of its fixed evaluation batch.
        spectrum_at: epochs (0 = initial model) at which to estimate the Hessian eigenvalue density of
            the data loss over ``spectrum_samples`` fixed training samples, with ``spectrum_probes``
            probes and ``spectrum_steps`` Lanczos steps; ``degenerate_eps`` is the |lambda| threshold of
            degenerate eigenvalues (our default; the paper's is not public).
        regularizer: optional callable(model) -> scalar added to the loss (e.g. ``BiasReg``).
        max_steps: stop after this many optimizer steps in total (quick runs); None: no cap.
        progress: tqdm bar over epochs (only when stderr is a terminal).
    """

    epochs: int = 10
    batch_size: int = 500
    lr: float = 5e-4
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    train_eval_samples: Optional[int] = None
    eval_batch_size: int = 5000
    diagnostics_every: int = 0
    diag_batch: int = 500
    spectrum_at: Sequence[int] = ()
    spectrum_probes: int = 8
    spectrum_steps: int = 40
    spectrum_samples: int = 1000
    degenerate_eps: float = 1e-3
    regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None
    max_steps: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_every", "diagnostics_every", "batch_size", "eval_batch_size", "diag_batch",
                     "spectrum_probes", "spectrum_steps", "spectrum_samples"):
            v = getattr(self, name)
            low = 0 if name in ("epochs", "diagnostics_every") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"TrainConfig.{name} must be an int >= {low}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be a positive int or None, got {self.max_steps!r}")
        if self.train_eval_samples is not None and (not isinstance(self.train_eval_samples, int)
                                                    or self.train_eval_samples < 1):
            raise ValueError(f"TrainConfig.train_eval_samples must be a positive int or None, "
                             f"got {self.train_eval_samples!r}")
        bad = [e for e in self.spectrum_at if isinstance(e, bool) or not isinstance(e, int) or e < 0]
        if bad:
            raise ValueError(f"TrainConfig.spectrum_at must list epochs >= 0, got {list(self.spectrum_at)}")
        self.spectrum_at = tuple(sorted(set(int(e) for e in self.spectrum_at)))
        if not self.degenerate_eps >= 0:
            raise ValueError(f"TrainConfig.degenerate_eps must be >= 0, got {self.degenerate_eps!r}")
        if self.regularizer is not None and not callable(self.regularizer):
            raise TypeError(f"TrainConfig.regularizer must be callable(model) -> scalar or None, "
                            f"got {type(self.regularizer).__name__}")

    def to_dict(self) -> dict:
        """JSON-friendly: the regularizer becomes its description (``config()`` when it has one)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "regularizer"}
        d["spectrum_at"] = list(self.spectrum_at)
        d["regularizer"] = describe_regularizer(self.regularizer)
        return d


@dataclass
class TrainResult:
    """history: one dict per epoch (epoch 0 = initial model); final: the last evaluated record;
    path: the output folder (None without out_dir); config: ``TrainConfig.to_dict()``;
    stopped_early: max_steps reached or the loss diverged; diverged: the loss became NaN/inf (the run
    stops at that epoch, whose record has "diverged": True and no evaluation)."""

    history: list
    final: dict
    path: Optional[str]
    config: dict = field(default_factory=dict)
    model_config: Optional[dict] = None
    stopped_early: bool = False
    diverged: bool = False

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def series(self, key: str) -> tuple[list, list]:
        """(epochs, values) of a scalar field over the epochs that have it (dotted keys reach nested
        fields, e.g. "spectrum.fraction_degenerate")."""
        xs, ys = [], []
        for rec in self.history:
            v: Any = rec
            for part in key.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            if v is not None:
                xs.append(rec["epoch"])
                ys.append(v)
        return xs, ys


# ------------------------------------------------------------------------------------------ helpers
def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device 'auto' -> %s", dev)
        return dev
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 5000,
             loss_fn: Optional[Callable] = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on x [N, in], y [N] (int64 labels), in eval mode (the
    model's mode is restored). loss_fn: (logits, y) -> batch-mean loss, default cross entropy."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same number (> 0) of samples, got {x.shape[0]} and {y.shape[0]}")
    from skipkern.diagnostics import eval_mode

    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    total, correct = 0.0, 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            out = model(xb)
            total += float(loss_fn(out, yb)) * xb.shape[0]
            correct += int((out.argmax(1) == yb).sum())
    return total / x.shape[0], correct / x.shape[0]


def _fixed_subset(n_total: int, n: Optional[int], seed: int, stream: int) -> Optional[torch.Tensor]:
    """First n of a permutation from its own seeded stream (None when n covers everything)."""
    if n is None or n >= n_total:
        return None
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)
    return torch.randperm(n_total, generator=g)[:n]


def _take(x: torch.Tensor, idx: Optional[torch.Tensor]) -> torch.Tensor:
    return x if idx is None else x[idx.to(x.device)]


def _hessian_api():
    """(HessianOperator, spectral_density) from skipkern.hessian, imported lazily."""
    try:
        from skipkern.hessian import HessianOperator, spectral_density
    except ImportError as e:
        raise RuntimeError(f"TrainConfig.spectrum_at asks for Hessian spectra, but skipkern.hessian does not "
                           f"provide HessianOperator and spectral_density ({e}); set spectrum_at=()") from e
    return HessianOperator, spectral_density


def _mean_se(v: Any) -> tuple[float, float]:
    """Read a fraction returned by SpectralDensity: a float, a (mean, se) pair, or an object/dict
    with mean/value and se/stderr."""
    if isinstance(v, dict):
        m = v.get("mean", v.get("value"))
        return float(m), float(v.get("se", v.get("stderr", math.nan)))
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return float(v[0]), float(v[1])
    for a, b in (("mean", "se"), ("value", "stderr"), ("mean", "stderr"), ("value", "se")):
        if hasattr(v, a):
            return float(getattr(v, a)), float(getattr(v, b, math.nan))
    return float(v), math.nan


def spectrum_fractions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, num_probes: int,
                       num_steps: int, seed: int, loss_fn: Optional[Callable] = None, save_path=None,
                       process_group: Optional[object] = None) -> dict:
    """Hessian density of the mean loss on (x, y) by stochastic Lanczos quadrature
    (``skipkern.hessian.spectral_density``) and its fractions of degenerate (|lambda| <= eps) and
    negative eigenvalues, each with its standard error across probes.

    process_group: None (one process) or a process group: every rank passes the same full (x, y),
    keeps its strided share x[r::W], and the operator all-reduces each product (the result is the
    same on every rank); only rank 0 writes ``save_path``."""
    HessianOperator, spectral_density = _hessian_api()
    t0 = time.perf_counter()
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    if process_group is None:
        op = HessianOperator(model, loss_fn, (x, y))
    else:
        xs, ys = train_dist.shard(x, process_group), train_dist.shard(y, process_group)
        op = HessianOperator(model, loss_fn, (xs, ys), process_group=process_group)
        save_path = train_dist.save_path_on_main(save_path, process_group)
    dens = spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed, progress=False)
    deg, deg_se = _mean_se(dens.fraction_degenerate(eps))
    neg, neg_se = _mean_se(dens.fraction_negative(eps))
    out = {"fraction_degenerate": deg, "fraction_degenerate_se": deg_se, "fraction_negative": neg,
           "fraction_negative_se": neg_se, "eps": eps, "num_probes": num_probes, "num_steps": num_steps,
           "samples": int(x.shape[0]), "num_params": int(op.shape[0])}
    if save_path is not None and hasattr(dens, "save"):
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        dens.save(str(save_path))
        out["path"] = str(save_path)
    out["time"] = time.perf_counter() - t0
    return out


def _grad_norms(params: list) -> torch.Tensor:
    """[len(params)] float64 Frobenius norms of the gradients (0 for a missing gradient), with one fused
    kernel (torch._foreach_norm, as clip_grad_norm_ uses) when every gradient is present."""
    grads = [p.grad for p in params]
    if all(g is not None for g in grads):
        return torch.stack(torch._foreach_norm(grads)).to(torch.float64)
    return torch.stack([torch.linalg.vector_norm(g).to(torch.float64) if g is not None
                        else torch.zeros((), dtype=torch.float64, device=p.device) for g, p in zip(grads, params)])


def _emit(sink, record: dict) -> None:
    if sink is None:
        keys = ("train_loss", "train_acc", "test_acc")
        logger.info("epoch %d: %s", record["epoch"],
                 ", ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), float)))
    elif isinstance(sink, logging.Logger):
        sink.info("epoch %d: %s", record["epoch"], {k: v for k, v in record.items() if not isinstance(v, (dict, list))})
    else:
        sink(record)

# -------------------------------------------------------------------------------------- files, resume
CHECKPOINT = "checkpoint.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CHECKPOINT_FORMAT = "skipkern-train-1"
_DATA_KEYS = ("name", "n_train", "n_test", "in_features", "num_classes")


def describe_regularizer(reg: Optional[Callable]) -> Optional[dict]:
    """JSON description of a regularizer: its ``config()`` if it has one, else its type name."""
    if reg is None:
        return None
    if hasattr(reg, "config") and callable(reg.config):
        return dict(reg.config())
    return {"type": getattr(reg, "__qualname__", type(reg).__qualname__)}


def model_config(model: nn.Module) -> Optional[dict]:
    """Constructor arguments that rebuild ``model`` (``build_model``); None for non-SkipMLP models.
    Fixed skip matrices come back from the state dict, so the model's seed is not needed."""
    if not isinstance(model, SkipMLP):
        return None
    first = model.layers[0]
    return {"class": "SkipMLP", "in_features": model.in_features, "width": model.width, "depth": model.depth,
            "out_features": model.out_features, "arch": model.arch, "activation": model.activation,
            "degenerate_fraction": float(model.degenerate_fraction), "hyper_reduce": model.hyper_reduce,
            "hyper_skip": model.hyper_skip, "batchnorm_layers": list(model.batchnorm_layers),
            "bias": first.bias is not None, "backend": first.backend}


def build_model(cfg: dict, device: Union[str, torch.device, None] = None) -> SkipMLP:
    """A SkipMLP from ``model_config`` output (weights random; load a state dict into it)."""
    if not isinstance(cfg, dict) or cfg.get("class") != "SkipMLP":
        raise ValueError(f"can only rebuild SkipMLP models from their model_config, got {cfg!r}")
    kw = {k: v for k, v in cfg.items() if k != "class"}
    return SkipMLP(**kw, device=device)


def _arch_diff(saved: Optional[dict], current: Optional[dict]) -> list:
    saved, current = saved or {}, current or {}
    keys = sorted((set(saved) | set(current)) - {"backend"})
    return [f"{k}: checkpoint {saved.get(k)!r} vs this run {current.get(k)!r}" for k in keys
            if saved.get(k) != current.get(k)]


def _read_checkpoint(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a {CHECKPOINT} written by skipkern.train)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt or foreign file: say which
        raise ValueError(f"{path} is not a readable skipkern checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a skipkern training checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return ckpt


def load_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"
                    ) -> tuple[SkipMLP, dict]:
    """Rebuild the model of a checkpoint. ``path``: checkpoint.pt or the run folder holding it.
    Returns (model on ``device`` in eval mode, the checkpoint dict: epoch, step, config, model_config,
    history, data, optimizer_state, ...)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    ckpt = _read_checkpoint(p, map_location=device)
    if ckpt.get("model_config") is None:
        raise ValueError(f"{p} holds a {ckpt.get('model_class')} without constructor arguments; only SkipMLP "
                         f"checkpoints (or runs given model_kwargs) can be rebuilt")
    model = build_model(ckpt["model_config"], device=device)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, ckpt


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves half a checkpoint


def _scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def write_metrics(out_dir: Union[str, os.PathLike], history: list, append_last: bool = False) -> None:
    """Write metrics.jsonl (full records) and metrics.csv (scalar fields) from ``history``.

    append_last: only append the last record to metrics.jsonl (its earlier lines already match
    ``history``); the records with per-layer diagnostics are large, so rewriting all of them every
    epoch would cost time quadratic in the epochs. metrics.csv (scalars only) is always rewritten,
    since a new record may bring new columns."""
    import csv
    import json

    out = Path(out_dir)
    if append_last:
        with open(out / METRICS_JSONL, "a") as f:
            f.write(json.dumps(json_safe(history[-1])) + "\n")
    else:
        with open(out / (METRICS_JSONL + ".tmp"), "w") as f:
            for rec in history:
                f.write(json.dumps(json_safe(rec)) + "\n")
        os.replace(out / (METRICS_JSONL + ".tmp"), out / METRICS_JSONL)
    rows = [_scalars(json_safe(rec)) for rec in history]
    cols: list = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with open(out / (METRICS_CSV + ".tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(out / (METRICS_CSV + ".tmp"), out / METRICS_CSV)


def read_metrics(path: Union[str, os.PathLike]) -> list:
    """The records of a metrics.jsonl (or of the run folder holding one), inf/nan restored."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / METRICS_JSONL
    with open(p) as f:
        return [from_json_safe(json.loads(line)) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------- the loop
def _check_resume(ckpt: dict, path: Path, mcfg: Optional[dict], config: TrainConfig, data: Dataset) -> None:
    diff = _arch_diff(ckpt.get("model_config"), mcfg)
    if diff or ckpt.get("model_class") is None:
        raise ValueError(f"checkpoint {path} holds a different architecture ({'; '.join(diff)}); use another "
                         f"output folder or resume=False (CLI: --no-resume) to start over")
    saved, cur = ckpt.get("config", {}), config.to_dict()
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs this run {cur.get(k)!r}" for k in RESUME_KEYS
            if saved.get(k) != cur.get(k)]
    dsaved, dcur = ckpt.get("data", {}), data.describe()
    diff += [f"data {k}: checkpoint {dsaved.get(k)!r} vs this run {dcur.get(k)!r}" for k in _DATA_KEYS
             if dsaved.get(k) != dcur.get(k)]
    if diff:
        raise ValueError(f"checkpoint {path} was written by a run with other settings ({'; '.join(diff)}); "
                         f"use another output folder or resume=False (CLI: --no-resume) to start over")


def train(model: nn.Module, data: Dataset, config: Optional[TrainConfig] = None, *,
          out_dir: Union[str, os.PathLike, None] = None, resume: bool = True, log: Any = None,
          model_kwargs: Optional[dict] = None, loss_fn: Optional[Callable] = None,
          process_group: Optional[object] = "default") -> TrainResult:
    """Train ``model`` on ``data`` with Adam; log, checkpoint and resume.

    Args:
        model: SkipMLP (or any classifier [B, in] -> logits [B, classes]); moved to ``config.device``.
        data: a ``Dataset`` (moved to the device once, whole).
        config: ``TrainConfig`` (default: its defaults).
        out_dir: folder for metrics.jsonl, metrics.csv, checkpoint.pt (None: nothing written).
        resume: continue from out_dir/checkpoint.pt when present (its architecture, trajectory settings
            (RESUME_KEYS) and data sizes must match, else ValueError); False starts over and overwrites.
        log: None (module logger), a logging.Logger, or a callable receiving each epoch's record.
        model_kwargs: constructor arguments stored in the checkpoint (default ``model_config(model)``).
        loss_fn: (logits, y) -> batch-mean loss, default cross entropy.
        process_group: "default" (the default group when torch.distributed is initialised, else one
            process), None (one process even if initialised) or a ProcessGroup: data-parallel
            training under DDP (module docstring). Every rank passes the same model, data and config;
            the result is the same on every rank.

    Returns:
        TrainResult with one record per epoch: epoch, step, batch_loss (mean mini-batch loss),
        reg_penalty, train_loss/train_acc, test_loss/test_acc (when evaluated), grad_norm (per-layer
        weight/bias gradient norms averaged over the epoch's steps), diagnostics (when due: every
        ``LayerDiagnostics`` as a dict), spectrum (when due: fractions with standard errors), times.
        A run stopped by max_steps mid-epoch records that epoch as partial and resumes at the next.
    """
    from tqdm.auto import tqdm

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
    group = sd.resolve_group(process_group)
    main = sd.rank(group) == 0
    device = train_dist.rank_device(resolve_device(config.device), group)
    model.to(device)
    if data.device != device:
        data = data.to(device)
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    reg = config.regularizer
    if isinstance(reg, nn.Module):
        reg.to(device)  # fixed targets (BiasReg buffers) live next to the biases
    fwd = model if group is None else train_dist.wrap_ddp(model, device, group)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    gen = torch.Generator().manual_seed(int(config.seed))
    mcfg = model_kwargs if model_kwargs is not None else model_config(model)
    n = data.n_train
    idx_eval = _fixed_subset(n, config.train_eval_samples, config.seed, 1)
    idx_diag = _fixed_subset(n, config.diag_batch, config.seed, 2)
    idx_spec = _fixed_subset(n, config.spectrum_samples, config.seed, 3)
    layer_names = [nm for nm, _ in weighted_layers(model)]
    grad_params = [(m._parameters.get("weight"), m._parameters.get("bias")) for _, m in weighted_layers(model)]
    # flat list of the tracked tensors and their slot in the [layers, 2] (weight, bias) table
    tracked = [(i, j, p) for i, pair in enumerate(grad_params) for j, p in enumerate(pair) if p is not None]
    slots = torch.tensor([i * 2 + j for i, j, _ in tracked], dtype=torch.long, device=device)

    history: list = []
    epoch0, step = 0, 0
    out = ckpt_path = None
    if out_dir is not None:
        out = Path(out_dir)
        ckpt_path = out / CHECKPOINT

        def open_out() -> Optional[dict]:  # rank 0 only under a process group; its result is broadcast
            try:
                out.mkdir(parents=True, exist_ok=True)
                (out / ".write_test").write_text("ok")
                (out / ".write_test").unlink()
            except OSError as e:
                raise OSError(f"cannot write to the output folder {out}: {e}") from e
            if ckpt_path.exists() and resume:
                ckpt = _read_checkpoint(ckpt_path, map_location=device if group is None else "cpu")
                _check_resume(ckpt, ckpt_path, mcfg, config, data)
                return ckpt
            if ckpt_path.exists():
                logger.info("resume=False: starting over, %s will be overwritten", ckpt_path)
            return None

        ckpt = sd.run_on_main(open_out, group)
        if ckpt is not None:
            model.load_state_dict(ckpt["model_state"])
            opt.load_state_dict(ckpt["optimizer_state"])
            gen.set_state(ckpt["rng"]["shuffle"].cpu())
            if ckpt.get("regularizer_state") is not None and hasattr(reg, "load_state_dict"):
                reg.load_state_dict(ckpt["regularizer_state"])
            history = [from_json_safe(r) for r in ckpt["history"]]  # stored strict-JSON style
            epoch0, step = int(ckpt["epoch"]), int(ckpt["step"])
            logger.info("resuming from %s at epoch %d (step %d)", ckpt_path, epoch0, step)
    if config.spectrum_at:
        _hessian_api()  # fail before training, not after it
    t_start = time.perf_counter()

    def ev(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        if group is None:
            return evaluate(model, x, y, config.eval_batch_size, loss_fn)
        return train_dist.evaluate_global(model, x, y, config.eval_batch_size, loss_fn, group)

    def measure(epoch: int, rec: dict, force_eval: bool) -> None:
        if force_eval or epoch % config.eval_every == 0:
            rec["train_loss"], rec["train_acc"] = ev(_take(data.x_train, idx_eval), _take(data.y_train, idx_eval))
            if data.n_test:
                rec["test_loss"], rec["test_acc"] = ev(data.x_test, data.y_test)
        if config.diagnostics_every and epoch % config.diagnostics_every == 0:
            t0 = time.perf_counter()
            res = diagnose(model, _take(data.x_train, idx_diag), _take(data.y_train, idx_diag), loss_fn)
            rec["diagnostics"] = {k: v.to_dict() for k, v in res.items()}
            rec["diagnostics_time"] = time.perf_counter() - t0
        if epoch in config.spectrum_at:
            save = out / "spectra" / f"epoch_{epoch:04d}.json" if out is not None else None
            rec["spectrum"] = spectrum_fractions(
                model, _take(data.x_train, idx_spec), _take(data.y_train, idx_spec), eps=config.degenerate_eps,
                num_probes=config.spectrum_probes, num_steps=config.spectrum_steps,
                seed=int(config.seed) * 7919 + epoch, loss_fn=loss_fn, save_path=save,
                **({} if group is None else {"process_group": group}))

    synced = [False]  # metrics.jsonl matches history up to its last record (set after the first write)

    def persist(epoch: int, stopped: bool) -> None:
        if out is not None:  # rank 0 writes; a failure there raises on every rank
            sd.run_on_main(lambda: write_state(epoch, stopped), group)

    def write_state(epoch: int, stopped: bool) -> None:
        state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "step": step, "model_state": model.state_dict(),
                 "optimizer_state": opt.state_dict(), "rng": {"shuffle": gen.get_state()},
                 "config": json_safe(config.to_dict()), "model_config": mcfg, "model_class": type(model).__name__,
                 "history": [json_safe(r) for r in history], "data": json_safe(data.describe()),
                 "regularizer_state": reg.state_dict() if hasattr(reg, "state_dict") else None,
                 "stopped_early": stopped}
        _save_checkpoint(ckpt_path, state)
        # the first write of this call rewrites the file (dropping lines past a resumed checkpoint)
        write_metrics(out, history, append_last=synced[0])
        synced[0] = True

    if not history:
        rec0 = {"epoch": 0, "step": 0}
        measure(0, rec0, force_eval=True)
        rec0["elapsed"] = time.perf_counter() - t_start
        history.append(rec0)
        persist(0, False)
        if main:
            _emit(log, rec0)

    show = config.progress and sys.stderr.isatty() and main
    bar = tqdm(total=config.epochs, initial=min(epoch0, config.epochs), disable=not show, unit="epoch",
               desc=f"train {getattr(model, 'arch', type(model).__name__)}")
    stopped = config.max_steps is not None and step >= config.max_steps
    diverged = bool(history and history[-1].get("diverged"))
    stopped = stopped or diverged
    try:
        for epoch in range(epoch0 + 1, config.epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            pen_sum = torch.zeros((), dtype=torch.float64, device=device)
            gsum = torch.zeros(len(grad_params) * 2, dtype=torch.float64, device=device)
            seen = steps = 0
            for i in range(0, n, config.batch_size):
                idx = perm[i:i + config.batch_size]
                if group is None:
                    xb, yb = data.x_train[idx], data.y_train[idx]
                    loss = loss_fn(model(xb), yb)
                    total, n_local = loss, idx.shape[0]
                else:  # this rank's rows of the global batch, scaled so DDP's mean is the global mean
                    loss, total, n_local = train_dist.local_batch_loss(fwd, model, loss_fn, data.x_train,
                                                                       data.y_train, idx, group)
                if reg is not None:
                    pen = reg(model)
                    total = total + pen
                    pen_sum += pen.detach().to(torch.float64)
                opt.zero_grad(set_to_none=True)
                total.backward()
                gsum.index_add_(0, slots, _grad_norms([p for _, _, p in tracked]))
                opt.step()
                loss_sum += loss.detach().to(torch.float64) * n_local
                seen += idx.shape[0]
                steps += 1
                step += 1
                if config.max_steps is not None and step >= config.max_steps:
                    stopped = True
                    break
            if group is not None:  # the ranks' shares of the epoch's loss sum
                loss_sum = sd.all_reduce_sum(loss_sum, group)
            diverged = not math.isfinite(float(loss_sum))
            if diverged:  # NaN/inf weights: diagnostics and spectra would only fail; stop here
                logger.warning("epoch %d: the training loss is not finite (%s); stopping", epoch, float(loss_sum))
                stopped = True
            g = (gsum / steps).view(-1, 2).cpu()
            rec = {"epoch": epoch, "step": step, "batch_loss": float(loss_sum) / seen}
            if reg is not None:
                rec["reg_penalty"] = float(pen_sum) / steps
            rec["grad_norm"] = {"layers": layer_names, "weight": g[:, 0].tolist(),
                                "bias": [v if pair[1] is not None else math.nan
                                         for v, pair in zip(g[:, 1].tolist(), grad_params)]}
            if stopped and seen < n:
                rec["partial"] = True
            if diverged:
                rec["diverged"] = True
            else:
                measure(epoch, rec, force_eval=(epoch == config.epochs) or stopped)
            rec["epoch_time"] = time.perf_counter() - t0
            rec["elapsed"] = time.perf_counter() - t_start
            history.append(rec)
            persist(epoch, stopped)
            if main:
                _emit(log, rec)
            bar.update(1)
            bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("batch_loss", "train_acc") if k in rec})
    finally:
        bar.close()
        if fwd is not model:
            # DDP's constructor leaves a reference cycle (through its own frame) that keeps the wrapper,
            # and so the process group, alive until a garbage collection; a gloo group still alive at
            # interpreter exit can abort the process after the work is done. Free it now.
            fwd = None
            gc.collect()
    final = next((r for r in reversed(history) if "train_acc" in r), history[-1])
    return TrainResult(history=history, final=final, path=None if out is None else str(out),
                       config=config.to_dict(), model_config=mcfg, stopped_early=stopped, diverged=diverged)
