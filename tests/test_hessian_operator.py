"""HessianOperator: both HVP backends against the exact float64 Hessian
(torch.autograd.functional.hessian), chunking and batching invariance, modes, errors."""
import copy
import logging
import types

import numpy as np
import pytest
import torch
from torch import nn

from skipkern.hessian import HessianOperator
from skipkern.nn import SkipMLP

F64 = torch.float64

# Small shapes: one intra-op thread (two threads fighting for 2 shared cores cost 10-30x).
pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-10  # float64 products: only summation order differs from the exact Hessian


def exact_hessian(model, loss_fn, x, y, names=None, vectorize=True):
    """Dense float64 Hessian of loss_fn(model(x), y) w.r.t. the named parameters (flat, in order).

    vectorize=True runs the reverse-over-reverse rows under vmap (SkipLinear then runs its plain-torch
    composite); vectorize=False loops over rows through the custom ops' double backward (slower)."""
    named = dict(model.named_parameters())
    names = names or [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    flat = torch.cat([named[n].detach().reshape(-1) for n in names])

    def f(v):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, d, (x,)), y)

    return torch.autograd.functional.hessian(f, flat, vectorize=vectorize)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def small_mlp(arch="residual", activation="relu", depth=4, seed=1, **kw):
    m = SkipMLP(5, 6, depth, 3, arch=arch, activation=activation, seed=seed, dtype=F64, **kw)
    with torch.no_grad():  # nonzero biases so that every bias term of the R-op is exercised
        for layer in m.layers:
            layer.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return m


def data(n=9, d_in=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=F64), torch.randint(0, classes, (n,), generator=g)


CASES = [(a, "relu") for a in ("plain", "residual", "orthogonal", "degenerate", "hyper_residual")] + [
    ("plain", "tanh"), ("residual", "gelu"), ("orthogonal", "tanh"), ("hyper_residual", "gelu")]


@pytest.mark.parametrize("backend", ["fused", "generic"])
@pytest.mark.parametrize("arch,activation", CASES)
def test_matmat_matches_exact_hessian(arch, activation, backend):
    m = small_mlp(arch, activation, depth=5)
    x, y = data()
    lf = nn.CrossEntropyLoss()
    H = exact_hessian(m, lf, x, y)
    op = HessianOperator(m, lf, (x, y), backend=backend, batch_size=4)
    assert op.backend == backend and op.shape == H.shape and op.dtype == F64
    V = torch.randn(H.shape[0], 3, dtype=F64)
    assert rel(op.matmat(V), H @ V) < RTOL
    v = V[:, 0]
    assert rel(op.matvec(v), H @ v) < RTOL
    assert rel(op @ v, H @ v) < RTOL


@pytest.mark.parametrize("loss_fn,target", [
    (nn.MSELoss(), "reg"), (nn.MSELoss(reduction="sum"), "reg"), (nn.CrossEntropyLoss(reduction="sum"), "cls"),
    (nn.CrossEntropyLoss(ignore_index=1), "cls"), (nn.CrossEntropyLoss(), "soft"),
    (torch.nn.functional.cross_entropy, "cls"), (torch.nn.functional.mse_loss, "reg")])
def test_fused_losses_match_exact(loss_fn, target):
    m = small_mlp("hyper_residual", "gelu", depth=4, hyper_reduce="sum", hyper_skip="identity")
    x, y = data()
    if target == "reg":
        y = torch.randn(9, 3, dtype=F64)
    elif target == "soft":
        y = torch.softmax(torch.randn(9, 3, dtype=F64), 1)
    H = exact_hessian(m, loss_fn, x, y)
    V = torch.randn(H.shape[0], 2, dtype=F64)
    for backend in ("fused", "generic"):
        op = HessianOperator(m, loss_fn, (x, y), backend=backend)
        assert rel(op @ V, H @ V) < RTOL, backend


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_generic_conv_net_matches_exact(caplog):
    torch.manual_seed(0)
    m = SmallConv().double()
    x = torch.randn(6, 1, 6, 6, dtype=F64)
    y = torch.randint(0, 3, (6,))
    lf = nn.CrossEntropyLoss()
    H = exact_hessian(m, lf, x, y)
    with caplog.at_level(logging.INFO, logger="skipkern"):
        op = HessianOperator(m, lf, (x, y))  # auto: not a SkipMLP -> generic, logged with the reason
    assert op.backend == "generic"
    assert any("hvp backend=generic" in r.message and "not a SkipMLP" in r.message for r in caplog.records)
    V = torch.randn(H.shape[0], 4, dtype=F64)
    assert rel(op @ V, H @ V) < RTOL
    with pytest.raises(RuntimeError, match="fused"):
        HessianOperator(m, lf, (x, y), backend="fused")


def test_fused_equals_generic_float32_and_auto_picks_fused(caplog):
    m = SkipMLP(8, 16, 6, 4, arch="orthogonal", seed=3)
    x = torch.randn(40, 8)
    y = torch.randint(0, 4, (40,))
    with caplog.at_level(logging.INFO, logger="skipkern"):
        fused = HessianOperator(m, nn.CrossEntropyLoss(), (x, y))
    assert fused.backend == "fused" and any("hvp backend=fused" in r.message for r in caplog.records)
    generic = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="generic")
    V = torch.randn(fused.shape[0], 5)
    a, b = fused @ V, generic @ V
    assert a.dtype == torch.float32
    assert rel(a.double(), b.double()) < 1e-5


@pytest.mark.parametrize("backend", ["fused", "generic"])
def test_matmat_equals_k_matvecs_and_chunking_invariance(backend):
    m = small_mlp("residual", "tanh", depth=4)
    x, y = data(n=13)
    lf = nn.CrossEntropyLoss()
    V = torch.randn(sum(p.numel() for p in m.parameters()), 5, dtype=F64)
    ref = HessianOperator(m, lf, (x, y), backend=backend) @ V
    cols = torch.stack([HessianOperator(m, lf, (x, y), backend=backend).matvec(V[:, j]) for j in range(5)], 1)
    assert rel(cols, ref) < 1e-13
    tiny = HessianOperator(m, lf, (x, y), backend=backend, memory_budget=4096)  # row and direction chunks
    assert rel(tiny @ V, ref) < 1e-13


@pytest.mark.parametrize("backend", ["fused", "generic"])
@pytest.mark.slow
def test_ragged_batches_weighted_by_size(backend):
    m = small_mlp("plain", "relu")
    x, y = data(n=13)
    lf = nn.CrossEntropyLoss()
    H = exact_hessian(m, lf, x, y, vectorize=False)  # mean over all 13 rows, through the custom ops
    V = torch.randn(H.shape[0], 2, dtype=F64)
    batches = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]  # ragged last batch of 3
    assert rel(HessianOperator(m, lf, batches, backend=backend) @ V, H @ V) < RTOL
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    op = HessianOperator(m, lf, loader, backend=backend)
    assert rel(op @ V, H @ V) < RTOL
    assert op.data_passes == 1


@pytest.mark.parametrize("backend", ["fused", "generic"])
def test_parameter_subset(backend):
    m = small_mlp("orthogonal", "gelu")
    x, y = data()
    lf = nn.CrossEntropyLoss()
    names = ["layers.2.weight", "layers.0.bias"]  # user order is kept
    H = exact_hessian(m, lf, x, y, names)
    op = HessianOperator(m, lf, (x, y), params=names, backend=backend)
    assert op.param_names == names and op.shape[0] == 36 + 6
    V = torch.randn(H.shape[0], 3, dtype=F64)
    assert rel(op @ V, H @ V) < RTOL
    op2 = HessianOperator(m, lf, (x, y), params=[m.layers[2].weight, m.layers[0].bias], backend=backend)
    assert rel(op2 @ V, H @ V) < RTOL


def test_dtype_cast_and_to_scipy():
    m = SkipMLP(5, 6, 3, 3, arch="residual", seed=0)  # float32 model
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    lf = nn.CrossEntropyLoss()
    op = HessianOperator(m, lf, (x, y), dtype=F64)
    H = exact_hessian(copy.deepcopy(m).double(), lf, x.double(), y)
    assert op.dtype == F64 and m.layers[0].weight.dtype == torch.float32
    V = torch.randn(H.shape[0], 2, dtype=F64)
    assert rel(op @ V, H @ V) < RTOL
    lin = op.to_scipy()
    v = np.random.default_rng(0).standard_normal(H.shape[0])
    np.testing.assert_allclose(lin.matvec(v), (H @ torch.from_numpy(v)).numpy(), rtol=1e-9, atol=1e-12)
    assert lin.shape == op.shape


def test_eval_mode_default_and_modes_restored():
    m = SkipMLP(5, 6, 3, 3, arch="residual", seed=0, batchnorm_layers=(1,), dtype=F64)
    x, y = data(n=8)
    lf = nn.CrossEntropyLoss()
    with torch.no_grad():
        m.norms["1"].running_mean.uniform_(-1, 1)
        m.norms["1"].running_var.uniform_(0.5, 2)
    m.train()
    stats = m.norms["1"].running_mean.clone()
    op = HessianOperator(m, lf, (x, y))
    assert op.backend == "generic" and "BatchNorm" in op.backend_reason
    V = torch.randn(op.shape[0], 2, dtype=F64)
    out = op @ V
    assert m.training and all(mod.training for mod in m.modules())
    m.eval()
    assert rel(out, exact_hessian(m, lf, x, y) @ V) < RTOL  # the eval-mode Hessian
    m.train()
    out_train = HessianOperator(m, lf, (x, y), train_mode=True) @ V
    assert torch.equal(m.norms["1"].running_mean, stats) and m.norms["1"].track_running_stats
    m.norms["1"].track_running_stats = False  # batch statistics without touching the running ones
    H_train = exact_hessian(m, lf, x, y)
    m.norms["1"].track_running_stats = True
    assert rel(out_train, H_train @ V) < RTOL


def test_bad_inputs():
    m = small_mlp()
    x, y = data()
    lf = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="leading"):
        HessianOperator(m, lf, (x, y[:5]))
    with pytest.raises(ValueError, match="batch 1"):
        HessianOperator(m, lf, [(x, y), (x[:3], y[:4])]) @ torch.zeros(sum(p.numel() for p in m.parameters()), 1,
                                                                     dtype=F64)
    frozen = small_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(frozen, lf, (x, y))
    with pytest.raises(ValueError, match="not a parameter name"):
        HessianOperator(m, lf, (x, y), params=["nope"])
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(m, lf, iter([(x, y)]))
    with pytest.raises(ValueError, match="backend"):
        HessianOperator(m, lf, (x, y), backend="cuda")
    op = HessianOperator(m, lf, (x, y))
    with pytest.raises(ValueError, match="shape"):
        op @ torch.zeros(3, 1, dtype=F64)
    for backend in ("fused", "generic"):
        bad = x.clone()
        bad[2, 1] = float("nan")
        with pytest.raises(ValueError, match="not finite"):
            HessianOperator(m, lf, (bad, y), backend=backend) @ torch.ones(op.shape[0], 1, dtype=F64)


def test_fused_primal_cache_follows_parameter_and_data_changes():
    m = small_mlp("residual", "tanh")
    x, y = data()
    lf = nn.CrossEntropyLoss()
    op = HessianOperator(m, lf, (x, y), backend="fused")
    V = torch.randn(op.shape[0], 2, dtype=F64)
    first = op @ V
    assert torch.equal(op @ V, first)  # second product reuses the cached primal pass
    with torch.no_grad():
        m.layers[1].weight.mul_(1.5)  # in place (bumps the version counter)
    assert rel(op @ V, exact_hessian(m, lf, x, y) @ V) < RTOL
    m.layers[2].bias.data.add_(0.3)  # through .data (does not bump it)
    assert rel(op @ V, exact_hessian(m, lf, x, y) @ V) < RTOL
    x.mul_(0.5)  # the data tensor itself, in place
    assert rel(op @ V, exact_hessian(m, lf, x, y) @ V) < RTOL
    op.release_workspace()
    assert rel(op @ V, exact_hessian(m, lf, x, y) @ V) < RTOL


def _replay(specs, x):
    """SkipMLP's forward from its layer description alone (plain torch)."""
    from skipkern.reference import activation_ref
    h, hsum = x, None
    for i, s in enumerate(specs):
        z = h @ s["weight"].T + (0 if s["bias"] is None else s["bias"])
        if i == len(specs) - 1:
            return z
        out = activation_ref(z, s["activation"])
        out = out + (h if s["skip"] == "identity" else h @ s["skip_weight"].T if s["skip"] == "dense" else 0)
        if s["hyper_coefficient"]:
            out = out + s["hyper_coefficient"] * hsum
        if s["hyper_source"] is not None:
            hsum = h @ s["hyper_source"].T if hsum is None else hsum + h @ s["hyper_source"].T
        h = out if s["norm"] is None else s["norm"](out)


@pytest.mark.parametrize("kw", [dict(arch=a) for a in ("plain", "residual", "orthogonal", "degenerate")] + [
    dict(arch="hyper_residual", hyper_reduce="sum", hyper_skip="identity"), dict(arch="hyper_residual"),
    dict(arch="residual", bias=False, activation="tanh"), dict(arch="plain", batchnorm_layers=(1, 2))])
def test_layer_specs_describe_the_forward_pass(kw):
    m = SkipMLP(5, 6, 5, 3, seed=2, dtype=F64, **kw).eval()
    x, _ = data()
    specs = m.layer_specs()
    assert len(specs) == len(m.layers)
    named = dict(m.named_parameters())
    for s in specs:
        assert named[s["weight_name"]] is s["weight"]
        assert (s["bias_name"] is None) == (s["bias"] is None) and (s["bias"] is None or named[s["bias_name"]] is s["bias"])
    torch.testing.assert_close(_replay(specs, x), m(x), rtol=1e-12, atol=1e-12)


def test_fused_backend_follows_the_layer_description_without_bias():
    m = small_mlp("hyper_residual", "tanh", depth=4)
    nb = SkipMLP(5, 6, 4, 3, arch="orthogonal", activation="gelu", bias=False, seed=3, dtype=F64)
    x, y = data()
    lf = nn.CrossEntropyLoss()
    for model in (m, nb):
        H = exact_hessian(model, lf, x, y)
        op = HessianOperator(model, lf, (x, y), backend="fused")
        V = torch.randn(H.shape[0], 2, dtype=F64)
        assert rel(op @ V, H @ V) < RTOL


def _sum_sq(out, target):
    return ((out - target) ** 2).sum()


def _mean_ce(out, target):
    return torch.nn.functional.cross_entropy(out, target)


REDUCTION_CASES = [  # (loss, targets, backends that run it)
    (nn.CrossEntropyLoss(reduction="sum"), "cls", ("fused", "generic")),
    (nn.MSELoss(reduction="sum"), "reg", ("fused", "generic")),
    (nn.MSELoss(), "reg", ("fused", "generic")),
    (nn.CrossEntropyLoss(ignore_index=1), "cls", ("fused", "generic")),  # mean over counted targets
    (nn.CrossEntropyLoss(ignore_index=2, reduction="sum"), "cls", ("fused", "generic")),
    (nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=F64)), "cls", ("generic",)),
    (_sum_sq, "reg", ("generic",)),  # a plain callable: its reduction is measured on the first batch
    (_mean_ce, "cls", ("generic",)),
]


@pytest.mark.parametrize("budget", [None, pytest.param(4096, marks=pytest.mark.slow)])
@pytest.mark.parametrize("loss_fn,target,backends", REDUCTION_CASES)
def test_reductions_over_uneven_batches_and_chunks(loss_fn, target, backends, budget):
    """The Hessian of the loss over ALL the data, whatever the batching and the memory budget's chunks."""
    m = small_mlp("residual", "tanh", depth=3)
    x, y = data(n=13)
    if target == "reg":
        y = torch.randn(13, 3, dtype=F64)
    H = exact_hessian(m, loss_fn, x, y)  # the loss of the full data in one call
    V = torch.randn(H.shape[0], 3, dtype=F64)
    batches = [(x[:5], y[:5]), (x[5:6], y[5:6]), (x[6:], y[6:])]  # uneven, one of a single row
    for backend in backends:
        op = HessianOperator(m, loss_fn, batches, backend=backend, memory_budget=budget)
        assert rel(op @ V, H @ V) < RTOL, backend
        whole = HessianOperator(m, loss_fn, (x, y), backend=backend, batch_size=4, memory_budget=budget)
        assert rel(whole @ V, H @ V) < RTOL, backend
    loss, grad = HessianOperator(m, loss_fn, batches).loss_and_gradient()
    names = [n for n, _ in m.named_parameters()]
    ref = loss_fn(m(x), y)
    ref_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, [dict(m.named_parameters())[n] for n in names])])
    assert abs(loss - float(ref.detach())) < 1e-10 * max(1.0, abs(float(ref.detach()))) and rel(grad, ref_grad) < 1e-10


def test_reduction_errors_and_all_ignored_batches():
    m = small_mlp("plain", "relu", depth=3)
    x, y = data(n=10)
    with pytest.raises(ValueError, match="reduction='none'"):
        HessianOperator(m, nn.CrossEntropyLoss(reduction="none"), (x, y))
    with pytest.raises(ValueError, match="contradicts"):
        HessianOperator(m, nn.CrossEntropyLoss(), (x, y), reduction="sum")
    with pytest.raises(ValueError, match="reduction must be"):
        HessianOperator(m, nn.CrossEntropyLoss(), (x, y), reduction="max")
    odd = HessianOperator(m, lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction="sum") / o.shape[0] ** 0.5,
                          (x, y))
    with pytest.raises(ValueError, match="cannot tell how loss_fn reduces"):
        odd @ torch.ones(odd.shape[0], 1, dtype=F64)
    forced = HessianOperator(m, lambda o, t: ((o - t) ** 2).sum(), (x, torch.randn(10, 3, dtype=F64)), reduction="sum")
    assert forced.reduction.kind == "sum"
    # a batch whose targets are all ignored adds nothing to a mean loss (and does not make it nan)
    lf = nn.CrossEntropyLoss(ignore_index=0)
    y2 = y.clone()
    y2[:4] = 0
    keep = y2 != 0
    H = exact_hessian(m, lf, x[keep], y2[keep])
    V = torch.randn(H.shape[0], 2, dtype=F64)
    for backend in ("fused", "generic"):
        op = HessianOperator(m, lf, [(x[:4], y2[:4]), (x[4:], y2[4:])], backend=backend)
        assert rel(op @ V, H @ V) < RTOL
        with pytest.raises(ValueError, match="ignore_index"):
            HessianOperator(m, lf, (x[:4], y2[:4]), backend=backend) @ V


def _held_bytes(obj, skip=("model",)):
    """Bytes of the distinct tensor storages reachable from obj (attributes, containers, closures),
    without the model's own parameters: an independent count of what the fused R-op holds."""
    seen, storages = set(), {}

    def walk(o):
        if id(o) in seen or isinstance(o, (nn.Module, str, int, float, type(None), type, types.ModuleType)):
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                walk(v)
        elif isinstance(o, types.FunctionType):
            for c in o.__closure__ or ():
                walk(c.cell_contents)
        elif hasattr(o, "__dict__"):
            for k, v in vars(o).items():
                if k not in skip:
                    walk(v)
    walk(obj)
    return sum(storages.values())


def _count_primal(monkeypatch):
    from skipkern.hessian import hvp_fused
    calls = []
    orig = hvp_fused.FusedHVP._primal

    def counting(self, *a, **kw):
        calls.append(a[0].shape[0])
        return orig(self, *a, **kw)
    monkeypatch.setattr(hvp_fused.FusedHVP, "_primal", counting)
    return calls


def test_fused_holds_no_more_than_its_memory_budget(monkeypatch):
    m = SkipMLP(40, 16, 4, 10, arch="residual", activation="tanh", seed=0, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 40, generator=g, dtype=F64), torch.randint(0, 10, (600,), generator=g)
    calls = _count_primal(monkeypatch)
    budget = 3 << 19  # 1.5 MiB: several row chunks, a primal cache that holds part of the batch
    op = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused", memory_budget=budget)
    V = torch.randn(op.shape[0], 4, dtype=F64)
    ref = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), backend="fused") @ V
    per_product = []
    for _ in range(3):
        calls.clear()
        assert rel(op @ V, ref) < 1e-12
        per_product.append(len(calls))
        assert _held_bytes(op._impl) <= budget
    assert op._impl.held_bytes() == _held_bytes(op._impl)  # what it reports is what it holds
    assert per_product[0] >= 3  # several row chunks
    assert 0 < per_product[1] == per_product[2] < per_product[0]  # part of the batch came from the cache


@pytest.mark.parametrize("kind", ["dtype", "loader"])
def test_fused_primal_cache_hits_when_data_is_converted_or_reyielded(monkeypatch, kind):
    m = small_mlp("residual", "relu", depth=4)  # float64 parameters
    x, y = data(n=20)
    calls = _count_primal(monkeypatch)
    lf = nn.CrossEntropyLoss()
    if kind == "dtype":  # float32 data: the operator converts it to float64 for every product
        op = HessianOperator(m, lf, (x.float(), y), batch_size=8, backend="fused")
    else:  # a DataLoader yields new tensors every pass
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        op = HessianOperator(m, lf, loader, backend="fused")
    V = torch.randn(op.shape[0], 3, dtype=F64)
    first = op @ V
    assert len(calls) == 3  # three batches: 8, 8, 4 rows
    for _ in range(3):
        assert torch.equal(op @ V, first)
    assert len(calls) == 3  # every later product reused the primal passes
    with torch.no_grad():
        m.layers[1].bias.add_(0.1)
    op @ V
    assert len(calls) == 6  # a parameter change invalidates them
