"""CIFAR-10 / CIFAR-100 from the standard python-pickle folders (no downloads).

Layouts (Krizhevsky's "python version" archives, unpacked):
    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch     keys b"data", b"labels"
    cifar-100-python/      train, test                                  keys b"data", b"fine_labels"
b"data" is uint8 [N, 3072] (3 x 32 x 32, channel-major). Preprocessing (the paper leaves it open; ours):
flatten to [N, 3072], scale to [0, 1], subtract the per-feature mean of the training samples used
(kept in ``meta["train_mean"]``). The pickles are read by a restricted unpickler that executes nothing
(a data folder is input, not code). ``write_cifar_folder`` writes small folders of the same format for
tests and demos.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from skipkern.data.base import Dataset

log = logging.getLogger("skipkern.data")

__all__ = ["load_cifar", "write_cifar_folder", "CIFAR_LAYOUTS"]

# name -> (folder, training files, test files, label key, classes)
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                b"labels", 10),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}
FEATURES = 3 * 32 * 32


def _listing(folder: Path) -> str:
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        return f"(cannot list: {e})"
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} entries)" if len(names) > 12 else "")
    return f"[{shown}]"


def _resolve_folder(name: str, data_dir: Union[str, os.PathLike]) -> Path:
    """The folder holding ``name``'s files: ``data_dir`` itself or ``data_dir/<standard folder>``."""
    folder, train_files, test_files, _, _ = CIFAR_LAYOUTS[name]
    required = train_files + test_files
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{name}: data_dir {root} does not exist; expected the folder {folder} "
                                f"(with {', '.join(required)}) or a folder containing it")
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: data_dir {root} is a file; expected the folder {folder} "
                                f"(with {', '.join(required)}) or a folder containing it")
    candidates = [root, root / folder] if root.name == folder else [root / folder, root]
    for c in candidates:
        if c.is_dir() and all((c / f).is_file() for f in required):
            return c
    # Report on the most plausible candidate: the standard subfolder if it exists, else data_dir.
    c = root / folder if (root / folder).is_dir() else root
    missing = [f for f in required if not (c / f).is_file()]
    raise FileNotFoundError(
        f"{name}: expected {', '.join(missing)} in {c} (the python-pickle folder {folder}; data_dir may be "
        f"that folder or its parent); found {_listing(c)}")


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _numpy_globals() -> dict:
    """The only callables a CIFAR batch may name: numpy's array/dtype/scalar rebuilders, under the module
    paths numpy 1 (real CIFAR files: ``numpy.core``) and numpy 2 (``numpy._core``) write, and
    ``_codecs.encode`` (bytes in protocol-2 pickles written by Python 3). Taken from the objects numpy
    itself pickles with, so no module is imported by name."""
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        allowed.update({(f"{core}.multiarray", "_reconstruct"): reconstruct, (f"{core}.multiarray", "scalar"): scalar,
                        (f"{core}.numeric", "_frombuffer"): frombuffer})
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Reads the CIFAR python-pickle format without running anything: builtin containers, bytes, str and
    numbers come from pickle opcodes, and the only globals it resolves are numpy's array rebuilders
    (``_numpy_globals``). A pickle naming anything else (os.system, builtins.eval, ...) is refused."""

    _allowed: Optional[dict] = None

    def find_class(self, module: str, name: str):
        if _BatchUnpickler._allowed is None:
            _BatchUnpickler._allowed = _numpy_globals()
        obj = self._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR batch never holds (only "
                                         f"dicts, lists, bytes, str, numbers and numpy arrays); refusing to load it")
        return obj


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError) as e:
        raise ValueError(f"{path} is not a CIFAR python-pickle batch ({e or type(e).__name__})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict with keys b'data' and {label_key!r}, "
                         f"found a {type(d).__name__}")
    keys = {k.decode() if isinstance(k, bytes) else k for k in d}
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: expected keys b'data' and {label_key!r}, found {sorted(map(str, keys))}")
    x = np.asarray(d[b"data"])
    y = np.asarray(d[label_key])
    if x.ndim == 4 and x.shape[1:] == (3, 32, 32):
        x = x.reshape(x.shape[0], FEATURES)
    if x.ndim != 2 or x.shape[1] != FEATURES:
        raise ValueError(f"{path}: b'data' must have shape [N, {FEATURES}] (uint8 pixels), found {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be uint8 pixels, found dtype {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: {label_key!r} must list {x.shape[0]} labels (one per row of b'data'), "
                         f"found shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{path}: {label_key!r} must be integers in [0, {num_classes}), found dtype "
                         f"{y.dtype}, range [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


def _read_split(folder: Path, files: tuple, label_key: bytes, num_classes: int):
    parts = [_read_batch(folder / f, label_key, num_classes) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _pick(n: Optional[int], available: int, rng: np.random.Generator, what: str) -> Optional[np.ndarray]:
    if n is None or n == available:
        return None
    if n > available:
        raise ValueError(f"{what}={n} exceeds the {available} samples in the folder")
    return np.sort(rng.choice(available, size=n, replace=False))


def load_cifar(name: str, data_dir: Union[str, os.PathLike], n_train: Optional[int] = None,
               n_test: Optional[int] = None, seed: int = 0) -> Dataset:
    """Read CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100", fine labels) from ``data_dir``.

    Args:
        name: "cifar10" or "cifar100".
        data_dir: the standard folder (cifar-10-batches-py / cifar-100-python) or its parent.
        n_train, n_test: random subsets of these sizes, drawn with ``seed`` (None: all samples).

    Returns:
        Dataset with x [N, 3072] float32 in [0, 1] minus the training mean, y [N] int64.
    """
    if name not in CIFAR_LAYOUTS:
        raise ValueError(f"name must be one of {tuple(CIFAR_LAYOUTS)}, got {name!r}")
    folder_name, train_files, test_files, label_key, num_classes = CIFAR_LAYOUTS[name]
    folder = _resolve_folder(name, data_dir)
    x_tr, y_tr = _read_split(folder, train_files, label_key, num_classes)
    x_te, y_te = _read_split(folder, test_files, label_key, num_classes)
    rng = np.random.default_rng(seed)
    i_tr, i_te = _pick(n_train, len(y_tr), rng, "n_train"), _pick(n_test, len(y_te), rng, "n_test")
    if i_tr is not None:
        x_tr, y_tr = x_tr[i_tr], y_tr[i_tr]
    if i_te is not None:
        x_te, y_te = x_te[i_te], y_te[i_te]
    if len(y_tr) == 0:
        raise ValueError(f"{name}: no training samples selected from {folder}")
    x_tr_f = x_tr.astype(np.float32) / np.float32(255.0)
    x_te_f = x_te.astype(np.float32) / np.float32(255.0)
    mean = x_tr_f.mean(axis=0, dtype=np.float64).astype(np.float32)
    x_tr_f -= mean
    x_te_f -= mean
    log.info("%s: %d train / %d test samples from %s", name, len(y_tr), len(y_te), folder)
    meta = {"source": str(folder), "n_train": int(len(y_tr)), "n_test": int(len(y_te)), "seed": int(seed),
            "subset": i_tr is not None or i_te is not None, "preprocessing": "x/255 - train_mean",
            "train_mean": mean, "label_key": label_key.decode()}
    return Dataset(x_train=torch.from_numpy(x_tr_f), y_train=torch.from_numpy(y_tr),
                   x_test=torch.from_numpy(x_te_f), y_test=torch.from_numpy(y_te),
                   num_classes=num_classes, name=name, meta=meta)


def write_cifar_folder(root: Union[str, os.PathLike], name: str = "cifar10", n_train: int = 50,
                       n_test: int = 20, seed: int = 0) -> Path:
    """Write a small random folder in the standard CIFAR python-pickle format (for tests and demos).

    Creates ``root/cifar-10-batches-py`` (n_train split over the five batches) or
    ``root/cifar-100-python``; pixels are random uint8, labels random. Returns the folder.
    """
    if name not in CIFAR_LAYOUTS:
        raise ValueError(f"name must be one of {tuple(CIFAR_LAYOUTS)}, got {name!r}")
    folder_name, train_files, test_files, label_key, num_classes = CIFAR_LAYOUTS[name]
    rng = np.random.default_rng(seed)
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)

    def dump(fname: str, n: int) -> None:
        d = {b"data": rng.integers(0, 256, size=(n, FEATURES), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
             b"batch_label": fname.encode()}
        if name == "cifar100":
            d[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, size=n)]
        with open(folder / fname, "wb") as f:
            pickle.dump(d, f)

    sizes = np.array_split(np.arange(n_train), len(train_files))
    for fname, idx in zip(train_files, sizes):
        dump(fname, len(idx))
    for fname in test_files:
        dump(fname, n_test)
    return folder
