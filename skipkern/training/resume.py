"""The identity of a training run, and the check that a checkpoint may be resumed by this run.

A run's identity is every setting that changes its result: the model (every constructor argument but
the execution path (backend, fused, precision), plus a fingerprint of its initial weights, which covers the seed, the init scheme and a
malicious initialisation), the training settings (all of ``TrainConfig`` but the budget ``epochs`` and
the placement/display settings in ``NOT_IDENTITY``), the data (name, sizes, seed, preprocessing) and
whatever the caller adds (``identity=`` of ``train``; the CLI adds ``malicious``). It is stored in every
checkpoint; a resume compares it key by key and refuses, naming the keys that differ. The epoch budget
may grow on resume (2 epochs, then resumed to 4) but a checkpoint past this run's ``epochs`` is refused:
its metrics are not this run's result.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from skipkern.data.base import Dataset
from skipkern.diagnostics import json_safe
from skipkern.training.checkpoint import CHECKPOINT_FORMAT
from skipkern.training.config import TrainConfig

__all__ = ["NOT_IDENTITY", "weights_fingerprint", "run_identity", "check_resume"]

# TrainConfig fields that do not change the result: the budget (checked on its own), where it runs,
# how it is shown, and the evaluation batch size (only the summation order of the same mean).
NOT_IDENTITY = ("epochs", "device", "progress", "eval_batch_size")
# Execution paths: each computes the same function and differs only in rounding (as backends do), so a
# run may resume on another path; a checkpoint written before an option existed stays resumable.
_NOT_MODEL_IDENTITY = ("backend", "fused", "precision")
_NOT_DATA_IDENTITY = ("source",)  # where the data came from (a cache hit, a moved folder) is not what they are
_FIX = "use another output folder, or resume=False (CLI: --no-resume) to start over"


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer of ``model`` (names, dtypes, shapes, bytes): two models
    built the same way (same seed, init scheme, malicious or not) have the same fingerprint."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_identity(model: nn.Module, mcfg: Optional[dict], config: TrainConfig, data: Dataset,
                 extra: Optional[dict] = None) -> dict:
    """The flat, JSON-safe identity of a run (see the module docstring). ``mcfg``: the model's
    constructor arguments (``model_config``); ``extra``: further settings the caller applied."""
    ident: dict = {"model.class": type(model).__name__}
    ident.update({f"model.{k}": v for k, v in (mcfg or {}).items() if k not in _NOT_MODEL_IDENTITY})
    ident["initial_weights"] = weights_fingerprint(model)
    ident.update({k: v for k, v in config.to_dict().items() if k not in NOT_IDENTITY})
    ident.update({f"data.{k}": v for k, v in data.describe().items() if k not in _NOT_DATA_IDENTITY})
    ident.update(extra or {})
    return json_safe(ident)


def _show(key: str) -> str:
    if key == "initial_weights":
        return "initial weights (set by the model's seed, init scheme, malicious init)"
    return key[len("model."):] if key.startswith("model.") else key


def check_resume(ckpt: dict, path: Path, identity: dict, config: TrainConfig) -> None:
    """Raise ValueError unless the checkpoint ``ckpt`` (read from ``path``) was written by a run with this
    ``identity`` and is not past ``config.epochs``; the message names each differing key and the fix."""
    if ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("identity"), dict):
        raise ValueError(f"checkpoint {path} was written by an older skipkern that did not record every setting "
                         f"of its run, so resuming it could mix two runs; {_FIX}")
    saved = ckpt["identity"]
    diff = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if diff:
        what = ("holds a different architecture" if any(k.startswith("model.") for k in diff)
                else "was written by a run with other settings")
        detail = "; ".join(f"{_show(k)}: checkpoint {saved.get(k)!r} vs this run {identity.get(k)!r}" for k in diff)
        raise ValueError(f"checkpoint {path} {what} ({detail}); {_FIX}")
    epoch = int(ckpt["epoch"])
    if epoch > config.epochs:
        raise ValueError(f"checkpoint {path} is at epoch {epoch}, past this run's epochs={config.epochs}: pass "
                         f"epochs >= {epoch} (CLI: --epochs {epoch}) to resume it, or train {config.epochs} epochs "
                         f"from scratch in another output folder or with resume=False (CLI: --no-resume)")
