"""Lanczos, top eigenvalues and trace estimators on explicit symmetric matrices with known spectra."""
import math

import pytest
import torch

from skipkern.hessian import DenseOperator, lanczos, top_eigenvalues, trace

F64 = torch.float64

# Small shapes: one intra-op thread (two threads fighting for 2 shared cores cost 10-30x).
pytestmark = pytest.mark.usefixtures("one_thread")



def matrix_with_spectrum(ev, seed=0):
    """Q diag(ev) Q^T with a random orthogonal Q (float64)."""
    ev = torch.as_tensor(ev, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(ev.numel(), ev.numel(), generator=g, dtype=F64))
    A = (Q * ev) @ Q.T
    return (A + A.T) / 2


def mixed_spectrum(P=300):
    """Exact zero cluster (30%), negatives (20%), a positive bulk and four separated outliers."""
    n0, nneg = int(0.3 * P), int(0.2 * P)
    npos = P - n0 - nneg - 4
    return torch.cat([torch.zeros(n0, dtype=F64), -torch.linspace(0.5, 2.0, nneg, dtype=F64),
                      torch.linspace(0.5, 3.0, npos, dtype=F64), torch.tensor([8.0, 15.0, 40.0, 100.0], dtype=F64)])


def test_extreme_ritz_values_and_orthonormal_basis():
    ev = mixed_spectrum()
    op = DenseOperator(matrix_with_spectrum(ev))
    res = lanczos(op, 80, num_probes=4, seed=0, return_basis=True)
    assert res.alphas.shape == (4, 80) and res.betas.shape == (4, 79)
    assert res.num_matmat == 80 and op.num_matmat == 80  # one product per step for all probes
    nodes, weights = res.ritz()
    torch.testing.assert_close(weights.sum(1), torch.ones(4, dtype=F64), rtol=0, atol=1e-12)
    for j in range(4):
        assert abs(nodes[j].max() - 100.0) / 100.0 < 1e-8
        assert abs(nodes[j].min() - (-2.0)) / 2.0 < 1e-8
    Qb = res.basis  # full reorthogonalisation keeps the float64 basis orthonormal
    gram = torch.bmm(Qb, Qb.transpose(1, 2))
    assert float((gram - torch.eye(80, dtype=F64)).abs().max()) < 1e-12
    # T = Q^T A Q for every probe
    for j in range(2):
        T = Qb[j] @ op.matrix @ Qb[j].T
        torch.testing.assert_close(T, res.tridiagonal(j), rtol=0, atol=1e-10)


def test_no_reorthogonalisation_makes_ghosts():
    ev = torch.cat([torch.linspace(0, 1, 200, dtype=F64), torch.tensor([50.0], dtype=F64)])
    op = DenseOperator(matrix_with_spectrum(ev))
    full = lanczos(op, 120, num_probes=1, seed=1).ritz()[0][0]
    plain = lanczos(op, 120, num_probes=1, seed=1, reorthogonalize="none").ritz()[0][0]
    assert int((full > 49).sum()) == 1  # one copy of the outlier
    assert int((plain > 49).sum()) >= 2  # the plain recurrence repeats it (a ghost)


def test_breakdown_stops_probe_cleanly():
    ev = [0.0] * 60 + [1.0] * 30 + [-2.0] * 30  # three distinct eigenvalues: invariant after 3 steps
    op = DenseOperator(matrix_with_spectrum(ev))
    res = lanczos(op, 20, num_probes=3, seed=0)
    assert res.lengths.tolist() == [3, 3, 3]
    assert op.num_matmat == 3  # stops once every probe broke down
    nodes, weights = res.ritz()
    torch.testing.assert_close(nodes[:, :3], torch.tensor([[-2.0, 0.0, 1.0]] * 3, dtype=F64), rtol=0, atol=1e-10)
    assert float(weights[:, 3:].abs().sum()) == 0.0
    # a probe inside an invariant subspace breaks down earlier than the others; the rest go on
    A = matrix_with_spectrum(list(range(1, 41)))
    evals, vecs = torch.linalg.eigh(A)
    probes = torch.stack([vecs[:, 0] + vecs[:, 1], torch.ones(40, dtype=F64)], 1)
    res = lanczos(DenseOperator(A), 10, probes=probes)
    assert res.lengths.tolist() == [2, 10]
    torch.testing.assert_close(res.ritz()[0][0, :2], evals[:2], rtol=0, atol=1e-10)


def test_num_steps_capped_at_dimension_and_seed_determinism():
    A = matrix_with_spectrum(torch.linspace(-1, 1, 12))
    res = lanczos(DenseOperator(A), 50, num_probes=2, seed=3)
    assert res.alphas.shape == (2, 12) and res.lengths.tolist() == [12, 12]
    torch.testing.assert_close(torch.sort(res.ritz()[0][0]).values, torch.linalg.eigvalsh(A), rtol=0, atol=1e-10)
    again = lanczos(DenseOperator(A), 50, num_probes=2, seed=3)
    assert torch.equal(res.alphas, again.alphas) and torch.equal(res.betas, again.betas)
    other = lanczos(DenseOperator(A), 50, num_probes=2, seed=4)
    assert not torch.equal(res.alphas, other.alphas)


def test_float32_products_float64_recurrence():
    ev = mixed_spectrum(200)
    op = DenseOperator(matrix_with_spectrum(ev), dtype=torch.float32)
    res = lanczos(op, 60, num_probes=2, seed=0)
    assert res.alphas.dtype == F64
    assert abs(float(res.ritz()[0].max()) - 100.0) / 100.0 < 1e-5  # float32 products bound the accuracy


@pytest.mark.parametrize("which,expect", [("LA", [100.0, 40.0, 15.0]), ("SA", None), ("LM", [100.0, 40.0])])
def test_top_eigenvalues(which, expect):
    ev = mixed_spectrum()
    A = matrix_with_spectrum(ev, seed=2)
    exact = torch.linalg.eigvalsh(A)
    k = 3 if expect is None else len(expect)
    vals, vecs = top_eigenvalues(DenseOperator(A), k, which=which, seed=0, return_eigenvectors=True)
    want = exact[:k] if which == "SA" else torch.tensor(expect, dtype=F64)
    assert float(((vals - want).abs() / want.abs()).max()) < 1e-8
    assert float((A @ vecs - vecs * vals).norm(dim=0).max()) < 1e-6 * float(exact.abs().max())


def test_top_eigenvalues_restarts_after_breakdown():
    A = matrix_with_spectrum([5.0] * 10 + [1.0] * 10 + [-1.0] * 10)  # Krylov space of dimension 3
    vals = top_eigenvalues(DenseOperator(A), 4, seed=0)
    torch.testing.assert_close(vals[:1], torch.tensor([5.0], dtype=F64), rtol=1e-10, atol=0)
    assert vals.shape == (4,)


def test_trace_estimators():
    ev = mixed_spectrum()
    op = DenseOperator(matrix_with_spectrum(ev))
    exact = float(ev.sum())
    for method in ("hutchinson", "hutch++"):
        est = trace(op, 60, method=method, seed=0)
        assert abs(est.value - exact) <= 3 * est.stderr, (method, est, exact)
        assert est.stderr > 0
    # hutch++ is exact (up to rounding) on a matrix of rank below num_probes / 3
    low = matrix_with_spectrum([3.0, -2.0, 7.0] + [0.0] * 97)
    est = trace(DenseOperator(low), 12, method="hutch++", seed=1)
    assert abs(est.value - 8.0) < 1e-10 and est.stderr < 1e-10
    assert trace(op, 30, seed=5) == trace(op, 30, seed=5)


def test_bad_inputs():
    op = DenseOperator(matrix_with_spectrum([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(op, 0)
    with pytest.raises(ValueError, match="num_probes"):
        lanczos(op, 3, num_probes=0)
    with pytest.raises(ValueError, match="zero column"):
        lanczos(op, 3, probes=torch.zeros(3, 1, dtype=F64))
    with pytest.raises(ValueError, match="probes"):
        lanczos(op, 3, probes=torch.ones(4, 1, dtype=F64))
    with pytest.raises(ValueError, match="reorthogonalize"):
        lanczos(op, 3, reorthogonalize="partial")
    with pytest.raises(ValueError, match="num_probes"):
        trace(op, 0)
    with pytest.raises(ValueError, match="hutch"):
        trace(op, 2, method="hutch++")
    with pytest.raises(ValueError, match="method"):
        trace(op, 2, method="exact")
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(op, 4)
    with pytest.raises(ValueError, match="symmetric"):
        DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64))
    assert math.isnan(trace(op, 1, seed=0).stderr)
