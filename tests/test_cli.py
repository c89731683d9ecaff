"""The command line through subprocess (``python -m skipkern``): help, backends, the one-line errors
for bad input, and tiny real runs of repro, train, diagnose and spectrum."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.utils import sigint_default


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


@pytest.mark.slow
def test_help_on_every_command():
    p = run_cli("--help")
    assert p.returncode == 0
    for cmd in ("repro", "train", "spectrum", "diagnose", "backends", "bench"):
        assert cmd in p.stdout
    p = run_cli("repro", "--help")
    assert p.returncode == 0
    for flag in ("--device", "--backend", "--data", "--data-dir", "--out", "--seeds", "--quick"):
        assert flag in p.stdout


def test_repro_help_lists_every_experiment_in_run_order():
    from skipkern.cli.parser import REPRO_EXPERIMENTS
    from skipkern.experiments.registry import ORDER

    assert REPRO_EXPERIMENTS == ORDER


@pytest.mark.slow
def test_backends_table():
    p = run_cli("backends")
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in p.stdout.splitlines()[1:] if ln.strip()}
    assert rows["torch"] == "yes"
    assert set(rows) == {"cuda", "triton", "cpp", "torch"}


@pytest.mark.slow
def test_bad_input_errors(tmp_path):
    assert_one_line_error(run_cli("repro", "nonsense", "--quick", "--out", str(tmp_path / "a")),
                          "unknown experiment 'nonsense'", "architectures")
    missing = tmp_path / "no_such_folder"
    assert_one_line_error(run_cli("repro", "architectures", "--quick", "--data", "cifar10", "--data-dir", str(missing),
                                  "--out", str(tmp_path / "b")), str(missing))
    assert not (tmp_path / "b").exists()  # a failed command leaves no empty output folder behind
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("repro", "simplified", "--quick", "--out", str(blocker / "sub")),
                          "cannot write to the output folder")
    assert_one_line_error(run_cli("bench", "no_such_bench"), "no benchmark script")


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_repro_data_check_uses_only_the_recipes_that_load_the_data_set():
    from skipkern.cli.repro import data_recipes
    from skipkern.experiments import ORDER, get_recipe
    for mode in ("quick", "full"):
        names = {r.name for r in data_recipes([get_recipe(n) for n in ORDER], mode)}
        assert {"architectures", "seeds", "biasreg", "symmetry", "depth"} <= names
        assert not names & {"simplified", "connectivity", "signal"}  # own teacher-student data / results only


@pytest.mark.slow
def test_repro_connectivity_on_cifar_needs_no_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SKIPKERN_DATA_DIR", raising=False)
    tiny = ["widths=[4]", "n_seeds=2", "train_steps=5", "input_dims=[2]", "methods=[\"linear\"]", "n_train=32",
            "n_test=32", "num_points=3", "refine=1", "n_boot=20"]
    argv = ["repro", "connectivity", "--quick", "--data", "cifar10", "--no-progress", "--out", str(tmp_path / "o")]
    assert _main(argv + [a for kv in tiny for a in ("--set", kv)]) == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "connectivity" / "results.json").is_file()
    # a recipe that trains on the data set still needs the folder, before any work
    assert _main(["repro", "symmetry", "--quick", "--data", "cifar10", "--out", str(tmp_path / "s")]) == 1
    assert "--data cifar10 needs --data-dir" in capsys.readouterr().err


# --------------------------------------------------------------------- bad values, checked before any work
def _main(argv) -> int:
    from skipkern.cli import main
    try:
        return main(argv)
    except SystemExit as e:  # argparse errors exit (status 2) after printing their one line
        return e.code


@pytest.mark.parametrize("argv, needle", [
    (["train", "--width", "0"], "argument --width: expected an integer >= 1, got 0"),
    (["train", "--depth", "-3"], "argument --depth: expected an integer >= 1, got -3"),
    (["train", "--epochs", "abc"], "argument --epochs: expected an integer >= 0, got 'abc'"),
    (["train", "--batch-size", "0"], "argument --batch-size"),
    (["train", "--n-train", "0"], "argument --n-train"),
    (["train", "--lr", "0"], "argument --lr: expected a finite number > 0, got 0"),
    (["train", "--lr", "nan"], "argument --lr"),
    (["train", "--degenerate-fraction", "2"], "argument --degenerate-fraction"),
    (["train", "--spectrum-probes", "0"], "argument --spectrum-probes"),
    (["train", "--arch", "nonsense"], "argument --arch: invalid choice: 'nonsense'"),
    (["train", "--depth", "3", "--bn-layer", "3"], "--bn-layer must name hidden layers 0..2"),
    (["train", "--biasreg", "0", "-1", "0.1"], "--biasreg MU SIGMA LAM"),
    (["train", "--spectrum-at", "0,-2"], "--spectrum-at must list epochs >= 0"),
    (["train", "--threads", "-1"], "argument --threads"),
    (["repro", "simplified", "--jobs", "-1"], "argument --jobs"),
    (["repro", "malicious", "--quick", "--set", "depth=abc"],
     "--set depth=abc: depth must be an integer (the recipe's default is "),
    (["repro", "malicious", "--quick", "--set", "depth=2.5"], "depth must be an integer"),
    (["repro", "malicious", "--quick", "--set", "lr=-1"], "--set lr=-1: lr must not be negative"),
    (["repro", "malicious", "--quick", "--set", "lr=0"], "lr must be a positive number"),
    (["repro", "malicious", "--quick", "--set", "depth=0"], "--set depth=0: depth must be >= 1"),
    (["repro", "malicious", "--quick", "--set", "seeds=5"], "seeds must be a JSON list of integers"),
    (["repro", "malicious", "--quick", "--set", "batch_size=0"], "batch_size must be an int >= 1"),
    (["repro", "simplified", "--quick", "--set", "activation=3"], "activation must be a string"),
    (["spectrum", "{tmp}/x.pt", "--samples", "0"], "argument --samples"),
    (["spectrum", "{tmp}/x.pt", "--eps", "-1"], "argument --eps"),
    (["diagnose", "--width", "0"], "argument --width"),
])
def test_bad_values_are_one_line_before_any_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "o"
    rc = _main([a.format(tmp=tmp_path) for a in argv] + ["--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and err[0].startswith("skipkern: error:") and needle in err[0], err
    assert not out.exists()  # refused before any folder was made


def _tiny_checkpoint(folder):
    """A real checkpoint of a tiny run, made in-process (the torch backend: fast, no build needed)."""
    from skipkern.data import load_dataset
    from skipkern.nn import SkipMLP
    from skipkern.train import TrainConfig, train

    data = load_dataset("mnist1d", n_train=64, n_test=16)
    train(SkipMLP(40, 4, 2, 10, seed=0, backend="torch"), data,
          TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False), out_dir=folder,
          identity={"malicious": False})
    return folder / "checkpoint.pt"


@pytest.mark.parametrize("kind, needle", [
    ("log", "is not a skipkern checkpoint: expected a checkpoint.pt written by 'skipkern train'"),
    ("empty", "found an empty file"),
    ("random", "bytes of other data"),
    ("truncated", "is truncated or corrupt"),
    ("foreign", "holds objects other than tensors and plain containers"),
    ("state_dict", "is not a skipkern training checkpoint"),
])
def test_unreadable_checkpoints_are_one_line(tmp_path, capsys, kind, needle):
    import numpy as np
    import torch

    bad = tmp_path / ("train.log" if kind == "log" else "checkpoint.pt")
    if kind == "log":
        bad.write_text("epoch 1: loss 2.30\nepoch 2: loss 2.10\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "random":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        good = _tiny_checkpoint(tmp_path / "good").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    elif kind == "foreign":
        torch.save({"format": "skipkern-train-2", "what": np.zeros(3)}, bad)
    else:
        torch.save({"weight": torch.zeros(2)}, bad)
    for cmd in ("spectrum", "diagnose"):
        rc = _main([cmd, str(bad), "--no-progress"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 1 and len(err) == 1 and str(bad) in err[0] and needle in err[0], err
        assert "weights_only" not in err[0]  # never advise loading untrusted pickles
        assert not (tmp_path / cmd).exists()  # no output folder behind a failed command


# ------------------------------------------------------------------------------- outputs and resume
@pytest.mark.slow
def test_spectrum_and_diagnose_write_beside_the_run_and_never_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    _tiny_checkpoint(run)
    spec = ["spectrum", str(run), "--samples", "32", "--probes", "2", "--steps", "4", "--no-progress",
            "--backend", "torch"]
    assert _main(spec) == 0
    first = (run / "spectrum" / "spectrum_summary.json").read_text()
    assert json.loads(first)["samples"] == 32 and (run / "spectrum" / "spectrum_density.png").is_file()
    capsys.readouterr()
    assert _main(spec + ["--seeds", "0,1"]) == 1  # a second call refuses: the first result stays
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"output folder {run / 'spectrum'} already holds a spectrum" in err[0], err
    assert "--force" in err[0] and "--out" in err[0]
    assert (run / "spectrum" / "spectrum_summary.json").read_text() == first
    assert _main(spec + ["--force"]) == 0
    diag = ["diagnose", str(run / "checkpoint.pt"), "--samples", "16", "--backend", "torch"]
    assert _main(diag) == 0 and (run / "diagnose" / "condition_numbers.json").is_file()
    capsys.readouterr()
    assert _main(diag) == 1 and "already holds a diagnostics" in capsys.readouterr().err
    assert _main(diag + ["--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "elimination.json").is_file()
    assert not list(tmp_path.rglob(".skipkern.lock"))


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--arch", "residual", *TINY_TRAIN, "--epochs", "2", "--out", str(run_dir)]
    assert run_cli(*args).returncode == 0
    assert_one_line_error(run_cli(*args, "--malicious"), "other settings", "malicious: checkpoint False vs this run True",
                          "initial weights")
    assert_one_line_error(run_cli(*[a if a != "2" else "1" for a in args]),
                          "is at epoch 2, past this run's epochs=1", "--epochs 2", "--no-resume")
    p = run_cli(*args)  # the same run: nothing left to do, it reports its epoch 2
    assert p.returncode == 0 and "epoch 2:" in p.stdout, p.stderr


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """SIGINT while the command is still importing torch (libtorch mapped, imports not finished)."""
    import shutil
    import signal
    import time

    cmds = [[sys.executable, "-m", "skipkern"]] + ([[shutil.which("skipkern")]] if shutil.which("skipkern") else [])
    for cmd in cmds:
        p = subprocess.Popen(cmd + ["train", "--epochs", "100000", "--out", str(tmp_path / "o")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
        t0 = time.monotonic()
        while "libtorch" not in open(f"/proc/{p.pid}/maps").read():
            assert time.monotonic() - t0 < 60 and p.poll() is None
            time.sleep(0.001)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130 and err.strip() == "skipkern: interrupted", (cmd, err)
