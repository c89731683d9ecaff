"""``skipkern backends`` (which skip_linear backends run here, and why the others do not) and
``skipkern bench`` (the benchmark scripts of a source checkout)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from skipkern.cli.common import CLIError

__all__ = ["cmd_backends", "cmd_bench", "bench_scripts"]


def cmd_backends(args) -> int:
    from skipkern.backends import available
    rows = [(b.name, "yes" if b.available else "no", ",".join(b.devices), b.reason) for b in available()]
    head = ("backend", "available", "devices", "details")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(head[:3], widths)) + "  " + head[3])
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def bench_scripts() -> tuple:
    """(bench folder, its benchmark scripts): every bench/*.py but helpers (common.py, _*.py)."""
    bench = Path(__file__).resolve().parents[2] / "bench"
    if not bench.is_dir():
        return bench, []
    return bench, sorted(p for p in bench.glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


def cmd_bench(args) -> int:
    bench, scripts = bench_scripts()
    if not scripts:
        print(f"no benchmark scripts found in {bench}. They live in bench/ of a source checkout (git clone, then "
              f"pip install -e .); run one with: python bench/<name>.py, results go to bench/results/")
        return 0
    if args.list:
        for s in scripts:
            print(s.stem)
        return 0
    if args.script:
        scripts = [s for s in scripts if args.script in (s.stem, s.name)]
        if not scripts:
            raise CLIError(f"no benchmark script {args.script!r} in {bench}; run 'skipkern bench --list'")
    rc = 0
    for s in scripts:
        print(f"== python {s} {' '.join(args.script_args)}", flush=True)
        rc = max(rc, subprocess.call([sys.executable, str(s), *args.script_args]))
    return rc
