"""SkipLinear / SkipMLP against an independent plain-torch implementation of the paper's nets."""
import pytest
import torch

from skipkern.nn import ARCHS, SkipLinear, SkipMLP, malicious_init_
from skipkern.nn.init import degenerate_orthogonal, random_orthogonal
from tests.utils import backend_params, ensure_backend


def mlp_ref(model: SkipMLP, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations written out with plain torch ops (no skipkern op)."""
    act = {"relu": torch.relu, "tanh": torch.tanh}[model.activation]
    l0 = model.layers[0]
    hs = [act(x @ l0.weight.T + l0.bias)]
    for j in range(1, model.depth):
        layer, h = model.layers[j], hs[-1]
        out = act(h @ layer.weight.T + layer.bias)
        if model.arch in ("residual", "hyper_residual"):
            out = out + h
        elif model.arch in ("orthogonal", "degenerate"):
            out = out + h @ layer.skip_weight.T
        if model.arch == "hyper_residual" and j >= 2:
            terms = [hs[k - 1] @ model.hyper_matrix(k).T for k in range(1, j)]
            c = 1.0 / (j - 1) if model.hyper_reduce == "mean" else 1.0
            out = out + c * sum(terms)
        hs.append(out)
    last = model.layers[-1]
    return hs[-1] @ last.weight.T + last.bias


def test_orthogonal_and_degenerate_matrices():
    q = random_orthogonal(6, 6, seed=1, dtype=torch.float64)
    torch.testing.assert_close(q @ q.T, torch.eye(6, dtype=torch.float64))
    r = random_orthogonal(4, 7, seed=1, dtype=torch.float64)
    torch.testing.assert_close(r @ r.T, torch.eye(4, dtype=torch.float64))
    assert torch.equal(random_orthogonal(5, 5, seed=3), random_orthogonal(5, 5, seed=3))
    d = degenerate_orthogonal(8, 8, 0.25, seed=0, dtype=torch.float64)
    s = torch.linalg.svdvals(d)
    torch.testing.assert_close(s, torch.tensor([1.0] * 6 + [0.0] * 2, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="degenerate_fraction"):
        degenerate_orthogonal(4, 4, 1.5)


def test_skiplinear_kinds_and_errors():
    with pytest.raises(ValueError, match="in_features == out_features"):
        SkipLinear(3, 4, skip="identity")
    with pytest.raises(ValueError, match="skip must be one of"):
        SkipLinear(3, 3, skip="dense")
    a, b = SkipLinear(5, 7, skip="orthogonal", seed=4), SkipLinear(5, 7, skip="orthogonal", seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.skip_weight, b.skip_weight)
    assert "skip_weight" in dict(a.named_buffers()) and "skip_weight" not in dict(a.named_parameters())
    assert torch.count_nonzero(a.bias) == 0
    x = torch.randn(4, 5)
    torch.testing.assert_close(a(x), torch.relu(x @ a.weight.T) + x @ a.skip_weight.T)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_skipmlp_matches_plain_torch(arch, backend):
    ensure_backend(backend)
    m = SkipMLP(6, 8, 5, 3, arch=arch, seed=0, backend=backend, dtype=torch.float64)
    for p in m.parameters():  # non-zero biases so every term is exercised
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(9, 6, dtype=torch.float64)
    logits, hidden = m(x, return_hidden=True)
    assert logits.shape == (9, 3) and len(hidden) == 5 and all(h.shape == (9, 8) for h in hidden)
    torch.testing.assert_close(logits, mlp_ref(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_skipmlp_gradgradcheck(arch):
    m = SkipMLP(3, 4, 3, 2, arch=arch, activation="tanh", seed=1, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, params)
    assert torch.autograd.gradgradcheck(f, params)


def test_hyper_residual_options_and_malicious_init():
    m = SkipMLP(4, 6, 5, 2, arch="hyper_residual", hyper_reduce="sum", hyper_skip="identity", seed=0,
                dtype=torch.float64)
    assert m.n_hyper == 3 and torch.equal(m.hyper_matrix(1), torch.eye(6, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), mlp_ref(m, x))
    before = [lay.weight.detach().clone() for lay in m.layers]
    malicious_init_(m)
    for lay, w in zip(m.layers, before):
        expected = w - torch.eye(6, dtype=w.dtype) if w.shape == (6, 6) and lay is not m.layers[-1] else w
        torch.testing.assert_close(lay.weight.detach(), expected)


def test_batchnorm_layers_and_bad_args():
    m = SkipMLP(4, 6, 3, 2, arch="plain", batchnorm_layers=[1], seed=0)
    assert list(m.norms.keys()) == ["1"]
    _, hidden = m(torch.randn(8, 4), return_hidden=True)
    torch.testing.assert_close(hidden[1].mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="arch must be one of"):
        SkipMLP(4, 6, 3, 2, arch="dense")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        SkipMLP(4, 6, 0, 2)
    with pytest.raises(ValueError, match="batchnorm_layers"):
        SkipMLP(4, 6, 3, 2, batchnorm_layers=[3])
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 4\]"):
        m(torch.randn(2, 5))


# ---------------------------------------------------------------------------------- init families
# sha256 (first 16 hex digits) of SkipMLP(7, 6, 5, 3, arch, seed=11).state_dict(), recorded from the
# code before init families existed: the default ("glorot") must stay the paper's draws bit for bit.
_GLOROT_HASHES = {"plain": "11d0effd82a4a21b", "residual": "11d0effd82a4a21b", "orthogonal": "64508fc74b618d4c",
                  "degenerate": "96392f246847b4fc", "hyper_residual": "0f140d16033c9f83"}


def _state_hash(m: torch.nn.Module) -> str:
    import hashlib
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("arch", ARCHS)
def test_glorot_family_matches_the_old_initialisation_bit_for_bit(arch):
    assert _state_hash(SkipMLP(7, 6, 5, 3, arch=arch, seed=11)) == _GLOROT_HASHES[arch]
    assert _state_hash(SkipMLP(7, 6, 5, 3, arch=arch, seed=11, init="glorot")) == _GLOROT_HASHES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_scaled_family_rescales_the_same_draws(arch):
    g = SkipMLP(7, 6, 5, 3, arch=arch, seed=3, dtype=torch.float64)
    s = SkipMLP(7, 6, 5, 3, arch=arch, seed=3, dtype=torch.float64, init="scaled")
    for lg, ls in zip(g.layers, s.layers):
        ratio = (ls.weight / lg.weight).detach()
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))
        assert torch.count_nonzero(ls.bias) == 0
        if lg.skip_weight is not None:
            assert torch.equal(lg.skip_weight, ls.skip_weight)  # fixed skips are part of the architecture


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


_SCALED_CASES = [(a, {}) for a in ARCHS if a != "hyper_residual"] + [
    ("hyper_residual", dict(hyper_skip=s, hyper_reduce=r)) for s in ("orthogonal", "identity") for r in ("mean", "sum")]


@pytest.mark.parametrize("arch,kw", _SCALED_CASES)
def test_scaled_family_keeps_hidden_norms_and_logits_order_one_through_50_layers(arch, kw):
    x = torch.randn(256, 40, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        m = SkipMLP(40, 128, 50, 10, arch=arch, seed=seed, init="scaled", **kw)
        with torch.no_grad():
            logits, hidden = m(x, return_hidden=True)
        ratios = [_rms(h) / _rms(x) for h in hidden]
        assert 1 / 8 < min(ratios) and max(ratios) < 8, (seed, min(ratios), max(ratios))
        assert 0.05 < float(logits.std()) < 10, (seed, float(logits.std()))
    # the paper's Glorot scheme does not: the plain signal vanishes, the residual one explodes
    g = {a: SkipMLP(40, 128, 50, 10, arch=a, seed=0) for a in ("plain", "residual")}
    with torch.no_grad():
        assert _rms(g["plain"](x)) < 1e-4 and _rms(g["residual"](x)) > 1e4


def test_init_arguments():
    with pytest.raises(ValueError, match="init must be one of"):
        SkipMLP(4, 6, 3, 2, init="he")
    with pytest.raises(ValueError, match="init_gain must be a positive number"):
        SkipMLP(4, 6, 3, 2, init_gain=0)
    a, b = SkipMLP(4, 6, 3, 2, seed=0, init="scaled"), SkipMLP(4, 6, 3, 2, seed=0, init="scaled", init_gain=2.0)
    for la, lb in list(zip(a.hidden_layers, b.hidden_layers)):
        torch.testing.assert_close(lb.weight, 2 * la.weight)
    torch.testing.assert_close(b.output_layer.weight, a.output_layer.weight)
    assert "init='scaled'" in repr(a)
