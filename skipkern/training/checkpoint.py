"""Checkpoint files of a training run: what they hold, how they are written (atomically, fsynced, with a
clear error on a full disk) and read (``weights_only=True``, one-line errors naming the file), and how
the model is rebuilt from them.

checkpoint.pt (a torch zip archive) holds: format, epoch, step, model_state, optimizer_state, rng,
config, model_config (SkipMLP constructor arguments), model_class, history, data, regularizer_state,
stopped_early and identity (every setting that defines the run; see ``skipkern.training.resume``).
"""
from __future__ import annotations

import inspect
import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from skipkern.fileio import torch_save_atomic
from skipkern.nn.skip_mlp import SkipMLP

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "FORMATS", "model_config", "build_model", "read_checkpoint",
           "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "skipkern-train-2"  # 2: records the run identity (format 1 did not)
FORMATS = ("skipkern-train-1", CHECKPOINT_FORMAT)
_REQUIRED = {"epoch": int, "step": int, "model_state": dict, "history": list}
_EXPECTED = f"a {CHECKPOINT} written by 'skipkern train' (or skipkern.train.train)"
# SkipMLP constructor arguments that do not describe the net itself
_NOT_ARCHITECTURE = ("self", "seed", "device", "dtype")


def model_config(model: nn.Module) -> Optional[dict]:
    """Constructor arguments that rebuild ``model`` (``build_model``); None for non-SkipMLP models.
    Every SkipMLP argument the model exposes is recorded (so a new option is recorded without a change
    here); the weights and fixed skip matrices come back from the state dict, so the seed is not needed."""
    if not isinstance(model, SkipMLP):
        return None
    first = model.layers[0]
    cfg: dict = {"class": "SkipMLP"}
    for name in inspect.signature(SkipMLP.__init__).parameters:
        if name in _NOT_ARCHITECTURE:
            continue
        if name == "bias":
            v = first.bias is not None
        elif name == "backend":
            v = first.backend
        elif hasattr(model, name):
            v = getattr(model, name)
        else:
            continue
        cfg[name] = list(v) if isinstance(v, tuple) else (float(v) if name == "degenerate_fraction" else v)
    return cfg


def build_model(cfg: dict, device: Union[str, torch.device, None] = None,
                dtype: Optional[torch.dtype] = None) -> SkipMLP:
    """A SkipMLP from ``model_config`` output (weights random; load a state dict into it)."""
    if not isinstance(cfg, dict) or cfg.get("class") != "SkipMLP":
        raise ValueError(f"can only rebuild SkipMLP models from their model_config, got {cfg!r}")
    kw = {k: v for k, v in cfg.items() if k != "class"}
    return SkipMLP(**kw, device=device, dtype=dtype)


def save_checkpoint(path: Union[str, os.PathLike], state: dict) -> None:
    """Publish ``state`` at ``path`` atomically: written to ``<path>.tmp``, fsynced, renamed; a full disk
    raises ``skipkern.fileio.NoSpaceError`` naming the file and leaves no partial file behind."""
    torch_save_atomic(state, path)


def _what_is(path: Path) -> str:
    """A short description of a file that is not a torch archive, for error messages."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        head.decode("utf-8")
        return f"a text file of {size} bytes"
    except UnicodeDecodeError:
        return f"{size} bytes of other data"


def read_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True`` (tensors and plain containers
    only: nothing in the file is executed) and checked for the keys skipkern writes.

    Raises:
        FileNotFoundError: no file at ``path``. ValueError: one line naming the file and what is
            expected (not a torch archive, truncated, foreign content, another format, missing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected {_EXPECTED})")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # every torch archive starts with a zip entry
        raise ValueError(f"{path} is not a skipkern checkpoint: expected {_EXPECTED} (a torch zip archive), "
                         f"found {_what_is(path)}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        why = None if bad is None else f"entry {bad} fails its checksum"
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
        why = f"the zip archive cannot be read: {str(e) or type(e).__name__}"
    if why is not None:
        raise ValueError(f"{path} is truncated or corrupt ({why}); expected {_EXPECTED} - rerun the training "
                         f"that writes it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of foreign files
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means: not a checkpoint we wrote
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            why = "it holds objects other than tensors and plain containers, which skipkern checkpoints never do"
        else:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        raise ValueError(f"{path} is not a readable skipkern checkpoint ({why}); expected {_EXPECTED}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in FORMATS:
        found = f"format {ckpt.get('format')!r}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise ValueError(f"{path} is not a skipkern training checkpoint (found {found}; expected {_EXPECTED}, "
                         f"format {CHECKPOINT_FORMAT!r})")
    wrong = [k for k, t in _REQUIRED.items() if not isinstance(ckpt.get(k), t) or isinstance(ckpt.get(k), bool)]
    if wrong:
        raise ValueError(f"{path} is a damaged skipkern checkpoint: {', '.join(wrong)} missing or of the wrong type")
    return ckpt


def _state_dtype(state: dict) -> Optional[torch.dtype]:
    return next((t.dtype for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()), None)


def load_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"
                    ) -> tuple[SkipMLP, dict]:
    """Rebuild the model of a checkpoint. ``path``: checkpoint.pt or the run folder holding it.
    Returns (model on ``device`` in eval mode, the checkpoint dict: epoch, step, config, model_config,
    history, data, optimizer_state, identity, ...)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    ckpt = read_checkpoint(p, map_location=device)
    if ckpt.get("model_config") is None:
        raise ValueError(f"{p} holds a {ckpt.get('model_class')} without constructor arguments; only SkipMLP "
                         f"checkpoints (or runs given model_kwargs) can be rebuilt")
    try:
        model = build_model(ckpt["model_config"], device=device, dtype=_state_dtype(ckpt["model_state"]))
        model.load_state_dict(ckpt["model_state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise ValueError(f"{p}: the saved model cannot be rebuilt ({' '.join(str(e).split())[:200]}); the file is "
                         f"damaged or was written by another skipkern version") from None
    model.eval()
    return model, ckpt
