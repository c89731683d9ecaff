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
