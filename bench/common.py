"""Shared helpers of the benchmarks: machine/version metadata, timing, and JSON results.

    from bench.common import add_result_args, env_info, measure, write_results
    stats = measure(fn, device="cpu")                  # {"median_ms", "min_ms", "iqr_ms", "repeats"}
    add_result_args(parser)                            # --allow-dirty
    path = write_results("skip_layers", rows, extra, allow_dirty=args.allow_dirty)
                                                       # bench/results/skip_layers-<device>-<date>.json

Every results file holds {"name", "env": env_info(), "extra": ..., "rows": [...]}, so figures can always
be traced to a machine, versions, a commit and a date. A commit names the code only when the tree is
clean: write_results refuses a tree with uncommitted changes to tracked files unless the script was given
--allow-dirty, and then records ``"git_dirty": true`` and ``"allow_dirty": true``. The per-op benchmarks
(bench/bench_<op>.py) run under pytest-benchmark, which records its own commit_info (dirty flag included).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["env_info", "device_slug", "measure", "summarize", "check_tree", "write_results", "add_result_args",
           "peak_memory", "skip_unless_backend_runs", "run_benchmark", "format_table", "RESULTS_DIR"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    except OSError:
        pass
    return []


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:  # not installed / broken: recorded as None
        return None


def device_slug() -> str:
    """'cpu', or the GPU name in lower case with dashes (e.g. 'nvidia-h100-80gb-hbm3')."""
    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def env_info() -> dict:
    """Machine, versions, git commit and date of this run."""
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_slug(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": _cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "skipkern": _version("skipkern"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        from skipkern.backends import cpp
        info["cpp_kernels"] = cpp.kernel_info()
    except Exception:  # backend missing: leave it out
        pass
    return info


def measure(fn: Callable[[], Any], *, device: str = "cpu", warmup: int = 3, min_repeats: int = 5,
            max_repeats: int = 100, budget_s: float = 1.0, setup: Optional[Callable[[], Any]] = None) -> dict:
    """Times ``fn()``: ``warmup`` untimed calls, then repeats until ``budget_s`` is spent (at least
    ``min_repeats``, at most ``max_repeats``). ``setup()`` runs untimed before every call (e.g. clearing
    gradients). CUDA work is synchronised around each call.

    Returns:
        {"median_ms", "min_ms", "iqr_ms", "repeats"}.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        if setup:
            setup()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def summarize(times_ms: list) -> dict:
    """{"median_ms", "min_ms", "iqr_ms", "repeats"} of a list of times in milliseconds."""
    q = statistics.quantiles(times_ms, n=4) if len(times_ms) >= 2 else [times_ms[0]] * 3
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "iqr_ms": q[2] - q[0],
            "repeats": len(times_ms)}


def add_result_args(parser: argparse.ArgumentParser) -> None:
    """Adds --allow-dirty (pass its value to write_results)."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write results although tracked files have uncommitted changes (recorded in the JSON)")


def check_tree(name: str, allow_dirty: bool = False) -> None:
    """Raises RuntimeError when tracked files have uncommitted changes, unless ``allow_dirty``. Scripts call
    it before measuring too, so that a long run is not refused at its end."""
    changed = [c.split(maxsplit=1)[-1] for c in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if changed and not allow_dirty:
        listed = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise RuntimeError(f"refusing to write {name} results: the git tree has uncommitted changes ({listed}), so "
                           f"commit {_git('rev-parse', '--short', 'HEAD')} is not the code that ran; commit "
                           f"first, or pass --allow-dirty (recorded as allow_dirty: true)")


def write_results(name: str, rows: list, extra: Optional[dict] = None, allow_dirty: bool = False) -> Path:
    """Writes bench/results/<name>-<device>-<YYYY-MM-DD>.json and returns its path.

    Raises RuntimeError, before writing anything, when tracked files have uncommitted changes (the commit
    recorded would not be the code that ran) unless ``allow_dirty``; that choice is recorded in the JSON.
    """
    check_tree(name, allow_dirty)
    env = env_info()
    env["allow_dirty"] = bool(allow_dirty)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{env['device']}-{_dt.date.today().isoformat()}.json"
    payload = {"name": name, "env": env, "extra": extra or {}, "rows": rows}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> Optional[int]:
    """Peak tensor memory (bytes) one call of ``fn`` allocates on top of what is allocated before it.

    CUDA: torch.cuda.max_memory_allocated over the call (every tensor and workspace of the caching
    allocator). CPU: the allocation and free events of torch's CPU allocator, recorded by the profiler
    (profile_memory=True) and summed in time order. Memory outside torch's allocators (the cpp kernels'
    grow-only scratch, reused across calls) is not counted.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def skip_unless_backend_runs(op: str, provider: str, device: str, dtype: torch.dtype) -> None:
    """In a per-op benchmark: pytest.skip, with the reason, a backend provider that cannot run ``op`` here.
    Triton on CPU tensors is the interpreter, a correctness tool: never measured."""
    import pytest

    from skipkern import backends

    if provider == "triton" and device == "cpu":
        pytest.skip("Triton on CPU tensors is the interpreter: a correctness tool, not measured")
    ok, reason = backends.can_run(provider, op, device, dtype)
    if not ok:
        pytest.skip(f"{provider}: {reason}")


def run_benchmark(benchmark, op: str, provider: str, mode: str, setup: Optional[Callable], call: Callable,
                  device: str, dtype: torch.dtype, **shape) -> None:
    """One pytest-benchmark measurement of a per-op benchmark (bench/bench_<op>.py).

    Three untimed warm-up calls (compilation, autotuning, first-touch pages), the peak memory of one call,
    the group "<op> <mode> <shape>" (providers of a group side by side) and extra_info (provider, mode,
    shape, device, dtype, threads, load average, peak_memory_bytes); then the timed rounds: benchmark(call),
    or, when ``setup`` is given (untimed before every call, returning call's (args, kwargs)), pedantic rounds
    of one call each, about a second of them. CUDA work is synchronised inside the timed call.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once() -> float:
        args, kwargs = setup() if setup else ((), {})
        sync()
        t0 = time.perf_counter()
        call(*args, **kwargs)
        sync()
        return time.perf_counter() - t0

    t = min(once() for _ in range(3))
    args, kwargs = setup() if setup else ((), {})
    mem = peak_memory(lambda: call(*args, **kwargs), device)
    benchmark.group = f"{op} {mode} " + " ".join(f"{k}={v}" for k, v in shape.items())
    benchmark.extra_info.update(
        op=op, provider=provider, mode=mode, device=device, dtype=str(dtype).replace("torch.", ""),
        torch_threads=torch.get_num_threads(), peak_memory_bytes=mem,
        loadavg_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, **shape)

    def timed(*a, **kw):
        out = call(*a, **kw)
        sync()
        return out

    if setup is None:
        benchmark(timed)
    else:
        benchmark.pedantic(timed, setup=setup, rounds=max(5, min(500, int(1.0 / max(t, 1e-6)))))


def format_table(rows: list, columns: list) -> str:
    """Plain-text table of ``rows`` (dicts) with the given (key, header, format) columns."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].rjust(widths[i]) for i in range(len(columns))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
