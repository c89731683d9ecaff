"""rop_epilogue (the fused R-op's elementwise passes): every backend against an independent float64
formula on awkward shapes and all optional-argument combinations; argument errors; registry support;
and the fused HVP with the cpp / triton epilogue against the exact Hessian."""
import itertools
import logging

import pytest
import torch
from torch import nn

from skipkern import backends
from skipkern.hessian import HessianOperator
from skipkern.hessian.rop_reference import rop_epilogue_bwd_ref, rop_epilogue_fwd_ref
from skipkern.nn import SkipMLP

F64 = torch.float64
SHAPES = list(itertools.product((1, 5), (1, 3), (1, 7, 33)))  # (n, k, N)
TOL = {torch.float64: 1e-14, torch.float32: 2e-6}  # float32: vs the float64 formula, |x| ~ 1


# Small shapes: one intra-op thread (two threads fighting for 2 shared cores cost 10-30x).
pytestmark = pytest.mark.usefixtures("one_thread")


def _launcher(name):
    ok, reason = backends.launcher(name).supports("rop_epilogue", "cpu", torch.float64, ((2, 2, 2),))
    if not ok:
        pytest.skip(f"{name} cannot run rop_epilogue here: {reason}")
    return backends.launcher(name)


def _close(got, want, dtype):
    assert got.dtype == dtype
    err = float((got.double() - want).abs().max()) if want.numel() else 0.0
    assert err <= TOL[dtype] * (1.0 + float(want.abs().max())), err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_forward_matches_formula(name, dtype):
    mod = _launcher(name)
    g = torch.Generator().manual_seed(0)
    for (n, k, N), (has_d2, has_skip, has_hsum) in itertools.product(SHAPES, itertools.product((0, 1), repeat=3)):
        r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
        out64, d1, d2, skip, hsum, c = r(n, k, N), r(n, N), r(n, N), r(n, k, N), r(n, k, N), -0.37
        d2, skip, hsum = (d2 if has_d2 else None), (skip if has_skip else None), (hsum if has_hsum else None)
        want_out = out64 * d1[:, None] + (0 if skip is None else skip) + (0 if hsum is None else c * hsum)
        want_t2 = None if d2 is None else out64 * d2[:, None]
        cast = [None if t is None else t.to(dtype, copy=True) for t in (out64, d1, d2, skip, hsum)]
        inputs = [None if t is None else t.clone() for t in cast]
        t2_out = None if d2 is None or (n + k) % 2 else torch.full((n, k, N), float("nan"), dtype=dtype)
        out = cast[0]
        t2 = mod.rop_epilogue_fwd(out, cast[1], cast[2], cast[3], cast[4], c, t2_out)
        _close(out, want_out, dtype)
        if d2 is None:
            assert t2 is None
        else:
            _close(t2, want_t2, dtype)
            assert t2_out is None or t2 is t2_out  # written into the caller's buffer
        for a, b in zip(cast[1:], inputs[1:]):  # only out (and t2) are written
            assert a is None or torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_backward_matches_formula(name, dtype):
    mod = _launcher(name)
    g = torch.Generator().manual_seed(1)
    for (n, k, N), (has_rgh, has_t2) in itertools.product(SHAPES, [(1, 1), (1, 0), (0, 1)]):
        r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
        rgh, d1, gh, t2 = r(n, k, N), r(n, N), r(n, N), r(n, k, N)
        rgh, t2 = (rgh if has_rgh else None), (t2 if has_t2 else None)
        want = (0 if rgh is None else rgh * d1[:, None]) + (0 if t2 is None else gh[:, None] * t2)
        cast = [None if t is None else t.to(dtype) for t in (rgh, d1, gh, t2)]
        buf = torch.full((n, k, N), float("nan"), dtype=dtype) if N != 7 else None
        got = mod.rop_epilogue_bwd(*cast, buf)
        assert buf is None or got is buf
        _close(got, want, dtype)


@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_bad_arguments(name):
    mod = _launcher(name)
    out, d1 = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="d1"):
        mod.rop_epilogue_fwd(out, None, None, None, None, 0.0)
    with pytest.raises(ValueError, match=r"skip_in must have shape \[2, 3, 4\], got \[2, 3, 5\]"):
        mod.rop_epilogue_fwd(out, d1, None, torch.randn(2, 3, 5, dtype=F64), None, 0.0)
    with pytest.raises(TypeError, match="d2 must have dtype torch.float64"):
        mod.rop_epilogue_fwd(out, d1, torch.randn(2, 4), None, None, 0.0)
    with pytest.raises(ValueError, match="out must be a 3-D tensor"):
        mod.rop_epilogue_fwd(out[0], d1, None, None, None, 0.0)
    with pytest.raises(ValueError, match="cannot both be None"):
        mod.rop_epilogue_bwd(None, d1, d1, None)
    with pytest.raises(ValueError, match="t2 is given but gh is None"):
        mod.rop_epilogue_bwd(None, d1, None, out)
    if name != "torch":  # the kernels index flat memory: strided views must be refused, not misread
        with pytest.raises(ValueError, match="contiguous"):
            mod.rop_epilogue_bwd(out.transpose(0, 1).contiguous().transpose(0, 1), d1, None, None)


def test_registry_supports():
    cpp = backends.launcher("cpp")
    if cpp.available()[0]:
        assert cpp.supports("rop_epilogue", "cpu", torch.float32, ((5, 3, 7),))[0]
        assert not cpp.supports("rop_epilogue", "cpu", torch.float16, ((5, 3, 7),))[0]
        assert not cpp.supports("rop_epilogue", "cuda", torch.float32, ((5, 3, 7),))[0]
        assert backends.resolve("rop_epilogue", "auto", torch.device("cpu"), torch.float64, ((5, 3, 7),)) == "cpp"
    assert backends.launcher("torch").supports("rop_epilogue", "cpu", torch.bfloat16, ())[0]
    tri = backends.launcher("triton")
    assert not tri.supports("rop_epilogue", "cpu", torch.float16, ((5, 3, 7),))[0]
    assert not backends.launcher("cpp").supports("no_such_op", "cpu", torch.float32, ())[0]


def _model(arch, activation):
    m = SkipMLP(5, 6, 5, 3, arch=arch, activation=activation, seed=2, dtype=F64)
    with torch.no_grad():
        for layer in m.layers:
            layer.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return m


@pytest.mark.parametrize("arch,activation", [("residual", "tanh"), ("hyper_residual", "gelu"),
                                             ("orthogonal", "relu")])
def test_fused_hvp_with_kernel_epilogue_matches_exact(arch, activation, monkeypatch, caplog):
    m = _model(arch, activation)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 5, generator=g, dtype=F64), torch.randint(0, 3, (9,), generator=g)
    lf = nn.CrossEntropyLoss()
    names = [n for n, _ in m.named_parameters()]
    shapes, sizes = [p.shape for p in m.parameters()], [p.numel() for p in m.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(v):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}
        return lf(torch.func.functional_call(m, d, (x,)), y)

    H = torch.autograd.functional.hessian(f, flat, vectorize=True)
    V = torch.randn(H.shape[0], 3, generator=g, dtype=F64)
    want = H @ V
    kernels = ["cpp"] + (["triton"] if _supported("triton") else [])
    for name in kernels:
        if not _supported(name):
            pytest.skip(f"{name} cannot run rop_epilogue here")
        monkeypatch.setenv("SKIPKERN_BACKEND", name)  # only the epilogue runs through the registry here
        op = HessianOperator(m, lf, (x, y), backend="fused", batch_size=4)
        with caplog.at_level(logging.INFO, logger="skipkern"):
            got = op.matmat(V)
        assert backends.last_used("rop_epilogue") == name
        assert float((got - want).norm() / want.norm()) < 1e-10, name


def _supported(name):
    return backends.launcher(name).supports("rop_epilogue", "cpu", F64, ((9, 3, 6),))[0]


def test_reference_is_exported():
    out = torch.ones(1, 2, 3, dtype=F64)
    t2 = rop_epilogue_fwd_ref(out, torch.full((1, 3), 2.0, dtype=F64), torch.full((1, 3), 3.0, dtype=F64))
    assert torch.equal(out, torch.full((1, 2, 3), 2.0, dtype=F64)) and torch.equal(t2, torch.full_like(out, 3.0))
    assert torch.equal(rop_epilogue_bwd_ref(None, None, torch.ones(1, 3, dtype=F64), t2), t2)
