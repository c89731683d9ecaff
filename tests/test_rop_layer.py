"""The fused HVP's R-pass on skipkern's C++ R-layers (csrc/rop_layer.cpp via skipkern.hessian.hvp_cpu)
against the torch-GEMM path and the exact float64 Hessian: awkward sizes (rows, widths and directions
off the register tiles), no bias, parameter subsets, smooth activations, row chunks, both dtypes, and
the same bits whatever the OpenMP team."""
import pytest
import torch
from torch import nn

from skipkern.hessian import HessianOperator
from skipkern.hessian.hvp_cpu import cpu_layers_reason
from skipkern.nn import SkipMLP
from tests.test_hessian_operator import exact_hessian, rel
from tests.utils import require

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _net(arch, act, width, depth, bias=True, dtype=F64, seed=0):
    m = SkipMLP(5, width, depth, 3, arch=arch, activation=act, bias=bias, seed=seed, dtype=dtype)
    if bias:
        with torch.no_grad():
            for layer in m.layers:
                layer.bias.normal_(0, 0.4, generator=torch.Generator().manual_seed(seed))
    return m


def _ops(m, x, y, **kw):
    on = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused", **kw)
    off = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused", **kw)
    off._impl.cpu_layers = "off"
    return on, off


@pytest.mark.parametrize("arch,act,width,n,k,bias", [
    ("residual", "relu", 17, 13, 3, True), ("plain", "tanh", 5, 1, 1, True),
    pytest.param("residual", "gelu", 33, 21, 9, False, marks=pytest.mark.slow),
    pytest.param("plain", "relu", 16, 40, 2, True, marks=pytest.mark.slow),
    pytest.param("residual", "tanh", 8, 7, 17, True, marks=pytest.mark.slow)])
def test_cpu_layers_match_exact_hessian_and_torch_path(arch, act, width, n, k, bias):
    require("cpp", "rop_epilogue")
    m = _net(arch, act, width, 3, bias)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 5, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)
    on, off = _ops(m, x, y)
    V = torch.randn(on.shape[0], k, generator=g, dtype=F64)
    H = exact_hessian(m, nn.CrossEntropyLoss(), x, y)
    assert rel(on @ V, H @ V) < 1e-10 and rel(on @ V, off @ V) < 1e-12
    assert on._impl._cpu_why == ""  # the C++ R-layers ran
    chunked = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused", memory_budget=20000)
    assert rel(chunked @ V, H @ V) < 1e-10  # several row chunks, each through the kernels


def test_cpu_layers_float32_parameter_subsets_and_reason():
    require("cpp", "rop_epilogue", dtype=torch.float32)
    m = _net("residual", "relu", 24, 5, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 5, generator=g), torch.randint(0, 3, (50,), generator=g)
    for params in (None, ["layers.3.weight", "layers.1.bias"], ["layers.0.weight"], ["layers.5.bias"]):
        on, off = _ops(m, x, y, params=params)
        V = torch.randn(on.shape[0], 6, generator=g)
        assert rel((on @ V).double(), (off @ V).double()) < 2e-6, params
    layers = on._impl._layers()
    assert cpu_layers_reason(x, torch.float32, layers, "cpp") == ""
    assert "torch" in cpu_layers_reason(x, torch.float32, layers, "torch")
    assert "float16" in cpu_layers_reason(x, torch.float16, layers, "cpp")
    hyper = SkipMLP(5, 6, 4, 3, arch="hyper_residual", seed=0)
    on_h = HessianOperator(hyper, nn.CrossEntropyLoss(), (x, y), backend="fused")
    assert "hyper" in cpu_layers_reason(x, torch.float32, on_h._impl._layers(), "cpp")


def test_cpu_layers_same_bits_for_any_team():
    require("cpp", "rop_epilogue")
    m = _net("residual", "tanh", 40, 4)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 5, generator=g, dtype=F64), torch.randint(0, 3, (300,), generator=g)
    V = torch.randn(sum(p.numel() for p in m.parameters()), 12, generator=g, dtype=F64)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append(HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused") @ V)
    torch.set_num_threads(1)
    assert torch.equal(outs[0], outs[1])
