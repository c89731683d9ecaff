"""capture_hidden / diagnose_module (skipkern.diagnostics) on modules whose hidden representations are known exactly."""
import math

import pytest
import torch
from torch import nn

from skipkern.diagnostics import capture_hidden, diagnose_module
from skipkern.diagnostics.capture import representation


def _orthonormal(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))[0]


def test_condition_number_and_rank_of_known_representations():
    # H = X diag(s) with orthonormal columns X: singular values exactly s
    x = _orthonormal(50, 4)
    s = torch.tensor([8.0, 4.0, 2.0, 0.5], dtype=torch.float64)
    scale = nn.Linear(4, 4, bias=False, dtype=torch.float64)
    low = nn.Linear(4, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        scale.weight.copy_(torch.diag(s))
        low.weight.copy_(torch.outer(torch.ones(4), torch.tensor([1.0, 2.0, 0.0, 0.0])))  # rank 1
    net = nn.Sequential(scale, low)
    res = diagnose_module(net, x, modules=["0", "1"])
    c = res["condition_numbers"]
    assert c["condition_number"][0] == pytest.approx(16.0, rel=1e-9)
    assert c["rank"][0] == 4 and c["rank"][1] == 1
    assert math.isinf(c["condition_number"][1]) and c.summary["first_singular_layer"] == 2
    assert res["linear_dependence"]["rank"][1] == 1


def test_conv_maps_flatten_as_documented():
    # a 1x1 convolution is the same linear map at every position: with "channels" its representation
    # is [B H W, C_out] = X_channels W^T, whose rank is rank(W)
    conv = nn.Conv2d(3, 5, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -1.0, 2.0]))[:, :, None, None])
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64)
    reps = capture_hidden(nn.Sequential(conv), x, modules=["0"])
    assert reps["0"].shape == (4 * 6 * 7, 5)
    assert torch.allclose(reps["0"], (x.movedim(1, -1).reshape(-1, 3) @ conv.weight[:, :, 0, 0].T))
    assert diagnose_module(nn.Sequential(conv), x, modules=["0"])["condition_numbers"]["rank"][0] == 1
    y = conv(x)
    assert representation(y, "features").shape == (4, 5 * 6 * 7)
    assert torch.allclose(representation(y, "pool"), y.mean((2, 3)))


def test_selection_repeated_calls_and_mode():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.relu = nn.Linear(3, 3), nn.Linear(3, 3), nn.ReLU()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):  # one ReLU module used twice, as in torchvision's BasicBlock
            return self.relu(self.bn(self.fc2(self.relu(self.fc1(x)))) + x)

    m = Block().train()
    x = torch.randn(20, 3)
    assert list(capture_hidden(m, x)) == ["relu", "relu#2"]
    assert list(capture_hidden(m, x, modules=nn.Linear)) == ["fc1", "fc2"]
    assert list(capture_hidden(m, x, modules=lambda n, mod: n.startswith("fc2"))) == ["fc2"]
    assert m.training and m.bn.training  # eval mode only inside the capture
    with pytest.raises(ValueError, match="no submodule named"):
        capture_hidden(m, x, modules=["fc3"])
    with pytest.raises(ValueError, match="flatten"):
        capture_hidden(m, x, flatten="rows")


def test_dead_layer_is_eliminated_and_singular():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
    with torch.no_grad():
        net[2].bias.fill_(-1e3)  # the second hidden layer never fires
    res = diagnose_module(net, torch.randn(64, 4))
    assert res["elimination"]["dead_fraction"].tolist() == [pytest.approx(res["elimination"]["dead_fraction"][0]), 1.0]
    assert res["condition_numbers"]["rank"][1] == 0 and res["condition_numbers"].summary["first_singular_layer"] == 2
