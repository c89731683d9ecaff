# Launch configs chosen by timing, one cached choice per problem shape, kept in memory and in a JSON file.
#
# A Triton op asks ``choose(op, key, candidates, run, device, heuristic)``: the key names the problem (kernel
# kind, sizes, dtype, skip kind...); the answer is a config tuple the op's ``run(config)`` launches with.
# SKIPKERN_TRITON_AUTOTUNE: "1" times every candidate on a miss (triton.testing.do_bench, median) and stores
# the fastest; "0" ignores the cache (heuristic only); unset uses stored choices and the heuristic otherwise,
# so a machine tuned once (bench/gpu_check.py tunes the paper's shapes) keeps its choices across processes.
# The file is SKIPKERN_TUNE_CACHE, default $SKIPKERN_CACHE/triton-tune.json (~/.cache/skipkern); entries
# name the GPU and the Triton version, so another card or compiler tunes afresh.
"""Timed choice of Triton launch configs, cached per problem shape (see the block comment above)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger("skipkern")

__all__ = ["choose", "cache_path", "clear_memory"]

_memory: dict = {}
_disk: Optional[dict] = None


def cache_path() -> Path:
    env = os.environ.get("SKIPKERN_TUNE_CACHE", "").strip()
    if env:
        return Path(env)
    return Path(os.environ.get("SKIPKERN_CACHE", "~/.cache/skipkern")).expanduser() / "triton-tune.json"


def clear_memory() -> None:
    """Forget the in-memory choices (the file stays); the next lookup reads the file again."""
    global _disk
    _memory.clear()
    _disk = None


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device)


def _full_key(op: str, key: tuple, device: torch.device) -> str:
    import triton
    return json.dumps([op, *[str(k) for k in key], _device_name(device), triton.__version__])


def _load() -> dict:
    global _disk
    if _disk is None:
        try:
            _disk = json.loads(cache_path().read_text())
        except (OSError, ValueError):
            _disk = {}
    return _disk


def _store(k: str, cfg: tuple) -> None:
    disk = _load()
    disk[k] = list(cfg)
    path = cache_path()
    try:  # several processes may tune at once: write a private file, then rename over the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(disk, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.info("triton tuning: could not write %s (%s); the choice stays in memory", path, exc)


def _do_bench(fn: Callable[[], None]) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))


def choose(op: str, key: tuple, candidates: Sequence[tuple], run: Callable[[tuple], None], device: torch.device,
           heuristic: tuple, timer: Optional[Callable[[Callable[[], None]], float]] = None) -> tuple:
    """The launch config for problem ``key`` of ``op``.

    Args:
        op: op name ("skip_linear", "skip_mlp"). key: the problem (sizes, dtype, kernel kind, ...).
        candidates: configs to time on a miss (SKIPKERN_TRITON_AUTOTUNE=1); one that fails to launch
            (shared memory, registers) is skipped.
        run: launches the op's kernel with a config (it may write the op's outputs: the caller launches again).
        device: where it runs (tuning only on CUDA devices). heuristic: the answer without tuning.
        timer: ms of one call of a function (default: triton.testing.do_bench median); tests inject one.
    """
    mode = os.environ.get("SKIPKERN_TRITON_AUTOTUNE", "").strip()
    if mode not in ("", "0", "1"):
        raise ValueError(f"SKIPKERN_TRITON_AUTOTUNE must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return tuple(heuristic)
    k = _full_key(op, key, device)
    if k in _memory:
        return _memory[k]
    stored = _load().get(k)
    if stored is not None:
        _memory[k] = tuple(stored)
        return _memory[k]
    if mode != "1" or (device.type != "cuda" and timer is None):
        return tuple(heuristic)
    timer = timer or _do_bench
    times = {}
    for cfg in dict.fromkeys(tuple(c) for c in [tuple(heuristic), *candidates]):
        try:
            times[cfg] = timer(lambda cfg=cfg: run(cfg))
        except Exception as exc:  # noqa: BLE001 - a config that does not fit is not a candidate
            log.info("triton tuning %s %s: config %s failed (%s)", op, key, cfg, type(exc).__name__)
    if not times:
        return tuple(heuristic)
    best = min(times, key=times.get)
    log.info("triton tuning %s %s: %s (%.4f ms; heuristic %s: %s ms)", op, key, best, times[best], tuple(heuristic),
             times.get(tuple(heuristic)))
    _memory[k] = best
    _store(k, best)
    return best
