"""skipkern.diagnostics on constructed networks with known answers: a dead unit (zero weights, negative
bias), two identical rows, a row that is a combination of two others, a rank-deficient layer; gradient
norms against plain autograd; generic modules through hooks and hidden_fn; saving and plotting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from skipkern.diagnostics import (LayerDiagnostics, capture_layers, condition_numbers, diagnose, elimination,
                                  gradient_norms, linear_dependence, overlap)
from skipkern.nn import SkipMLP

B, D_IN, WIDTH = 200, 6, 5


def _net(arch="plain", depth=3, dtype=torch.float64, seed=0):
    """A SkipMLP whose units are all active on any standard-normal batch: small weights, bias +10."""
    m = SkipMLP(D_IN, WIDTH, depth, 3, arch=arch, seed=seed, backend="torch", dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in m.layers:
            layer.weight.copy_(0.3 * torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
            layer.bias.fill_(10.0)
    return m


def _x(dtype=torch.float64, n=B):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("arch", ["plain", "residual"])
def test_dead_unit_zero_weights_negative_bias(arch):
    m = _net(arch)
    with torch.no_grad():  # unit 2 of hidden layer 2 (a square layer, so residual nets skip into it)
        m.layers[1].weight[2].zero_()
        m.layers[1].bias[2] = -1.0
    r = elimination(m, _x())
    np.testing.assert_allclose(r["dead_fraction"], [0.0, 0.2, 0.0])
    np.testing.assert_array_equal(r["dead_units"], [0, 1, 0])
    np.testing.assert_allclose(r["rare_fraction"], [0.0, 0.2, 0.0])
    np.testing.assert_allclose(r["small_weight_fraction"], [0.0, 0.2, 0.0])
    norms = [float(torch.linalg.vector_norm(m.layers[j].weight, dim=1).mean()) for j in range(3)]
    np.testing.assert_allclose(r["weight_norm_mean"], norms, rtol=1e-12)
    assert r.summary["dead_units"] == 1 and r.summary["layers_with_dead_units"] == 1
    hidden = capture_layers(m, _x())[1].hidden[:, 2]
    if arch == "residual":  # the skip keeps the representation alive; elimination looks at act(z)
        assert float(hidden.abs().max()) > 0.1
    else:
        assert float(hidden.abs().max()) == 0.0
    # an activity threshold above every activation makes every unit "dead"
    assert np.all(elimination(m, _x(), threshold=1e6)["dead_fraction"] == 1.0)


def test_identical_rows_overlap():
    m = _net("plain")
    with torch.no_grad():
        m.layers[1].weight[3] = m.layers[1].weight[0]
        m.layers[1].bias[3] = m.layers[1].bias[0]
    r = overlap(m, _x())
    assert r["weight_max_cos"][1] == pytest.approx(1.0, abs=1e-12)
    assert (r["weight_closest_i"][1], r["weight_closest_j"][1]) == (0, 3)
    assert (r["hidden_closest_i"][1], r["hidden_closest_j"][1]) == (0, 3)
    assert r["hidden_max_cos"][1] == pytest.approx(1.0, abs=1e-12)
    assert r["weight_frac_near1"][1] == pytest.approx(0.1)  # 1 of the 10 pairs
    assert r["weight_frac_near1"][0] == 0.0 and r["weight_max_cos"][0] < 0.999
    # mean |c| against a direct computation
    w = m.layers[0].weight.detach().numpy()
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = (u @ u.T)[np.triu_indices(WIDTH, 1)]
    assert r["weight_mean_abs_cos"][0] == pytest.approx(np.abs(c).mean(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_combination_lowers_rank_by_one(dtype):
    m = _net("plain", dtype=dtype)
    with torch.no_grad():  # unit 4 = 0.5 unit 0 + 2 unit 1 (all units active, so act is linear in z)
        w, b = m.layers[0].weight, m.layers[0].bias
        w[4] = 0.5 * w[0] + 2.0 * w[1]
        b[4] = 0.5 * b[0] + 2.0 * b[1]
    r = linear_dependence(m, _x(dtype))
    # every unit is in its linear regime, so the lost direction stays lost in the layers above
    np.testing.assert_array_equal(r["rank"], [4, 4, 4])
    np.testing.assert_array_equal(r["rank_deficit"], [1, 1, 1])
    h = capture_layers(m, _x(dtype))[0].hidden.double().numpy()
    lam = np.linalg.eigvalsh(np.cov(h, rowvar=False))
    assert r["participation_ratio"][0] == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(), rel=1e-5)
    assert 1.0 <= r["participation_ratio"][1] <= WIDTH
    assert list(linear_dependence(_net("plain", dtype=dtype), _x(dtype))["rank"]) == [5, 5, 5]


def test_skip_restores_the_direction_a_dependent_unit_removes():
    m = _net("residual", depth=2)
    with torch.no_grad():  # dependence inside hidden layer 2, which receives an identity skip
        w, b = m.layers[1].weight, m.layers[1].bias
        w[4] = 0.5 * w[0] + 2.0 * w[1]
        b[4] = 0.5 * b[0] + 2.0 * b[1]
    assert list(linear_dependence(m, _x(), on="act")["rank"]) == [5, 4]
    assert list(linear_dependence(m, _x(), on="hidden")["rank"]) == [5, 5]


def test_rank_deficient_layer_has_infinite_condition_number():
    m = _net("plain")
    with torch.no_grad():
        m.layers[2].weight[1] = m.layers[2].weight[4]
        m.layers[2].bias[1] = m.layers[2].bias[4]
    r = condition_numbers(m, _x())
    assert list(r["singular"]) == [False, False, True]
    assert math.isinf(r["condition_number"][2]) and r["rank"][2] == 4
    hs = capture_layers(m, _x())
    for j in (0, 1):  # full-rank layers: kappa as numpy computes it in float64
        assert r["condition_number"][j] == pytest.approx(np.linalg.cond(hs[j].hidden.numpy()), rel=1e-8)
    assert r.summary["singular_layers"] == 1 and r.summary["first_singular_layer"] == 3
    # a dead (all-zero) layer is singular too
    with torch.no_grad():
        m.layers[0].bias.fill_(-1e3)
    assert math.isinf(condition_numbers(m, _x())["condition_number"][0])


@pytest.mark.parametrize("arch", ["plain", "residual"])
def test_gradient_norms_match_autograd(arch):
    m = SkipMLP(D_IN, WIDTH, 3, 3, arch=arch, seed=1, backend="torch", dtype=torch.float64)
    x, y = _x(), torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(0))
    r = gradient_norms(m, None, x, y)
    assert all(p.grad is None for p in m.parameters())  # .grad untouched
    torch.nn.functional.cross_entropy(m(x), y).backward()
    for j, layer in enumerate(m.layers):
        assert r["weight_grad_norm"][j] == pytest.approx(float(layer.weight.grad.norm()), rel=1e-10)
        assert r["bias_grad_norm"][j] == pytest.approx(float(layer.bias.grad.norm()), rel=1e-10)
    assert list(r.layers) == ["hidden_1", "hidden_2", "hidden_3", "output"]
    mse = gradient_norms(m, lambda out, t: (out ** 2).mean(), x, y)
    assert mse["weight_grad_norm"][0] != pytest.approx(r["weight_grad_norm"][0])


def test_generic_module_hooks_and_hidden_fn():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        seq[0].weight[1].zero_()
        seq[0].bias[1] = -1.0
    layers = capture_layers(seq, _x())
    assert [L.name for L in layers] == ["1", "3"] and layers[0].weight.shape == (WIDTH, D_IN)
    r = elimination(seq, _x())
    assert r["dead_units"][0] == 1 and r["weight_norm_mean"][1] == pytest.approx(
        float(seq[2].weight.norm(dim=1).mean()))

    def hidden_fn(model, x):
        h1 = model[1](model[0](x))
        return [h1, model[3](model[2](h1))]

    r2 = elimination(seq, _x(), hidden_fn=hidden_fn)
    np.testing.assert_allclose(r2["dead_fraction"], r["dead_fraction"])
    np.testing.assert_allclose(r2["weight_norm_mean"], r["weight_norm_mean"])

    from skipkern.nn import SkipLinear
    sk = nn.Sequential(SkipLinear(D_IN, WIDTH, skip="none", backend="torch", seed=0),
                       SkipLinear(WIDTH, WIDTH, backend="torch", seed=1),
                       SkipLinear(WIDTH, 3, skip="none", activation="identity", backend="torch", seed=2)).double()
    with torch.no_grad():
        sk[1].weight[0].zero_()
        sk[1].bias[0] = -1.0
    layers = capture_layers(sk, _x())
    assert [L.name for L in layers] == ["0", "1"]  # the identity-activation output layer is not hidden
    torch.testing.assert_close(layers[1].hidden, sk[1](sk[0](_x())).detach())
    assert elimination(sk, _x())["dead_units"].tolist() == [0, 1]  # measured before the skip

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(D_IN, 3)

        def forward(self, x):
            return torch.relu(self.a(x))

    with pytest.raises(ValueError, match="hidden_fn"):
        elimination(Functional().double(), _x())


def test_diagnose_all_modes_and_batchnorm_untouched():
    m = SkipMLP(D_IN, WIDTH, 3, 3, arch="residual", seed=0, backend="torch", batchnorm_layers=[1])
    x, y = _x(torch.float32), torch.randint(0, 3, (B,))
    m.train()
    stats = m.norms["1"].running_mean.clone()
    out = diagnose(m, x, y)
    assert set(out) == {"elimination", "overlap", "linear_dependence", "condition_numbers", "gradient_norms"}
    assert m.training and all(mod.training for mod in m.modules())
    assert torch.equal(m.norms["1"].running_mean, stats)
    assert "gradient_norms" not in diagnose(m, x)
    for res in out.values():
        assert isinstance(res, LayerDiagnostics)
        assert all(len(v) == len(res.layers) for v in res.arrays.values())


def test_result_save_load_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    r = LayerDiagnostics("condition_numbers", ["hidden_1", "hidden_2"],
                         {"condition_number": [3.0, math.inf], "rank": [5, 4]}, {"singular_layers": 1})
    r.save_json(tmp_path / "c.json")
    text = (tmp_path / "c.json").read_text()
    assert "Infinity" not in text and '"inf"' in text
    back = LayerDiagnostics.load_json(tmp_path / "c.json")
    assert math.isinf(back["condition_number"][1]) and back["rank"][0] == 5 and back.summary == r.summary
    r.save_csv(tmp_path / "c.csv")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "layer_index,layer,condition_number,rank" and lines[2] == "2,hidden_2,inf,4"
    ax = r.plot()
    assert ax.get_xlabel() == "hidden layer" and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        LayerDiagnostics("x", ["a", "b"], {"v": [1.0]})
