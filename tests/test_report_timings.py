"""The report keeps the compute time measured when the results were made: a re-run that finds every
training run in the cache (seconds of wall time) still reports the runs' real training time, beside the
wall time of this invocation."""
from __future__ import annotations

import json
import time

import pytest

from skipkern.experiments import Context, get_recipe
from skipkern.report import compute_seconds, write_report


@pytest.mark.slow
def test_cached_rerun_keeps_the_measured_compute_time(tmp_path):
    import torch
    torch.set_num_threads(1)
    ctx = Context(out=tmp_path, mode="tiny", progress=False, backend="torch", seeds=[0])
    recipe = get_recipe("malicious")
    recipe.run(ctx)
    first = json.loads((tmp_path / "malicious" / "results.json").read_text())
    trained = first["runs_compute_s"]
    assert trained > 0 and trained == pytest.approx(first["train_time_s"])  # nothing was cached the first time
    t0 = time.perf_counter()
    recipe.run(ctx)  # every run comes from the cache now
    wall = time.perf_counter() - t0
    again = json.loads((tmp_path / "malicious" / "results.json").read_text())
    assert all(r["cached"] for r in again["runs"]) and again["train_time_s"] == 0.0
    assert again["runs_compute_s"] == pytest.approx(trained)  # measured when trained, not overwritten
    assert compute_seconds(again) >= trained
    report = write_report(tmp_path, timings={"malicious": wall}, total_s=wall).read_text()
    row = next(ln for ln in report.splitlines() if ln.startswith("| `malicious` |"))
    assert f"| {compute_seconds(again):.0f} s | {wall:.0f} s |" in row, row
    assert "compute | wall (this invocation)" in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compute_s"]["malicious"] == pytest.approx(compute_seconds(again))
    assert summary["timings"]["malicious"] == pytest.approx(wall)


def test_gate_table_shows_a_dash_where_a_number_does_not_apply():
    """A regression task (connectivity) has no accuracy: its gate row says "-", never "nan%"."""
    from skipkern.report import _gates
    results = {"connectivity": {"gates": {"": {"n=2 plain": {"ok": True, "reason": "", "numbers": {
        "n": 80, "mean_init_loss": 1.9, "mean_final_loss": 0.0034, "mean_final_acc": float("nan")}}}}},
               "architectures": {"gates": {"glorot": {"plain": {"ok": True, "reason": "", "numbers": {
                   "n": 5, "mean_init_loss": 2.3, "mean_final_loss": 1.1, "mean_final_acc": 0.5}}}}}}
    text = "\n".join(_gates(results))
    assert "nan" not in text
    assert "| connectivity | - | n=2 plain | 80 | 1.9 | 0.0034 | - | pass |" in text
    assert "| architectures | glorot | plain | 5 | 2.3 | 1.1 | 50.0% | pass |" in text
