"""Data-parallel Hessian on gloo/loopback: 3 CPU processes with uneven shards (7, 5, 4 rows), one launch.

Checked against the single-process operator on the concatenated 16 rows, in float64: products of
both HVP backends to 1e-10 (ragged batches inside each shard too), the loss and gradient, the SLQ
density's Ritz values and weights for the same seed, Hutchinson traces and top eigenvalues; the
float64 Lanczos state is identical on every rank, also for seed=None (one seed broadcast from rank
0). Errors raise on every rank without a hang: an empty shard, a rank with another parameter count,
a rank whose forced HVP backend cannot run, a rank whose layers are forced onto a kernel backend
that cannot run on its device, and a product that fails on one rank only. Rank 0 passes a
DataLoader (the user's own split), the others tensor pairs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skipkern.hessian import HessianOperator, spectral_density, spectral_fraction, top_eigenvalues, trace
from skipkern.nn import SkipMLP
from tests.dist_utils import run_ranks

pytestmark = pytest.mark.slow  # each test launches processes

SHARDS = (7, 5, 4)  # uneven: the global mean must weight the ranks by their rows
BATCH = 3           # batches of 3 inside each shard: ragged last batches as well
DENSITY = dict(num_probes=3, num_steps=12, seed=5, progress=False)


def _model(width: int = 5) -> SkipMLP:
    return SkipMLP(6, width, 2, 3, arch="residual", activation="tanh", seed=0, dtype=torch.float64)


def _data():
    g = torch.Generator().manual_seed(1)
    n = sum(SHARDS)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _probes(P: int) -> torch.Tensor:
    return torch.randn(P, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _results(op) -> dict:
    dens = spectral_density(op, **DENSITY)
    loss, grad = op.loss_and_gradient()
    return {"hv": op.matmat(_probes(op.shape[0])), "nodes": dens.nodes, "weights": dens.weights,
            "trace": trace(op, 6, seed=3).value, "top": top_eigenvalues(op, 2, seed=4, num_steps=30),
            "loss": loss, "grad": grad}


def _catch(fn):
    try:
        fn()
    except Exception as e:  # the type and message are checked in the test
        return f"{type(e).__name__}: {e}"
    return None


def _hessian_ranks(rank, world):
    x, y = _data()
    lo = sum(SHARDS[:rank])
    xs, ys = x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]]
    model = _model()
    if rank == 0:  # the user's own split: a DataLoader on one rank, tensor pairs on the others
        from torch.utils.data import DataLoader, TensorDataset
        op = HessianOperator(model, F.cross_entropy, DataLoader(TensorDataset(xs, ys), batch_size=BATCH))
    else:
        op = HessianOperator(model, F.cross_entropy, (xs, ys), batch_size=BATCH)  # default group
    out = {"fused": _results(op), "backend": op.backend, "counts": op.shard_counts}
    gen = HessianOperator(model, F.cross_entropy, (xs, ys), batch_size=BATCH, backend="generic")
    out["generic_hv"] = gen.matmat(_probes(op.shape[0]))
    out["density_no_seed"] = spectral_density(op, num_probes=2, num_steps=4, progress=False).nodes
    # errors: raised on every rank, and the group is still usable afterwards
    empty = (xs[:0], ys[:0]) if rank == 1 else (xs, ys)
    out["empty"] = _catch(lambda: HessianOperator(model, F.cross_entropy, empty))
    other = _model(width=6 if rank == 2 else 5)
    out["mismatch"] = _catch(lambda: HessianOperator(other, F.cross_entropy, (xs, ys)))
    loss = (lambda o, t: F.cross_entropy(o, t)) if rank == 0 else F.cross_entropy  # fused cannot run on rank 0
    out["backend_error"] = _catch(lambda: HessianOperator(model, loss, (xs, ys), backend="fused"))
    forced = SkipMLP(6, 5, 2, 3, arch="residual", seed=0, dtype=torch.float64, backend="cuda" if rank == 1 else "auto")
    out["device_error"] = _catch(lambda: HessianOperator(forced, F.cross_entropy, (xs, ys), backend="generic"))
    bad = xs.clone()
    if rank == 2:
        bad[0, 0] = float("nan")
    nan_op = HessianOperator(model, F.cross_entropy, (bad, ys))
    out["product_error"] = _catch(lambda: nan_op.matmat(_probes(op.shape[0])))
    out["after"] = op.matmat(_probes(op.shape[0]))  # the group survived the errors
    return out


def test_distributed_hessian_matches_single_process():
    outs = run_ranks(_hessian_ranks, 3, timeout=150)
    x, y = _data()
    ref_op = HessianOperator(_model(), F.cross_entropy, (x, y), batch_size=BATCH, process_group=None)
    ref = _results(ref_op)
    gen_ref = HessianOperator(_model(), F.cross_entropy, (x, y), batch_size=BATCH, backend="generic",
                              process_group=None).matmat(_probes(ref_op.shape[0]))
    for r, o in enumerate(outs):
        assert o["counts"] == list(SHARDS) and o["backend"] == "fused"
        d = o["fused"]
        torch.testing.assert_close(d["hv"], ref["hv"], rtol=0, atol=1e-10)
        torch.testing.assert_close(o["generic_hv"], gen_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(o["after"], ref["hv"], rtol=0, atol=1e-10)
        torch.testing.assert_close(torch.as_tensor(d["nodes"]), torch.as_tensor(ref["nodes"]), rtol=0, atol=1e-8)
        torch.testing.assert_close(torch.as_tensor(d["weights"]), torch.as_tensor(ref["weights"]), rtol=0, atol=1e-8)
        assert abs(d["trace"] - ref["trace"]) <= 1e-9 * max(1.0, abs(ref["trace"]))
        torch.testing.assert_close(d["top"], ref["top"], rtol=1e-9, atol=1e-10)
        assert abs(d["loss"] - ref["loss"]) < 1e-12
        torch.testing.assert_close(d["grad"], ref["grad"], rtol=0, atol=1e-12)
        # the Lanczos state is the same on every rank, bit for bit (also with a broadcast seed)
        for key in ("nodes", "weights"):
            assert (torch.as_tensor(d[key]) == torch.as_tensor(outs[0]["fused"][key])).all()
        assert (torch.as_tensor(o["density_no_seed"]) == torch.as_tensor(outs[0]["density_no_seed"])).all()
        # errors on every rank, naming the culprit
        assert "DistributedError" in o["empty"] and "rank(s) [1] hold an empty data shard" in o["empty"]
        assert "DistributedError" in o["mismatch"] and "rank 2:" in o["mismatch"] and "parameter" in o["mismatch"]
        assert "DistributedError" in o["backend_error"] and "rank(s) [0]" in o["backend_error"]
        assert "fused" in o["backend_error"]
        assert "rank(s) [1]" in o["device_error"] and "backend 'cuda' cannot run here" in o["device_error"]
        assert "DistributedError" in o["product_error"] and "rank(s) [2]" in o["product_error"]
        assert "not finite" in o["product_error"]


def test_single_process_checks():
    x, y = _data()
    forced = SkipMLP(6, 5, 2, 3, arch="residual", seed=0, dtype=torch.float64, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        HessianOperator(forced, F.cross_entropy, (x, y), backend="generic")
    op = HessianOperator(_model(), F.cross_entropy, (x, y), batch_size=BATCH)
    assert op.process_group is None and op.shard_counts == [sum(SHARDS)]


TWO_SHARDS = (11, 5)  # the same 16 rows over 2 ranks, unevenly


def _two_ranks(rank, world):
    x, y = _data()
    lo = sum(TWO_SHARDS[:rank])
    sl = slice(lo, lo + TWO_SHARDS[rank])
    op = HessianOperator(_model(), F.cross_entropy, (x[sl], y[sl]), batch_size=BATCH)
    dens = spectral_density(op, **DENSITY)
    summed = HessianOperator(_model(), _sum_ce, (x[sl], y[sl]), batch_size=BATCH)  # reduction measured
    return {"hv": op.matmat(_probes(op.shape[0])), "nodes": dens.nodes, "weights": dens.weights,
            "counts": op.shard_counts, "sum_hv": summed.matmat(_probes(op.shape[0])), **_certified(op)}


def _certified(op) -> dict:
    """Deflated density and the adaptive driver: the same decisions and numbers on every rank."""
    dens = spectral_density(op, num_probes=2, num_steps=8, seed=3, deflate="auto", progress=False)
    r = spectral_fraction(op, {"neg": (-float("inf"), -1e-3)}, tol=0.3, max_matvecs=120, seed=3, progress=False)
    f = r.fractions["neg"]
    return {"defl_nodes": dens.nodes, "adaptive": [f.value, f.lower, f.upper, r.num_matvecs, r.num_steps]}


def _sum_ce(out, target):
    return F.cross_entropy(out, target, reduction="sum")


def test_two_rank_hessian_matches_single_process():
    outs = run_ranks(_two_ranks, 2, timeout=120)
    x, y = _data()
    ref_op = HessianOperator(_model(), F.cross_entropy, (x, y), batch_size=BATCH, process_group=None)
    ref_hv = ref_op.matmat(_probes(ref_op.shape[0]))
    ref = spectral_density(ref_op, **DENSITY)
    sum_ref = HessianOperator(_model(), _sum_ce, (x, y), process_group=None).matmat(_probes(ref_op.shape[0]))
    torch.testing.assert_close(sum_ref, ref_hv * x.shape[0], rtol=1e-12, atol=1e-12)  # the sum is N x the mean
    for o in outs:
        assert o["counts"] == list(TWO_SHARDS)
        torch.testing.assert_close(o["sum_hv"], sum_ref, rtol=0, atol=1e-9)  # a sum loss: shards weigh 1
        torch.testing.assert_close(o["hv"], ref_hv, rtol=0, atol=1e-10)
        torch.testing.assert_close(torch.as_tensor(o["nodes"]), torch.as_tensor(ref.nodes), rtol=0, atol=1e-8)
        torch.testing.assert_close(torch.as_tensor(o["weights"]), torch.as_tensor(ref.weights), rtol=0, atol=1e-8)
    assert (torch.as_tensor(outs[0]["nodes"]) == torch.as_tensor(outs[1]["nodes"])).all()  # same state on both ranks
    ref_cert = _certified(ref_op)
    for o in outs:
        torch.testing.assert_close(torch.as_tensor(o["defl_nodes"]), torch.as_tensor(ref_cert["defl_nodes"]),
                                   rtol=0, atol=1e-8)
        assert o["adaptive"][3:] == ref_cert["adaptive"][3:]  # the same products and steps
        torch.testing.assert_close(torch.tensor(o["adaptive"][:3]), torch.tensor(ref_cert["adaptive"][:3]),
                                   rtol=0, atol=1e-8)
