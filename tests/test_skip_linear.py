"""skip_linear on every backend available here against the float64 plain-torch reference:
forward, all gradients from one shared grad_output, gradcheck/gradgradcheck, opcheck, torch.compile,
bad input, backend resolution."""
import os

import pytest
import torch

import skipkern
from skipkern.ops import skip_linear
from skipkern.reference import ACTIVATIONS, skip_linear_composite
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
from tests.utils import assert_close, backend_params, ensure_backend

# (B, K, N, skip): batch 1/3/257, widths 1/7/128/130, in != out through a dense Q.
CASES = [
    (1, 1, 1, "identity"),
    (3, 7, 7, "identity"),
    (257, 130, 130, "identity"),
    (3, 7, 5, "dense"),
    (257, 128, 130, "dense"),
    (1, 130, 128, "dense"),
    (3, 7, 9, "none"),
    (257, 1, 7, "none"),
]
DTYPES = [torch.float64, torch.float32]


def _interp_too_big(backend, b, k, n):
    # The Triton interpreter is slow: its kernels are covered in detail by test_triton_kernels.py.
    return backend == "triton" and b * max(k, n) > 4000


def _make(b, k, n, skip, dtype, bias=True):
    x = torch.randn(b, k, dtype=torch.float64)
    w = torch.randn(n, k, dtype=torch.float64) / k ** 0.5
    bb = torch.randn(n, dtype=torch.float64) if bias else None
    s = torch.linalg.qr(torch.randn(max(n, k), min(n, k), dtype=torch.float64))[0] if skip == "dense" else None
    if s is not None and n < k:
        s = s.T
    if s is not None:
        s = s.contiguous()
    skip_arg = s if skip == "dense" else (None if skip == "none" else "identity")
    return x, w, bb, skip_arg


def _run(backend, x, w, b, skip, act, dtype, grad_out):
    xs = x.detach().to(dtype).clone().requires_grad_()
    ws = w.detach().to(dtype).clone().requires_grad_()
    bs = None if b is None else b.detach().to(dtype).clone().requires_grad_()
    ss = skip.to(dtype) if isinstance(skip, torch.Tensor) else skip
    y = skip_linear(xs, ws, bs, ss, act, backend=backend)
    y.backward(grad_out.to(dtype))
    return y, xs.grad, ws.grad, None if bs is None else bs.grad


@pytest.mark.parametrize("backend", backend_params("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_matches_reference(backend, dtype, activation, case):
    ensure_backend(backend)
    b, k, n, skip = case
    if _interp_too_big(backend, b, k, n):
        pytest.skip("shape too large for the Triton interpreter")
    x, w, bias, s = _make(b, k, n, skip, dtype)
    g = torch.randn(b, n, dtype=torch.float64)
    ref = _run("torch", x, w, bias, s, activation, torch.float64, g)
    out = _run(backend, x, w, bias, s, activation, dtype, g)
    assert skipkern.backends.last_used() == backend
    for name, o, r in zip(("y", "dx", "dw", "db"), out, ref):
        assert o.dtype == dtype
        assert_close(o, r, dtype, f"{backend} {name}")


@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_noncontiguous_and_leading_dims(backend):
    ensure_backend(backend)
    x_big = torch.randn(9, 4, 2, dtype=torch.float64)
    x = x_big[:, :, 0]  # [9, 4], strided
    w = torch.randn(4, 5, dtype=torch.float64).T  # [5, 4], non-contiguous
    bias = torch.randn(10, dtype=torch.float64)[::2]  # [5], strided
    assert not x.is_contiguous() and not w.is_contiguous() and not bias.is_contiguous()
    y = skip_linear(x, w, bias, None, "tanh", backend=backend)
    assert_close(y, skip_linear_composite(x, w, bias, None, "tanh"), torch.float64, "strided")
    x3 = torch.randn(2, 3, 5, dtype=torch.float64)
    w5 = torch.randn(5, 5, dtype=torch.float64)
    y3 = skip_linear(x3, w5, None, "identity", "relu", backend=backend)
    assert y3.shape == (2, 3, 5)
    assert_close(y3, skip_linear_composite(x3, w5, None, "identity", "relu"), torch.float64, "leading dims")


@pytest.mark.parametrize("backend", backend_params("cpu"))
@pytest.mark.parametrize("skip", ["none", "identity", "dense"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_gradcheck_gradgradcheck(backend, skip, activation):
    ensure_backend(backend)
    if backend == "triton" and (skip, activation) not in (("dense", "gelu"), ("identity", "relu")):
        pytest.skip("Triton interpreter: 8-9 s per gradcheck; two cases here, the rest in test_triton_kernels.py")
    x, w, bias, s = _make(2, 3, 3, skip, torch.float64)
    if activation == "relu":  # keep pre-activations away from the kink for finite differences
        x = x + 0.0
    args = tuple(t.requires_grad_() for t in (x, w, bias))
    f = lambda xx, ww, bb: skip_linear(xx, ww, bb, s, activation, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_opcheck(backend):
    ensure_backend(backend)
    x, w, b, q = torch.randn(4, 5), torch.randn(6, 5), torch.randn(6), torch.randn(6, 5)
    torch.library.opcheck(torch.ops.skipkern.skip_linear_fwd, (x, w, b, q, SK["dense"], AC["relu"], backend))
    g, z = torch.randn(4, 6), torch.randn(4, 6)
    torch.library.opcheck(torch.ops.skipkern.skip_linear_bwd, (g, x, w, z, q, SK["dense"], AC["gelu"], True, backend))


def test_torch_compile_fullgraph():
    x, w, b = torch.randn(6, 8), torch.randn(8, 8), torch.randn(8)
    f = torch.compile(lambda t: skip_linear(t, w, b, "identity", "relu"), fullgraph=True)
    torch.testing.assert_close(f(x), skip_linear_composite(x, w, b, "identity", "relu"))


def test_dense_skip_gradient_when_q_requires_grad():
    x, w, q = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, c: skip_linear(a, w, None, c, "tanh"), (x, q))


# ---------------------------------------------------------------------------------------- bad input
def test_empty_batch_and_nan_propagation():
    w = torch.randn(4, 4, requires_grad=True)
    y = skip_linear(torch.randn(0, 4), w, None, "identity")
    assert y.shape == (0, 4)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(4, 4))
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    for b in [s.name for s in skipkern.backends.available() if s.available and "cpu" in s.devices]:
        if b == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        y = skip_linear(x, w.detach(), None, None, "relu", backend=b)
        assert torch.isnan(y[1]).all(), f"{b}: NaN must propagate like torch.relu"
        assert torch.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("bad, exc, word", [
    (dict(x=torch.randn(3, 5)), ValueError, "x must have shape"),
    (dict(w=torch.randn(4)), ValueError, "weight must be 2-D"),
    (dict(b=torch.randn(3)), ValueError, "bias must have shape"),
    (dict(x=torch.randn(3, 4, dtype=torch.float64)), TypeError, "dtype"),
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

    from skipkern.reference import ACTIVATIONS, SKIPS
    header = (Path(__file__).resolve().parents[1] / "csrc" / "op_codes.h").read_text()
    for enum, names in (("Act", ACTIVATIONS), ("Skip", SKIPS)):
        body = re.search(r"enum class " + enum + r" : int \{([^}]*)\}", header).group(1)
        got = {m[0]: int(m[1]) for m in re.findall(r"k(\w+) = (\d+)", body)}
        assert got == {n.capitalize(): i for i, n in enumerate(names)}, (enum, got)
        assert f"kNum{enum} = {len(names)}" in header


# ------------------------------------------------------------- OpenMP: a team smaller than the maximum
# OpenMP may give a parallel region fewer threads than omp_get_max_threads() (OMP_THREAD_LIMIT,
# OMP_DYNAMIC on a loaded machine, nesting). The environment must be set before the process starts, so
# the cpp launchers run in a subprocess; it prints the worst error of each gradient against float64.
_OMP_SCRIPT = r"""
import json, os, torch
from skipkern.backends import cpp
torch.set_num_threads(int(os.environ["THREADS"]))  # omp_get_max_threads(); the team may get fewer
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
rows = []
for b, k, n, skip in [(500, 128, 128, "identity"), (513, 128, 128, "identity"), (500, 130, 77, "dense"),
                      (513, 33, 130, "none")]:
    g = torch.Generator().manual_seed(b + k + n)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x, w, bias, gy = r(b, k), r(n, k) / k ** 0.5, r(n), r(b, n)
    q = r(n, k) / k ** 0.5 if skip == "dense" else None
    y_ref, z = skip_linear_ref(x, w, bias, q, skip, "relu")
    ref = (y_ref,) + skip_linear_bwd_ref(gy, x, w, z, q, skip, "relu", True)
    for dtype in (torch.float64, torch.float32):
        c = lambda t: None if t is None else t.to(dtype)
        y, _ = cpp.skip_linear_fwd(c(x), c(w), c(bias), c(q), SK[skip], AC["relu"])
        got = (y,) + cpp.skip_linear_bwd(c(gy), c(x), c(w), c(z), c(q), SK[skip], AC["relu"], True)
        err = {name: float(((a.double() - e).abs() / (1 + e.abs())).max()) for name, a, e in
               zip(("y", "dx", "dw", "db"), got, ref)}
        rows.append(dict(case=f"B={b} K={k} N={n} {skip} {dtype}", dtype=str(dtype), err=err))
print(json.dumps(dict(info=cpp.kernel_info(), rows=rows)))
"""


@pytest.mark.parametrize("env", [
    pytest.param({"THREADS": "2", "OMP_NUM_THREADS": "2", "OMP_THREAD_LIMIT": "1"}, id="limit1"),
    pytest.param({"THREADS": "4", "OMP_THREAD_LIMIT": "2"}, id="limit2of4", marks=pytest.mark.slow),
    # dynamic adjustment never gives more threads than there are cores: ask for twice as many
    pytest.param({"THREADS": str(2 * (os.cpu_count() or 1)), "OMP_DYNAMIC": "true"}, id="dynamic",
                 marks=pytest.mark.slow),
])
def test_cpp_gradients_when_openmp_gives_fewer_threads(env):
    ensure_backend("cpp")
    import json
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", _OMP_SCRIPT], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    info = out["info"]
    assert info["team_threads"] < info["max_threads"], f"{env} did not shrink the OpenMP team: {info}"
    bad = [(r["case"], name, e) for r in out["rows"] for name, e in r["err"].items()
           if e > (1e-12 if r["dtype"] == "torch.float64" else 1e-4)]
    assert not bad, f"{env}: {info}: {bad}"
