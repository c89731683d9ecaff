"""The GPU paths of the Triton skip_linear: split-K forward, the fp32 precision policy (TF32 by default on the
GPU, IEEE opt-out), and the tuned launch configs cached per problem shape (kernels/tuning.py).

Split-K runs in the interpreter against the float64 reference; the policy and the tuning cache are plain
Python, tested with an injected timer; on a GPU, TF32 results are compared with a TF32 tolerance.
"""
from __future__ import annotations

import json

import pytest
import torch

from skipkern.kernels import tuning
from skipkern.kernels.precision import dot_precision
from skipkern.ops.skip_linear_reference import skip_linear_ref
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
from tests.utils import assert_close, ensure_backend

F64 = torch.float64


@pytest.fixture(scope="module")
def ks():
    ensure_backend("triton")
    from skipkern.kernels import skip_linear as k
    return k


@pytest.fixture(scope="module")
def device(ks):
    return "cpu" if ks.INTERPRET else "cuda"


@pytest.mark.parametrize("skip", ["none", "identity", "dense"])
def test_split_k_forward(ks, device, skip):
    b, k = 21, 70
    n = k if skip == "identity" else 37
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, k, generator=g, dtype=F64)
    w = torch.randn(n, k, generator=g, dtype=F64) / k ** 0.5
    bias = torch.randn(n, generator=g, dtype=F64)
    q = torch.randn(n, k, generator=g, dtype=F64) / k ** 0.5 if skip == "dense" else None
    dev = [None if t is None else t.to(device) for t in (x, w, bias, q)]
    split = {"none": 2, "identity": 3, "dense": 5}[skip]  # uneven ranges (70 in blocks of 16), a last short one
    y, z = ks.skip_linear_fwd(*dev, SK[skip], AC["gelu"], blocks=(16, 16, 16), split_k=split)
    y_ref, z_ref = skip_linear_ref(x, w, bias, q, skip, "gelu")
    assert_close(z.cpu(), z_ref, F64, f"z split {split}")
    assert_close(y.cpu(), y_ref, F64, f"y split {split}")
    with pytest.raises(ValueError, match="split_k"):
        ks.skip_linear_fwd(*dev, SK[skip], AC["gelu"], split_k=0)


def test_split_k_plan(ks, monkeypatch):
    """On an H100/H200-sized GPU (132 SMs): the 3072-wide CIFAR input layer at B = 500 keeps 64x64 tiles and
    splits K; a 128-wide layer shrinks its tiles instead and is not split."""
    monkeypatch.setattr(ks, "INTERPRET", False)
    monkeypatch.setattr(ks, "_num_sms", lambda device: 132)
    dev = torch.device("cuda")
    tile = ks._heuristic("fwd", 500, 128, torch.float32, dev, 3072)
    assert tile[:2] == (64, 64)
    split = ks._split_k(500, 128, 3072, tile[:2], dev)
    assert split == 12 and 16 * split >= 132  # 8 x 2 tiles x 12 ranges of 256
    small = ks._heuristic("fwd", 500, 128, torch.float32, dev, 128)
    assert small[:2] != (64, 64) and ks._split_k(500, 128, 128, small[:2], dev) == 1


def test_precision_policy(ks, monkeypatch):
    monkeypatch.delenv("SKIPKERN_TRITON_TF32", raising=False)
    assert dot_precision(torch.float32, interpret=False) == "tf32"  # the GPU default
    assert dot_precision(torch.float32, interpret=False, precision="ieee") == "ieee"
    assert dot_precision(torch.float32, interpret=True) == "ieee"  # the interpreter is IEEE
    assert dot_precision(torch.float64, interpret=False, precision="tf32") == "ieee"
    assert dot_precision(torch.bfloat16, interpret=False) == "ieee"
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "0")
    assert dot_precision(torch.float32, interpret=False) == "ieee"
    assert dot_precision(torch.float32, interpret=False, precision="tf32") == "tf32"  # the argument wins
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "yes")
    with pytest.raises(ValueError, match="SKIPKERN_TRITON_TF32"):
        dot_precision(torch.float32, interpret=False)
    with pytest.raises(ValueError, match="precision"):
        dot_precision(torch.float32, interpret=False, precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 needs a GPU")
def test_tf32_forward_on_gpu(ks, monkeypatch):
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "1")
    x, w = torch.randn(500, 3072, device="cuda"), torch.randn(128, 3072, device="cuda") / 3072 ** 0.5
    y, z = ks.skip_linear_fwd(x, w, None, None, SK["none"], AC["relu"])
    z_ref = x.double() @ w.double().T
    err = float((z.double() - z_ref).norm() / z_ref.norm())
    assert 1e-6 < err < 2e-3  # TF32 (10-bit mantissa products): neither IEEE-exact nor wrong


def test_tuning_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SKIPKERN_TUNE_CACHE", str(tmp_path / "tune.json"))
    monkeypatch.setenv("SKIPKERN_TRITON_AUTOTUNE", "1")
    tuning.clear_memory()
    cost = {(1,): 3.0, (2,): 1.0, (3,): 2.0}
    ran = []

    def run(cfg):
        if cfg == (4,):
            raise RuntimeError("out of resources")  # a config that does not fit is skipped
        ran.append(cfg)

    def timer(fn):
        fn()
        return cost[ran[-1]]
    dev = torch.device("cpu")
    assert tuning.choose("op", ("fwd", 500), [(2,), (3,), (4,)], run, dev, (1,), timer=timer) == (2,)
    assert sorted(ran) == [(1,), (2,), (3,)]
    stored = json.loads((tmp_path / "tune.json").read_text())
    assert list(stored.values()) == [[2]]
    tuning.clear_memory()
    monkeypatch.delenv("SKIPKERN_TRITON_AUTOTUNE")  # unset: stored choices are used, nothing is timed
    ran.clear()
    assert tuning.choose("op", ("fwd", 500), [(3,)], run, dev, (1,), timer=timer) == (2,) and not ran
    assert tuning.choose("op", ("fwd", 64), [(3,)], run, dev, (1,), timer=timer) == (1,) and not ran  # a miss
    monkeypatch.setenv("SKIPKERN_TRITON_AUTOTUNE", "0")
    assert tuning.choose("op", ("fwd", 500), [(3,)], run, dev, (1,), timer=timer) == (1,)  # heuristic only
    monkeypatch.setenv("SKIPKERN_TRITON_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="SKIPKERN_TRITON_AUTOTUNE"):
        tuning.choose("op", ("fwd", 500), [], run, dev, (1,))
    tuning.clear_memory()


_COMPILE_SPLIT_K = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from skipkern.kernels import skip_linear as ks
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
for kern, c in ((ks._skip_linear_fwd_kernel, dict(ACTIVATION=AC["relu"], HAS_BIAS=True, SKIP=SK["dense"],
                 DOT_PRECISION="tf32", SPLIT_K=True, BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32)),
                (ks._skip_linear_fwd_reduce_kernel, dict(ACTIVATION=AC["gelu"], HAS_BIAS=True, SKIP=SK["identity"],
                 BLOCK_SIZE_M=64, BLOCK_SIZE_N=64))):
    sig = {a: "constexpr" if a in c else ("*fp32" if a.endswith("_ptr") else "i32") for a in kern.arg_names}
    triton.compile(ASTSource(fn=kern, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=4, num_stages=3))
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU present: the other tests compile and run the kernels")
def test_split_k_kernels_compile_for_sm90(ks):
    import os
    import subprocess
    import sys

    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend on this machine")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", _COMPILE_SPLIT_K], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
