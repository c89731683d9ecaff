"""The command line through subprocess (``python -m skipkern``): help, backends, the one-line errors
for bad input, and tiny real runs of repro, train, diagnose and spectrum."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


TINY_TRAIN = ["--depth", "3", "--width", "8", "--epochs", "1", "--n-train", "64", "--n-test", "32",
              "--batch-size", "32", "--no-progress"]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "skipkern", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("skipkern: error:")
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_on_every_command():
    p = run_cli("--help")
    assert p.returncode == 0
    for cmd in ("repro", "train", "spectrum", "diagnose", "backends", "bench"):
        assert cmd in p.stdout
    p = run_cli("repro", "--help")
    assert p.returncode == 0
    for flag in ("--device", "--backend", "--data", "--data-dir", "--out", "--seeds", "--quick"):
        assert flag in p.stdout


def test_backends_table():
    p = run_cli("backends")
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in p.stdout.splitlines()[1:] if ln.strip()}
    assert rows["torch"] == "yes"
    assert set(rows) == {"cuda", "triton", "cpp", "torch"}


def test_bad_input_errors(tmp_path):
    assert_one_line_error(run_cli("repro", "nonsense", "--quick", "--out", str(tmp_path / "a")),
                          "unknown experiment 'nonsense'", "architectures")
    missing = tmp_path / "no_such_folder"
    assert_one_line_error(run_cli("repro", "architectures", "--quick", "--data", "cifar10", "--data-dir", str(missing),
                                  "--out", str(tmp_path / "b")), str(missing))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("repro", "simplified", "--quick", "--out", str(blocker / "sub")),
                          "cannot write to the output folder")
    assert_one_line_error(run_cli("bench", "no_such_bench"), "no benchmark script")


def test_repro_simplified_tiny(tmp_path):
    out = tmp_path / "repro"
    p = run_cli("repro", "simplified", "--quick", "--seeds", "1", "--no-progress", "--out", str(out),
                "--set", "steps=60", "--set", "starts=1", "--set", "n_samples=64", "--set", "grid=7")
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "simplified" / "results.json").read_text())
    assert res["seeds"] == [0] and res["config"]["steps"] == 60
    report = (out / "report.md").read_text()
    assert "Simplified model" in report and "| 1 |" in report
    assert "not run" in report  # the deep experiments were not asked for
    assert (out / "simplified" / "simplified_flow_field.png").is_file()


def test_train_diagnose_spectrum_and_architecture_mismatch(tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli("train", "--arch", "plain", *TINY_TRAIN, "--out", str(run_dir))
    assert p.returncode == 0, p.stderr
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "metrics.jsonl").is_file()
    # resuming the folder with another architecture is refused in one line
    assert_one_line_error(run_cli("train", "--arch", "residual", *TINY_TRAIN, "--out", str(run_dir)),
                          "different architecture")
    p = run_cli("diagnose", str(run_dir / "checkpoint.pt"), "--samples", "32", "--out", str(tmp_path / "diag"))
    assert p.returncode == 0, p.stderr
    cond = json.loads((tmp_path / "diag" / "condition_numbers.json").read_text())
    assert len(cond["layers"]) == 3
    p = run_cli("spectrum", str(run_dir), "--samples", "32", "--probes", "2", "--steps", "6", "--no-progress",
                "--out", str(tmp_path / "spec"))
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "spec" / "spectrum_summary.json").read_text())
    assert 0.0 <= s["fraction_degenerate"] <= 1.0 and s["samples"] == 32
    assert (tmp_path / "spec" / "spectrum_density.png").is_file()
    assert_one_line_error(run_cli("spectrum", str(run_dir), "--arch", "residual", "--out", str(tmp_path / "s2")),
                          "'plain'", "residual")


@pytest.mark.parametrize("argv, needle", [
    (["spectrum", "{tmp}/nothing.pt", "--out", "{tmp}/s"], "does not exist"),
    (["repro", "simplified", "--quick", "--seeds", "x", "--out", "{tmp}/o"], "--seeds"),
    (["repro", "simplified", "--quick", "--set", "no_such_key=1", "--out", "{tmp}/o"], "unknown setting"),
    (["repro", "all", "--quick", "--data", "cifar100", "--out", "{tmp}/o"], "--data-dir"),
    (["train", "--backend", "no_such_backend", "--out", "{tmp}/o"], "--backend"),
])
def test_more_errors_in_process(tmp_path, capsys, argv, needle):
    """Cheaper error paths through main() in this process (same code path as the console script)."""
    from skipkern.cli import main
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("skipkern: error:") and needle in err[0], err
