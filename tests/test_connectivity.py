"""The connectivity experiment: its nets, ensemble training and verdict rules on constructed inputs (a clear
effect, a null effect, an opposite one, a baseline that did not learn)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skipkern.experiments import connectivity
from skipkern.experiments.neighbour_stats import bootstrap_slope, newcombe_difference, paired_t
from skipkern.experiments.verdicts import INVALID, NOT_REPRODUCED, REPRODUCED, judge_interval
from skipkern.experiments.neighbour_predictions import prediction
from skipkern.landscape.ensembles import DeepSkipNet, ensemble_losses, relu_teacher, train_ensemble

WIDTHS = [8, 16, 32, 64]


def _constructed(slope_skip, slope_plain=-0.5, final_skip=1e-3, n=2, pairs=10, nets=20, seed=0):
    rng = np.random.default_rng(seed)
    net_rows, pair_rows = [], []
    for arch, slope, final in (("plain", slope_plain, 1e-3), ("skip", slope_skip, final_skip)):
        for m in WIDTHS:
            for s in range(nets):
                net_rows.append(dict(n=n, arch=arch, m=m, seed=s, init_train_loss=1.5,
                                     final_train_loss=final * m ** -1.0 * (1 + 0.3 * rng.random())))
            for k in range(pairs):
                b = (2.0 if arch == "plain" else 1.0) * m ** slope * 10 ** (0.05 * rng.standard_normal())
                pair_rows.append(dict(n=n, arch=arch, m=m, pair=k, method="bezier", barrier=b))
    return net_rows, pair_rows


def _analyse(nets, pairs, **cfg):
    c = dict(connectivity.CONFIGS["quick"], input_dims=[2], widths=WIDTHS, methods=["bezier"], n_boot=400, **cfg)
    return connectivity._analyse(c, [2], WIDTHS, nets, pairs)


def _verdicts(outcomes):
    return {o.key.split(" ")[0]: o.verdict for o in outcomes}


def test_rules_on_a_clear_effect_a_null_effect_and_a_failed_baseline():
    v = _verdicts(_analyse(*_constructed(-0.5))[1])
    assert v["C1"] == REPRODUCED and v["C2"] == REPRODUCED and v["C3"] == REPRODUCED
    v = _verdicts(_analyse(*_constructed(0.0, slope_plain=0.0))[1])  # flat barriers: no decrease at all
    assert v["C1"] == NOT_REPRODUCED
    v = _verdicts(_analyse(*_constructed(-0.5, final_skip=40.0))[1])  # the skip nets did not learn
    assert v["C1"] == INVALID and v["C2"] == INVALID and v["C3"] == INVALID


def test_opposite_effect_is_not_reproduced():
    nets, pairs = _constructed(-0.5)
    for p in pairs:  # the skip raises the barrier fourfold: C2 must come out clearly the other way
        if p["arch"] == "skip":
            p["barrier"] *= 8.0
    assert _verdicts(_analyse(nets, pairs)[1])["C2"] == NOT_REPRODUCED


def test_interval_helpers_on_known_cases():
    exact = {m: [m ** -0.7] * 5 for m in WIDTHS}
    s = bootstrap_slope(exact, n_boot=50)
    assert s["slope"] == pytest.approx(-0.7) and s["low"] == pytest.approx(-0.7) and s["high"] == pytest.approx(-0.7)
    assert bootstrap_slope({8: [0.0, -1.0], 16: [1.0]})["n_dropped"] == 2
    d, lo, hi = newcombe_difference(5, 5, 0, 5)
    assert d == 1.0 and lo == pytest.approx(0.3855, abs=1e-3) and hi == 1.0  # Wilson 5/5: [0.5655, 1]
    assert paired_t([0.5, 0.5, 0.5])[1:3] == (0.5, 0.5)
    p = prediction("C1")
    assert judge_interval(p, -0.3, -0.5, -0.1, (5,)).verdict == REPRODUCED
    assert judge_interval(p, 0.0, -0.05, 0.05, (5,)).verdict == NOT_REPRODUCED
    assert judge_interval(p, -0.3, -0.5, -0.1, (4,)).verdict == INVALID


def test_deep_skip_net_and_ensemble_training():
    net = DeepSkipNet(3, 8, 2, skip_width=5, seed=1)
    x = torch.randn(7, 3)
    h = torch.relu(net.deep[1](torch.relu(net.deep[0](x))))
    ref = net.deep_out(h) + net.skip_out(torch.relu(net.skip_in(x)))
    assert torch.allclose(net(x), ref[:, 0])
    assert sum(p.numel() for p in DeepSkipNet(3, 8, 2, 0).parameters()) == 3 * 8 + 8 + 8 * 8 + 8 + 8 + 1
    data = relu_teacher(64, 3, 4, seed=0, n_test=16)
    assert data["train"][1].mean().abs() < 1e-5 and data["train"][1].std().item() == pytest.approx(1.0, abs=1e-5)
    nets = [DeepSkipNet(3, 8, 2, 4, seed=s) for s in range(3)]
    alone = DeepSkipNet(3, 8, 2, 4, seed=2)
    res = train_ensemble(nets, F.mse_loss, *data["train"], steps=5, lr=1e-2, lr_decay="none")
    opt = torch.optim.Adam(alone.parameters(), lr=1e-2)  # the same model trained by itself
    for _ in range(5):
        loss = F.mse_loss(alone(data["train"][0]), data["train"][1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, q in zip(nets[2].parameters(), alone.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert ensemble_losses(nets, F.mse_loss, *data["train"]) == pytest.approx(res["final_loss"], rel=1e-5)
    assert math.isfinite(res["final_loss"][0])


@pytest.mark.slow
def test_tiny_recipe_writes_its_files(tmp_path):
    from skipkern.experiments.common import Context
    ctx = Context(out=tmp_path, mode="tiny", progress=False)
    res = connectivity.run(ctx, connectivity.CONFIGS["tiny"])
    out = tmp_path / "connectivity"
    for f in ("results.json", "connectivity.csv", "connectivity_nets.csv", "connectivity_barrier_vs_width.png",
              "connectivity_final_losses.png", "connectivity_paths.png"):
        assert (out / f).is_file(), f
    assert res["findings"][0]["result"] == "connectivity" and res["findings"][0]["outcomes"]
    again = connectivity.run(ctx, connectivity.CONFIGS["tiny"])  # the settings are cached
    assert again["summary"]["per_n"] == res["summary"]["per_n"]
