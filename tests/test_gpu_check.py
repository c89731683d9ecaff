"""The one-shot device check (bench/gpu_check.sh) in its dry-run mode: structure, JSON and failure handling.

A failing part and a timed-out part are injected: the check must record both, run the other parts, write
its JSON and exit 1. The target table is checked on made-up rows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import gpu_check  # noqa: E402


def _run(tmp_path, *args):
    out = tmp_path / "check.json"
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--json", str(out), *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    return res, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_records_failures_and_goes_on(tmp_path):
    res, data = _run(tmp_path, "--parts", "env,build,bench-layer,bench-mlp,tests-fused,tests-backends",
                     "--inject-failure", "bench-layer", "--inject-timeout", "bench-mlp,tests-fused")
    assert res.returncode == 1, res.stdout + res.stderr
    status = {p["name"]: p["status"] for p in data["parts"]}
    assert status["env"] == "ok"
    assert status["build"] == "skipped (dry run)"
    assert status["bench-layer"] == "failed" and status["bench-mlp"] == "timeout" and status["tests-fused"] == "timeout"
    assert status["tests-backends"] == "skipped (dry run)"
    assert status["hvp-precision"] == "not selected"
    assert data["mode"] == "dry-run" and data["env"]["git_commit"]
    assert "injected failure" in next(p for p in data["parts"] if p["name"] == "bench-layer")["log_tail"]
    assert [t["met"] for t in data["targets"]] == [None] * 4
    assert "targets (H200)" in res.stdout and "parts failed or timed out" in res.stdout


@pytest.mark.slow
def test_dry_run_smoke_benchmark_rows(tmp_path):
    res, data = _run(tmp_path, "--parts", "env,bench-layer")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [r for r in data["rows"] if r["provider"] == "torch eager"]
    assert rows and all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)


def test_targets_on_made_up_rows():
    rows = [dict(part="step", shape="cifar100", provider="skipkern mlp + CUDA graph", status="ok", median_ms=0.08),
            dict(part="step", shape="cifar100", provider="torch.compile", status="ok", median_ms=0.5),
            dict(part="step", shape="cifar100", provider="torch.compile reduce-overhead", status="ok", median_ms=0.12),
            dict(part="hvp", shape="k=64 n=10000", provider="skipkern hvp-gpu", status="ok", median_ms=12.0),
            dict(part="layer fwd+bwd", shape="500x128x128", provider="torch eager", status="ok", median_ms=0.03),
            dict(part="layer fwd+bwd", shape="500x128x128", provider="skipkern triton", status="failed: x")]
    t = gpu_check.targets(rows)
    assert t[0]["met"] is True and t[0]["value_ms"] == 0.08
    assert t[1]["met"] is False and abs(t[1]["speedup"] - 1.5) < 1e-12  # against the faster compile mode
    assert t[2]["met"] is False
    assert t[3]["met"] is None  # the only skipkern layer row failed
