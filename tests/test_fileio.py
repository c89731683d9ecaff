"""Durable writes on a full disk: a checkpoint write that runs out of space says "no space left on device
while writing <path>" (not torch's 'unexpected pos'), removes its partial .tmp, leaves the previous
checkpoint intact, and a rerun (or a stale .tmp of a crashed run) is not blocked. The disk is simulated
by a file object that raises ENOSPC after a byte budget, through skipkern.fileio's ``open``."""
from __future__ import annotations

import errno

import pytest
import torch

import skipkern.fileio as fileio
from skipkern.data.base import Dataset
from skipkern.fileio import NoSpaceError, atomic_write, torch_save_atomic
from skipkern.nn import SkipMLP
from skipkern.train import TrainConfig, load_checkpoint, train


class _FullDisk:
    """A writable file that accepts ``budget`` bytes, then raises ENOSPC (after writing what fits)."""

    def __init__(self, f, budget: int):
        self.f, self.left = f, budget

    def write(self, b):
        if len(b) > self.left:
            self.f.write(b[:self.left])
            self.left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _full_disk(monkeypatch, budget: int) -> None:
    real_open = open
    monkeypatch.setattr(fileio, "open", lambda path, mode="r", **kw: _FullDisk(real_open(path, mode, **kw), budget),
                        raising=False)


def _data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    return Dataset(x[:30], y[:30], x[30:], y[30:], num_classes=3, name="toy")


def _run(tmp_path, epochs: int):
    cfg = TrainConfig(epochs=epochs, batch_size=10, seed=0, device="cpu", progress=False)
    return train(SkipMLP(6, 8, 2, 3, seed=0, backend="torch"), _data(), cfg, out_dir=tmp_path)


def test_full_disk_during_a_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, 1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    _full_disk(monkeypatch, budget=3000)  # torch.save's writer swallows the OSError: the path torch users see
    with pytest.raises(NoSpaceError) as e:
        _run(tmp_path, 2)
    assert str(e.value).startswith(f"no space left on device while writing {tmp_path / 'checkpoint.pt'}")
    assert "unexpected pos" not in str(e.value) and e.value.errno == errno.ENOSPC
    assert not list(tmp_path.glob("*.tmp"))  # the partial file is gone
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # the last good checkpoint is intact
    monkeypatch.undo()  # space freed: the rerun resumes from epoch 1 and finishes
    assert _run(tmp_path, 2).history[-1]["epoch"] == 2
    assert load_checkpoint(tmp_path)[1]["epoch"] == 2


def test_a_stale_tmp_does_not_block_a_rerun(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"\0" * 100_000)  # left by a run killed mid-write
    (tmp_path / "metrics.csv.tmp").write_text("partial")
    assert _run(tmp_path, 1).history[-1]["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp")) and load_checkpoint(tmp_path)[1]["epoch"] == 1


def test_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    from skipkern.cli import main
    _full_disk(monkeypatch, budget=2000)
    rc = main(["train", "--depth", "2", "--width", "4", "--epochs", "1", "--n-train", "20", "--n-test", "10",
               "--batch-size", "10", "--backend", "torch", "--no-progress", "--data-dir", str(tmp_path / "cache"),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"skipkern: error: no space left on device while writing {tmp_path / 'run'}"), err
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_publish_order_fsync_then_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: calls.append("fsync"))
    real_replace = fileio.os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    torch_save_atomic({"w": torch.ones(3)}, tmp_path / "c.pt")
    assert calls == ["fsync", "replace", "fsync"]  # the file, the rename, the folder
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(3))


def test_text_writes_and_other_errors(tmp_path, monkeypatch):
    atomic_write(tmp_path / "a.txt", lambda f: f.write("hello"))
    assert (tmp_path / "a.txt").read_text() == "hello"
    _full_disk(monkeypatch, budget=2)
    with pytest.raises(NoSpaceError, match="no space left on device while writing .*a.txt"):
        atomic_write(tmp_path / "a.txt", lambda f: f.write("hello again"))
    assert (tmp_path / "a.txt").read_text() == "hello" and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()

    def boom(f):
        f.write("x")
        raise KeyError("not a disk problem")
    with pytest.raises(KeyError):  # other errors pass through unchanged, the partial file still goes
        atomic_write(tmp_path / "b.txt", boom)
    assert not (tmp_path / "b.txt").exists() and not list(tmp_path.glob("*.tmp"))
