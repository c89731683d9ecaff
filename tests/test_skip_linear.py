"""skip_linear on every backend against the float64 plain-torch reference.

Launchers (each backend's skip_linear_fwd / skip_linear_bwd, integer codes) over every activation x skip
kind x awkward shapes x dtype; the op (skipkern.ops.skip_linear: glue, autograd) with the output and every
gradient from one shared grad_output; float64 gradcheck / gradgradcheck; opcheck; NaN/Inf, empty sizes,
strides and leading dims; bad input (checked once, at the entry; launchers check layout); backend
resolution; torch.compile. Backend-specific paths (OpenMP teams, Triton tiles, CUDA splits) are in
tests/test_skip_linear_backends.py. Tolerances: tests/utils.py TOLERANCES.
"""
import pytest
import torch

import skipkern
from skipkern.ops import skip_linear
from skipkern.reference import ACTIVATION_CODES as AC
from skipkern.reference import ACTIVATIONS, KERNEL_ABI, SKIPS, activation_grad_ref, skip_linear_composite
from skipkern.reference import SKIP_CODES as SK
from tests.utils import (assert_close, backend_params, cast, compare_skip_linear_launcher, launcher_params, require,
                         skip_linear_inputs)

F64, F32 = torch.float64, torch.float32
HALVES = (torch.float16, torch.bfloat16)
# (K, N): square for every skip kind; in != out only without a skip or through a dense Q.
SQUARE, RECT = ((1, 1), (7, 7), (128, 128), (130, 130)), ((7, 5), (1, 7), (128, 130), (130, 128))
BATCHES = (1, 3, 257)
# The Triton interpreter is slow: (B, K, N) of the same kinds, smaller and fewer.
SQUARE_INTERP, RECT_INTERP = ((1, 1, 1), (3, 7, 7), (37, 33, 33)), ((1, 1, 1), (3, 7, 20), (37, 33, 7), (1, 20, 1))


# Small shapes: one intra-op thread (two threads fighting over two busy cores cost 10-30x); the cpp kernels'
# multi-thread paths are tested in tests/test_skip_linear_backends.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def _interp(backend, device):
    return backend == "triton" and device == "cpu"


def _launcher_dtype_params():
    """(backend, device, dtype): float64 and float32 everywhere, the half types on CUDA devices."""
    return [pytest.param(*p.values, dtype, id=f"{p.id}-{str(dtype)[6:]}") for p in launcher_params()
            for dtype in (F64, F32) + (HALVES if p.values[1] == "cuda" else ())]


# ------------------------------------------------------------------------------------------ launchers
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("backend,device,dtype", _launcher_dtype_params())
def test_launchers_match_reference(backend, device, dtype, act, skip):
    require(backend, "skip_linear", device, dtype)
    mod = skipkern.backends.launcher(backend)
    if _interp(backend, device):
        shapes = SQUARE_INTERP if skip == "identity" else RECT_INTERP
    else:
        shapes = [(b, k, n) for b in BATCHES for k, n in SQUARE + (RECT if skip != "identity" else ())]
    for i, (b, k, n) in enumerate(shapes):
        compare_skip_linear_launcher(mod, device, dtype, b, k, n, skip, act, bias=i % 3 != 1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf - inf inside the Triton interpreter
@pytest.mark.parametrize("backend,device", launcher_params())
def test_launchers_propagate_nan_inf_like_reference(backend, device):
    require(backend, "skip_linear", device, F64)
    from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
    mod = skipkern.backends.launcher(backend)
    x, w, bb, q, gy = (cast(t, F64, device) for t in skip_linear_inputs(9, 17, 17, "dense"))
    x[2, 3], x[5, 0], gy[4, 1] = float("nan"), float("inf"), float("nan")
    for (skip, qq), act in zip((("identity", None), ("dense", q)) * 2, ACTIVATIONS):
        y, z = mod.skip_linear_fwd(x, w, bb, qq, SK[skip], AC[act])
        y_ref, z_ref = skip_linear_ref(x, w, bb, qq, skip, act)
        got = (y, z) + mod.skip_linear_bwd(gy, x, w, z_ref, qq, SK[skip], AC[act], True)
        ref = (y_ref, z_ref) + skip_linear_bwd_ref(gy, x, w, z_ref, qq, skip, act, True)
        for name, a, r in zip(("y", "z", "dx", "dW", "db"), got, ref):
            assert_close(a, r, F64, f"{backend} {skip} {act} {name}", equal_nan=True)


@pytest.mark.parametrize("backend,device", launcher_params())
def test_launchers_empty_sizes(backend, device):
    require(backend, "skip_linear", device, F64)
    mod = skipkern.backends.launcher(backend)
    r = lambda *s: torch.randn(*s, dtype=F64, device=device)  # noqa: E731
    x, w = r(0, 5), r(4, 5)
    y, z = mod.skip_linear_fwd(x, w, None, None, SK["none"], AC["relu"])
    assert y.shape == (0, 4) and z.shape == (0, 4)
    dx, dw, db = mod.skip_linear_bwd(r(0, 4), x, w, z, None, SK["none"], AC["relu"], True)
    assert dx.shape == (0, 5) and torch.all(dw == 0) and torch.all(db == 0)
    x0, w0, b0, gy = r(3, 0), r(4, 0), r(4), r(3, 4)  # K = 0: z is the bias, db still flows
    y, z = mod.skip_linear_fwd(x0, w0, b0, None, SK["none"], AC["gelu"])
    assert_close(z, b0.expand(3, 4), F64, "z = b")
    _, dw, db = mod.skip_linear_bwd(gy, x0, w0, z, None, SK["none"], AC["gelu"], True)
    assert dw.shape == (4, 0)
    assert_close(db, (gy * activation_grad_ref(b0, "gelu")).sum(0), F64, "db")


@pytest.mark.parametrize("backend,device", [p for p in launcher_params() if p.values[0] != "torch"])
def test_launchers_refuse_bad_input(backend, device):
    """The shared launcher check (skipkern.backends.tensor_checks): names the argument, expected, actual."""
    require(backend, "skip_linear", device, F32)
    mod = skipkern.backends.launcher(backend)
    x, w, bb, q, g = (cast(t, F32, device) for t in skip_linear_inputs(4, 6, 5, "dense"))
    cases = [
        (TypeError, "weight must have dtype", lambda: mod.skip_linear_fwd(x, w.double(), bb, q, SK["dense"], 0)),
        (TypeError, "float32", lambda: mod.skip_linear_fwd(x.int(), w.int(), None, None, SK["none"], 0)),
        (ValueError, "same K", lambda: mod.skip_linear_fwd(x[:, :5], w, bb, q, SK["dense"], 0)),
        (ValueError, "in_features == out_features", lambda: mod.skip_linear_fwd(x, w, bb, None, SK["identity"], 0)),
        (ValueError, "q must be given", lambda: mod.skip_linear_fwd(x, w, bb, None, SK["dense"], 0)),
        (ValueError, r"bias must have shape \[5\], got \[3\]", lambda: mod.skip_linear_fwd(x, w, bb[:3], q, 2, 0)),
        (ValueError, "z must have shape", lambda: mod.skip_linear_bwd(g, x, w, g[:, :4], q, SK["dense"], 0, True)),
    ]
    if backend != "triton":  # raw pointers: layout is checked; Triton reads any strides
        cases.append((ValueError, "weight must be contiguous",
                      lambda: mod.skip_linear_fwd(x, w.t().contiguous().t(), None, None, SK["none"], 0)))
    if backend == "cpp":  # the C++ binding guards the enum range
        cases.append((ValueError, "activation code must be in", lambda: mod.skip_linear_fwd(x, w, bb, q, 2, 7)))
    for exc, text, call in cases:
        with pytest.raises(exc, match=text):
            call()


# ---------------------------------------------------------------------------------------------- op
# (B, K, N, skip): batch 1/3/257, widths 1/7/128/130, in != out through a dense Q.
CASES = [(1, 1, 1, "identity"), (3, 7, 7, "identity"), (257, 130, 130, "identity"), (3, 7, 5, "dense"),
         (257, 128, 130, "dense"), (1, 130, 128, "dense"), (3, 7, 9, "none"), (257, 1, 7, "none")]
_SMALL = {257: 37, 130: 33, 128: 20}  # the same cases for the Triton interpreter
_FAST_TRITON = {(F64, "relu"), (F32, "gelu")}  # the interpreter's other op cases run in the slow lane


def _op_params():
    out = []
    for backend in [p.values[0] for p in backend_params("cpu")]:
        for dtype in (F64, F32):
            for act in ACTIVATIONS:
                slow = backend == "triton" and (dtype, act) not in _FAST_TRITON
                out.append(pytest.param(backend, dtype, act, id=f"{backend}-{str(dtype)[6:]}-{act}",
                                        marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("backend,dtype,act", _op_params())
def test_op_matches_reference(backend, dtype, act, case):
    """skip_linear(..., backend=...) forward and autograd backward; every gradient from one grad_output."""
    require(backend, "skip_linear", "cpu", dtype)
    b, k, n, skip = case
    if backend == "triton":
        b, k, n = (_SMALL.get(v, v) for v in (b, k, n))
    x, w, bias, q, g = skip_linear_inputs(b, k, n, skip)
    skip_arg = q if skip == "dense" else skip

    def run(fn, dt):
        leaves = [cast(t, dt).requires_grad_() for t in (x, w, bias)]
        y = fn(*leaves, skip_arg.to(dt) if skip == "dense" else skip_arg, act)
        y.backward(g.to(dt))
        return (y,) + tuple(t.grad for t in leaves)

    ref = run(skip_linear_composite, F64)
    got = run(lambda *a: skip_linear(*a, backend=backend), dtype)
    assert skipkern.backends.last_used("skip_linear") == backend
    for name, a, r, terms in zip(("y", "dx", "dW", "db"), got, ref, (1, 1, b, b)):
        assert a.dtype == dtype
        assert_close(a, r, dtype, f"{backend} {name}", terms=terms)


def _gradcheck_params():
    # The interpreter takes seconds per case; its backward kernels are in the fast lane through the launchers.
    return [pytest.param(b, s, a, id=f"{b}-{s}-{a}", marks=[pytest.mark.slow] if b == "triton" else [])
            for b in [p.values[0] for p in backend_params("cpu")] for s in SKIPS for a in ACTIVATIONS]


@pytest.mark.parametrize("backend,skip,activation", _gradcheck_params())
def test_gradcheck_gradgradcheck(backend, skip, activation):
    require(backend, "skip_linear", "cpu", F64)
    k, n = (4, 4) if skip == "identity" else (4, 3)
    x, w, bias, q, _ = skip_linear_inputs(3, k, n, skip, seed=1)
    s = q if skip == "dense" else skip
    args = tuple(t.requires_grad_() for t in (x, w, bias))
    f = lambda xx, ww, bb: skip_linear(xx, ww, bb, s, activation, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    assert skipkern.backends.last_used("skip_linear") == backend


@pytest.mark.parametrize("backend", backend_params("cpu"))
@pytest.mark.slow
def test_opcheck(backend):
    require(backend, "skip_linear", "cpu", F32)
    x, w, b, q = torch.randn(4, 5), torch.randn(6, 5), torch.randn(6), torch.randn(6, 5)
    torch.library.opcheck(torch.ops.skipkern.skip_linear_fwd, (x, w, b, q, SK["dense"], AC["relu"], backend, "ieee"))
    g, z = torch.randn(4, 6), torch.randn(4, 6)
    combos = ((True, False, True),) if backend == "triton" else ((True, True, True), (True, False, True),
                                                                  (False, True, False))  # the interpreter is slow
    for has_bias, needs_dx, needs_dw in combos:
        torch.library.opcheck(torch.ops.skipkern.skip_linear_bwd, (g, x, w, z, q, SK["dense"], AC["gelu"], has_bias,
                                                                   needs_dx, needs_dw, backend, "auto"))


@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_op_strides_leading_dims_empty_nan(backend):
    require(backend, "skip_linear", "cpu", F64)
    x = torch.randn(9, 4, 2, dtype=F64)[:, :, 0]  # [9, 4], strided
    w = torch.randn(4, 5, dtype=F64).T  # [5, 4], non-contiguous
    bias = torch.randn(10, dtype=F64)[::2]  # [5], strided
    assert not x.is_contiguous() and not w.is_contiguous() and not bias.is_contiguous()
    y = skip_linear(x, w, bias, None, "tanh", backend=backend)
    assert_close(y, skip_linear_composite(x, w, bias, None, "tanh"), F64, "strided")
    x3, w5 = torch.randn(2, 3, 5, dtype=F64), torch.randn(5, 5, dtype=F64, requires_grad=True)
    y3 = skip_linear(x3, w5, None, "identity", "relu", backend=backend)
    assert y3.shape == (2, 3, 5)
    assert_close(y3, skip_linear_composite(x3, w5, None, "identity", "relu"), F64, "leading dims")
    y0 = skip_linear(torch.randn(0, 5, dtype=F64), w5, None, "identity", backend=backend)
    assert y0.shape == (0, 5)
    y0.sum().backward()
    assert torch.equal(w5.grad, torch.zeros(5, 5, dtype=F64))
    xn = torch.randn(3, 5, dtype=F64)
    xn[1, 2] = float("nan")
    yn = skip_linear(xn, w5.detach(), None, None, "relu", backend=backend)
    assert torch.isnan(yn[1]).all() and torch.isfinite(yn[[0, 2]]).all(), "NaN must propagate like torch.relu"


# ------------------------------------------------------------------------ only the gradients autograd needs
# (x, W, b).requires_grad; the first is the input layer of a net fed with data (no dx wanted).
NEEDS = ((True, True, True), (False, True, True), (True, False, False), (False, False, True), (False, True, False))


def _spy_backward(backend: str, monkeypatch) -> list:
    """Per backward call of ``backend``, the set of the big products its kernels were asked for: "dx" and
    "dw" (cpp: non-null output pointers of the C++ kernel; triton: the dx / dW kernels launched, the dW
    kernel also serving db; torch: the reference's needs_dx / needs_dw)."""
    calls: list = []
    if backend == "cpp":
        from skipkern.backends import cpp as mod
        real = mod._C

        class Spy:
            def __getattr__(self, name):
                return getattr(real, name)

            def skip_linear_bwd_cpu(self, *a):  # (dtype, gy, x, w, z, q, dx, dw, db, M, K, N, skip, act)
                calls.append({n for n, ptr in (("dx", a[6]), ("dw", a[7])) if ptr})
                return real.skip_linear_bwd_cpu(*a)
        monkeypatch.setattr(mod, "_C", Spy())
    elif backend == "triton":
        from skipkern.kernels import skip_linear as ks
        real_bwd, real_launch = ks.skip_linear_bwd, ks._launch_2d

        def bwd(*a, **kw):
            calls.append(set())
            return real_bwd(*a, **kw)

        def launch(kind, *a, **kw):
            calls[-1].add(kind)
            return real_launch(kind, *a, **kw)
        monkeypatch.setattr(ks, "skip_linear_bwd", bwd)
        monkeypatch.setattr(ks, "_launch_2d", launch)
    else:
        from skipkern.backends import torch_backend as mod
        real_ref = mod.skip_linear_bwd_ref

        def ref(*a):  # (grad_y, x, weight, z, q, skip, activation, has_bias, needs_dx, needs_dw)
            calls.append({n for n, need in (("dx", a[8]), ("dw", a[9])) if need})
            return real_ref(*a)
        monkeypatch.setattr(mod, "skip_linear_bwd_ref", ref)
    return calls


@pytest.mark.parametrize("needs", NEEDS, ids=lambda n: "".join("xwb"[i] if r else "-" for i, r in enumerate(n)))
@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_backward_computes_only_needed_gradients(backend, needs, monkeypatch):
    """The gradients equal the reference's, and the kernels compute no dx for an x that needs none (nor
    dW for a frozen W): the launchers receive needs_dx / needs_dw from ctx.needs_input_grad."""
    require(backend, "skip_linear", "cpu", F64)
    calls = _spy_backward(backend, monkeypatch)
    x, w, bias, q, g = skip_linear_inputs(37, 20, 20, "dense")
    for skip_arg in ("identity", q):
        leaves = [t.clone().requires_grad_(r) for t, r in zip((x, w, bias), needs)]
        want = [t for t in leaves if t.requires_grad]
        got = torch.autograd.grad(skip_linear(*leaves, skip_arg, "gelu", backend=backend), want, g)
        ref = torch.autograd.grad(skip_linear_composite(*leaves, skip_arg, "gelu"), want, g)
        for a, r in zip(got, ref):
            assert_close(a, r, F64, f"{backend} needs={needs}")
        expect = {"dx"} if needs[0] else set()
        if needs[1] or (backend == "triton" and needs[2]):  # Triton's dW kernel also sums db
            expect.add("dw")
        assert calls[-1] == expect, (skip_arg if isinstance(skip_arg, str) else "dense", calls)
    assert len(calls) == 2


@pytest.mark.parametrize("backend,device", launcher_params())
def test_launchers_skip_unneeded_outputs(backend, device):
    """Every launcher: needs_dx / needs_dw False return None there and the same dW / db / dx otherwise."""
    require(backend, "skip_linear", device, F64)
    from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref
    mod = skipkern.backends.launcher(backend)
    x, w, bb, q, gy = (cast(t, F64, device) for t in skip_linear_inputs(37, 33, 20, "dense"))
    _, z = mod.skip_linear_fwd(x, w, bb, q, SK["dense"], AC["tanh"])
    ref = skip_linear_bwd_ref(gy, x, w, z, q, "dense", "tanh", True)
    for has_bias, needs_dx, needs_dw in ((True, False, True), (True, True, False), (True, False, False),
                                         (False, False, True)):
        got = mod.skip_linear_bwd(gy, x, w, z, q, SK["dense"], AC["tanh"], has_bias, needs_dx, needs_dw)
        for name, a, r, need in zip(("dx", "dW", "db"), got, ref, (needs_dx, needs_dw, has_bias)):
            if need:
                assert_close(a, r, F64, f"{backend} {name}", terms=37)
            else:
                assert a is None, f"{backend}: {name} was not asked for"


def _double_backward_params():
    return [pytest.param(b, id=b, marks=[pytest.mark.slow] if b == "triton" else [])
            for b in [p.values[0] for p in backend_params("cpu")]]


@pytest.mark.parametrize("backend", _double_backward_params())
def test_gradgradcheck_when_some_inputs_need_no_gradient(backend):
    """Double backward (the Hessian-vector products of the spectra) through a layer whose x is data, and
    through one whose weights are frozen."""
    require(backend, "skip_linear", "cpu", F64)
    x, w, bias, q, _ = skip_linear_inputs(3, 4, 4, "dense", seed=2)
    for s, act in (("identity", "tanh"), (q, "gelu")):
        f = lambda ww, bb: skip_linear(x, ww, bb, s, act, backend=backend)  # noqa: E731
        args = (w.clone().requires_grad_(), bias.clone().requires_grad_())
        assert torch.autograd.gradcheck(f, args) and torch.autograd.gradgradcheck(f, args)
        h = lambda xx: skip_linear(xx, w, bias, s, act, backend=backend)  # noqa: E731
        xa = (x.clone().requires_grad_(),)
        assert torch.autograd.gradcheck(h, xa) and torch.autograd.gradgradcheck(h, xa)
    assert skipkern.backends.last_used("skip_linear") == backend


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x, w, b = torch.randn(6, 8), torch.randn(8, 8), torch.randn(8)
    f = torch.compile(lambda t: skip_linear(t, w, b, "identity", "relu"), fullgraph=True)
    torch.testing.assert_close(f(x), skip_linear_composite(x, w, b, "identity", "relu"))
    # backward through the compiled graph with a data input: dW and db only, as in eager
    wr = w.clone().requires_grad_()
    g = torch.compile(lambda t, ww: skip_linear(t, ww, b, "identity", "gelu", precision="ieee"), fullgraph=True)
    got = torch.autograd.grad(g(x, wr).square().sum(), wr)[0]
    ref = torch.autograd.grad(skip_linear_composite(x, wr, b, "identity", "gelu").square().sum(), wr)[0]
    torch.testing.assert_close(got, ref)


def test_dense_skip_gradient_when_q_requires_grad():
    x, w, q = (torch.randn(3, 4, dtype=F64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, c: skip_linear(a, w, None, c, "tanh"), (x, q))


# ----------------------------------------------------------------------------- bad input, resolution
@pytest.mark.parametrize("bad, exc, word", [
    (dict(x=torch.randn(3, 5)), ValueError, "x must have shape"),
    (dict(w=torch.randn(4)), ValueError, "weight must be 2-D"),
    (dict(b=torch.randn(3)), ValueError, "bias must have shape"),
    (dict(x=torch.randn(3, 4, dtype=F64)), TypeError, "dtype"),
    (dict(x=torch.ones(3, 4, dtype=torch.int64)), TypeError, "floating dtype"),
    (dict(skip="identity", w=torch.randn(5, 4), b=torch.randn(5)), ValueError, "in_features == out_features"),
    (dict(skip=torch.randn(4, 3)), ValueError, "skip tensor Q must have shape"),
    (dict(skip="orthogonal"), ValueError, "skip must be None"),
    (dict(activation="sigmoid"), ValueError, "activation must be one of"),
    (dict(b=torch.randn(4, device="meta")), ValueError, "device"),
])
def test_bad_input_errors(bad, exc, word):
    args = dict(x=torch.randn(3, 4), w=torch.randn(4, 4), b=torch.randn(4), skip=None, activation="relu")
    args.update(bad)
    with pytest.raises(exc, match=word):
        skip_linear(args["x"], args["w"], args["b"], args["skip"], args["activation"])


def test_backend_resolution(monkeypatch):
    x, w = torch.randn(2, 3), torch.randn(3, 3)
    with pytest.raises(ValueError, match="backend must be"):
        skip_linear(x, w, backend="fortran")
    with pytest.raises(RuntimeError, match="alternatives"):
        skip_linear(x, w, backend="cuda")
    monkeypatch.setenv("SKIPKERN_BACKEND", "torch")
    skip_linear(x, w)
    assert skipkern.backends.last_used() == "torch"
    monkeypatch.setenv("SKIPKERN_BACKEND", "nope")
    with pytest.raises(ValueError, match="SKIPKERN_BACKEND"):
        skip_linear(x, w)
    monkeypatch.delenv("SKIPKERN_BACKEND")
    skip_linear(x, w)
    cpp_ok = {b.name: b.available for b in skipkern.backends.available()}["cpp"]
    assert skipkern.backends.last_used() == ("cpp" if cpp_ok else "torch")


def test_auto_skips_backends_that_cannot_honour_the_precision(monkeypatch):
    """precision="tf32" with backend auto on CUDA must go to triton (cuda's fp32 products are IEEE), not
    resolve to cuda and then raise; an explicit backend that cannot honour it still raises."""
    from skipkern import backends
    monkeypatch.setattr(backends, "can_run", lambda name, *a, **k: (True, ""))
    monkeypatch.delenv("SKIPKERN_BACKEND", raising=False)
    pick = backends.resolve("skip_linear", "auto", torch.device("cuda"), torch.float32, precision="tf32")
    assert pick == "triton"
    assert backends.resolve("skip_linear", "auto", torch.device("cuda"), torch.float32, precision="ieee") == "cuda"
    assert backends.resolve("skip_linear", "auto", torch.device("cuda"), torch.float32) == "cuda"
    with pytest.raises(ValueError, match="tf32"):
        skip_linear(torch.randn(2, 3), torch.randn(3, 3), backend="cpp", precision="tf32")


def test_available_lists_every_backend_with_reason():
    st = {b.name: b for b in skipkern.backends.available()}
    assert set(st) == {"torch", "cpp", "triton", "cuda"}
    assert st["torch"].available
    for b in st.values():
        assert b.available or b.reason


def test_kernel_enums_match_the_python_table():
    """csrc/op_codes.h (C++ and CUDA) spells each code as k<Name> = position in skipkern.reference's table."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "csrc" / "op_codes.h").read_text()
    for enum, names in (("Act", ACTIVATIONS), ("Skip", SKIPS)):
        body = re.search(r"enum class " + enum + r" : int \{([^}]*)\}", header).group(1)
        got = {m[0]: int(m[1]) for m in re.findall(r"k(\w+) = (\d+)", body)}
        assert got == {n.capitalize(): i for i, n in enumerate(names)}, (enum, got)
        assert f"kNum{enum} = {len(names)}" in header
    assert f"kAbi = {KERNEL_ABI}" in header
