"""The CUDA kernels (skipkern.backends.cuda) on a GPU against the float64 plain-torch reference.

Skipped without a CUDA device and a built skipkern._C_cuda (fails instead when SKIPKERN_REQUIRE
contains "cuda"). Same grid as tests/test_cpp_kernels.py plus float16/bfloat16 (float32 accumulation),
gradcheck through skipkern.ops.skip_linear(backend="cuda"), and a CUDA-graph capture/replay.
"""
import pytest
import torch

from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATIONS, SKIPS
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
from tests.utils import TOLERANCES, ensure_backend

BATCHES = (1, 3, 257)
SQUARE = ((1, 1), (7, 7), (128, 128), (130, 130))
RECT = ((7, 5), (1, 7), (128, 130), (130, 128))
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def cuda():
    ensure_backend("cuda")  # skips without a GPU / _C_cuda, or fails under SKIPKERN_REQUIRE=cuda
    from skipkern.backends import cuda as mod
    return mod


def _inputs(b, k, n, skip, dtype, bias=True, seed=0):
    """Inputs rounded to ``dtype`` first, so the float64 reference sees exactly what the kernel sees."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).double().cuda()

    x, w = r(b, k), r(n, k, scale=1.0 / max(k, 1) ** 0.5)
    bb = r(n) if bias else None
    q = r(n, k, scale=1.0 / max(k, 1) ** 0.5) if skip == "dense" else None
    return x, w, bb, q, r(b, n)


def _compare(cuda, dtype, b, k, n, skip, act, bias=True):
    rtol, atol, _ = TOLERANCES[dtype]
    x, w, bb, q, gy = _inputs(b, k, n, skip, dtype, bias)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    y_ref, z_ref = skip_linear_ref(x, w, bb, q, skip, act)
    y, z = cuda.skip_linear_fwd(cast(x), cast(w), cast(bb), cast(q), SK[skip], AC[act])
    what = f"{dtype} B={b} K={k} N={n} skip={skip} act={act}"
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol, msg=lambda m: f"y {what}: {m}")
    torch.testing.assert_close(z.double(), z_ref, rtol=rtol, atol=atol, msg=lambda m: f"z {what}: {m}")
    z_in = z_ref.to(dtype)  # the backward at the reference pre-activation (rounded as the kernel stores it)
    ref = skip_linear_bwd_ref(gy, x, w, z_in.double(), q, skip, act, bias)
    got = cuda.skip_linear_bwd(cast(gy), cast(x), cast(w), z_in, cast(q), SK[skip], AC[act], bias)
    for name, a, r in zip(("dx", "dw", "db"), got, ref):
        if r is None:
            assert a is None
            continue
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol * max(1.0, b / 16),
                                   msg=lambda m: f"{name} {what}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_launchers_match_reference(cuda, dtype, skip, act):
    shapes = SQUARE + (RECT if skip != "identity" else ())
    for b in BATCHES:
        for k, n in shapes:
            _compare(cuda, dtype, b, k, n, skip, act, bias=(b != 3))


@pytest.mark.gpu
@pytest.mark.parametrize("skip", SKIPS)
def test_large_batch_split_reduction(cuda, skip):
    """Batch 4096: the dW/db reduction is split over many blocks and summed from the workspace."""
    _compare(cuda, torch.float32, 4096, 128, 128, skip, "relu")
    _compare(cuda, torch.float64, 1000, 65, 65, skip, "gelu")


@pytest.mark.gpu
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_op_backend_cuda_gradcheck(cuda, skip, act):
    from skipkern.ops import skip_linear
    g = torch.Generator().manual_seed(1)
    k, n = (4, 4) if skip == "identity" else (4, 3)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).cuda().requires_grad_()  # noqa: E731
    x, w, b = mk(3, k), mk(n, k), mk(n)
    s = {"none": None, "identity": "identity", "dense": torch.randn(n, k, generator=g, dtype=torch.float64).cuda()}[skip]
    torch.autograd.gradcheck(lambda *a: skip_linear(*a, skip=s, activation=act, backend="cuda"), (x, w, b))


@pytest.mark.gpu
def test_cuda_graph_capture(cuda):
    x, w, bb, q, _ = _inputs(64, 32, 32, "dense", torch.float32)
    x, w, bb, q = (t.float() for t in (x, w, bb, q))
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
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-4, atol=2e-5)


def test_supports_reports_limits():
    from skipkern.backends import cuda as mod
    ok, reason = mod.supports("skip_linear", "cuda", torch.int32, ((2, 3), (4, 3)))
    assert not ok and "int32" in reason
    ok, reason = mod.supports("skip_linear", "cuda", torch.float32, ((2, 10 ** 7), (4, 10 ** 7)))
    assert not ok and "width" in reason
    ok, reason = mod.supports("skip_linear", "cpu", torch.float32, ((2, 3), (4, 3)))
    assert not ok
    assert mod.supports("skip_linear", "cuda", torch.bfloat16, ((500, 128), (128, 128)))[0]
