"""The depth experiment: its conv nets and data, per-layer extraction from run records, and the verdict rules
on constructed nets (a clear effect, a null effect, diverged runs)."""
import math

import numpy as np
import pytest
import torch

from skipkern.experiments import depth
from skipkern.experiments.depth_conv import ConvNet, synthetic_images
from skipkern.experiments.verdicts import INVALID, NOT_REPRODUCED, REPRODUCED


def test_conv_nets_and_synthetic_images():
    x, y = synthetic_images(40, classes=4, size=8, seed=3)
    assert x.shape == (40, 3, 8, 8) and torch.bincount(y).tolist() == [10, 10, 10, 10]
    assert torch.equal(synthetic_images(40, classes=4, size=8, seed=3)[0], x)
    for residual in (False, True):
        net = ConvNet(3, 6, 3, 4, residual=residual, batchnorm=False, seed=0)
        assert net(x).shape == (40, 4) and net.block_names() == ["blocks.0", "blocks.1", "blocks.2"]
    res = ConvNet(3, 6, 1, 4, residual=True, batchnorm=False, seed=0)
    with torch.no_grad():
        for p in res.blocks.parameters():
            p.zero_()
    h = torch.relu(torch.randn(2, 6, 5, 5))
    assert torch.equal(res.blocks(h), h)  # a zeroed residual block is the identity on non-negative input


def _record(seed, log10_init, log10_end):
    def diag(v):
        v = np.asarray(v, dtype=float)
        return {"condition_numbers": {"arrays": {"log10_condition": v.tolist(), "rank": [3] * v.size,
                                                 "singular": np.isinf(v).tolist()}}}
    return {"identity": {"seed": seed}, "history": [{"epoch": 0, "train_acc": 0.1, "diagnostics": diag(log10_init)},
                                                    {"epoch": 5, "train_acc": 0.8, "train_loss": 0.5,
                                                     "diagnostics": diag(log10_end)}]}


def test_layers_are_read_at_init_and_end_with_singular_layers_capped():
    rec = _record(0, [1.0, 2.0, math.inf, math.inf], [1.0, 9.5, 3.0, math.inf])
    row = depth._row("glorot", "plain", 4, rec, cap=8.0)
    assert row["first_singular_init"] == 3 and row["first_singular_trained"] == 4
    assert row["_trained"].tolist() == [1.0, 8.0, 3.0, 8.0] and row["log10_cond_last_trained"] == 8.0
    assert row["final_train_acc"] == 0.8 and row["singular_layers_init"] == 2


def _rows(plain_end, residual_end, n=3):
    rows = []
    for a, end in (("plain", plain_end), ("residual", residual_end)):
        for s in range(n):
            rows.append(depth._row("glorot", a, 8, _record(s, [1.0] * 8, [v + 0.01 * s for v in end]), cap=8.0))
    return rows


def test_rules_on_constructed_nets():
    singular = [2.0, 3.0, 5.0, 7.0, math.inf, math.inf, math.inf, math.inf]
    falling = [6.0, 5.5, 4.0, 3.5, 3.0, 2.5, 2.0, 2.0]
    v = {o.key: o.verdict for o in depth._outcomes(_rows(singular, falling), 8)}
    assert v == {"D1": REPRODUCED, "D2": REPRODUCED, "D3": REPRODUCED}
    flat = [3.0] * 8
    v = {o.key: o.verdict for o in depth._outcomes(_rows(flat, flat), 8)}
    # no net singular on either side: 3 nets each cannot exclude a difference of 0.5 in the fraction
    assert v["D1"] == NOT_REPRODUCED and v["D2"] == "inconclusive" and v["D3"] == NOT_REPRODUCED
    assert {o.key: o.verdict for o in depth._outcomes(_rows(flat, flat, n=10), 8)}["D2"] == NOT_REPRODUCED
    nan = [math.nan] * 8  # diverged residual nets: no finite representation, too few nets to judge
    v = {o.key: o.verdict for o in depth._outcomes(_rows(singular, nan), 8)}
    assert v["D1"] == INVALID and v["D3"] == INVALID


@pytest.mark.slow
def test_tiny_recipe_writes_its_files(tmp_path):
    from skipkern.experiments.common import Context
    from skipkern.experiments.registry import get_recipe
    ctx = Context(out=tmp_path, mode="tiny", progress=False)
    res = get_recipe("depth").run(ctx)
    out = tmp_path / "depth"
    for f in ("results.json", "depth.csv", "depth_layers.csv", "depth_condition_glorot.png", "depth_first_singular.png",
              "depth_conv.png"):
        assert (out / f).is_file(), f
    assert {f["family"] for f in res["findings"]} == {"glorot", "scaled"}
    assert len(res["conv"]["rows"]) == 4 and all(len(r["init"]["log10_condition"]) == r["blocks"]
                                                 for r in res["conv"]["rows"])


def test_singular_layers_are_attributed_to_dead_units():
    rec = _record(0, [1.0, math.inf], [1.0, math.inf])
    for h in rec["history"]:  # layer 2: width 4, rank 3, one dead unit -> its deficit is the dead unit
        h["diagnostics"]["condition_numbers"]["arrays"].update(width=[4, 4], rank=[4, 3])
        h["diagnostics"]["elimination"] = {"arrays": {"dead_units": [0, 1]}}
    assert depth._row("glorot", "plain", 2, rec, cap=8.0)["singular_by_dead_units_trained"] == 1
    rec["history"][-1]["diagnostics"]["elimination"]["arrays"]["dead_units"] = [0, 0]
    assert depth._row("glorot", "plain", 2, rec, cap=8.0)["singular_by_dead_units_trained"] == 0


@pytest.mark.slow
def test_conv_study_reads_cifar_from_the_data_dir(tmp_path):
    from skipkern.data import write_cifar_folder
    from skipkern.experiments.common import Context
    from skipkern.experiments.depth_conv import conv_study
    write_cifar_folder(tmp_path, "cifar10", n_train=50, n_test=20)
    ctx = Context(out=tmp_path / "out", mode="tiny", data="cifar10", data_dir=str(tmp_path), progress=False)
    cfg = dict(depth.configs({"tiny": {}, "quick": {}, "full": {}})["tiny"], conv_blocks=[1], conv_n_train=50,
               conv_eval_batch=4, conv_steps=1)
    res = conv_study(ctx, cfg)
    assert res["data"] == "cifar10" and res["eval_rows"] == 4 * 32 * 32
    assert [len(r["trained"]["log10_condition"]) for r in res["rows"]] == [1, 1]
