"""TrainStep (skipkern.capture): the captured training step equals the plain one.

On CPU every mode falls back to the plain eager step (logged) and must match a hand-written Adam loop bit for
bit. On a GPU the CUDA-graph replay must match the eager step with the same fused Adam, over several batches,
a ragged last batch (a second captured shape) included, for the per-layer and the whole-MLP (fused="mlp")
paths.
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from skipkern.capture import TrainStep
from skipkern.nn import SkipMLP

CUDA = torch.cuda.is_available()


def _batches(n, b, d, c, gen, device, ragged=None):
    out = [(torch.randn(b, d, generator=gen), torch.randint(0, c, (b,), generator=gen)) for _ in range(n)]
    if ragged:
        out.append((torch.randn(ragged, d, generator=gen), torch.randint(0, c, (ragged,), generator=gen)))
    return [(x.to(device), y.to(device)) for x, y in out]


def _plain_adam(model, batches, lr=5e-4, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=lr, **kw)
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("mode", ["auto", "graph", "compile", "eager"])
@pytest.mark.slow
def test_cpu_falls_back_to_the_plain_step(mode, caplog):
    if CUDA:
        pytest.skip("CPU fallback test")
    gen = torch.Generator().manual_seed(0)
    batches = _batches(3, 16, 8, 4, gen, "cpu", ragged=5)
    a = SkipMLP(8, 16, 3, 4, arch="residual", seed=1)
    b = SkipMLP(8, 16, 3, 4, arch="residual", seed=1)
    with caplog.at_level(logging.INFO, logger="skipkern"):
        step = TrainStep(a, mode=mode)
    assert step.mode_used == "eager"
    if mode in ("graph", "compile"):
        assert "needs CUDA tensors" in caplog.text
    got = [step(x, y) for x, y in batches]
    want = _plain_adam(b, batches)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_arguments():
    model = SkipMLP(4, 8, 2, 2, seed=0)
    with pytest.raises(ValueError, match="mode must be"):
        TrainStep(model, mode="cudagraph")
    with pytest.raises(ValueError, match="warmup"):
        TrainStep(model, warmup=0)
    with pytest.raises(ValueError, match="no parameters"):
        TrainStep(torch.nn.ReLU())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [None, "mlp"])
def test_graph_matches_eager_on_gpu(fused, monkeypatch):
    monkeypatch.setenv("SKIPKERN_TRITON_TF32", "0")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gen = torch.Generator().manual_seed(0)
    batches = _batches(4, 64, 40, 10, gen, "cuda", ragged=37)
    a = SkipMLP(40, 32, 5, 10, arch="hyper_residual", seed=3, fused=fused).cuda()
    b = SkipMLP(40, 32, 5, 10, arch="hyper_residual", seed=3, fused=fused).cuda()
    graph, eager = TrainStep(a, mode="graph"), TrainStep(b, mode="eager")
    for x, y in batches + batches[:2]:  # replays of both captured shapes
        lg, le = graph(x, y), eager(x, y)
        torch.testing.assert_close(lg, le, rtol=1e-5, atol=1e-6)
    assert len(graph._graphs) == 2
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.slow
def test_compile_mode_on_gpu():
    gen = torch.Generator().manual_seed(0)
    batches = _batches(3, 64, 40, 10, gen, "cuda")
    a = SkipMLP(40, 32, 3, 10, seed=3).cuda()
    b = SkipMLP(40, 32, 3, 10, seed=3).cuda()
    comp, eager = TrainStep(a, mode="compile"), TrainStep(b, mode="eager")
    for x, y in batches:
        torch.testing.assert_close(comp(x, y), eager(x, y), rtol=1e-4, atol=1e-5)
