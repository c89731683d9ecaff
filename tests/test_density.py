"""Stochastic Lanczos quadrature (spectral_density, SpectralDensity) and per-block spectra, against
exact spectra of explicit matrices and of small models' Hessians (torch.linalg.eigvalsh)."""
import numpy as np
import pytest
import torch
from torch import nn

from skipkern.hessian import (DenseOperator, HessianOperator, SpectralDensity, block_spectral_density,
                              block_trace, parameter_groups, spectral_density)
from skipkern.nn import SkipMLP

F64 = torch.float64

# Small shapes: one intra-op thread (two threads fighting for 2 shared cores cost 10-30x).
pytestmark = pytest.mark.usefixtures("one_thread")



def within(est, exact, n_se=3.0):
    return abs(est.value - exact) <= n_se * est.stderr + 1e-12


def explicit_operator(P=300, seed=0):
    n0, nneg = int(0.3 * P), int(0.2 * P)
    ev = torch.cat([torch.zeros(n0, dtype=F64), -torch.linspace(0.5, 2.0, nneg, dtype=F64),
                    torch.linspace(0.5, 3.0, P - n0 - nneg - 2, dtype=F64), torch.tensor([20.0, 60.0], dtype=F64)])
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=F64))
    return DenseOperator((Q * ev) @ Q.T, check_symmetric=False), ev


def test_known_spectrum_fractions_moments_and_density():
    op, ev = explicit_operator()
    d = spectral_density(op, num_probes=30, num_steps=70, seed=0, progress=False)
    assert d.nodes.shape == (30, 70) and d.dim == 300
    for eps in (1e-10, 0.1, 0.3):  # thresholds in the spectral gap around the zero cluster
        assert within(d.fraction_degenerate(eps), float((ev.abs() <= eps).double().mean()))
        assert within(d.fraction_negative(eps), float((ev < -eps).double().mean()))
    for p in (1, 2):
        assert within(d.moment(p), float((ev ** p).mean()))
    assert within(d.trace(), float(ev.sum()))
    assert abs(d.nodes.max() - 60.0) / 60.0 < 1e-8 and abs(d.nodes.min() + 2.0) / 2.0 < 1e-8
    assert abs(np.trapezoid(d.values, d.grid) - 1.0) < 1e-3  # a probability density
    lo, hi = d.fraction_negative_bounds(0.1)
    assert lo.value <= d.fraction_negative(0.1).value <= hi.value
    same = spectral_density(op, num_probes=30, num_steps=70, seed=0, progress=False)
    assert np.array_equal(same.nodes, d.nodes) and np.array_equal(same.values, d.values)


@pytest.fixture(scope="module")
def small_hessians():
    """Two plain-ReLU models (P = 1589 and P = 277) with their exact Hessians, built column by column
    from the HVP (itself checked against torch.autograd.functional.hessian in test_hessian_operator)."""
    out = []
    for width, n in ((24, 64), (8, 32)):
        m = SkipMLP(10, width, 3, 5, arch="plain", seed=0, dtype=F64)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 10, generator=g, dtype=F64)
        y = torch.randint(0, 5, (n,), generator=g)
        op = HessianOperator(m, nn.CrossEntropyLoss(), (x, y))
        H = op @ torch.eye(op.shape[0], dtype=F64)
        H = (H + H.T) / 2
        out.append((op, H, torch.linalg.eigvalsh(H)))
    return out


def test_model_hessian_extremes_moments_and_quadrature_bounds(small_hessians):
    op, H, ev = small_hessians[0]
    assert op.shape[0] == 1589
    lam = float(ev.abs().max())
    before = op.data_passes
    d = spectral_density(op, num_probes=12, num_steps=60, seed=0, progress=False)
    assert op.data_passes - before == 60  # one pass over the data per Lanczos step, all probes together
    assert abs(d.nodes.max() - float(ev.max())) / lam < 1e-8
    assert abs(d.nodes.min() - float(ev.min())) / lam < 1e-8
    for p in (1, 2):
        assert within(d.moment(p), float((ev ** p).mean()))
    # 60 nodes cannot resolve the near-zero bulk: the Gauss estimate may be biased there, but the exact
    # fraction always lies inside the Chebyshev-Markov-Stieltjes bounds (up to probe noise)
    for eps in (1e-8, 1e-3, 1e-2, 1e-1):
        for (lo, hi), exact in ((d.fraction_degenerate_bounds(eps * lam), (ev.abs() <= eps * lam).double().mean()),
                                (d.fraction_negative_bounds(eps * lam), (ev < -eps * lam).double().mean())):
            assert lo.value - 3 * lo.stderr <= float(exact) <= hi.value + 3 * hi.stderr


@pytest.mark.slow
def test_model_hessian_fractions_with_resolving_steps(small_hessians):
    _, H, ev = small_hessians[1]
    P = H.shape[0]
    lam = float(ev.abs().max())
    # the exact Hessian as a matrix; P steps make the quadrature exact, leaving only probe noise
    d = spectral_density(DenseOperator(H), num_probes=20, num_steps=P, seed=0, progress=False)
    assert float((ev.abs() <= 1e-10 * lam).double().mean()) > 0.05  # the plain net has exact zeros
    for eps in (1e-10, 1e-4, 1e-2, 1e-1):
        assert within(d.fraction_degenerate(eps * lam), float((ev.abs() <= eps * lam).double().mean()))
        assert within(d.fraction_negative(eps * lam), float((ev < -eps * lam).double().mean()))


def test_block_density_and_trace(small_hessians):
    op, H, ev = small_hessians[1]
    groups = parameter_groups(op)
    assert list(groups) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    passes = op.data_passes
    blocks = block_spectral_density(op, num_probes=20, num_steps=24, seed=0, progress=False)
    assert op.data_passes - passes == 24  # all blocks and the full run share each data pass
    assert set(blocks) == set(groups) | {"full"}
    for g, rows in groups.items():
        Hg = H[rows][:, rows]
        evg = torch.linalg.eigvalsh(Hg)
        d = blocks[g]
        assert d.dim == rows.numel()
        scale = float(evg.abs().max())
        assert abs(d.nodes.max() - float(evg.max())) / scale < 1e-8, g
        assert within(d.moment(1), float(evg.mean())) and within(d.moment(2), float((evg ** 2).mean())), g
    tr = block_trace(op, 40, seed=0)
    for g, rows in groups.items():
        assert within(tr[g], float(torch.diagonal(H)[rows].sum())), g
    assert within(tr["full"], float(torch.trace(H)))
    custom = parameter_groups(op, {"hidden": ["layers.1", "layers.2"], "bias0": "layers.0.bias"})
    assert custom["bias0"].numel() == 8 and custom["hidden"].numel() == 2 * (8 * 8 + 8)
    with pytest.raises(ValueError, match="overlap"):
        parameter_groups(op, {"a": "layers.1", "b": "layers.1.weight"})
    with pytest.raises(ValueError, match="matches no parameter"):
        parameter_groups(op, {"a": "nope"})


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_load_roundtrip(tmp_path, suffix):
    op, _ = explicit_operator(60)
    d = spectral_density(op, num_probes=3, num_steps=10, seed=1, sigma=0.05, grid=200, progress=False)
    path = d.save(tmp_path / f"density{suffix}")
    back = SpectralDensity.load(path)
    np.testing.assert_allclose(back.nodes, d.nodes, rtol=0, atol=0)
    np.testing.assert_allclose(back.values, d.values, rtol=0, atol=0)
    assert back.dim == d.dim and back.sigma == 0.05 and back.meta["seed"] == 1 and back.grid.size == 200
    assert back.fraction_negative(0.1) == d.fraction_negative(0.1)
    with pytest.raises(ValueError, match=".json or .npz"):
        d.save(tmp_path / "density.txt")


def test_plot_linear_and_log():
    import matplotlib
    matplotlib.use("Agg")
    op, _ = explicit_operator(60)
    d = spectral_density(op, num_probes=2, num_steps=10, seed=0, progress=False)
    ax = d.plot()
    assert len(ax.lines) == 1 and ax.get_yscale() == "linear"
    ax2 = d.plot(log=True)
    assert ax2.get_yscale() == "log" and float(ax2.lines[0].get_ydata().min()) > 0


def test_bad_inputs():
    op, _ = explicit_operator(20)
    with pytest.raises(ValueError, match="num_probes"):
        spectral_density(op, num_probes=0, num_steps=5)
    with pytest.raises(ValueError, match="num_steps"):
        spectral_density(op, num_probes=2, num_steps=0)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(op, num_probes=2, num_steps=5, sigma=-1.0, progress=False)
    d = spectral_density(op, num_probes=2, num_steps=5, progress=False)
    with pytest.raises(ValueError, match="eps"):
        d.fraction_degenerate(-1.0)
