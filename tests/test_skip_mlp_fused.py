"""The whole-MLP fused op (kernels/skip_mlp.py, skipkern.ops.skip_mlp) and SkipMLP(fused="mlp").

Launchers against the float64 reference (skip_mlp_ref / skip_mlp_bwd_ref) on awkward shapes, both the
one-chunk (register-resident) and the chunked (write-back + barrier) kernel paths; then SkipMLP(fused="mlp")
against the per-layer float64 net of the same seed, forward and every gradient, for every architecture; the
fallbacks; gradcheck, double backward and opcheck. On CPU the kernels run in the Triton interpreter (small
shapes: it is slow); on a GPU the same tests run the compiled kernels with IEEE fp32 dots
(SKIPKERN_TRITON_TF32=0 is set per test), and TF32 has its own tolerance test.
"""
from __future__ import annotations

import logging

import pytest
import torch

from skipkern.nn import SkipMLP
from skipkern.ops.skip_mlp import resolve, skip_mlp
from skipkern.ops.skip_mlp_reference import skip_mlp_bwd_ref, skip_mlp_ref
from skipkern.reference import ACTIVATION_CODES, SKIP_CODES
from tests.utils import assert_close, ensure_backend

ARCHS = ("plain", "residual", "orthogonal", "degenerate", "hyper_residual")
CHUNKED = (16, 16, 16)  # BLOCK_SIZE_N = 16 < WIDTH_P = 32: several column chunks per layer, 16-row blocks
F64 = torch.float64


@pytest.fixture(scope="module")
def km():
    ensure_backend("triton")
    from skipkern.kernels import skip_mlp as k
    return k


@pytest.fixture(scope="module")
def device(km):
    return "cpu" if km.INTERPRET else "cuda"


@pytest.fixture(autouse=True)
def _ieee(monkeypatch):
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "0")  # exact-comparison tests; TF32 is tested on its own


def _net(b, k0, width, n_out, depth, skip, hyper, bias=True):
    """Stacked float64 tensors of a random net (weights ~ 1/sqrt(fan_in), orthogonal Q and P)."""
    q = torch.linalg.qr(torch.randn(depth - 1, width, width, dtype=F64))[0] if skip == "dense" else None
    p = torch.linalg.qr(torch.randn(max(depth - 2, 0), width, width, dtype=F64))[0] if hyper else None
    coef = torch.tensor([0.0, 0.0] + [1.0 / (j - 1) for j in range(2, depth)], dtype=F64)[:depth] if hyper else None

    def rnd(*shape, fan=1):
        return torch.randn(*shape, dtype=F64) / fan ** 0.5
    return dict(x=rnd(b, k0), w_in=rnd(width, k0, fan=k0), b_in=rnd(width) if bias else None,
                w=rnd(depth - 1, width, width, fan=width), b=rnd(depth - 1, width) if bias else None, q=q, p=p,
                c=coef, w_out=rnd(n_out, width, fan=width), b_out=rnd(n_out) if bias else None)


def _to(t, dtype, device):
    """Tensors to dtype/device; c stays in the accumulation dtype (float64 for float64, else float32)."""
    out = {}
    for k, v in t.items():
        dt = (F64 if dtype == F64 else torch.float32) if k == "c" else dtype
        out[k] = None if v is None else v.to(device=device, dtype=dt)
    return out


ORDER = ("x", "w_in", "b_in", "w", "b", "q", "p", "c", "w_out", "b_out")


def _check_launchers(km, t64, skip, act, dtype, device, blocks=None, needs_dx=True):
    t = _to(t64, dtype, device)
    sc, ac = SKIP_CODES[skip], ACTIVATION_CODES[act]
    out, H, Z = km.skip_mlp_fwd(*[t[k] for k in ORDER], sc, ac, blocks=blocks)
    ref_in = _to(t, F64, "cpu")  # the reference sees the same rounded inputs
    ro, rH, rZ = skip_mlp_ref(*[ref_in[k] for k in ORDER], skip, act)
    for name, a, r in (("logits", out, ro), ("H", H, rH), ("Z", Z, rZ)):
        assert a.dtype == dtype and a.shape == r.shape
        assert_close(a.cpu(), r, dtype, name)
    g = torch.randn(out.shape, dtype=F64)
    z_in = rZ.to(dtype).to(device)  # the reference's Z: the same relu masks on both sides
    h_in = rH.to(dtype).to(device)
    bw = km.skip_mlp_bwd(g.to(dtype).to(device), t["x"], t["w_in"], t["w"], t["q"], t["p"], t["c"], t["w_out"], h_in,
                         z_in, sc, ac, t["b_in"] is not None, needs_dx, blocks=blocks)
    rb = skip_mlp_bwd_ref(g.to(dtype).double(), ref_in["x"], ref_in["w_in"], ref_in["w"], ref_in["q"], ref_in["p"],
                          ref_in["c"], ref_in["w_out"], h_in.cpu().double(), z_in.cpu().double(), skip, act,
                          t["b_in"] is not None, needs_dx)
    for name, a, r in zip(("dx", "dW_in", "db_in", "dW", "db", "dW_out", "db_out"), bw, rb):
        assert (a is None) == (r is None), name
        if a is not None:
            assert_close(a.cpu(), r, dtype, name)


SKIP_OF = {"plain": ("none", False), "residual": ("identity", False), "orthogonal": ("dense", False),
           "degenerate": ("dense", False), "hyper_residual": ("identity", True)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("blocks", [None, pytest.param(CHUNKED, marks=pytest.mark.slow)], ids=["one-chunk", "chunked"])
def test_launchers_float64(km, device, arch, blocks):
    skip, hyper = SKIP_OF[arch]
    for i, (b, k0, width, n_out, depth) in enumerate([(1, 5, 20, 3, 4), (37, 3, 17, 19, 5), (18, 33, 32, 1, 2)]):
        act = ("relu", "tanh", "gelu")[i]
        t = _net(b, k0, width, n_out, depth, skip, hyper, bias=i != 1)
        _check_launchers(km, t, skip, act, F64, device, blocks, needs_dx=i != 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_launchers_lower_precision(km, device, dtype):
    t = _net(23, 7, 24, 5, 4, "identity", True)
    _check_launchers(km, t, "identity", "relu", dtype, device, CHUNKED)
    if dtype == torch.float32:
        _check_launchers(km, t, "identity", "identity", dtype, device)


def test_depth_one_and_empty_batch(km, device):
    t = _net(5, 4, 16, 2, 1, "identity", False)
    _check_launchers(km, t, "identity", "relu", F64, device)
    t = _net(0, 4, 16, 2, 3, "identity", False)
    out, H, Z = km.skip_mlp_fwd(*[_to(t, F64, device)[k] for k in ORDER], 1, 0)
    assert out.shape == (0, 2) and H.shape == (3, 0, 16)


def test_launcher_errors(km, device):
    t = _to(_net(4, 3, 16, 2, 3, "identity", False), F64, device)
    args = [t[k] for k in ORDER]
    with pytest.raises(ValueError, match="widths up to 256"):
        km.skip_mlp_fwd(t["x"], torch.zeros(300, 3, dtype=F64, device=device), None,
                        torch.zeros(2, 300, 300, dtype=F64, device=device), None, None, None, None,
                        torch.zeros(2, 300, dtype=F64, device=device), None, 1, 0)
    with pytest.raises(TypeError, match="dtype"):
        km.skip_mlp_fwd(t["x"].float(), *args[1:], 1, 0)
    with pytest.raises(ValueError, match="q must be given"):
        km.skip_mlp_fwd(*args, SKIP_CODES["dense"], 0)
    with pytest.raises(ValueError, match="blocks"):
        km.skip_mlp_fwd(*args, 1, 0, blocks=(16, 24, 16))


# ------------------------------------------------------------------------------------- SkipMLP(fused="mlp")
def _pair(arch, device, dtype, depth=4, width=20, bias=True, seed=0, **kw):
    """(fused model on device/dtype, per-layer float64 reference model) with the same parameters."""
    ref = SkipMLP(6, width, depth, 5, arch=arch, backend="torch", bias=bias, seed=seed, dtype=F64, **kw)
    fused = SkipMLP(6, width, depth, 5, arch=arch, backend="triton", bias=bias, seed=seed, dtype=F64, fused="mlp", **kw)
    fused.load_state_dict(ref.state_dict())
    return fused.to(device=device, dtype=dtype), ref


def _compare_models(fused, ref, x64, dtype, device):
    x = x64.detach().clone().to(device=device, dtype=dtype).requires_grad_(True)
    xr = x64.detach().clone().requires_grad_(True)
    out, hid = fused(x, return_hidden=True)
    assert fused.fused_path == "mlp (triton)"
    rout, rhid = ref(xr, return_hidden=True)
    assert_close(out.detach().cpu(), rout.detach(), dtype, "logits")
    for j, (a, r) in enumerate(zip(hid, rhid)):
        assert_close(a.detach().cpu(), r.detach(), dtype, f"h_{j + 1}")
    g = torch.randn(out.shape, dtype=F64)
    out.backward(g.to(device=device, dtype=dtype))
    rout.backward(g)
    assert_close(x.grad.cpu(), xr.grad, dtype, "dx")
    for (name, p), (_, pr) in zip(fused.named_parameters(), ref.named_parameters()):
        assert_close(p.grad.cpu(), pr.grad, dtype, name)


@pytest.mark.parametrize("arch", ARCHS)
def test_skipmlp_fused_matches_per_layer(km, device, arch):
    fused, ref = _pair(arch, device, F64, depth=5 if arch == "hyper_residual" else 4)
    _compare_models(fused, ref, torch.randn(9, 6, dtype=F64), F64, device)


@pytest.mark.parametrize("arch", ["residual", "hyper_residual"])
def test_skipmlp_fused_float32_no_bias(km, device, arch):
    fused, ref = _pair(arch, device, torch.float32, depth=4, width=13, bias=False, hyper_skip="identity")
    _compare_models(fused, ref, torch.randn(3, 6, dtype=F64), torch.float32, device)


def test_skipmlp_input_without_grad_and_hidden_in_loss(km, device):
    fused, ref = _pair("residual", device, F64)
    x = torch.randn(7, 6, dtype=F64)
    out, hid = fused(x.to(device), return_hidden=True)
    rout, rhid = ref(x, return_hidden=True)
    (out.sum() + (hid[1] ** 2).sum()).backward()  # a cotangent on H: the reference-vjp path
    (rout.sum() + (rhid[1] ** 2).sum()).backward()
    for (name, p), (_, pr) in zip(fused.named_parameters(), ref.named_parameters()):
        assert_close(p.grad.cpu(), pr.grad, F64, name)


def test_double_backward(km, device):
    """Hessian-vector product through the fused op equals the per-layer one (plain torch underneath)."""
    fused, ref = _pair("orthogonal", device, F64, depth=3, width=16, activation="tanh")
    x = torch.randn(5, 6, dtype=F64)
    y = torch.randint(0, 5, (5,))
    res = []
    for model, dev in ((fused, device), (ref, "cpu")):
        params = list(model.parameters())
        loss = torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.ones_like(p) for p in params]
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
        res.append([h.cpu() for h in hv])
    for a, r in zip(*res):
        assert_close(a, r, F64, "Hv")


@pytest.mark.slow
def test_gradcheck_float64(km, device):
    t = _to(_net(3, 2, 16, 2, 3, "dense", True), F64, device)
    names = ("x", "w_in", "b_in", "w", "w_out")
    for k in names:
        t[k].requires_grad_(True)

    def f(*ts):
        d = dict(t, **dict(zip(names, ts)))
        out, H = skip_mlp(d["x"], d["w_in"], d["b_in"], d["w"], d["b"], d["q"], d["p"], d["c"], d["w_out"],
                          d["b_out"], skip="dense", activation="tanh", backend="triton")
        return out
    assert torch.autograd.gradcheck(f, [t[k] for k in names], eps=1e-6, atol=1e-7, fast_mode=True)


def test_fallbacks(km, device, caplog):
    model = SkipMLP(4, 16, 3, 2, fused="mlp", seed=0, batchnorm_layers=(1,), backend="triton").to(device)
    with caplog.at_level(logging.INFO, logger="skipkern"):
        model(torch.randn(3, 4, device=device))
    assert model.fused_path.startswith("layer (BatchNorm")
    model = SkipMLP(4, 16, 3, 2, fused="mlp", seed=0, backend="torch").to(device)
    model(torch.randn(3, 4, device=device))
    assert model.fused_path == "mlp (torch)"
    if device == "cpu":
        assert resolve("auto", torch.device("cpu"), torch.float32, 16)[0] is None  # interpreter only by name
        model = SkipMLP(4, 16, 3, 2, fused="mlp", seed=0)
        model(torch.randn(3, 4))
        assert model.fused_path.startswith("layer (Triton on CPU")
    assert resolve("cpp", torch.device(device), torch.float32, 16)[0] is None
    with pytest.raises(RuntimeError, match="width 300"):
        resolve("triton", torch.device(device), torch.float32, 300)
    with pytest.raises(ValueError, match="fused must be"):
        SkipMLP(4, 16, 3, 2, fused="whole")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(km, device, backend):
    from skipkern.ops import skip_mlp as ops
    t = _to(_net(4, 3, 16, 2, 4, "identity", True), F64, device)
    for k in ("x", "w_in", "w", "w_out"):
        t[k].requires_grad_(True)
    torch.library.opcheck(ops.skip_mlp_fwd, ([t[k] for k in ORDER] + [1, 0, backend, "auto"]),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


_COMPILE_FOR_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from skipkern.kernels import rop_layer as rl, skip_mlp as km
from skipkern.reference import ACTIVATION_CODES as AC, SKIP_CODES as SK
assert not km.INTERPRET


def comp(kern, c, dt):
    cdt = "fp64" if dt == "fp64" else "fp32"  # c: the accumulation dtype
    sig = {a: "constexpr" if a in c else ("*" + (cdt if a == "c_ptr" else dt) if a.endswith("_ptr") else "i32")
           for a in kern.arg_names}
    out = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=4, num_stages=2))
    assert "mma" in out.asm["ptx"], kern  # tensor-core dots
    assert out.metadata.shared <= 227 * 1024, (kern, c, out.metadata.shared)  # fits an H100/H200 block


for dt, prec, wp, bn, skip, hyper in [("fp32", "tf32", 128, 128, "identity", False),
                                      ("bf16", "ieee", 256, 64, "dense", True), ("fp64", "ieee", 32, 16, "dense", True)]:
    c = dict(ACTIVATION=AC["relu"], SKIP=SK[skip], HYPER=hyper, DOT_PRECISION=prec, WIDTH_P=wp, SINGLE=bn >= wp,
             BLOCK_SIZE_M=16, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=32)
    comp(km._skip_mlp_fwd_kernel, dict(c, HAS_BIAS=True), dt)
    comp(km._skip_mlp_bwd_kernel, dict(c, NEEDS_DX=True), dt)
comp(km._skip_mlp_dw_kernel, dict(HAS_BIAS=True, DOT_PRECISION="tf32", BLOCK_SIZE_M=32, BLOCK_SIZE_N=64,
                                  BLOCK_SIZE_K=64), "fp32")
blocks = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32)
comp(rl._rop_layer_fwd_kernel, dict(HAS_DIR=True, HAS_RH=True, EPILOGUE=True, SKIP_IDENTITY=True, HAS_INIT=True,
                                    PRODUCTS="tf32",
                                    **blocks), "fp32")
comp(rl._rop_layer_bwd_kernel, dict(HAS_RGZ=True, HAS_DIR=True, SKIP_IDENTITY=True, STORE_RGH=True, PRODUCTS="bf16",
                                    **blocks), "fp32")
comp(rl._rop_layer_bwd_kernel, dict(HAS_RGZ=True, HAS_DIR=True, SKIP_IDENTITY=True, STORE_RGH=True, PRODUCTS="ieee",
                                    BLOCK_SIZE_M=32, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32), "fp64")
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU present: the other tests compile and run the kernels")
def test_kernels_compile_for_sm90(km):
    """The interpreter never runs Triton's compiler: compile the whole-MLP and R-layer kernels to sm_90 cubins
    (ptxas ships with triton) in a subprocess without TRITON_INTERPRET, with tensor-core dots and shared
    memory within a Hopper block's 227 KB, so GPU-only errors cannot land."""
    import os
    import subprocess
    import sys

    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend on this machine")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


def test_torch_func_transform_takes_the_per_layer_path(km, device):
    """Custom ops have no functorch rules: under torch.func the module runs its per-layer composite."""
    fused, ref = _pair("residual", device, F64, depth=3, width=16)
    x = torch.randn(4, 6, dtype=F64)
    params = {k: v.detach() for k, v in fused.named_parameters()}

    def loss(p):
        return torch.func.functional_call(fused, p, (x.to(device),)).square().sum()
    g = torch.func.grad(loss)(params)
    assert fused.fused_path.startswith("layer (torch.func")
    ref(x).square().sum().backward()
    for name, pr in ref.named_parameters():
        assert_close(g[name].cpu(), pr.grad, F64, name)
