"""Certified spectral fractions, outlier deflation and the adaptive driver, against exact spectra:
explicit matrices with zero clusters, negative eigenvalues and outliers, and small SkipMLP Hessians."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from skipkern.hessian import (DenseOperator, HessianOperator, SpectralDensity, find_outliers, lanczos,
                              spectral_density, spectral_fraction)
from skipkern.hessian.quadrature import cdf_bounds, gauss_cdf_bounds, gauss_rule
from skipkern.nn import SkipMLP

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def spectrum(P=400, seed=0, outliers=(40.0, 90.0, 150.0, 300.0)):
    """30% exact zeros, a continuum of small positive ones (1e-6 .. 1), 20% negatives, outliers."""
    rng = np.random.default_rng(seed)
    n0, nneg, nout = int(0.3 * P), int(0.2 * P), len(outliers)
    return np.sort(np.concatenate([np.zeros(n0), 10 ** rng.uniform(-6, 0, P - n0 - nneg - nout),
                                   -10 ** rng.uniform(-3, 0, nneg), np.array(outliers)]))


_Q = {}


def operator(ev, seed=0):
    """Q diag(ev) Q^T with a random orthogonal Q (torch on one thread: numpy's threaded BLAS crawls on a
    loaded machine), the Q cached per size."""
    if (ev.size, seed) not in _Q:
        g = torch.Generator().manual_seed(seed + 100)
        _Q[ev.size, seed] = torch.linalg.qr(torch.randn(ev.size, ev.size, generator=g, dtype=F64))[0]
    Q = _Q[ev.size, seed]
    A = (Q * torch.from_numpy(ev)) @ Q.T
    return DenseOperator((A + A.T) / 2)


def test_quadrature_bounds_contain_the_probe_measure_and_beat_gauss_nodes():
    rng = np.random.default_rng(0)
    sharper = 0
    for trial in range(12):
        ev = spectrum(120, seed=trial)
        v = rng.standard_normal(ev.size)
        v /= np.linalg.norm(v)
        res = lanczos(DenseOperator(torch.from_numpy(np.diag(ev))), 4 + 3 * trial, probes=torch.from_numpy(v))
        n = int(res.lengths[0])
        a, b, last = res.alphas[0, :n].numpy(), res.betas[0, :n - 1].numpy(), float(res.beta_last[0])
        rule = gauss_rule(a, b)
        for t in np.concatenate([rng.uniform(-1.5, 2, 15), [0.0, 1e-7, -1e-7, 45.0]]):
            lo, hi = cdf_bounds(a, b, last, t, rule=rule)
            g_lo, g_hi = gauss_cdf_bounds(*rule, t)
            assert lo - 1e-12 <= float((v ** 2)[ev < t].sum()) and float((v ** 2)[ev <= t].sum()) <= hi + 1e-12
            assert g_lo - 1e-12 <= lo and hi <= g_hi + 1e-12
            sharper += hi - lo < g_hi - g_lo - 1e-9
    assert sharper > 50  # the Radau bounds are strictly sharper most of the time


def test_auto_deflation_finds_the_outliers_and_only_them():
    ev = spectrum(400)
    op = operator(ev)
    d = find_outliers(op, "auto", seed=0)
    np.testing.assert_allclose(np.sort(d.values), [40.0, 90.0, 150.0, 300.0], rtol=1e-9)
    assert d.residual < 1e-8 and d.num_matvecs == d.steps == op.num_vectors
    U = d.vectors
    torch.testing.assert_close(U.T @ U, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    two = find_outliers(operator(ev), 2, seed=0)
    np.testing.assert_allclose(np.sort(two.values), [150.0, 300.0], rtol=1e-9)
    assert find_outliers(operator(spectrum(400, outliers=())), "auto", seed=0).count == 0  # no outliers
    both = find_outliers(operator(spectrum(400, outliers=(-250.0, -80.0, 120.0))), "auto", seed=0)
    np.testing.assert_allclose(np.sort(both.values), [-250.0, -80.0, 120.0], rtol=1e-9)  # bottom ones too
    with pytest.raises(ValueError, match="deflate"):
        find_outliers(op, -1)


def test_deflated_density_is_a_probability_measure_combined_exactly():
    ev = spectrum(400)
    d = spectral_density(operator(ev), num_probes=6, num_steps=40, seed=0, deflate="auto", progress=False)
    assert d.deflated.size == 4 and d.probe == "sphere" and d.meta["deflation"]["count"] == 4
    np.testing.assert_allclose(d.weights.sum(1), 1.0, rtol=0, atol=1e-12)
    assert np.allclose(d.weights[:, -4:], 1 / 400) and np.allclose(np.sort(d.nodes[0, -4:]), [40, 90, 150, 300])
    for p in (1, 2):  # moments: the outliers enter exactly, so the second moment is nearly exact
        est = d.moment(p)
        assert abs(est.value - float(np.mean(ev ** p))) <= 4 * est.stderr + 1e-9
    assert d.nodes[:, :-4].max() < 2.0  # the Lanczos grid spans the bulk only
    f = d.fraction_in(35.0, 1000.0)
    assert f.lower <= 4 / 400 <= f.upper and f.value == pytest.approx(4 / 400)


@pytest.mark.parametrize("deflate", [0, "auto"])
def test_certified_intervals_cover_the_truth_over_seeds(deflate):
    """Coverage of the 95% intervals over 24 fixed seeds and 5 fractions each (a deterministic test:
    the bound is conservative, so every interval is expected to contain the truth)."""
    ev = spectrum(300)
    op = operator(ev)
    cases = [("deg", 1e-4), ("deg", 0.05), ("neg", 1e-4), ("neg", 0.1), ("in", (0.2, 0.6))]
    hits = total = 0
    for seed in range(24):
        d = spectral_density(op, num_probes=4, num_steps=25, seed=seed, deflate=deflate, progress=False)
        for kind, arg in cases:
            if kind == "deg":
                f, truth = d.fraction_degenerate(arg), np.mean(np.abs(ev) <= arg)
            elif kind == "neg":
                f, truth = d.fraction_negative(arg), np.mean(ev < -arg)
            else:
                f, truth = d.fraction_in(*arg), np.mean((ev >= arg[0]) & (ev <= arg[1]))
            assert f.lower <= f.value <= f.upper
            hits += f.lower <= truth <= f.upper
            total += 1
    assert hits / total >= 0.95


def test_unresolved_threshold_is_flagged_not_a_silent_zero():
    ev = spectrum(400)
    d = spectral_density(operator(ev), num_probes=8, num_steps=20, seed=0, progress=False)
    f = d.fraction_degenerate(1e-7)  # far below what 20 steps resolve near the zero cluster
    truth = float(np.mean(np.abs(ev) <= 1e-7))
    assert f.lower <= truth <= f.upper and not f.resolved and f.dominant == "quadrature"
    assert "quadrature-limited" in f.note and "[" in str(f) and "unresolved" in str(f)
    value, se = f  # unpacks like the old Estimate
    assert (value, se) == (f[0], f[1]) == (f.value, f.stderr)
    exact = spectral_density(operator(ev), num_probes=8, num_steps=400, seed=0, progress=False)
    g = exact.fraction_degenerate(1e-7)  # the full Krylov space: the quadrature is exact
    assert g.quadrature_width < 1e-12 and g.dominant == "probes" and g.lower <= truth <= g.upper


def test_rounding_floor_flags_eps_below_float32_resolution():
    ev = spectrum(200)
    d = spectral_density(DenseOperator(operator(ev).matrix, dtype=torch.float32), num_probes=3, num_steps=20,
                         seed=0, progress=False)
    f = d.fraction_degenerate(1e-9 * 300)
    assert not f.resolved and "rounding floor" in f.note


def test_spectral_fraction_converges_and_counts_products():
    ev = spectrum(300)
    op = operator(ev)
    ivs = {"degenerate": (-0.05, 0.05), "negative": (-math.inf, -0.05)}
    r = spectral_fraction(op, ivs, tol=0.1, seed=0, progress=False)
    assert r.converged and r.num_deflated == 4 and r.num_matvecs == op.num_vectors
    for name, truth in (("degenerate", np.mean(np.abs(ev) <= 0.05)), ("negative", np.mean(ev < -0.05))):
        f = r.fractions[name]
        assert f.upper - f.lower <= 0.1 and f.lower <= truth <= f.upper
    small = spectral_fraction(operator(ev), (-1e-6, 1e-6), tol=0.01, max_matvecs=600, seed=0, progress=False,
                              exact=False)
    assert small.method == "slq" and not small.converged and small.num_matvecs <= 600 + small.num_probes
    assert small.lower <= np.mean(np.abs(ev) <= 1e-6) <= small.upper
    with pytest.raises(ValueError, match="tol"):
        spectral_fraction(op, (0, 1), tol=0)
    with pytest.raises(ValueError, match="lo <= hi"):
        spectral_fraction(op, (1, 0))


@pytest.mark.slow
def test_skipmlp_hessian_zero_cluster_against_eigvalsh():
    m = SkipMLP(10, 12, 3, 4, arch="plain", seed=0, dtype=F64)  # dead units: exact zero eigenvalues
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 10, generator=g, dtype=F64), torch.randint(0, 4, (48,), generator=g)
    op = HessianOperator(m, nn.CrossEntropyLoss(reduction="sum"), (x, y))
    H = op @ torch.eye(op.shape[0], dtype=F64)
    ev = torch.linalg.eigvalsh((H + H.T) / 2).numpy()
    lam = np.abs(ev).max()
    assert np.mean(np.abs(ev) <= 1e-10 * lam) > 0.05
    r = spectral_fraction(op, {"deg": (-1e-3 * lam, 1e-3 * lam), "neg": (-math.inf, -1e-3 * lam)}, tol=0.15,
                          seed=1, progress=False)
    assert r.fractions["deg"].lower <= np.mean(np.abs(ev) <= 1e-3 * lam) <= r.fractions["deg"].upper
    assert r.fractions["neg"].lower <= np.mean(ev < -1e-3 * lam) <= r.fractions["neg"].upper


def test_save_load_keeps_tridiagonals_and_reads_old_files(tmp_path):
    ev = spectrum(120)
    d = spectral_density(operator(ev), num_probes=3, num_steps=15, seed=0, deflate="auto", progress=False)
    for suffix in (".json", ".npz"):
        back = SpectralDensity.load(d.save(tmp_path / f"d{suffix}"))
        assert back.has_tridiagonals() and np.array_equal(back.deflated, d.deflated)
        assert back.fraction_degenerate(0.01).to_dict() == d.fraction_degenerate(0.01).to_dict()
    old = d.to_dict()  # a version-1 file: no tridiagonals, no deflated eigenvalues
    for key in ("alphas", "betas", "deflated"):
        old.pop(key)
    old["version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    legacy = SpectralDensity.load(tmp_path / "old.json")
    f = legacy.fraction_negative(0.01)
    assert not legacy.has_tridiagonals() and f.lower <= f.value <= f.upper
    assert f.lower <= np.mean(ev < -0.01) <= f.upper


def test_spectral_fraction_smaller_tol_on_a_budget_is_not_worse():
    """A tol the budget cannot certify must not make the run worse: the driver once chose its probe
    count from tol up front (a small tol: tens of probes x a few steps), so on a quadrature-limited
    fraction a smaller tol ended wider and further from the truth than a larger one."""
    ev = spectrum(300)
    eps = 1e-3
    ivs = {"deg": (-eps, eps), "neg": (-math.inf, -eps)}
    truth = {"deg": np.mean(np.abs(ev) <= eps), "neg": np.mean(ev < -eps)}
    runs = {tol: spectral_fraction(operator(ev), ivs, tol=tol, max_matvecs=600, seed=0, progress=False, exact=False)
            for tol in (0.1, 0.02, 0.01)}
    for tol, r in runs.items():
        assert not r.converged and r.num_matvecs <= 600
        assert r.num_steps >= 100  # the budget went into steps (the quadrature is what limits here)
        assert r.history[-1]["values"] == {name: f.value for name, f in r.fractions.items()}
        for name, f in r.fractions.items():
            assert f.lower <= truth[name] <= f.upper and abs(f.value - truth[name]) < 0.05
    width = {tol: max(f.width for f in r.fractions.values()) for tol, r in runs.items()}
    assert width[0.01] <= width[0.02] + 1e-12 and width[0.02] <= width[0.1] + 1e-12


def test_sphere_probes_are_not_the_weights_of_a_model_with_the_same_seed():
    """Sphere probes and the deflation start once came from torch.Generator().manual_seed(seed), the
    stream a SkipMLP built with that seed drew its weights from: the first probe had cosine 0.26 with
    the parameter vector (12 / sqrt(P)) and biased the fractions of that model's Hessian."""
    from skipkern.hessian.slq import SLQ
    m = SkipMLP(40, 16, 6, 10, arch="plain", seed=0)
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double()
    P = theta.numel()
    u = SLQ(DenseOperator(torch.eye(P, dtype=F64)), probe="sphere", seed=0)._new_probes(4)
    assert float((u @ theta).abs().max() / theta.norm()) < 5 / math.sqrt(P)
    from skipkern.hessian.deflation import probe_generator
    a, b = (torch.randn(3, generator=probe_generator(0, s)) for s in ("sphere probes", "deflation start"))
    assert not torch.equal(a, b) and torch.equal(a, torch.randn(3, generator=probe_generator(0, "sphere probes")))


# ----------------------------------------------------------------- the exact (dense) route
def test_dense_matrix_reuses_known_products_and_rebuilds_the_matrix():
    from skipkern.hessian.dense import KnownSpan, dense_matrix
    ev = spectrum(97)
    op = operator(ev)
    g = torch.Generator().manual_seed(3)
    V = torch.randn(30, 97, generator=g, dtype=F64)
    V = torch.cat([V, V[:5] * 3 - V[5:10], V[:4]])  # dependent rows: reused once, not counted twice
    span = KnownSpan(97, F64)
    span.add(V, (op.matrix @ V.T).T)
    assert span.seen == 39 and span.rank() == 30
    A, asym, used = dense_matrix(op, known=span, block=7, progress=False)
    assert used == 97 - 30 and asym < 1e-10
    torch.testing.assert_close(A, op.matrix, rtol=0, atol=1e-10)
    A0, _, used0 = dense_matrix(op.matrix, progress=False)  # a bare tensor, nothing known: P products
    assert used0 == 97 and torch.allclose(A0, op.matrix, atol=1e-12)


def test_dense_route_answers_exactly_when_the_quadrature_cannot():
    """Thresholds far below the Lanczos resolution: the rounds would need more than P products, so the
    driver builds the matrix (reusing the products spent) and counts; about P products in all."""
    ev = spectrum(300)
    eps = 1e-5
    ivs = {"deg": (-eps, eps), "neg": (-math.inf, -eps), "band": (1e-4, 1e-2)}
    truth = {"deg": np.mean(np.abs(ev) <= eps), "neg": np.mean(ev < -eps),
             "band": np.mean((ev >= 1e-4) & (ev <= 1e-2))}
    r = spectral_fraction(operator(ev), ivs, tol=0.01, seed=0, progress=False)
    assert r.method == "dense" and r.converged and "exact: dense matrix" in str(r)
    dense = r.density.meta["dense"]
    assert dense["reused"] > 0 and r.num_matvecs == r.history[-2]["num_matvecs"] + dense["num_matvecs"]
    assert r.num_matvecs <= 1.6 * 300 and r.history[-1]["exact"]
    for name, f in r.fractions.items():
        assert f.lower <= truth[name] <= f.upper and f.width < 1e-12 and f.stderr == 0.0
        assert abs(f.value - truth[name]) < 1e-12 and f.note.startswith("exact")
    forced = spectral_fraction(operator(ev), ivs, tol=0.01, seed=0, progress=False, exact=True)
    assert forced.method == "dense" and forced.num_matvecs == 300 and forced.num_deflated == 0
    assert {k: f.value for k, f in forced.fractions.items()} == pytest.approx(truth, abs=1e-12)
    f32 = DenseOperator(operator(ev).matrix, dtype=torch.float32)  # float32 products: rounding ~1e-7 ||A||
    r32 = spectral_fraction(f32, {"neg": (-math.inf, -1e-3), "band": (1e-2, 1.0)}, tol=0.01, seed=0, progress=False)
    assert r32.method == "dense" and 1e-9 < r32.density.meta["dense"]["residual"] < 1e-3
    for name, iv in (("neg", (-math.inf, -1e-3)), ("band", (1e-2, 1.0))):
        t = np.mean((ev >= iv[0]) & (ev <= iv[1])) if name == "band" else np.mean(ev < -1e-3)
        assert r32.fractions[name].lower <= t <= r32.fractions[name].upper
    never = spectral_fraction(operator(ev), ivs, tol=0.01, seed=0, progress=False, exact=False, max_matvecs=900)
    small = spectral_fraction(operator(ev), ivs, tol=0.01, seed=0, progress=False, max_dense=299, max_matvecs=900)
    assert never.method == small.method == "slq" and not never.converged
    with pytest.raises(ValueError, match="exact"):
        spectral_fraction(operator(ev), ivs, exact="yes")


def test_dense_route_keeps_the_easy_case_on_slq():
    """A coarse threshold the quadrature resolves quickly: no matrix is built."""
    ev = spectrum(400)
    r = spectral_fraction(operator(ev), {"band": (0.1, 1.0)}, tol=0.1, seed=0, progress=False)
    assert r.method == "slq" and r.converged and r.num_matvecs < 400
    assert r.lower <= np.mean((ev >= 0.1) & (ev <= 1.0)) <= r.upper
    hard = spectral_fraction(operator(ev), {"neg": (-math.inf, -0.05)}, tol=0.1, seed=0, progress=False)
    slow = spectral_fraction(operator(ev), {"neg": (-math.inf, -0.05)}, tol=0.1, seed=0, progress=False, exact=False)
    assert hard.method == "dense" and hard.num_matvecs < 1.2 * 400 < slow.num_matvecs  # SLQ took 1800 here


def test_dense_density_of_a_skipmlp_hessian_matches_autograd():
    m = SkipMLP(5, 6, 2, 3, arch="residual", seed=0, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(11, 5, generator=g, dtype=F64), torch.randint(0, 3, (11,), generator=g)
    op = HessianOperator(m, nn.CrossEntropyLoss(), (x, y))
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i:i + s.numel()].view(s)
            i += s.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(m, parts, (x,)), y)
    ev = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat0)).numpy()
    from skipkern.hessian.dense import dense_density
    d = dense_density(op, progress=False)
    np.testing.assert_allclose(d.deflated, ev, atol=1e-10)
    lam = float(np.abs(ev).max())
    f = d.fraction_degenerate(1e-3 * lam)
    assert f.value == pytest.approx(np.mean(np.abs(ev) <= 1e-3 * lam), abs=1e-12) and f.stderr == 0.0
