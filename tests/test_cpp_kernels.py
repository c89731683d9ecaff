"""The C++ CPU kernels (skipkern.backends.cpp) against the float64 plain-torch reference.

Launchers are called directly (every activation x skip kind x awkward shapes, float64 tight and
float32 within tests/utils.py TOLERANCES), through the serial and the OpenMP paths and across several
backward row chunks; then through skipkern.ops.skip_linear(backend="cpp") with gradcheck. Bad input to
the launchers raises ValueError/TypeError; NaN/Inf propagate as in the reference.
"""
import pytest
import torch

from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATIONS, SKIPS, skip_linear_composite
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
from tests.utils import TOLERANCES, ensure_backend

BATCHES = (1, 3, 257)
SQUARE = ((1, 1), (7, 7), (128, 128), (130, 130))   # (K, N) for every skip kind
RECT = ((7, 5), (1, 7), (128, 130), (130, 128))       # in != out: skip "none" and "dense" (Q)


@pytest.fixture(scope="module")
def cpp():
    ensure_backend("cpp")
    from skipkern.backends import cpp as mod
    return mod


def _inputs(b, k, n, skip, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) / max(k, 1) ** 0.5
    bb = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    q = torch.randn(n, k, generator=g, dtype=torch.float64) / max(k, 1) ** 0.5 if skip == "dense" else None
    gy = torch.randn(b, n, generator=g, dtype=torch.float64)
    return x, w, bb, q, gy


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _compare(cpp, dtype, b, k, n, skip, act, bias=True):
    rtol, atol, _ = TOLERANCES[dtype]
    x, w, bb, q, gy = _inputs(b, k, n, skip, bias)
    y_ref, z_ref = skip_linear_ref(x, w, bb, q, skip, act)
    y, z = cpp.skip_linear_fwd(*(_cast(t, dtype) for t in (x, w, bb, q)), SK[skip], AC[act])
    assert y.dtype == dtype and y.shape == (b, n) and z.shape == (b, n)
    what = f"{dtype} B={b} K={k} N={n} skip={skip} act={act} bias={bias}"
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol, msg=lambda m: f"y {what}: {m}")
    torch.testing.assert_close(z.double(), z_ref, rtol=rtol, atol=atol, msg=lambda m: f"z {what}: {m}")
    # Backward at the reference z, so float32 compares the backward alone (relu kinks stay put).
    ref = skip_linear_bwd_ref(gy, x, w, z_ref, q, skip, act, bias)
    got = cpp.skip_linear_bwd(*(_cast(t, dtype) for t in (gy, x, w, z_ref, q)), SK[skip], AC[act], bias)
    for name, a, r in zip(("dx", "dw", "db"), got, ref):
        if r is None:
            assert a is None, f"{name} should be None without bias"
            continue
        # Row sums over B=257 terms: scale atol with the reduction length.
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol * max(1.0, b / 16),
                                   msg=lambda m: f"{name} {what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_launchers_match_reference(cpp, dtype, skip, act):
    shapes = SQUARE + (RECT if skip != "identity" else ())
    for b in BATCHES:
        for k, n in shapes:
            _compare(cpp, dtype, b, k, n, skip, act, bias=(b != 3))


@pytest.mark.parametrize("skip", SKIPS)
def test_many_row_chunks_and_threads(cpp, skip):
    """Wide layers: the backward walks several dx row chunks and dW row blocks per thread (block sizes
    shrink as the width grows) and sums the threads' partial dW/db."""
    prev = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            _compare(cpp, torch.float64, 300, 512, 512, skip, "relu")
        _compare(cpp, torch.float32, 300, 520, 520, skip, "gelu")
        if skip != "identity":
            _compare(cpp, torch.float64, 301, 520, 33, skip, "tanh")
    finally:
        torch.set_num_threads(prev)


def test_thread_counts_agree(cpp):
    x, w, bb, q, gy = _inputs(257, 130, 130, "dense")
    outs = []
    prev = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            y, z = cpp.skip_linear_fwd(x, w, bb, q, SK["dense"], AC["relu"])
            outs.append((y, z) + cpp.skip_linear_bwd(gy, x, w, z, q, SK["dense"], AC["relu"], True))
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_nan_inf_propagate_like_reference(cpp):
    x, w, bb, q, gy = _inputs(9, 7, 7, "identity")
    x[2, 3], x[5, 0], gy[4, 1] = float("nan"), float("inf"), float("nan")
    for act in ACTIVATIONS:
        y_ref, z_ref = skip_linear_ref(x, w, bb, None, "identity", act)
        y, z = cpp.skip_linear_fwd(x, w, bb, None, SK["identity"], AC[act])
        torch.testing.assert_close(y, y_ref, equal_nan=True, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(z, z_ref, equal_nan=True, rtol=1e-10, atol=1e-10)
        ref = skip_linear_bwd_ref(gy, x, w, z_ref, None, "identity", act, True)
        got = cpp.skip_linear_bwd(gy, x, w, z_ref, None, SK["identity"], AC[act], True)
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r, equal_nan=True, rtol=1e-10, atol=1e-10)


def test_empty_sizes(cpp):
    x, w = torch.randn(0, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    y, z = cpp.skip_linear_fwd(x, w, None, None, SK["none"], AC["relu"])
    assert y.shape == (0, 4)
    dx, dw, db = cpp.skip_linear_bwd(torch.randn(0, 4, dtype=torch.float64), x, w, z, None, SK["none"], AC["relu"], True)
    assert dx.shape == (0, 5) and torch.all(dw == 0) and torch.all(db == 0)
    # K = 0: z is the bias, db still flows.
    x0, w0, b0 = torch.randn(3, 0, dtype=torch.float64), torch.randn(4, 0, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y, z = cpp.skip_linear_fwd(x0, w0, b0, None, SK["none"], AC["identity"])
    torch.testing.assert_close(z, b0.expand(3, 4))
    gy = torch.randn(3, 4, dtype=torch.float64)
    _, _, db = cpp.skip_linear_bwd(gy, x0, w0, z, None, SK["none"], AC["identity"], True)
    torch.testing.assert_close(db, gy.sum(0))


def test_bad_input_raises(cpp):
    x, w = torch.randn(4, 6), torch.randn(5, 6)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        cpp.skip_linear_fwd(x.to(torch.int32), w.to(torch.int32), None, None, SK["none"], AC["relu"])
    with pytest.raises(TypeError, match="weight must have dtype"):
        cpp.skip_linear_fwd(x, w.double(), None, None, SK["none"], AC["relu"])
    with pytest.raises(ValueError, match="contiguous"):
        cpp.skip_linear_fwd(torch.randn(6, 4).t(), w, None, None, SK["none"], AC["relu"])
    with pytest.raises(ValueError, match="bias must have shape"):
        cpp.skip_linear_fwd(x, w, torch.randn(4), None, SK["none"], AC["relu"])
    with pytest.raises(ValueError, match="in_features == out_features"):
        cpp.skip_linear_fwd(x, w, None, None, SK["identity"], AC["relu"])
    with pytest.raises(ValueError, match="q must be given"):
        cpp.skip_linear_fwd(x, w, None, None, SK["dense"], AC["relu"])
    with pytest.raises(ValueError, match="activation code must be in"):  # C++ guards the enum range
        cpp.skip_linear_fwd(x, w, None, None, SK["none"], 7)
    ok, reason = cpp.supports("skip_linear", "cpu", torch.float16, ((4, 6), (5, 6)))
    assert not ok and "float16" in reason
    assert cpp.kernel_info()["max_threads"] >= 1


@pytest.mark.parametrize("skip", ["none", "identity", "dense"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_op_backend_cpp_gradcheck(cpp, skip, act):
    from skipkern import backends
    from skipkern.ops import skip_linear
    g = torch.Generator().manual_seed(1)
    k, n = (4, 4) if skip == "identity" else (4, 3)
    x = torch.randn(3, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    s = {"none": None, "identity": "identity", "dense": torch.randn(n, k, generator=g, dtype=torch.float64)}[skip]
    torch.autograd.gradcheck(lambda *a: skip_linear(*a, skip=s, activation=act, backend="cpp"), (x, w, b))
    assert backends.last_used("skip_linear") == "cpp"
    # float32 through the op, forward + backward against the float64 reference.
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    s32 = s.float() if torch.is_tensor(s) else s
    y = skip_linear(x32, w32, b32, skip=s32, activation=act, backend="cpp")
    y.backward(torch.ones_like(y))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y_ref = skip_linear_composite(xr, wr, br, s, act)
    y_ref.backward(torch.ones_like(y_ref))
    rtol, atol, _ = TOLERANCES[torch.float32]
    for a, r in ((y, y_ref), (x32.grad, xr.grad), (w32.grad, wr.grad), (b32.grad, br.grad)):
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol)
