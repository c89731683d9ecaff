"""``skipkern repro`` and ``skipkern spectrum`` under ``torchrun`` (gloo on loopback, CPU processes).

The CLI must work unchanged under torchrun: the same numbers as one process (training under DDP is
the exact global batch mean, the spectrum's products all-reduce), rank-0-only output (one report,
one console), a cache the ranks agree on (a re-run trains nothing), and a bad output folder that
fails on every rank in one line instead of hanging. Every launch is bounded by a timeout.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # each test launches processes

TINY = ["--quick", "--seeds", "0,1", "--no-progress", "--threads", "1", "--set", "depth=3", "--set", "width=8",
        "--set", "steps=6", "--set", "n_train=96", "--set", "n_test=32", "--set", "batch_size=32",
        "--set", 'inits=["glorot"]', "--set", "eval_points=2", "--set", "spectrum_probes=2",
        "--set", "spectrum_steps=6", "--set", "spectrum_samples=48", "--set", "diag_points=1", "--set", "diag_batch=32"]


def _env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore", SKIPKERN_DIST_TIMEOUT="60")


def skipkern(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skipkern", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m skipkern ...`` (a free port of its own)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "skipkern", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def repro_runs(tmp_path_factory):
    """The tiny ``repro malicious`` once with 2 ranks and once in one process."""
    root = tmp_path_factory.mktemp("dist_cli")
    dist = torchrun(2, "repro", "malicious", *TINY, "--out", str(root / "dist"))
    assert dist.returncode == 0, dist.stdout + dist.stderr
    single = skipkern("repro", "malicious", *TINY, "--jobs", "1", "--out", str(root / "single"))
    assert single.returncode == 0, single.stderr
    return root, dist


def _runs(out: Path) -> list:
    return json.loads((out / "malicious" / "results.json").read_text())["runs"]


# Wall-clock fields differ between any two runs; fractions of eigenvalues beyond a threshold and numerical
# ranks are step functions of the spectrum (a value within float32 noise of the threshold may cross it),
# so they are not compared here; the Ritz values themselves are, in test_spectrum_under_torchrun_uneven_shards.
_NOT_COMPARED = ("time", "elapsed", "fraction", "rank")


def _numbers(row: dict) -> dict:
    """The row's numbers (strict-JSON "nan"/"inf" strings restored), minus wall-clock fields."""
    from skipkern.diagnostics import from_json_safe
    row = from_json_safe(row)
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not any(n in k for n in _NOT_COMPARED)}


def test_repro_under_torchrun_matches_one_process(repro_runs):
    root, proc = repro_runs
    res = json.loads((root / "dist" / "malicious" / "results.json").read_text())
    assert res["context"]["world_size"] == 2
    # one console: rank 0 alone prints the header, the findings and the report line
    assert proc.stdout.count("report:") == 1, proc.stdout
    assert proc.stderr.count("[1/1] malicious") == 1, proc.stderr
    assert (root / "dist" / "report.md").is_file() and (root / "dist" / "malicious" / "malicious.csv").is_file()
    assert not list((root / "dist").rglob("*.tmp")) and not list((root / "dist").rglob(".skipkern.lock"))
    dist, single = _runs(root / "dist"), _runs(root / "single")
    assert [(r["family"], r["condition"], r["seed"]) for r in dist] == [(r["family"], r["condition"], r["seed"])
                                                                         for r in single]
    assert len(dist) == 6  # residual, malicious, plain x 2 seeds
    for d, s in zip(dist, single):
        # DDP's gradient is the exact global batch mean: only float32 summation order differs. Every
        # number either row holds is compared (a run may legitimately hold NaN, e.g. a spectrum summary a
        # run did not compute: then both must), so no key's presence is left to chance.
        dn, sn = _numbers(d), _numbers(s)
        assert dn.keys() == sn.keys(), d["condition"]
        assert d["final_train_acc"] == s["final_train_acc"] and d["final_test_acc"] == s["final_test_acc"]
        for key in dn:
            if not (math.isnan(dn[key]) and math.isnan(sn[key])):
                assert dn[key] == pytest.approx(sn[key], rel=1e-5, abs=1e-6), (d["condition"], key)
        assert not d["cached"]
        assert (Path(d["folder"]) / "checkpoint.pt").is_file() and (Path(d["folder"]) / "record.json").is_file()


def test_repro_rerun_under_torchrun_uses_the_cache_on_every_rank(repro_runs):
    root, _ = repro_runs
    out = root / "dist"
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint.pt")}
    again = torchrun(2, "repro", "malicious", *TINY, "--out", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(r["cached"] for r in _runs(out))
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint.pt")} == before  # nothing retrained


def test_spectrum_under_torchrun_uneven_shards(repro_runs):
    root, _ = repro_runs
    run = next(p.parent for p in sorted((root / "dist" / "runs").rglob("checkpoint.pt")))
    args = ["spectrum", str(run), "--samples", "47", "--probes", "2", "--steps", "8", "--no-progress"]
    one = skipkern(*args, "--out", str(root / "spec1"))
    assert one.returncode == 0, one.stderr
    three = torchrun(3, *args, "--out", str(root / "spec3"))  # shards of 16, 16 and 15 samples
    assert three.returncode == 0, three.stdout + three.stderr
    assert three.stdout.count("fraction of degenerate eigenvalues") == 1, three.stdout
    s1 = json.loads((root / "spec1" / "spectrum_summary.json").read_text())
    s3 = json.loads((root / "spec3" / "spectrum_summary.json").read_text())
    assert s1["samples"] == s3["samples"] == 47 and s1["num_params"] == s3["num_params"]
    for key in ("fraction_degenerate", "fraction_negative"):
        assert s3[key] == pytest.approx(s1[key], abs=1e-6), key
    d1 = json.loads((root / "spec1" / "spectrum_density.json").read_text())
    d3 = json.loads((root / "spec3" / "spectrum_density.json").read_text())
    for key in ("nodes", "weights"):  # [probes, steps] Ritz values and weights, float32 products
        np.testing.assert_allclose(np.asarray(d3[key]), np.asarray(d1[key]), rtol=1e-4, atol=1e-6, err_msg=key)


def test_bad_output_folder_fails_on_every_rank(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = torchrun(2, "repro", "malicious", *TINY, "--out", str(blocker / "sub"), timeout=120)
    assert p.returncode != 0
    for r in (0, 1):
        assert f"skipkern: error (rank {r} of 2): cannot write to the output folder" in p.stderr, p.stderr
    assert "skipkern/cli/" not in p.stderr  # one-line errors, no skipkern traceback (torchrun adds its own)


class _Recipe:
    """A stand-in recipe: one all-reduce on every rank (its training), then ``fail_on`` ranks raise at
    the end, as a failed write of the results on rank 0 does."""

    def __init__(self, name: str, fail_on: tuple = ()):
        self.name, self.description, self.fail_on = name, f"stand-in {name}", fail_on
        self.configs = {"tiny": {}}

    def run(self, ctx, overrides):
        import torch

        from skipkern import distributed as sd
        total = sd.all_reduce_sum(torch.ones(1, dtype=torch.float64), ctx.group)
        if sd.rank(ctx.group) in self.fail_on:
            raise OSError(f"{self.name}: disk full")
        return {"findings": [], "ranks": float(total)}


def _recipes_ranks(rank, world, out):
    from argparse import Namespace

    from skipkern.cli.repro import run_recipes
    from skipkern.experiments import Context
    ctx = Context(out=out, mode="tiny", progress=False)
    recipes = [_Recipe("first", fail_on=(0,)), _Recipe("second")]
    timings, failed, _ = run_recipes(Namespace(debug=False), ctx, recipes, "tiny", {})
    return {"failed": failed, "ran": sorted(timings)}


def test_a_recipe_failing_on_one_rank_fails_on_every_rank(tmp_path):
    from tests.dist_utils import run_ranks
    outs = run_ranks(_recipes_ranks, 2, str(tmp_path), timeout=120)
    for o in outs:  # the ranks agree, and the next recipe's collectives still line up
        assert list(o["failed"]) == ["first"] and o["ran"] == ["second"]
        assert "rank(s) [0]" in o["failed"]["first"] and "disk full" in o["failed"]["first"]


def test_train_and_diagnose_under_torchrun(tmp_path):
    run = tmp_path / "run"
    train = ["train", "--arch", "residual", "--depth", "3", "--width", "8", "--epochs", "2", "--n-train", "96",
             "--n-test", "32", "--batch-size", "32", "--threads", "1", "--no-progress"]
    p = torchrun(2, *train, "--out", str(run))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("training residual") == 1 and p.stdout.count("epoch 2:") == 1, p.stdout
    single = skipkern(*train, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    last = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()][-1]
    ref = [json.loads(ln) for ln in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines() if ln.strip()][-1]
    assert last["epoch"] == ref["epoch"] == 2
    assert last["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
    p = torchrun(2, "diagnose", str(run), "--samples", "32", "--out", str(tmp_path / "diag"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("diagnostics of checkpoint") == 1, p.stdout  # rank 0 alone
    assert (tmp_path / "diag" / "condition_numbers.json").is_file()


def _on_every_rank_ranks(rank, world):
    from skipkern import distributed as sd
    from skipkern.cli.common import CLIError
    from skipkern.cli.dist import on_every_rank

    def load():
        if rank == 1:
            raise CLIError("--data cifar10 needs --data-dir: the folder holding cifar-10-batches-py")
        return rank

    out = {"ok": on_every_rank(lambda: rank * 10, "loading the data")}
    try:
        on_every_rank(load, "loading the data")
    except sd.DistributedError as e:
        out["error"] = str(e)
    return out


def test_a_local_failure_before_training_stops_every_rank():
    from tests.dist_utils import run_ranks
    outs = run_ranks(_on_every_rank_ranks, 3, timeout=120)
    for r, o in enumerate(outs):
        assert o["ok"] == 10 * r
        assert o["error"].startswith("loading the data failed on rank(s) [1]: rank 1: --data cifar10 needs --data-dir")
