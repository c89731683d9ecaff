"""MNIST-1D (Greydanus, 2020), generated offline with the ``mnist1d`` package.

40 features, 10 classes. The package's ``make_dataset`` builds every sample from ten fixed templates
with random shifts, shears, scales and noise; we call it with a sample count of our choosing and never
its download helpers. Generation seeds numpy's and Python's global generators, so their states are
saved and restored around the call. The generated arrays are cached as .npz, keyed by the generator
arguments, because generating tens of thousands of samples takes seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from skipkern.data.base import Dataset, default_cache_dir

log = logging.getLogger("skipkern.data")

__all__ = ["load_mnist1d", "mnist1d_args", "MNIST1D_DEFAULT_TRAIN", "MNIST1D_DEFAULT_TEST"]

MNIST1D_DEFAULT_TRAIN = 4000  # the package's standard set: 5000 samples, train_split 0.8
MNIST1D_DEFAULT_TEST = 1000
NUM_CLASSES = 10


def mnist1d_args(num_samples: int, seed: int) -> dict:
    """The package's generator arguments with our sample count and seed (all else at its defaults).

    ``make_dataset`` makes ``num_samples // 10`` samples per class; train_split is 1.0 because we
    split ourselves (first n_train samples train, the next n_test test; the package shuffles them).
    """
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by the download helpers, which we never call
    args.update(num_samples=int(num_samples), seed=int(seed), train_split=1.0)
    return args


def _generate(args: dict) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:  # make_dataset re-seeds the global generators; leave the caller's streams untouched
        np.random.set_state(np_state)
        random.setstate(py_state)
    return np.asarray(d["x"], dtype=np.float32), np.asarray(d["y"], dtype=np.int64)


def _cached_generate(args: dict, cache_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray, str]:
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is None:
        x, y = _generate(args)
        return x, y, "generated (cache disabled)"
    path = cache_dir / f"mnist1d_{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                x, y = f["x"], f["y"]
            if x.shape == (args["num_samples"] // NUM_CLASSES * NUM_CLASSES, args["final_seq_length"]):
                return x, y, f"cache {path}"
            log.warning("ignoring MNIST-1D cache %s: shape %s does not match its arguments", path, x.shape)
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable MNIST-1D cache %s: %s", path, e)
    x, y = _generate(args)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
        source = f"generated, cached to {path}"
    except OSError as e:
        log.warning("could not cache MNIST-1D to %s (%s); generated in memory only", cache_dir, e)
        source = "generated (cache not writable)"
    return x, y, source


def load_mnist1d(n_train: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0,
                 cache_dir: Union[str, os.PathLike, None] = None, cache: bool = True) -> Dataset:
    """Generate MNIST-1D: ``n_train`` training and ``n_test`` test samples of 40 features.

    Args:
        n_train, n_test: sample counts (None: 4000 and 1000, the sizes of the package's standard set).
        seed: generator seed of ``make_dataset`` (the published mnist1d_data.pkl used 42).
        cache_dir: cache folder (None: ``default_cache_dir()``). cache: False disables the cache.

    Returns:
        Dataset "mnist1d": x [N, 40] float32 (the package standardises all samples jointly to zero mean,
        unit standard deviation), y [N] int64 in [0, 10). meta holds the generator arguments.
    """
    n_tr = MNIST1D_DEFAULT_TRAIN if n_train is None else int(n_train)
    n_te = MNIST1D_DEFAULT_TEST if n_test is None else int(n_test)
    if n_tr < 1:
        raise ValueError(f"n_train must be >= 1 for MNIST-1D, got {n_tr}")
    total = n_tr + n_te
    # make_dataset makes num_samples // 10 per class: round up to a multiple of 10
    num_samples = int(math.ceil(total / NUM_CLASSES) * NUM_CLASSES)
    args = mnist1d_args(num_samples, seed)
    cdir = None if not cache else (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    x, y, source = _cached_generate(args, cdir)
    log.info("MNIST-1D %d+%d samples, seed %d: %s", n_tr, n_te, seed, source)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    meta = {"source": source, "generator": "mnist1d.data.make_dataset", "seed": int(seed),
            "n_train": n_tr, "n_test": n_te, "generator_args": args}
    return Dataset(x_train=xt[:n_tr].clone(), y_train=yt[:n_tr].clone(), x_test=xt[n_tr:total].clone(),
                   y_test=yt[n_tr:total].clone(), num_classes=NUM_CLASSES, name="mnist1d", meta=meta)
