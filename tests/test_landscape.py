"""skipkern.landscape: paths between networks on problems whose barriers are known exactly."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skipkern.landscape import BezierPath, LinearPath, PolyChain, barrier, connect, connect_many

X0, Y0 = torch.zeros(1, 1), torch.zeros(1)  # dummy data for the parameter-only "models" below


class Point(nn.Module):
    """A 'network' that is just a point w in R^d; its output is w (the loss is a function of w)."""

    def __init__(self, *w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return self.w


def well(w, _y):
    """(|w|^2 - 1)^2: a double well in 1-D (minima at -1 and +1, barrier 1 at 0); a ring in 2-D."""
    return ((w ** 2).sum() - 1.0) ** 2


@pytest.mark.parametrize("method", ["linear", "bezier", "autoneb"])
def test_double_well_barrier_is_one(method):
    # in 1-D every path from -1 to +1 crosses w = 0, where the loss is 1: the barrier is exactly 1
    r = connect(Point(-1.0), Point(1.0), well, (X0, Y0), method=method, steps=60, lr=0.05,
                neb=dict(cycles=2, steps=30))
    assert r.end_losses == (0.0, 0.0)
    assert r.barrier == pytest.approx(1.0, abs=1e-8)
    assert r.excess_barrier == pytest.approx(1.0, abs=1e-8)


def test_refinement_finds_the_top_between_grid_points():
    # a grid of 4 points (t = 0, 1/3, 2/3, 1) misses w = 0; golden-section refinement finds it
    r0 = connect(Point(-1.0), Point(1.0), well, (X0, Y0), num_points=4, refine=0)
    r = connect(Point(-1.0), Point(1.0), well, (X0, Y0), num_points=4, refine=40)
    assert r0.barrier == pytest.approx((1 / 9 - 1) ** 2)
    assert r.barrier == pytest.approx(1.0, abs=1e-9) and r.barrier_t == pytest.approx(0.5, abs=1e-4)


def test_curves_go_around_the_ring_the_line_cannot():
    # ring (|w|^2 - 1)^2 with ends at angles 0 and 120 degrees: the chord's midpoint has |w| = 1/2,
    # so the straight line has barrier (1/4 - 1)^2 = 0.5625; a curve along the ring has ~0
    a, b = Point(1.0, 0.0), Point(math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3))
    lin = connect(a, b, well, (X0, Y0), method="linear")
    bez = connect(a, b, well, (X0, Y0), method="bezier", steps=300, lr=0.05)
    neb = connect(a, b, well, (X0, Y0), method="autoneb", neb=dict(cycles=4, steps=60, lr=0.02))
    assert lin.barrier == pytest.approx(0.5625, abs=1e-9)
    assert bez.barrier < 0.02 and neb.barrier < 0.02
    assert neb.path.nodes.shape[1] > 5  # pivots were inserted


def _least_squares(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)  # 5 equations, 12 unknowns
    y = torch.randn(5, 1, generator=g, dtype=torch.float64)
    w0 = torch.linalg.lstsq(x, y).solution  # min-norm solution; add a null-space direction for another
    null = torch.linalg.svd(x).Vh[-1:].T
    models = []
    for w in (w0, w0 + 3.0 * null):
        m = nn.Linear(12, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            m.weight.copy_(w.T)
        models.append(m)
    return models, x, y


@pytest.mark.parametrize("method,optimizer,tol", [("linear", "adam", 1e-12), ("bezier", "sgd", 1e-12),
                                                  ("bezier", "adam", 1e-3), ("autoneb", "adam", 1e-3)])
def test_convex_problem_has_zero_barrier(method, optimizer, tol):
    # two minimisers of an underdetermined least-squares problem: every point between them is one too.
    # Adam normalises gradients that are zero up to rounding, so its curves wander a little off the
    # valley floor (hence its looser tolerance); SGD stays on it
    (a, b), x, y = _least_squares()
    r = connect(a, b, F.mse_loss, (x, y), method=method, steps=50, lr=1e-2, optimizer=optimizer,
                neb=dict(cycles=2, steps=20, lr=1e-3))
    assert max(r.end_losses) < 1e-20
    assert abs(r.barrier) < tol and abs(r.excess_barrier) < tol


def test_convex_loss_with_unequal_ends_peaks_at_an_end():
    # on a convex loss the maximum along a line is at an end: barrier = |L_a - L_b| / 2, excess <= 0
    (a, _), x, y = _least_squares()
    b = nn.Linear(12, 1, bias=False, dtype=torch.float64)
    r = connect(a, b, F.mse_loss, (x, y))
    assert r.barrier == pytest.approx(abs(r.end_losses[0] - r.end_losses[1]) / 2, rel=1e-12)
    assert r.excess_barrier <= 1e-12


def _mlp(seed, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 16), nn.ReLU()] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Linear(16, 2)]
    return nn.Sequential(*layers)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_path_from_a_net_to_itself_is_flat():
    net = _mlp(0)
    r = connect(net, net, F.cross_entropy, {"train": _data(), "test": _data(seed=1)}, num_points=11)
    assert torch.unique(torch.as_tensor(r.train_loss)).numel() == 1
    assert torch.unique(torch.as_tensor(r.test_loss)).numel() == 1
    assert r.barrier == 0.0 and r.test_barrier == 0.0


def test_batched_pairs_match_single_pairs_and_end_points():
    data = {"train": _data(), "test": _data(seed=1)}
    nets = [_mlp(s) for s in range(4)]
    many = connect_many(nets[:2], nets[2:], F.cross_entropy, data, num_points=7)
    for k in range(2):
        one = connect(nets[k], nets[2 + k], F.cross_entropy, data, num_points=7)
        assert torch.allclose(torch.as_tensor(many[k].train_loss), torch.as_tensor(one.train_loss), rtol=1e-5)
        assert many[k].barrier == pytest.approx(one.barrier, rel=1e-4, abs=1e-6)
    x, y = data["train"]
    assert many[0].train_loss[0] == pytest.approx(F.cross_entropy(nets[0](x), y).item(), rel=1e-6)
    end = many[1].model_at(1.0)
    assert all(torch.equal(p, q) for p, q in zip(end.parameters(), nets[3].parameters()))


def test_batchnorm_nets_recompute_statistics_and_refuse_batching():
    data = _data()
    a, b = _mlp(0, bn=True), _mlp(1, bn=True)
    r = connect(a, b, F.cross_entropy, data, method="bezier", steps=5, num_points=5, refine=0)
    assert r.settings["train_mode"] is True and len(r.history) == 5
    # at t = 0 the statistics are recomputed on the training data (one cumulative pass), then eval mode
    bn = a[2]
    bn.reset_running_stats()
    bn.momentum = None
    a.train()(data[0])
    assert r.train_loss[0] == pytest.approx(F.cross_entropy(a.eval()(data[0]), data[1]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="BatchNorm"):
        connect_many([a, a], [b, b], F.cross_entropy, data)


def test_paths_and_barrier_helper():
    a, b = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    assert torch.allclose(LinearPath(a, b).points(0.25), torch.full((2, 3), 0.25, dtype=torch.float64))
    bz = BezierPath(a, b, bends=2)  # controls on the line: the curve is the line
    assert torch.allclose(bz.points(torch.tensor([0.3, 0.7])), torch.tensor([[0.3] * 3, [0.7] * 3],
                                                                             dtype=torch.float64))
    pc = PolyChain(torch.stack([a, 2 * b, b], 1))
    assert torch.allclose(pc.points(0.25), torch.ones(2, 3, dtype=torch.float64)) and pc.knots() == [0.5]
    out = barrier([0, 0.5, 1], [1.0, 3.0, 0.0])
    assert out["barrier"] == 2.5 and out["excess_barrier"] == 2.5 and out["barrier_t"] == 0.5


def test_errors_name_the_argument():
    net = _mlp(0)
    with pytest.raises(ValueError, match="method"):
        connect(net, net, F.cross_entropy, _data(), method="straight")
    with pytest.raises(ValueError, match="same architecture"):
        connect(net, nn.Sequential(nn.Linear(3, 2)), F.cross_entropy, _data())
    with pytest.raises(TypeError, match="data"):
        connect(net, net, F.cross_entropy, _data()[0])
    with pytest.raises(ValueError, match="bends"):
        connect(net, net, F.cross_entropy, _data(), method="bezier", bends=0)
