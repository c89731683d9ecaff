"""Kernel-level tests of the Triton skip_linear kernels (kernels/skip_linear.py).

The launchers are called directly: on CPU tensors through the Triton interpreter (conftest sets
TRITON_INTERPRET=1 without a GPU), or on CUDA tensors when a GPU is present. Every output and gradient is
compared with skip_linear_ref / skip_linear_bwd_ref in float64. Shapes stay small: the interpreter is slow.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import skipkern
from skipkern.ops.skip_linear_reference import skip_linear_bwd_ref, skip_linear_ref
from skipkern.reference import ACTIVATIONS, SKIPS, skip_linear_composite
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
from tests.utils import assert_close, ensure_backend


@pytest.fixture(scope="module")
def ks():
    ensure_backend("triton")  # fails instead of skipping when SKIPKERN_REQUIRE lists triton
    from skipkern.kernels import skip_linear as kernels
    return kernels


@pytest.fixture(scope="module")
def device(ks):
    return "cpu" if ks.INTERPRET else "cuda"


def _inputs(b, k, n, skip, dtype, device, bias=True):
    """x [B, K], W [N, K], b [N]?, Q [N, K]?, grad_y [B, N]; weights scaled by 1/sqrt(K) to keep z O(1)."""
    s = 1.0 / max(k, 1) ** 0.5
    x = torch.randn(b, k, dtype=torch.float64)
    w = torch.randn(n, k, dtype=torch.float64) * s
    bb = torch.randn(n, dtype=torch.float64) if bias else None
    q = torch.randn(n, k, dtype=torch.float64) * s if skip == "dense" else None
    g = torch.randn(b, n, dtype=torch.float64)
    return tuple(None if t is None else t.to(device=device, dtype=dtype) for t in (x, w, bb, q, g))


def _f64(t):
    return None if t is None else t.to(torch.float64)


def _check_layer(ks, x, w, b, q, g, skip, act, dtype, **launch):
    """Forward and backward of the kernels against the float64 reference on the same (rounded) inputs."""
    y, z = ks.skip_linear_fwd(x, w, b, q, SK[skip], AC[act], **{k: v for k, v in launch.items() if k == "blocks"})
    y_ref, z_ref = skip_linear_ref(_f64(x), _f64(w), _f64(b), _f64(q), skip, act)
    assert y.dtype == dtype and z.dtype == dtype and y.shape == y_ref.shape and y.is_contiguous()
    assert_close(z, z_ref, dtype, "z")
    assert_close(y, y_ref, dtype, "y")
    # backward from the reference's z rounded to dtype, so relu's mask is the same on both sides
    z_in = z_ref.to(dtype)
    dx, dw, db = ks.skip_linear_bwd(g, x, w, z_in, q, SK[skip], AC[act], b is not None, **launch)
    dx_ref, dw_ref, db_ref = skip_linear_bwd_ref(_f64(g), _f64(x), _f64(w), _f64(z_in), _f64(q), skip, act,
                                                 b is not None)
    assert_close(dx, dx_ref, dtype, "dx")
    assert_close(dw, dw_ref, dtype, "dW")
    if b is None:
        assert db is None
    else:
        assert_close(db, db_ref, dtype, "db")


RECT = [(1, 1, 1), (3, 7, 20), (37, 33, 7), (1, 20, 1)]  # (B, K, N)
SQUARE = [(1, 1, 1), (3, 7, 7), (37, 33, 33)]
CASES = list(itertools.product(ACTIVATIONS, SKIPS))


@pytest.mark.parametrize("act,skip", CASES)
def test_float64_awkward_shapes(ks, device, act, skip):
    for i, (b, k, n) in enumerate(SQUARE if skip == "identity" else RECT):
        x, w, bb, q, g = _inputs(b, k, n, skip, torch.float64, device, bias=i % 2 == 0)
        _check_layer(ks, x, w, bb, q, g, skip, act, torch.float64)


@pytest.mark.parametrize("act,skip", CASES)
def test_float32(ks, device, act, skip):
    b, k, n = (37, 33, 33) if skip == "identity" else (37, 20, 33)
    x, w, bb, q, g = _inputs(b, k, n, skip, torch.float32, device)
    _check_layer(ks, x, w, bb, q, g, skip, act, torch.float32)


@pytest.mark.parametrize("act,skip", list(itertools.product(("relu", "gelu"), SKIPS)))
def test_multi_tile_and_split_reduction(ks, device, act, skip):
    """Small unequal blocks (tile 16 x 32, reduction 16): several programs per grid axis, several trips of
    every reduction loop, and the dW/db batch reduction split over 3 slices (the GPU path for big batches)."""
    b, k, n = (37, 33, 33) if skip == "identity" else (37, 33, 20)
    x, w, bb, q, g = _inputs(b, k, n, skip, torch.float64, device)
    _check_layer(ks, x, w, bb, q, g, skip, act, torch.float64, blocks=(16, 32, 16), split=3)


@pytest.mark.parametrize("skip", ["identity", "dense"])
def test_non_contiguous_strides(ks, device, skip):
    """Transposed and sliced views go to the kernels as they are, through their strides."""
    b, k, n = 21, 18, 18
    x = torch.randn(k, b, dtype=torch.float64, device=device).t()  # strides (1, B)
    w = (torch.randn(n, 2 * k, dtype=torch.float64, device=device) / k ** 0.5)[:, ::2]  # strides (2K, 2)
    bias = torch.randn(2 * n, dtype=torch.float64, device=device)[1::2]
    q = torch.randn(k, n, dtype=torch.float64, device=device).t() if skip == "dense" else None
    g = torch.randn(n, b, dtype=torch.float64, device=device).t()
    assert not any(t.is_contiguous() for t in (x, w, bias, g))
    _check_layer(ks, x, w, bias, q, g, skip, "gelu", torch.float64, blocks=(32, 16, 16), split=2)
    z = torch.randn(n, b, dtype=torch.float64, device=device).t()  # a strided z for the backward
    out = ks.skip_linear_bwd(g, x, w, z, q, SK[skip], AC["tanh"], True)
    ref = skip_linear_bwd_ref(g, x, w, z, q, skip, "tanh", True)
    for a, e, what in zip(out, ref, ("dx", "dW", "db")):
        assert_close(a, e, torch.float64, what)


def test_half_precision(ks, device):
    """float16 (and bfloat16 on GPU): fp32 accumulation, casts at the dot operands and the stores."""
    dtypes = [torch.float16] + ([torch.bfloat16] if device == "cuda" else [])
    for dtype, (skip, act) in itertools.product(dtypes, [("dense", "gelu"), ("identity", "relu")]):
        x, w, bb, q, g = _inputs(37, 33, 33, skip, dtype, device)
        _check_layer(ks, x, w, bb, q, g, skip, act, dtype)


def test_empty_batch_and_zero_width(ks, device):
    x, w, bb, _, g = _inputs(0, 7, 5, "none", torch.float64, device)
    y, z = ks.skip_linear_fwd(x, w, bb, None, SK["none"], AC["relu"])
    assert y.shape == (0, 5) and z.shape == (0, 5)
    dx, dw, db = ks.skip_linear_bwd(g, x, w, z, None, SK["none"], AC["relu"], True)
    assert dx.shape == (0, 7) and torch.equal(dw, torch.zeros_like(dw)) and torch.equal(db, torch.zeros_like(db))
    # K == 0: z is the bias, and db still needs the (fully masked) dW grid
    x, w, bb, _, g = _inputs(5, 0, 3, "none", torch.float64, device)
    _check_layer(ks, x, w, bb, None, g, "none", "gelu", torch.float64)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf - inf inside the interpreter
def test_nan_inf_propagate_like_the_reference(ks, device):
    x, w, bb, q, g = _inputs(9, 17, 17, "dense", torch.float64, device)
    x[0, 3], x[4, 1], g[2, 5] = float("nan"), float("inf"), float("nan")
    for skip, qq in (("identity", None), ("dense", q)):
        y, z = ks.skip_linear_fwd(x, w, bb, qq, SK[skip], AC["relu"])
        y_ref, z_ref = skip_linear_ref(x, w, bb, qq, skip, "relu")
        torch.testing.assert_close(y, y_ref, equal_nan=True)
        out = ks.skip_linear_bwd(g, x, w, z_ref, qq, SK[skip], AC["relu"], True)
        ref = skip_linear_bwd_ref(g, x, w, z_ref, qq, skip, "relu", True)
        for a, e in zip(out, ref):
            torch.testing.assert_close(a, e, equal_nan=True)


def test_bad_input_raises(ks, device):
    x, w, bb, q, g = _inputs(4, 6, 5, "dense", torch.float64, device)
    cases = [
        (TypeError, "dtype", lambda: ks.skip_linear_fwd(x, w.float(), bb, q, SK["dense"], AC["relu"])),
        (TypeError, "float32, float64", lambda: ks.skip_linear_fwd(x.long(), w.long(), None, None, SK["none"], AC["relu"])),
        (ValueError, "same K", lambda: ks.skip_linear_fwd(x[:, :5], w, bb, q, SK["dense"], AC["relu"])),
        (ValueError, "in_features == out_features", lambda: ks.skip_linear_fwd(x, w, bb, None, SK["identity"], AC["relu"])),
        (ValueError, "q must be given", lambda: ks.skip_linear_fwd(x, w, bb, None, SK["dense"], AC["relu"])),
        (ValueError, "bias must have shape", lambda: ks.skip_linear_fwd(x, w, bb[:3], q, SK["dense"], AC["relu"])),
        (ValueError, "z must have shape", lambda: ks.skip_linear_bwd(g, x, w, g[:, :4], q, SK["dense"], AC["relu"], True)),
        (ValueError, "split", lambda: ks.skip_linear_bwd(g, x, w, g, q, SK["dense"], AC["relu"], True, split=0)),
    ]
    if ks.INTERPRET:
        xb, wb = x.bfloat16(), w.bfloat16()
        cases.append((TypeError, "bfloat16", lambda: ks.skip_linear_fwd(xb, wb, None, None, SK["none"], AC["relu"])))
    for exc, text, call in cases:
        with pytest.raises(exc, match=text):
            call()


def test_available_and_supports(ks, device):
    from skipkern.backends import triton as tb

    ok, reason = tb.available()
    assert ok, reason
    good = ((3, 4), (5, 4))
    assert tb.supports("skip_linear", device, torch.float32, good) == (True, "")
    assert tb.supports("skip_linear", device, torch.float64, good)[0]
    assert not tb.supports("skip_mlp", device, torch.float32, good)[0]
    assert not tb.supports("skip_linear", device, torch.int32, good)[0]
    assert not tb.supports("skip_linear", device, torch.float32, ((2**20, 4096), (4096, 4096)))[0]
    if device == "cpu":
        for dtype in (torch.float16, torch.bfloat16):
            ok, reason = tb.supports("skip_linear", "cpu", dtype, good)
            assert not ok and "CUDA" in reason
        assert not tb.supports("skip_linear", "cuda", torch.float32, good)[0]  # interpreter: no GPU tensors
    else:
        assert tb.supports("skip_linear", "cuda", torch.bfloat16, good)[0]


def test_gpu_launch_plan(ks, monkeypatch):
    """The GPU config logic (pure Python, unreachable without a GPU) on an H100-sized device (132 SMs)."""
    monkeypatch.setattr(ks, "INTERPRET", False)
    monkeypatch.setattr(ks, "_num_sms", lambda device: 132)
    dev = torch.device("cuda")
    for dtype in (torch.float32, torch.float16, torch.float64):
        for b, width in ((500, 128), (4096, 512), (1, 1)):
            tr, tc, red, warps, stages = ks._heuristic("fwd", b, width, dtype, dev)
            assert min(tr, tc, red) >= 16 and warps in (2, 4)  # tl.dot needs every block dim >= 16
            assert (b // tr + 1) * (width // tc + 1) >= 132 or (tr, tc) == (16, 16)
        assert ks._heuristic("dw", 128, 128, dtype, dev)[:2] == ((32, 32) if dtype == torch.float64 else (64, 64))
    assert ks._dw_split(4096, 128, 128, torch.float32, dev) == 32  # 4 tiles x 32 slices of 128 rows
    assert ks._dw_split(500, 128, 128, torch.float32, dev) == 3
    assert ks._dw_split(100, 512, 512, torch.float32, dev) == 1
    for tune in (ks._TUNE, ks._TUNE_FP64):
        assert all(min(c[:3]) >= 16 for c in tune)


def test_tf32_only_on_request(ks, monkeypatch):
    monkeypatch.delenv("SKIPKERN_TRITON_TF32", raising=False)
    assert ks.dot_precision(torch.float32) == "ieee"
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "1")
    assert ks.dot_precision(torch.float32) == ("ieee" if ks.INTERPRET else "tf32")
    assert ks.dot_precision(torch.float64) == "ieee"


@pytest.mark.parametrize("skip_kind", ["identity", "dense"])
def test_end_to_end_autograd(ks, device, skip_kind):
    """skipkern.ops.skip_linear(..., backend="triton"): forward and autograd backward vs plain torch."""
    b, k, n = (5, 8, 8) if skip_kind == "identity" else (5, 8, 11)
    x, w, bb, q, g = _inputs(b, k, n, "dense", torch.float64, device)
    x = x.reshape(1, b, k).requires_grad_()  # leading dims go through the glue's reshape
    w.requires_grad_()
    bb.requires_grad_()
    skip = "identity" if skip_kind == "identity" else q
    y = skipkern.ops.skip_linear(x, w, bb, skip=skip, activation="tanh", backend="triton")
    assert skipkern.backends.last_used("skip_linear") == "triton"
    grads = torch.autograd.grad(y, (x, w, bb), g.reshape(1, b, n))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, bb))
    y_ref = skip_linear_composite(xr, wr, br, skip=skip, activation="tanh")
    grads_ref = torch.autograd.grad(y_ref, (xr, wr, br), g.reshape(1, b, n))
    assert_close(y, y_ref, torch.float64, "y")
    for a, e, what in zip(grads, grads_ref, ("dx", "dW", "db")):
        assert_close(a, e, torch.float64, what)


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU present: the other tests compile and run the kernels")
def test_kernels_compile_for_sm90():
    """Without a GPU the interpreter never runs Triton's compiler: compile fwd/dx/dw to sm_90 cubins
    (ptxas ships with triton) in a subprocess without TRITON_INTERPRET, so GPU-only errors cannot land."""
    ensure_backend("triton")
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend on this machine")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset
    res = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
