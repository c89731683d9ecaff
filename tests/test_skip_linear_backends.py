"""skip_linear: the paths one backend has and the others do not, against the float64 reference.

cpp: OpenMP teams smaller than omp_get_max_threads() (subprocesses under OMP_THREAD_LIMIT / OMP_DYNAMIC),
several row chunks and threads, thread counts. triton: multi-tile grids and the split dW reduction, strided
views, half precision, the GPU launch plan (pure Python), an sm_90 compile without a GPU.
cuda: the split dW reduction of large batches, CUDA-graph capture, its size limits. The grid over every
backend is tests/test_skip_linear.py; helpers and tolerances are in tests/utils.py.
"""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

import skipkern
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATION_CODES as AC
from skipkern.reference import SKIP_CODES as SK
from skipkern.reference import SKIPS
from tests.utils import (assert_close, cast, check_skip_linear_launcher, compare_skip_linear_launcher, require,
                         skip_linear_inputs)

F64, F32 = torch.float64, torch.float32
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # conftest: the interpreter without a GPU


# ----------------------------------------------------------------------------------------------- cpp
@pytest.fixture
def cpp():
    require("cpp", "skip_linear", "cpu", F64)
    return skipkern.backends.launcher("cpp")


@pytest.fixture
def threads():
    """Sets torch's (and OpenMP's) thread count inside the test; restores it after."""
    prev = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(prev)


# OpenMP may give a parallel region fewer threads than omp_get_max_threads() (OMP_THREAD_LIMIT, OMP_DYNAMIC
# on a loaded machine, nesting). The environment must be set before the process starts, so the launchers
# run in a subprocess; it prints the worst error of each output against float64 and a digest of the outputs.
_OMP_SCRIPT = r"""
import hashlib, json, os, torch
from skipkern.backends import cpp
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
torch.set_num_threads(int(os.environ["THREADS"]))  # omp_get_max_threads(); the team may get fewer
rows, digest = [], hashlib.sha256()
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
        for a in got:
            digest.update(a.numpy().tobytes())
print(json.dumps(dict(info=cpp.kernel_info(), rows=rows, digest=digest.hexdigest())))
"""


def _omp_run(env: dict) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    res = subprocess.run([sys.executable, "-c", _OMP_SCRIPT], env={**clean, **env}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [
    pytest.param({"THREADS": "2", "OMP_NUM_THREADS": "2", "OMP_THREAD_LIMIT": "1"}, id="limit1"),
    pytest.param({"THREADS": "4", "OMP_THREAD_LIMIT": "2"}, id="limit2of4", marks=pytest.mark.slow),
    # dynamic adjustment never gives more threads than there are cores: ask for twice as many
    pytest.param({"THREADS": str(2 * (os.cpu_count() or 1)), "OMP_DYNAMIC": "true"}, id="dynamic",
                 marks=pytest.mark.slow),
])
@pytest.mark.slow
def test_cpp_gradients_when_openmp_gives_fewer_threads(cpp, env):
    out = _omp_run(env)
    info = out["info"]
    assert info["team_threads"] < info["max_threads"], f"{env} did not shrink the OpenMP team: {info}"
    bad = [(r["case"], name, e) for r in out["rows"] for name, e in r["err"].items()
           if e > (1e-12 if r["dtype"] == "torch.float64" else 1e-4)]
    assert not bad, f"{env}: {info}: {bad}"


@pytest.mark.slow
def test_cpp_results_do_not_depend_on_the_team_size(cpp):
    """The backward's row blocks are fixed by the thread count asked for: any team gives the same bits."""
    full = _omp_run({"THREADS": "4"})
    assert full["info"]["team_threads"] == 4
    for limit in ("1", "2"):
        assert _omp_run({"THREADS": "4", "OMP_THREAD_LIMIT": limit})["digest"] == full["digest"], limit


@pytest.mark.parametrize("skip", [pytest.param(s, marks=[pytest.mark.slow] if s != "identity" else []) for s in SKIPS])
def test_cpp_many_row_chunks_and_threads(cpp, threads, skip):
    """Wide layers: the backward walks several dx row chunks and dW row blocks per block of rows (block
    sizes shrink as the width grows) and sums the blocks' partial dW/db."""
    for nt in (1, 2):
        threads(nt)
        compare_skip_linear_launcher(cpp, "cpu", F64, 300, 512, 512, skip, "relu")
    compare_skip_linear_launcher(cpp, "cpu", F32, 300, 520, 520, skip, "gelu")
    if skip != "identity":
        compare_skip_linear_launcher(cpp, "cpu", F64, 301, 520, 33, skip, "tanh")


def test_cpp_thread_counts_agree(cpp, threads):
    x, w, bb, q, gy = skip_linear_inputs(257, 130, 130, "dense")
    outs = []
    for nt in (1, 2):
        threads(nt)
        y, z = cpp.skip_linear_fwd(x, w, bb, q, SK["dense"], AC["relu"])
        outs.append((y, z) + cpp.skip_linear_bwd(gy, x, w, z, q, SK["dense"], AC["relu"], True))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------------------------- triton
@pytest.fixture
def ks():
    require("triton", "skip_linear", TRITON_DEVICE, F64)
    from skipkern.kernels import skip_linear as kernels
    return kernels


@pytest.mark.parametrize("act,skip", list(itertools.product(("relu", "gelu"), SKIPS)))
def test_triton_multi_tile_and_split_reduction(ks, act, skip):
    """Small unequal blocks (tile 16 x 32, reduction 16): several programs per grid axis, several trips of
    every reduction loop, and the dW/db batch reduction split over 3 slices (the GPU path for big batches)."""
    b, k, n = (37, 33, 33) if skip == "identity" else (37, 33, 20)
    compare_skip_linear_launcher(ks, TRITON_DEVICE, F64, b, k, n, skip, act, blocks=(16, 32, 16), split=3)


@pytest.mark.parametrize("skip", ["identity", "dense"])
def test_triton_strided_views(ks, skip):
    """Transposed and sliced views go to the kernels as they are, through their strides."""
    b, k, n = 21, 18, 18
    r = lambda *s: torch.randn(*s, dtype=F64, device=TRITON_DEVICE)  # noqa: E731
    x, w, bias = r(k, b).t(), (r(n, 2 * k) / k ** 0.5)[:, ::2], r(2 * n)[1::2]
    q, g = (r(k, n).t() if skip == "dense" else None), r(n, b).t()
    assert not any(t.is_contiguous() for t in (x, w, bias, g))
    check_skip_linear_launcher(ks, x, w, bias, q, g, skip, "gelu", blocks=(32, 16, 16), split=2)
    z = r(n, b).t()  # a strided z for the backward
    out = ks.skip_linear_bwd(g, x, w, z, q, SK[skip], AC["tanh"], True)
    for a, e, what in zip(out, skip_linear_bwd_ref(g, x, w, z, q, skip, "tanh", True), ("dx", "dW", "db")):
        assert_close(a, e, F64, what)


def test_triton_half_precision(ks):
    """float16 (and bfloat16 on GPU): fp32 accumulation, casts at the dot operands and the stores."""
    dtypes = [torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])
    for dtype, (skip, act) in itertools.product(dtypes, [("dense", "gelu"), ("identity", "relu")]):
        compare_skip_linear_launcher(ks, TRITON_DEVICE, dtype, 37, 33, 33, skip, act)
    if ks.INTERPRET:
        xb = torch.randn(4, 6, dtype=torch.bfloat16)
        with pytest.raises(TypeError, match="bfloat16"):
            ks.skip_linear_fwd(xb, xb[:5], None, None, SK["none"], AC["relu"])
    with pytest.raises(ValueError, match="split"):
        x, w, _, q, g = (cast(t, F64, TRITON_DEVICE) for t in skip_linear_inputs(4, 6, 5, "dense"))
        ks.skip_linear_bwd(g, x, w, g, q, SK["dense"], AC["relu"], True, split=0)


def test_triton_available_and_supports(ks):
    from skipkern.backends import triton as tb

    ok, reason = tb.available()
    assert ok, reason
    good = ((3, 4), (5, 4))
    assert tb.supports("skip_linear", TRITON_DEVICE, F32, good) == (True, "")
    assert tb.supports("skip_linear", TRITON_DEVICE, F64, good)[0]
    assert not tb.supports("skip_mlp_nope", TRITON_DEVICE, F32, good)[0]
    assert not tb.supports("skip_linear", TRITON_DEVICE, torch.int32, good)[0]
    assert not tb.supports("skip_linear", TRITON_DEVICE, F32, ((2**20, 4096), (4096, 4096)))[0]
    if TRITON_DEVICE == "cpu":
        for dtype in (torch.float16, torch.bfloat16):
            ok, reason = tb.supports("skip_linear", "cpu", dtype, good)
            assert not ok and "CUDA" in reason
        assert not tb.supports("skip_linear", "cuda", F32, good)[0]  # interpreter: no GPU tensors
    else:
        assert tb.supports("skip_linear", "cuda", torch.bfloat16, good)[0]


def test_triton_gpu_launch_plan(ks, monkeypatch):
    """The GPU config logic (pure Python, unreachable without a GPU) on an H100-sized device (132 SMs)."""
    monkeypatch.setattr(ks, "INTERPRET", False)
    monkeypatch.setattr(ks, "_num_sms", lambda device: 132)
    dev = torch.device("cuda")
    for dtype in (F32, torch.float16, F64):
        for b, width in ((500, 128), (4096, 512), (1, 1)):
            tr, tc, red, warps, stages = ks._heuristic("fwd", b, width, dtype, dev)
            assert min(tr, tc, red) >= 16 and warps in (2, 4)  # tl.dot needs every block dim >= 16
            assert (b // tr + 1) * (width // tc + 1) >= 132 or (tr, tc) == (16, 16)
        assert ks._heuristic("dw", 128, 128, dtype, dev)[:2] == ((32, 32) if dtype == F64 else (64, 64))
    assert ks._dw_split(4096, 128, 128, F32, dev) == 32  # 4 tiles x 32 slices of 128 rows
    assert ks._dw_split(500, 128, 128, F32, dev) == 3
    assert ks._dw_split(100, 512, 512, F32, dev) == 1
    for tune in (ks._TUNE, ks._TUNE_FP64):
        assert all(min(c[:3]) >= 16 for c in tune)


_COMPILE_FOR_SM90 = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from skipkern.kernels import skip_linear as ks
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
assert not ks.INTERPRET
variants = [("fp32", "gelu", "dense", True, (64, 64, 32)), ("fp16", "relu", "identity", False, (16, 32, 32)),
            ("fp64", "tanh", "dense", True, (32, 32, 16))]
for (dt, act, skip, bias, tile), kind in itertools.product(variants, ("fwd", "dx", "dw")):
    kern = ks._KERNELS[kind]
    c = dict(ACTIVATION=AC[act], DOT_PRECISION="ieee", **dict(zip(ks._DIMS[kind], tile)))
    c.update({"HAS_BIAS": bias} if kind != "dx" else {})
    c.update({"SKIP": SK[skip]} if kind != "dw" else {})
    sig = {a: "constexpr" if a in c else ("*" + dt if a.endswith("_ptr") else "i32") for a in kern.arg_names}
    out = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=4, num_stages=2))
    assert "mma" in out.asm["ptx"] or dt == "fp32", (kind, dt)  # tensor cores for fp16 / fp64
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU present: the other tests compile and run the kernels")
def test_triton_kernels_compile_for_sm90():
    """Without a GPU the interpreter never runs Triton's compiler: compile fwd/dx/dw to sm_90 cubins
    (ptxas ships with triton) in a subprocess without TRITON_INTERPRET, so GPU-only errors cannot land."""
    require("triton", "skip_linear", "cpu", F64)
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend on this machine")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset
    res = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- cuda
@pytest.fixture
def cuda():
    require("cuda", "skip_linear", "cuda", F32)
    return skipkern.backends.launcher("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("skip", SKIPS)
def test_cuda_large_batch_split_reduction(cuda, skip):
    """Batch 4096: the dW/db reduction is split over many blocks and summed from the workspace."""
    compare_skip_linear_launcher(cuda, "cuda", F32, 4096, 128, 128, skip, "relu")
    compare_skip_linear_launcher(cuda, "cuda", F64, 1000, 65, 65, skip, "gelu")


@pytest.mark.gpu
def test_cuda_graph_capture(cuda):
    x, w, bb, q, _ = (cast(t, F32, "cuda") for t in skip_linear_inputs(64, 32, 32, "dense"))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        cuda.skip_linear_fwd(x, w, bb, q, SK["dense"], AC["relu"])  # warm-up outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            y, _ = cuda.skip_linear_fwd(x, w, bb, q, SK["dense"], AC["relu"])
    x.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    y_ref, _ = skip_linear_ref(x.double(), w.double(), bb.double(), q.double(), "dense", "relu")
    assert_close(y, y_ref, F32, "replayed graph")


def test_cuda_supports_reports_limits():
    """Pure Python: runs without a GPU."""
    from skipkern.backends import cuda as mod
    ok, reason = mod.supports("skip_linear", "cuda", torch.int32, ((2, 3), (4, 3)))
    assert not ok and "int32" in reason
    ok, reason = mod.supports("skip_linear", "cuda", F32, ((2, 10 ** 7), (4, 10 ** 7)))
    assert not ok and "width" in reason
    assert not mod.supports("skip_linear", "cpu", F32, ((2, 3), (4, 3)))[0]
    assert mod.supports("skip_linear", "cuda", torch.bfloat16, ((500, 128), (128, 128)))[0]


# ---------------------------------------------------------------------------------- precision argument
def _precision_params():
    return [pytest.param(b, id=b) for b in ("torch", "cpp", "triton")]


@pytest.mark.parametrize("backend", _precision_params())
def test_precision_argument_per_backend(backend, monkeypatch):
    """precision=None / "auto" / "ieee" run everywhere with the same result here (IEEE on the CPU, the
    interpreter included); "tf32" reaches Triton's launchers, forward and backward, and is refused naming
    the argument by the backends that cannot honour it; any other value is refused at the entry."""
    from skipkern.ops import skip_linear
    from skipkern.reference import skip_linear_composite

    require(backend, "skip_linear", "cpu", F32)
    x, w, bias, q, g = (cast(t, F32) for t in skip_linear_inputs(9, 6, 5, "dense"))
    w.requires_grad_()
    ref = torch.autograd.grad(skip_linear_composite(x, w, bias, q, "gelu"), w, g)[0]
    seen = []
    if backend == "triton":
        from skipkern.kernels import skip_linear as ks
        for name in ("skip_linear_fwd", "skip_linear_bwd"):
            real = getattr(ks, name)
            monkeypatch.setattr(ks, name, lambda *a, _r=real, _n=name, **kw: seen.append((_n, kw["precision"]))
                                or _r(*a, **kw))
    for precision in (None, "auto", "ieee") + (("tf32",) if backend == "triton" else ()):
        got = torch.autograd.grad(skip_linear(x, w, bias, q, "gelu", backend=backend, precision=precision), w, g)[0]
        assert_close(got, ref.double(), F32, f"{backend} precision={precision}", terms=9)
    if backend == "triton":
        assert seen[-2:] == [("skip_linear_fwd", "tf32"), ("skip_linear_bwd", "tf32")], seen
    else:
        with pytest.raises(ValueError, match=f"precision='tf32' cannot be honoured by the {backend} backend"):
            skip_linear(x, w, bias, q, "gelu", backend=backend, precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        skip_linear(x, w, bias, q, "gelu", backend=backend, precision="fp16")


def test_precision_refusals_without_a_gpu(monkeypatch):
    """Pure Python: the cuda backend's SIMT kernels have no TF32 path; the torch backend's "ieee" needs torch's
    fp32 matmuls at "highest"."""
    from skipkern.backends import cuda as cuda_mod
    from skipkern.backends import torch_backend

    assert cuda_mod.check_precision("ieee", F32) == "ieee" and cuda_mod.check_precision(None, F32) == "auto"
    with pytest.raises(ValueError, match="precision='tf32' cannot be honoured by the cuda backend.*backend='triton'"):
        cuda_mod.check_precision("tf32", F32)
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.raises(ValueError, match="set_float32_matmul_precision"):
            torch_backend.check_precision("ieee", F32)
        assert torch_backend.check_precision("ieee", F64) == "ieee"  # fp64 matmuls are fp64 whatever the setting
    finally:
        torch.set_float32_matmul_precision(prev)


def test_modules_pass_precision_through():
    """SkipLinear / SkipMLP hand ``precision`` to every call; SkipMLP's setter updates every layer."""
    from skipkern.nn import SkipLinear, SkipMLP

    with pytest.raises(ValueError, match="precision must be one of"):
        SkipLinear(4, 4, precision="half")
    model = SkipMLP(6, 8, 3, 2, precision="ieee", backend="torch")
    assert model.precision == "ieee" and {layer.precision for layer in model.layers} == {"ieee"}
    model.precision = "tf32"
    assert {layer.precision for layer in model.layers} == {"tf32"}
    with pytest.raises(ValueError, match="precision='tf32' cannot be honoured by the torch backend"):
        model(torch.randn(3, 6))
    model.precision = None
    assert model(torch.randn(3, 6)).shape == (3, 2)
