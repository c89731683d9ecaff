"""``skipkern diagnose --model SPEC`` on a user's own nn.Module: a factory importable by the command (a
module written under tmp_path, on PYTHONPATH), a module file saved with torch.save, weights from
--state-dict, and the one-line errors. Numbers are checked against ``diagnose_module`` on the same
model and inputs, and on a net whose representation's rank is known."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

DIAGS = ("elimination", "overlap", "linear_dependence", "condition_numbers")

USERNETS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c, residual):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
            self.act = nn.ReLU()  # used twice, as in torchvision's BasicBlock
            self.residual = residual

        def forward(self, x):
            out = self.conv2(self.act(self.conv1(x)))
            return self.act(out + x if self.residual else out)


    class SmallConv(nn.Module):
        def __init__(self, channels=4, blocks=2, residual=False, classes=3, seed=0):
            super().__init__()
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
            self.blocks = nn.Sequential(*[Block(channels, residual) for _ in range(blocks)])
            self.head = nn.Linear(channels, classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))


    def resnet(**kw):
        return SmallConv(residual=True, **kw)


    def rank_one():
        """A 1x1 convolution with a rank-1 weight: its channel representation has rank 1."""
        conv = nn.Conv2d(3, 5, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -1.0, 2.0]))[:, :, None, None])
        return nn.Sequential(conv)


    def not_a_module():
        return [1, 2]


    class Functional(nn.Module):  # F.relu only: no activation module for the default selection
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(40, 8)

        def forward(self, x):
            return F.relu(self.fc(x))
''')


@pytest.fixture
def usernets(tmp_path, monkeypatch):
    """The module ``usernets`` written into tmp_path/src, importable here and by the command."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "usernets.py").write_text(USERNETS)
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delitem(sys.modules, "usernets", raising=False)
    import usernets as mod
    return mod


def _main(argv) -> int:
    from skipkern.cli import main
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _one_line_error(capsys, rc, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1 and len(err) == 1 and err[0].startswith("skipkern: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _api(model, x, **kw):
    from skipkern.diagnostics import diagnose_module
    return diagnose_module(model, x, **kw)


def _json(folder, name):
    return json.loads((folder / f"{name}.json").read_text())


def _as_floats(values):
    return [float(v) for v in values]  # "inf"/"nan" strings as written by save_json


@pytest.mark.slow
def test_factory_end_to_end_in_a_subprocess(tmp_path, usernets):
    """The factory is imported by the command from PYTHONPATH, run from another folder."""
    from skipkern.experiments.depth_conv import synthetic_images

    out, elsewhere = tmp_path / "out", tmp_path / "cwd"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run([sys.executable, "-m", "skipkern", "diagnose", "--model", "usernets:resnet", "--model-kwargs",
                        '{"blocks": 2}', "--data", "images", "--input-shape", "3,8,8", "--samples", "8",
                        "--out", str(out)], capture_output=True, text=True, timeout=240, env=env, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    for name in DIAGS:
        for ext in ("json", "csv", "png", "svg"):
            assert (out / f"{name}.{ext}").is_file(), (name, ext)
    assert not (out / "gradient_norms.json").exists()
    cond = _json(out, "condition_numbers")
    assert cond["layers"] == ["stem.1", "blocks.0.act", "blocks.0.act#2", "blocks.1.act", "blocks.1.act#2"]
    settings = json.loads((out / "diagnose_settings.json").read_text())
    assert settings["flatten"] == "channels" and settings["input_shape"] == [3, 8, 8] and settings["samples"] == 8
    # the same numbers as the Python API on the same net and the same offline images
    x, _ = synthetic_images(8, channels=3, size=8, seed=0)
    ref = _api(usernets.resnet(blocks=2), x)["condition_numbers"]
    assert _as_floats(cond["arrays"]["condition_number"]) == pytest.approx(list(ref["condition_number"]), rel=1e-4)
    assert cond["arrays"]["rank"] == list(ref["rank"])


@pytest.mark.slow
def test_saved_module_file_needs_trust_and_writes_beside_it(tmp_path, capsys, usernets):
    net = usernets.SmallConv(channels=3, blocks=1, seed=1)
    torch.save(net, tmp_path / "net.pt")
    base = ["diagnose", "--model", str(tmp_path / "net.pt"), "--random-input", "--input-shape", "3,6,6",
            "--samples", "10", "--seeds", "3,5", "--module-type", "Conv2d"]
    _one_line_error(capsys, _main(base), "--trust-model-file", "runs code", "--state-dict")
    assert not (tmp_path / "net_diagnose").exists()
    assert _main(base + ["--trust-model-file"]) == 0
    out = tmp_path / "net_diagnose"
    x = torch.randn((10, 3, 6, 6), generator=torch.Generator().manual_seed(3))
    ref = _api(net, x, modules=torch.nn.Conv2d)
    for name, key in (("condition_numbers", "condition_number"), ("linear_dependence", "participation_ratio"),
                      ("elimination", "dead_fraction")):
        d = _json(out, name)
        assert d["layers"] == ["stem.0", "blocks.0.conv1", "blocks.0.conv2"]
        assert _as_floats(d["arrays"][key]) == pytest.approx(list(ref[name][key]), rel=1e-5), name
    first = (out / "condition_numbers.json").read_text()
    capsys.readouterr()
    _one_line_error(capsys, _main(base + ["--trust-model-file", "--flatten", "pool"]), "already holds a diagnostics",
                    "--force")
    assert (out / "condition_numbers.json").read_text() == first
    assert _main(base + ["--trust-model-file", "--flatten", "pool", "--force"]) == 0
    assert json.loads((out / "diagnose_settings.json").read_text())["flatten"] == "pool"
    assert not list(tmp_path.rglob(".skipkern.lock"))


@pytest.mark.slow
def test_state_dict_weights_are_the_ones_diagnosed(tmp_path, capsys, usernets):
    trained = usernets.SmallConv(seed=5)  # other weights than the factory's default seed 0
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "w.pt")
    argv = ["diagnose", "--model", "usernets:SmallConv", "--state-dict", str(tmp_path / "w.pt"), "--random-input",
            "--input-shape", "3,5,5", "--samples", "12", "--modules", "stem.1,blocks.1.conv2", "--flatten", "features"]
    assert _main(argv) == 0
    out = tmp_path / "w_diagnose"  # beside the weights
    x = torch.randn((12, 3, 5, 5), generator=torch.Generator().manual_seed(0))
    want = _api(trained, x, modules=["stem.1", "blocks.1.conv2"], flatten="features")["linear_dependence"]
    fresh = _api(usernets.SmallConv(), x, modules=["stem.1", "blocks.1.conv2"], flatten="features")
    got = _as_floats(_json(out, "linear_dependence")["arrays"]["participation_ratio"])
    assert got == pytest.approx(list(want["participation_ratio"]), rel=1e-5)
    assert got != pytest.approx(list(fresh["linear_dependence"]["participation_ratio"]), rel=1e-3)
    torch.save(usernets.SmallConv(channels=5).state_dict(), tmp_path / "w5.pt")
    _one_line_error(capsys, _main(argv[:3] + ["--state-dict", str(tmp_path / "w5.pt")] + argv[5:] + ["--out",
                    str(tmp_path / "o5")]), "does not fit the model", "size mismatch")
    assert not (tmp_path / "o5").exists()


@pytest.mark.slow
def test_rank_one_conv_is_singular(tmp_path, usernets):
    out = tmp_path / "r1"
    assert _main(["diagnose", "--model", "usernets:rank_one", "--module-type", "Conv2d", "--random-input",
                  "--input-shape", "3,4,4", "--samples", "6", "--out", str(out)]) == 0
    cond = _json(out, "condition_numbers")
    assert cond["layers"] == ["0"] and cond["arrays"]["rank"] == [1]
    assert math.isinf(float(cond["arrays"]["condition_number"][0])) and cond["summary"]["first_singular_layer"] == 1


@pytest.mark.parametrize("argv, needles", [
    (["--model", "no_such_pkg.nets:make"], ["cannot import module 'no_such_pkg.nets'", "PYTHONPATH"]),
    (["--model", "usernets:nope"], ["has no attribute 'nope'"]),
    (["--model", "usernets:not_a_module"], ["gave an object of type list, not a torch.nn.Module"]),
    (["--model", "no_such_file.pt"], ["no such file, and not of the form package.module:factory"]),
    (["--model", "usernets:resnet", "--model-kwargs", "[1]"], ["--model-kwargs must be a JSON object"]),
    (["--model", "usernets:resnet", "--model-kwargs", '{"width": 3}'], ["unexpected keyword argument 'width'"]),
    (["--model", "usernets:resnet"], ["fails on inputs of shape [B, 40]", "expects [B, 3, H, W]", "stem.0 is a Conv2d",
                                      "--input-shape"]),
    (["--model", "usernets:resnet", "--random-input", "--input-shape", "5,8,8"], ["[B, 5, 8, 8]", "[B, 3, H, W]"]),
    (["--model", "usernets:Functional"], ["has no activation modules", "--modules", "--module-type"]),
    (["--model", "usernets:resnet", "--data", "images", "--input-shape", "3,8,8", "--modules", "stem,nope"],
     ["no submodule named ['nope']", "blocks.0.conv1"]),
    (["--model", "usernets:resnet", "--data", "images", "--input-shape", "3,8,8", "--module-type", "Conv3d"],
     ["is a ['Conv3d']", "Conv2d"]),
    (["--model", "usernets:resnet", "--random-input"], ["--random-input needs --input-shape"]),
    (["--model", "usernets:resnet", "--state-dict", "{tmp}/none.pt"], ["--state-dict", "does not exist"]),
    (["--model", "usernets:resnet", "--depth", "3"], ["--depth describes a fresh SkipMLP"]),
    (["--modules", "stem", "--flatten", "pool"], ["--modules, --flatten apply to --model SPEC only"]),
    (["--data", "images"], ["--data images applies to --model only"]),
])
def test_bad_model_specs_are_one_line(tmp_path, capsys, usernets, argv, needles):
    out = tmp_path / "o"
    rc = _main(["diagnose", "--samples", "4"] + [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(out)])
    _one_line_error(capsys, rc, *needles)
    assert not out.exists()  # refused before any folder was made


def test_state_dict_that_is_a_pickled_module_is_refused_without_unpickling(tmp_path, capsys, usernets):
    torch.save(usernets.SmallConv(), tmp_path / "whole.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    for f, needle in (("whole.pt", "holds objects other than tensors and plain containers"),
                      ("notes.txt", "found a text file")):
        line = _one_line_error(capsys, _main(["diagnose", "--model", "usernets:SmallConv", "--state-dict",
                                              str(tmp_path / f), "--out", str(tmp_path / "o")]), needle)
        assert "weights_only" not in line  # torch's advice to unpickle is not passed on


@pytest.mark.slow
def test_data_rows_reshaped_to_the_input_shape(tmp_path, capsys, usernets):
    """CIFAR rows (from --data-dir) become [3, 32, 32] images; MNIST-1D rows stay flat for a flat net."""
    from skipkern.data import load_dataset, write_cifar_folder
    from skipkern.nn import SkipMLP

    write_cifar_folder(tmp_path / "cifar", n_train=12, n_test=2)
    argv = ["diagnose", "--model", "usernets:resnet", "--data", "cifar10", "--data-dir", str(tmp_path / "cifar"),
            "--samples", "8", "--out", str(tmp_path / "c")]
    assert _main(argv) == 0
    x = load_dataset("cifar10", data_dir=tmp_path / "cifar", n_train=8, n_test=0).x_train.reshape(-1, 3, 32, 32)
    ref = _api(usernets.resnet(), x)["condition_numbers"]["condition_number"]
    assert _as_floats(_json(tmp_path / "c", "condition_numbers")["arrays"]["condition_number"]) == pytest.approx(
        list(ref), rel=1e-4)
    assert json.loads((tmp_path / "c" / "diagnose_settings.json").read_text())["input_shape"] == [3, 32, 32]
    _one_line_error(capsys, _main(argv[:-2] + ["--input-shape", "3,16,16", "--out", str(tmp_path / "c2")]),
                    "--input-shape 3,16,16 holds 768 values per sample, but --data cifar10 has 3072")
    kw = {"in_features": 40, "width": 6, "depth": 3, "out_features": 10, "seed": 0, "backend": "torch"}
    assert _main(["diagnose", "--model", "skipkern.nn:SkipMLP", "--model-kwargs", json.dumps(kw), "--samples", "50",
                  "--out", str(tmp_path / "m")]) == 0
    d = _json(tmp_path / "m", "linear_dependence")
    ref = _api(SkipMLP(**kw), load_dataset("mnist1d", n_train=50, n_test=0).x_train)["linear_dependence"]
    assert d["layers"] == ["layers.0", "layers.1", "layers.2"]  # SkipLinear layers with an activation
    assert _as_floats(d["arrays"]["participation_ratio"]) == pytest.approx(list(ref["participation_ratio"]), rel=1e-5)
