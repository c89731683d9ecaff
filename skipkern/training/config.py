"""Settings and result of one training run: ``TrainConfig`` (validated on construction) and ``TrainResult``."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from skipkern.diagnostics import json_safe

__all__ = ["TrainConfig", "TrainResult", "describe_regularizer"]


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
        if not (_is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be a positive int or None, got {self.max_steps!r}")
        if self.train_eval_samples is not None and (isinstance(self.train_eval_samples, bool)
                                                    or not isinstance(self.train_eval_samples, int)
                                                    or self.train_eval_samples < 1):
            raise ValueError(f"TrainConfig.train_eval_samples must be a positive int or None, "
                             f"got {self.train_eval_samples!r}")
        if isinstance(self.spectrum_at, (str, bytes)) or not hasattr(self.spectrum_at, "__iter__"):
            raise ValueError(f"TrainConfig.spectrum_at must list epochs >= 0, got {self.spectrum_at!r}")
        bad = [e for e in self.spectrum_at if isinstance(e, bool) or not isinstance(e, int) or e < 0]
        if bad:
            raise ValueError(f"TrainConfig.spectrum_at must list epochs >= 0, got {list(self.spectrum_at)}")
        self.spectrum_at = tuple(sorted(set(int(e) for e in self.spectrum_at)))
        if not (_is_number(self.degenerate_eps) and self.degenerate_eps >= 0):
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


def describe_regularizer(reg: Optional[Callable]) -> Optional[dict]:
    """JSON description of a regularizer: its ``config()`` if it has one, else its type name."""
    if reg is None:
        return None
    if hasattr(reg, "config") and callable(reg.config):
        return dict(reg.config())
    return {"type": getattr(reg, "__qualname__", type(reg).__qualname__)}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
