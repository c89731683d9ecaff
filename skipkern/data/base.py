"""The ``Dataset`` record shared by every loader, and ``load_dataset``, the one entry point by name."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

log = logging.getLogger("skipkern.data")

__all__ = ["Dataset", "DATASETS", "load_dataset", "default_cache_dir"]

DATASETS = ("mnist1d", "cifar10", "cifar100")


@dataclass
class Dataset:
    """A classification data set held as dense tensors.

    Attributes:
        x_train: [N, D] float32 inputs. y_train: [N] int64 labels in [0, num_classes).
        x_test: [M, D] float32. y_test: [M] int64.
        num_classes: number of classes. name: e.g. "mnist1d".
        meta: free-form facts about how the data were made (sizes, seeds, the training mean, ...).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if not isinstance(x, torch.Tensor) or x.dim() != 2:
                raise ValueError(f"x_{split} must be a 2-D tensor [N, D], got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"y_{split} must be a 1-D tensor with {x.shape[0]} labels (one per row of "
                                 f"x_{split}), got {tuple(y.shape) if isinstance(y, torch.Tensor) else y!r}")
            if y.dtype != torch.int64:
                raise TypeError(f"y_{split} must be int64, got {y.dtype}")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"x_train has {self.x_train.shape[1]} features but x_test has {self.x_test.shape[1]}")

    @property
    def in_features(self) -> int:
        """D, the number of input features."""
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: Union[str, torch.device], dtype: Optional[torch.dtype] = None) -> "Dataset":
        """A copy on ``device`` (inputs optionally cast to ``dtype``; labels stay int64)."""
        xs = {k: getattr(self, k).to(device=device, dtype=dtype) for k in ("x_train", "x_test")}
        ys = {k: getattr(self, k).to(device) for k in ("y_train", "y_test")}
        return replace(self, **xs, **ys, meta=dict(self.meta))

    def subset(self, n_train: Optional[int] = None, n_test: Optional[int] = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test samples (None keeps a split whole)."""
        n_tr = self.n_train if n_train is None else _check_count("n_train", n_train, self.n_train)
        n_te = self.n_test if n_test is None else _check_count("n_test", n_test, self.n_test)
        meta = dict(self.meta, n_train=n_tr, n_test=n_te)
        return replace(self, x_train=self.x_train[:n_tr], y_train=self.y_train[:n_tr],
                       x_test=self.x_test[:n_te], y_test=self.y_test[:n_te], meta=meta)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary: name, sizes, classes and the scalar entries of ``meta``."""
        out = {"name": self.name, "n_train": self.n_train, "n_test": self.n_test,
               "in_features": self.in_features, "num_classes": self.num_classes}
        for k, v in self.meta.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                out.setdefault(k, v)
        return out


def _check_count(name: str, n: Any, available: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if n > available:
        raise ValueError(f"{name}={n} exceeds the {available} samples available")
    return int(n)


def default_cache_dir() -> Path:
    """Where generated data are cached: $SKIPKERN_CACHE, else ~/.cache/skipkern."""
    env = os.environ.get("SKIPKERN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skipkern"


def load_dataset(name: str = "mnist1d", *, data_dir: Union[str, os.PathLike, None] = None,
                 n_train: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0) -> Dataset:
    """Load a data set by name.

    Args:
        name: "mnist1d" (generated offline by the ``mnist1d`` package), "cifar10" or "cifar100" (read
            from the standard python-pickle folders under ``data_dir``).
        data_dir: for CIFAR, the folder ``cifar-10-batches-py`` / ``cifar-100-python`` or its parent
            (None: the environment variable $SKIPKERN_DATA_DIR). For MNIST-1D, the cache folder of the
            generated arrays (None: ``default_cache_dir()``).
        n_train, n_test: sample counts (None: MNIST-1D 4000 / 1000 as in its standard 5000-sample
            set; CIFAR the full 50000 / 10000). CIFAR subsets are drawn at random with ``seed``.
        seed: MNIST-1D generator seed (the published mnist1d_data.pkl used 42); CIFAR subset seed.

    Returns:
        A ``Dataset`` with float32 inputs [N, D] and int64 labels [N].

    Raises:
        ValueError: unknown name, bad counts, or malformed files. FileNotFoundError: a missing folder
            or file, naming what was expected where and what was found.
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    name = name.lower()
    for arg, v in (("n_train", n_train), ("n_test", n_test)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{arg} must be a non-negative int or None, got {v!r}")
    if name == "mnist1d":
        from skipkern.data.mnist1d import load_mnist1d
        return load_mnist1d(n_train=n_train, n_test=n_test, seed=seed, cache_dir=data_dir)
    from skipkern.data.cifar import load_cifar
    if data_dir is None:
        env = os.environ.get("SKIPKERN_DATA_DIR")
        if not env:
            raise ValueError(f"{name} needs data_dir: the folder that holds (or is) "
                             f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}; "
                             f"pass data_dir=... (CLI: --data-dir) or set SKIPKERN_DATA_DIR")
        log.info("data_dir not given; using $SKIPKERN_DATA_DIR=%s", env)
        data_dir = env
    return load_cifar(name, data_dir, n_train=n_train, n_test=n_test, seed=seed)
