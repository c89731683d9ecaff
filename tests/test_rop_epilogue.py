"""rop_epilogue (skipkern.ops.rop_epilogue, the fused R-op's elementwise passes): every backend, through the
op entry, against an independent float64 formula on awkward shapes and every optional-argument
combination; the launchers' layout checks; argument errors (validated once, at the entry); and the fused
HVP with each kernel epilogue against the exact Hessian."""
import itertools

import pytest
import torch
from torch import nn

from skipkern import backends
from skipkern.hessian import HessianOperator
from skipkern.nn import SkipMLP
from skipkern.ops import rop_epilogue_bwd, rop_epilogue_fwd
from tests.utils import assert_close, backend_params, require

F64 = torch.float64
SHAPES = list(itertools.product((1, 5), (1, 3), (1, 7, 33)))  # (n, k, N)
KERNELS = [p for p in backend_params("cpu") if p.values[0] != "torch"]  # backends with their own launcher code

# Small shapes: one intra-op thread (two threads fighting for 2 shared cores cost 10-30x).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_forward_matches_formula(backend, dtype):
    require(backend, "rop_epilogue", "cpu", dtype)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    for (n, k, N), (has_d2, has_skip, has_hsum) in itertools.product(SHAPES, itertools.product((0, 1), repeat=3)):
        out64, d1, d2, skip, hsum, c = r(n, k, N), r(n, N), r(n, N), r(n, k, N), r(n, k, N), -0.37
        d2, skip, hsum = (d2 if has_d2 else None), (skip if has_skip else None), (hsum if has_hsum else None)
        want_out = out64 * d1[:, None] + (0 if skip is None else skip) + (0 if hsum is None else c * hsum)
        cast = [None if t is None else t.to(dtype, copy=True) for t in (out64, d1, d2, skip, hsum)]
        inputs = [None if t is None else t.clone() for t in cast]
        t2_out = None if d2 is None or (n + k) % 2 else torch.full((n, k, N), float("nan"), dtype=dtype)
        out = cast[0]
        t2 = rop_epilogue_fwd(out, *cast[1:], c=c, t2_out=t2_out, backend=backend)
        assert backends.last_used("rop_epilogue") == backend
        what = f"{backend} n={n} k={k} N={N} d2={has_d2} skip={has_skip} hsum={has_hsum}"
        assert out.dtype == dtype
        assert_close(out, want_out, dtype, what + " out")
        if d2 is None:
            assert t2 is None
        else:
            assert_close(t2, out64 * d2[:, None], dtype, what + " t2")
            assert t2_out is None or t2 is t2_out  # written into the caller's buffer
        for a, b in zip(cast[1:], inputs[1:]):  # only out (and t2) are written
            assert a is None or torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_backward_matches_formula(backend, dtype):
    require(backend, "rop_epilogue", "cpu", dtype)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    for (n, k, N), (has_rgh, has_t2) in itertools.product(SHAPES, [(1, 1), (1, 0), (0, 1)]):
        rgh, d1, gh, t2 = r(n, k, N), r(n, N), r(n, N), r(n, k, N)
        rgh, t2 = (rgh if has_rgh else None), (t2 if has_t2 else None)
        want = (0 if rgh is None else rgh * d1[:, None]) + (0 if t2 is None else gh[:, None] * t2)
        cast = [None if t is None else t.to(dtype) for t in (rgh, d1, gh, t2)]
        buf = torch.full((n, k, N), float("nan"), dtype=dtype) if N != 7 else None
        got = rop_epilogue_bwd(*cast, out=buf, backend=backend)
        assert backends.last_used("rop_epilogue") == backend
        assert buf is None or got is buf
        assert got.dtype == dtype
        assert_close(got, want, dtype, f"{backend} n={n} k={k} N={N} rgh={has_rgh} t2={has_t2}")


def test_bad_arguments():
    """Validated once, at the op entry, whatever the backend."""
    out, d1 = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="d1"):
        rop_epilogue_fwd(out, None)
    with pytest.raises(ValueError, match=r"skip_in must have shape \[2, 3, 4\], got \[2, 3, 5\]"):
        rop_epilogue_fwd(out, d1, skip_in=torch.randn(2, 3, 5, dtype=F64))
    with pytest.raises(TypeError, match="d2 must have dtype torch.float64"):
        rop_epilogue_fwd(out, d1, torch.randn(2, 4))
    with pytest.raises(ValueError, match="out must be a 3-D tensor"):
        rop_epilogue_fwd(out[0], d1)
    with pytest.raises(TypeError, match="floating dtype"):
        rop_epilogue_fwd(out.long(), d1.long())
    with pytest.raises(ValueError, match="t2_out is given but d2 is None"):
        rop_epilogue_fwd(out, d1, t2_out=out.clone())
    with pytest.raises(ValueError, match="cannot both be None"):
        rop_epilogue_bwd(None, d1, d1, None)
    with pytest.raises(ValueError, match="t2 is given but gh is None"):
        rop_epilogue_bwd(None, d1, None, out)
    with pytest.raises(ValueError, match="backend must be"):
        rop_epilogue_fwd(out, d1, backend="fortran")


@pytest.mark.parametrize("backend", KERNELS)
def test_launcher_layout_checks(backend):
    """The kernels index flat memory: a strided view or an unsupported dtype is refused, not misread."""
    require(backend, "rop_epilogue", "cpu", F64)
    mod = backends.launcher(backend)
    out, d1 = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="contiguous"):
        mod.rop_epilogue_bwd(out.transpose(0, 1).contiguous().transpose(0, 1), d1, None, None)
    with pytest.raises(TypeError, match="float32 or float64"):
        mod.rop_epilogue_fwd(out.half(), d1.half(), None, None, None, 0.0)
    with pytest.raises(RuntimeError, match="cannot run here"):  # the registry refuses before the launcher
        rop_epilogue_fwd(out.half(), d1.half(), backend=backend)


def test_registry_supports():
    if backends.can_run("cpp", "rop_epilogue", "cpu", F64)[0]:
        cpp = backends.launcher("cpp")
        assert cpp.supports("rop_epilogue", "cpu", torch.float32, ((5, 3, 7),))[0]
        assert not cpp.supports("rop_epilogue", "cpu", torch.float16, ((5, 3, 7),))[0]
        assert not cpp.supports("rop_epilogue", "cuda", torch.float32, ((5, 3, 7),))[0]
        assert backends.resolve("rop_epilogue", "auto", torch.device("cpu"), torch.float64, ((5, 3, 7),)) == "cpp"
    assert backends.launcher("torch").supports("rop_epilogue", "cpu", torch.bfloat16, ())[0]
    assert not backends.launcher("triton").supports("rop_epilogue", "cpu", torch.float16, ((5, 3, 7),))[0]
    assert not backends.launcher("torch").supports("rop_epilogue", "cpu", torch.int64, ())[0]


def _model(arch, activation):
    m = SkipMLP(5, 6, 5, 3, arch=arch, activation=activation, seed=2, dtype=F64)
    with torch.no_grad():
        for layer in m.layers:
            layer.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return m


@pytest.mark.parametrize("arch,activation", [("residual", "tanh"), ("hyper_residual", "gelu"),
                                             ("orthogonal", "relu")])
@pytest.mark.parametrize("backend", KERNELS)
def test_fused_hvp_with_kernel_epilogue_matches_exact(backend, arch, activation, monkeypatch):
    require(backend, "rop_epilogue", "cpu", F64, ((9, 3, 6),))
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
    monkeypatch.setenv("SKIPKERN_BACKEND", backend)  # only the epilogue runs through the registry here
    got = HessianOperator(m, lf, (x, y), backend="fused", batch_size=4).matmat(V)
    assert backends.last_used("rop_epilogue") == backend
    assert float((got - want).norm() / want.norm()) < 1e-10
