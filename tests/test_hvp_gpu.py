"""GPUFusedHVP (skipkern.hessian.hvp_gpu) and its R-layer kernels (kernels/rop_layer.py).

The kernels against the unfused torch composition; the product against FusedHVP (itself tested against
the exact Hessian) for the nets it fuses, and the fallback for the others; one loss check per product. On
CPU the kernels run in the Triton interpreter (small shapes); on a GPU compiled, with IEEE products here
(TF32/bf16 are measured by bench/bench_hvp_gpu.py, not asserted).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skipkern.hessian import HessianOperator
from skipkern.hessian.hvp_gpu import GPUFusedHVP, gpu_operator
from skipkern.nn import SkipMLP
from tests.utils import assert_close, ensure_backend

F64 = torch.float64


@pytest.fixture(scope="module")
def rk():
    ensure_backend("triton")
    from skipkern.kernels import rop_layer as k
    return k


@pytest.fixture(scope="module")
def device(rk):
    return "cpu" if rk.INTERPRET else "cuda"


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_rop_layer_kernels(rk, device, dtype):
    n, k, N, K = 37, 3, 20, 20
    r = lambda *s: torch.randn(*s, dtype=F64)  # noqa: E731
    a, dirs, rh, w, d1 = r(n, K + 1), r(k, N, K + 1), r(n, k, K), r(N, K), (r(n, N) > 0).double()
    dev = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    out = torch.empty(n, k, N, dtype=dtype, device=device)
    rk.rop_layer_fwd(dev(a), dev(dirs), dev(rh), dev(w), dev(d1), True, out)
    ref = (torch.einsum("ij,dnj->idn", a, dirs) + rh @ w.T) * d1[:, None, :] + rh
    assert_close(out.cpu(), ref, dtype, "R h")
    rk.rop_layer_fwd(dev(a), dev(dirs), None, dev(w), None, False, out)  # output layer of the input: no epilogue
    assert_close(out.cpu(), torch.einsum("ij,dnj->idn", a, dirs), dtype, "R z")
    rk.rop_layer_fwd(dev(a), None, dev(rh), dev(w), dev(d1), True, out, init=True)  # wide layers: out holds A Dir^T
    assert_close(out.cpu(), ref, dtype, "R h (init)")
    rgz, gz, rghn, d1k = r(n, k, N), r(n, N), r(n, k, K), (r(n, K) > 0).double()
    new, rgh = torch.empty(n, k, K, dtype=dtype, device=device), torch.empty(n, k, K, dtype=dtype, device=device)
    rk.rop_layer_bwd(dev(rgz), dev(w), dev(gz), dev(dirs), dev(rghn), dev(d1k), new, rgh)
    s = rgz @ w + torch.einsum("in,dnk->idk", gz, dirs[:, :, :K]) + rghn
    assert_close(rgh.cpu(), s, dtype, "R g")
    assert_close(new.cpu(), s * d1k[:, None, :], dtype, "R delta")


def _ops(model, data, **kw):
    base = HessianOperator(model, F.cross_entropy, data, backend="fused", dtype=F64)
    return base, gpu_operator(model, F.cross_entropy, data, dtype=F64, **kw)


@pytest.mark.parametrize("arch,act", [("residual", "relu"), ("plain", "identity"), ("hyper_residual", "relu"),
                                      ("residual", "tanh")])
def test_matches_fused_hvp(rk, device, arch, act, monkeypatch):
    from skipkern.hessian import hvp_gpu
    monkeypatch.setattr(hvp_gpu, "WIDE", 5)  # the 5-wide input layer takes the cuBLAS + init path
    model = SkipMLP(5, 12, 4, 3, arch=arch, activation=act, seed=0, dtype=F64).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, 5, generator=g, dtype=F64), torch.randint(0, 3, (23,), generator=g)
    base, op = _ops(model, (x.to(device), y.to(device)), memory_fraction=0.5)
    V = torch.randn(base.shape[0], 4, dtype=F64, device=device)
    calls = []
    real = rk.rop_layer_fwd
    monkeypatch.setattr(rk, "rop_layer_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = op @ V
    assert_close(got.cpu(), (base @ V).cpu(), F64, f"HV {arch}/{act}")
    fused = arch in ("residual", "plain") and act in ("relu", "identity")
    assert len(calls) == (5 if fused else 0)  # one per layer (4 hidden + output) on the fused path


@pytest.mark.slow
def test_small_budget_many_chunks_and_bad_loss(rk, device):
    model = SkipMLP(5, 12, 3, 3, seed=0, dtype=F64).to(device)
    x, y = torch.randn(30, 5, dtype=F64).to(device), torch.randint(0, 3, (30,)).to(device)
    base, op = _ops(model, (x, y), memory_fraction=0.5)
    impl = op._impl
    V = torch.randn(base.shape[0], 2, dtype=F64, device=device)
    rows = impl.batch_hvp(x, y, V.T.contiguous(), memory_budget=60_000)  # several chunks on the CPU
    want = base._impl.batch_hvp(x, y, V.T.contiguous(), memory_budget=60_000)
    assert_close(rows.cpu(), want.cpu(), F64, "chunked HV")
    x_bad = x.clone()
    x_bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        impl.batch_hvp(x_bad, y, V.T.contiguous(), memory_budget=60_000)


def test_arguments():
    model = SkipMLP(5, 12, 3, 3, seed=0)
    with pytest.raises(ValueError, match="products"):
        GPUFusedHVP(model, F.cross_entropy, [], torch.float32, products="fp8")
    with pytest.raises(ValueError, match="rounds float32"):
        GPUFusedHVP(model, F.cross_entropy, [], F64, products="tf32")
    with pytest.raises(ValueError, match="memory_fraction"):
        GPUFusedHVP(model, F.cross_entropy, [], torch.float32, memory_fraction=1.5)
