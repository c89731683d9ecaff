"""A run owns its output folder (skipkern.runlock): a second run into the same folder gets one line naming
the folder and the owner; the lock goes away when its owner exits (normally, on an error, on Ctrl-C, or
killed), is taken over when stale, is re-entrant in one process, and a command that fails early leaves
no empty folder behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from skipkern.runlock import LOCK_NAME, FolderInUseError, lock_folder, read_owner
from tests.utils import sigint_default

HOLD = "import sys, time; from skipkern.runlock import lock_folder; lock_folder(sys.argv[1], 'test run').acquire(); " \
       "print('locked', flush=True); time.sleep(120)"


def _holder(folder):
    """A separate process that holds ``folder``'s lock until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_owner_is_refused_and_a_killed_owner_is_stale(tmp_path):
    folder = tmp_path / "run"
    p = _holder(folder)
    try:
        with pytest.raises(FolderInUseError) as e:
            lock_folder(folder, "training run").acquire()
        msg = str(e.value)
        assert f"output folder {folder} is in use by another skipkern test run (pid {p.pid} on host " in msg
        assert socket.gethostname() in msg and "\n" not in msg
    finally:
        p.kill()  # SIGKILL: no clean-up ran, the lock file stays behind with a dead pid
        p.wait()
    assert read_owner(folder)["pid"] == p.pid
    with lock_folder(folder, "training run"):  # stale: taken over
        assert read_owner(folder)["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_reentrant_release_and_empty_folder_cleanup(tmp_path):
    folder = tmp_path / "a" / "b"
    lock = lock_folder(folder, "spectrum")
    with lock:
        with lock_folder(folder, "spectrum"):  # the CLI holds it, then train() takes it again
            assert lock.held
        assert lock.held and (folder / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()  # created by the lock and left empty: removed
    with lock_folder(folder):
        (folder / "result.json").write_text("{}")
    assert (folder / "result.json").exists() and not (folder / LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with lock_folder(tmp_path / "c"):
            raise RuntimeError("the command failed")
    assert not (tmp_path / "c").exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x",
                                                        "what": "training run"}))
    with pytest.raises(FolderInUseError, match=f"on another machine .*host elsewhere.*delete {tmp_path / LOCK_NAME}"):
        lock_folder(tmp_path).acquire()


def test_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=f"cannot write to the output folder {blocker / 'sub'}"):
        lock_folder(blocker / "sub").acquire()


def test_outputs_refuse_an_earlier_result_unless_forced(tmp_path):
    from skipkern.cli.common import CLIError
    from skipkern.cli.outputs import hold_output

    with hold_output(tmp_path / "s", "spectrum", results=("summary.json",)) as out:
        (out / "summary.json").write_text("{}")
    with pytest.raises(CLIError, match="already holds a spectrum \\(summary.json\\); pass --force"):
        with hold_output(tmp_path / "s", "spectrum", results=("summary.json",)):
            pass
    assert not (tmp_path / "s" / LOCK_NAME).exists()  # refused: the lock is released too
    with hold_output(tmp_path / "s", "spectrum", results=("summary.json",), force=True):
        pass


TINY = ["--depth", "2", "--width", "4", "--n-train", "64", "--n-test", "16", "--batch-size", "64", "--no-progress",
        "--backend", "torch", "--threads", "1"]


def _wait_for(cond, what: str, timeout: float = 120.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.mark.slow
def test_two_real_train_processes_into_one_folder(tmp_path):
    """Run A trains (long budget); run B, started while A runs, gets one line naming the folder and A; A's
    metrics stay in order; Ctrl-C ends A and frees the folder (B's settings are then checked instead)."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONWARNINGS="ignore", SKIPKERN_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "skipkern", "train", *TINY, "--out", str(out)]
    a = subprocess.Popen(cmd + ["--epochs", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, preexec_fn=sigint_default)
    try:
        _wait_for(lambda: (out / "checkpoint.pt").exists() or a.poll() is not None, "run A's first checkpoint")
        assert a.poll() is None, a.communicate()
        # the same command again (two identical runs started at once): without the lock B would resume A's
        # checkpoint and both would write the folder
        b = subprocess.run(cmd + ["--epochs", "100000"], capture_output=True, text=True, env=env, timeout=240)
        assert a.poll() is None  # A was alive the whole time B ran
        lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
        assert b.returncode == 1 and len(lines) == 1, b.stderr
        assert lines[0].startswith(f"skipkern: error: output folder {out} is in use by another skipkern training "
                                   f"run (pid {a.pid} on host {socket.gethostname()}"), lines[0]
    finally:
        a.send_signal(signal.SIGINT)
        _, a_err = a.communicate(timeout=120)
    assert a.returncode == 130 and a_err.strip().splitlines()[-1] == "skipkern: interrupted", a_err
    assert not (out / LOCK_NAME).exists()
    epochs = [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 2, epochs  # one run's records, in order
    c = subprocess.run(cmd + ["--epochs", "100000", "--lr", "1e-3"], capture_output=True, text=True, env=env,
                       timeout=240)
    assert c.returncode == 1 and "other settings (lr: checkpoint 0.0005 vs this run 0.001)" in c.stderr, c.stderr
