"""skipkern.data: MNIST-1D generation and caching, CIFAR folders written by the test itself (python-pickle
format), their error messages, and the teacher-student data of the simplified model."""
from __future__ import annotations

import io
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch

from skipkern.data import (DATASETS, Dataset, load_dataset, overlap_elimination_coords, teacher_output,
                           teacher_student, write_cifar_folder)


# ------------------------------------------------------------------------------------------ MNIST-1D
def test_mnist1d_shapes_sizes_and_determinism(tmp_path):
    d = load_dataset("mnist1d", data_dir=tmp_path, n_train=123, n_test=7, seed=3)
    assert isinstance(d, Dataset) and d.name == "mnist1d" and d.num_classes == 10
    assert d.x_train.shape == (123, 40) and d.x_test.shape == (7, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < 10
    assert len(set(d.y_train.tolist())) == 10  # all classes present
    again = load_dataset("mnist1d", data_dir=tmp_path, n_train=123, n_test=7, seed=3)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    other = load_dataset("mnist1d", data_dir=tmp_path, n_train=123, n_test=7, seed=4)
    assert not torch.equal(d.x_train, other.x_train)
    # train and test samples are distinct rows of one generated set
    assert not any(torch.equal(r, s) for r in d.x_test for s in d.x_train[:50])


def test_mnist1d_cache_and_global_rng_untouched(tmp_path):
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    d1 = load_dataset("mnist1d", data_dir=tmp_path, n_train=60, n_test=20, seed=0)
    assert np.array_equal(np.random.get_state()[1], before_np) and random.getstate() == before_py
    assert d1.meta["source"].startswith("generated, cached to")
    assert len(list(tmp_path.glob("mnist1d_*.npz"))) == 1
    d2 = load_dataset("mnist1d", data_dir=tmp_path, n_train=60, n_test=20, seed=0)
    assert d2.meta["source"].startswith("cache")
    assert torch.equal(d1.x_train, d2.x_train) and torch.equal(d1.y_train, d2.y_train)
    # the package generator itself, called directly, gives the same numbers
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView
    raw = make_dataset(ObjectView(dict(d1.meta["generator_args"])))
    np.testing.assert_array_equal(d1.x_train.numpy(), raw["x"][:60].astype(np.float32))
    np.testing.assert_array_equal(d1.y_test.numpy(), raw["y"][60:80])


def test_dataset_subset_to_describe(tmp_path):
    d = load_dataset("mnist1d", data_dir=tmp_path, n_train=50, n_test=10)
    s = d.subset(20, 5)
    assert s.n_train == 20 and s.n_test == 5 and torch.equal(s.x_train, d.x_train[:20])
    assert d.subset(n_test=3).n_train == 50
    assert d.to("cpu", torch.float64).x_train.dtype == torch.float64
    desc = s.describe()
    assert desc["n_train"] == 20 and desc["in_features"] == 40 and desc["name"] == "mnist1d"
    with pytest.raises(ValueError, match="n_train=51 exceeds"):
        d.subset(51)
    with pytest.raises(ValueError, match="y_train must be a 1-D tensor with 3"):
        Dataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), torch.zeros(1, 2),
                torch.zeros(1, dtype=torch.int64), 2, "x")


def test_load_dataset_bad_arguments(monkeypatch):
    assert DATASETS == ("mnist1d", "cifar10", "cifar100")
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("mnist2d")
    with pytest.raises(ValueError, match="n_train must be a non-negative int"):
        load_dataset("mnist1d", n_train=-1)
    monkeypatch.delenv("SKIPKERN_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="cifar-10-batches-py.*data_dir"):
        load_dataset("cifar10")


# --------------------------------------------------------------------------------------------- CIFAR
def _write_batch(path, data, labels, label_key):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key: list(labels), b"batch_label": b"test"}, f)


def _make_cifar10(root, sizes=(4, 3, 5, 2, 6), n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, n in enumerate(sizes, start=1):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        _write_batch(folder / f"data_batch_{i}", x, y, b"labels")
        xs.append(x)
        ys.append(y)
    xt = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    yt = rng.integers(0, 10, size=n_test)
    _write_batch(folder / "test_batch", xt, yt, b"labels")
    return folder, np.concatenate(xs), np.concatenate(ys), xt, yt


def test_cifar10_values_and_folder_or_parent(tmp_path):
    folder, x, y, xt, yt = _make_cifar10(tmp_path)
    for where in (tmp_path, folder):
        d = load_dataset("cifar10", data_dir=where)
        assert d.num_classes == 10 and d.x_train.shape == (20, 3072) and d.x_test.shape == (5, 3072)
        scaled = x.astype(np.float64) / 255.0
        mean = scaled.mean(0)
        np.testing.assert_allclose(d.x_train.numpy(), scaled - mean, atol=1e-6)
        np.testing.assert_allclose(d.x_test.numpy(), xt / 255.0 - mean, atol=1e-6)
        np.testing.assert_allclose(d.meta["train_mean"], mean, atol=1e-6)
        np.testing.assert_array_equal(d.y_train.numpy(), y)
        np.testing.assert_array_equal(d.y_test.numpy(), yt)


def test_cifar_random_subset_is_seeded(tmp_path):
    _make_cifar10(tmp_path)
    a = load_dataset("cifar10", data_dir=tmp_path, n_train=8, n_test=2, seed=1)
    b = load_dataset("cifar10", data_dir=tmp_path, n_train=8, n_test=2, seed=1)
    c = load_dataset("cifar10", data_dir=tmp_path, n_train=8, n_test=2, seed=2)
    assert a.n_train == 8 and a.n_test == 2 and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.y_train, c.y_train) or not torch.equal(a.x_train, c.x_train)
    assert abs(float(a.x_train.double().mean(0).abs().max())) < 1e-6  # mean of the subset used
    with pytest.raises(ValueError, match="n_train=21 exceeds the 20 samples"):
        load_dataset("cifar10", data_dir=tmp_path, n_train=21)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = rng.integers(0, 256, size=(12, 3072), dtype=np.uint8)
    fine, coarse = rng.integers(0, 100, size=12), rng.integers(0, 20, size=12)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": x, b"fine_labels": list(fine), b"coarse_labels": list(coarse)}, f)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": x[:4], b"fine_labels": list(fine[:4]), b"coarse_labels": list(coarse[:4])}, f)
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.num_classes == 100 and d.name == "cifar100"
    np.testing.assert_array_equal(d.y_train.numpy(), fine)
    # the writer helper produces folders the loader reads
    write_cifar_folder(tmp_path / "w", "cifar100", n_train=7, n_test=3)
    assert load_dataset("cifar100", data_dir=tmp_path / "w").n_train == 7


def test_cifar_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar100", data_dir=tmp_path)
    msg = str(e.value)
    assert "train" in msg and str(tmp_path) in msg and "unrelated.txt" in msg and "cifar-100-python" in msg
    folder, *_ = _make_cifar10(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected data_batch_3 in .*cifar-10-batches-py.*found \["):
        load_dataset("cifar10", data_dir=tmp_path / "c")


@pytest.mark.parametrize("bad, match", [
    (b"not a pickle at all", "not a CIFAR python-pickle batch"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"expected keys b'data' and b'labels'"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \[N, 3072\]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must list 2 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"integers in \[0, 10\)"),
])
def test_cifar_malformed_batch(tmp_path, bad, match):
    folder, *_ = _make_cifar10(tmp_path)
    with open(folder / "data_batch_2", "wb") as f:
        f.write(bad) if isinstance(bad, bytes) else pickle.dump(bad, f)
    with pytest.raises(ValueError, match=match) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_batch_2" in str(e.value)


class _RunsCode:
    """A pickle whose loading runs a command (what an untrusted data folder could hold)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("where", ["object", "label"])
def test_cifar_batch_cannot_run_code(tmp_path, where):
    folder, *_ = _make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = _RunsCode(marker)
    batch = ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, payload]} if where == "label" else payload)
    with open(folder / "data_batch_4", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(ValueError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()  # nothing in the file ran
    msg = str(e.value)
    assert "data_batch_4" in msg and "not a CIFAR python-pickle batch" in msg and "system" in msg, msg


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol(tmp_path, protocol):
    """The restricted reader accepts what CIFAR's own files and Python 3 writers produce: numpy arrays and
    dtypes (numpy.core/_core rebuilders), bytes (protocol 2 writes them through _codecs.encode), lists."""
    folder, x, y, *_ = _make_cifar10(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": x[:4], b"labels": [int(v) for v in y[:4]], b"batch_label": b"training batch 1",
                     b"filenames": [b"a.png"] * 4, b"extra": {"n": np.int64(4), "f": 1.5}}, f, protocol=protocol)
    d = load_dataset("cifar10", data_dir=tmp_path)
    np.testing.assert_array_equal(d.y_train.numpy(), y)
    # numpy 1's module path (the real CIFAR files were pickled with it) resolves too
    legacy = pickle.dumps(x[:4], protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    from skipkern.data.cifar import _BatchUnpickler
    np.testing.assert_array_equal(_BatchUnpickler(io.BytesIO(legacy), encoding="bytes").load(), x[:4])


# ------------------------------------------------------------------------------------ teacher-student
def test_teacher_student_matches_formula():
    x, y, p = teacher_student(300, 5, seed=1, activation="erf")
    assert x.shape == (300, 5) and y.shape == (300,) and x.dtype == torch.float32
    J, v = p["J"], p["v"]
    np.testing.assert_allclose((J @ J.T).numpy(), np.eye(2), atol=1e-12)  # default: orthonormal teacher
    assert torch.equal(v, torch.ones(2, dtype=torch.float64))
    x64 = x.double()
    expected = sum(float(v[i]) * torch.erf((x64 @ J[i]) / math.sqrt(2.0)) for i in range(2))
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)
    assert abs(float(x64.mean())) < 0.1 and abs(float(x64.std()) - 1.0) < 0.1
    x2, y2, _ = teacher_student(300, 5, seed=1, activation="erf")
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_teacher_student_relu_custom_teacher_noise():
    teacher = {"J": [[1.0, 0.0], [0.0, 2.0]], "v": [0.5, -1.0]}
    x, y, p = teacher_student(2000, 2, seed=0, activation="relu", teacher=teacher, dtype=torch.float64)
    torch.testing.assert_close(y, 0.5 * torch.relu(x[:, 0]) - torch.relu(2.0 * x[:, 1]))
    xn, yn, _ = teacher_student(2000, 2, seed=0, activation="relu", teacher=teacher, noise=0.3, dtype=torch.float64)
    assert torch.equal(x, xn)
    assert abs(float((yn - y).std()) - 0.3) < 0.03
    torch.testing.assert_close(teacher_output(x, p["J"], p["v"], "relu"), y)
    with pytest.raises(ValueError, match="activation must be one of"):
        teacher_student(10, 2, seed=0, activation="tanh")
    with pytest.raises(ValueError, match=r"teacher J must be \[k, input_dim=3\]"):
        teacher_student(10, 3, seed=0, teacher=teacher)


def test_overlap_elimination_coords():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    h, z = overlap_elimination_coords(J, torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert math.isclose(float(h), math.sqrt(2.0)) and math.isclose(float(z), 0.5)
    h, z = overlap_elimination_coords(torch.stack([J, J]), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(z, torch.tensor([1.0, -1.0], dtype=torch.float64))
