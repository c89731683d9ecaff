"""BiasReg and BiasL2Reg (docs/paper.md).

BiasReg adds lam * sum over hidden biases (b_a - beta_a)^2 to the loss, with one target beta_a per
hidden unit drawn once from N(mu, sigma^2) and then fixed. Distinct targets push units apart (against
overlap) and a positive mu keeps ReLU units on (against elimination). BiasL2Reg is the control with
mu = sigma = 0, a plain L2 penalty on the hidden biases. The paper tuned mu, sigma and lam by random
search with ranges it does not publish; ``random_search_space`` gives ours.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from skipkern.nn.skip_linear import SkipLinear
from skipkern.nn.skip_mlp import SkipMLP

__all__ = ["BiasReg", "BiasL2Reg", "hidden_biases", "random_search_space", "sample_biasreg_params"]


def hidden_biases(model: nn.Module) -> list:
    """The bias parameters of the hidden layers, in order: for SkipMLP the ``depth`` hidden layers (not
    the output layer, not BatchNorm); otherwise every nn.Linear / SkipLinear with a bias except the last
    one in registration order (taken to be the output layer)."""
    if isinstance(model, SkipMLP):
        layers = list(model.hidden_layers)
    else:
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, SkipLinear))][:-1]
    biases = [m.bias for m in layers if m.bias is not None]
    if not biases:
        raise ValueError(f"{type(model).__name__} has no hidden-layer biases to regularise")
    return biases


class BiasReg(nn.Module):
    """penalty(model) = lam * sum_l sum_a (b_{l,a} - beta_{l,a})^2 over hidden biases.

    Args:
        model: the network whose hidden biases (see ``hidden_biases``) fix the shapes of beta.
        mu, sigma: beta_{l,a} ~ N(mu, sigma^2), drawn once (float64, torch.Generator seeded with
            ``seed``) and kept fixed as buffers ``beta_0``, ``beta_1``, ... (float64; ``.to(device)``
            moves them); mu = sigma = 0 is BiasL2Reg.
        lam: penalty weight (>= 0).

    Calling ``reg(model)`` (or ``reg()`` for the model given at construction) returns a scalar tensor
    on the biases' device and dtype, differentiable with respect to the biases. The model is not a
    submodule: ``reg.parameters()`` is empty and ``reg.state_dict()`` holds only the targets.
    """

    def __init__(self, model: nn.Module, mu: float = 0.0, sigma: float = 0.0, lam: float = 1e-3, seed: int = 0):
        super().__init__()
        if not (isinstance(lam, (int, float)) and lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if not (isinstance(sigma, (int, float)) and sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not (isinstance(mu, (int, float)) and math.isfinite(mu)):
            raise ValueError(f"mu must be a finite number, got {mu!r}")
        self.mu, self.sigma, self.lam, self.seed = float(mu), float(sigma), float(lam), int(seed)
        biases = hidden_biases(model)
        g = torch.Generator().manual_seed(self.seed)
        for i, b in enumerate(biases):
            beta = self.mu + self.sigma * torch.randn(b.shape, generator=g, dtype=torch.float64)
            self.register_buffer(f"beta_{i}", beta.to(b.device))
        self.num_layers = len(biases)
        object.__setattr__(self, "_model", model)  # plain attribute: not registered as a submodule

    @property
    def betas(self) -> list:
        """The fixed targets, one [width_l] float64 tensor per hidden layer."""
        return [getattr(self, f"beta_{i}") for i in range(self.num_layers)]

    def forward(self, model: Optional[nn.Module] = None) -> torch.Tensor:
        model = self._model if model is None else model
        biases = hidden_biases(model)
        betas = self.betas
        if [b.shape for b in biases] != [t.shape for t in betas]:
            raise ValueError(f"model's hidden biases have shapes {[tuple(b.shape) for b in biases]}, but this "
                             f"BiasReg was built for {[tuple(t.shape) for t in betas]}")
        total = None
        for b, beta in zip(biases, betas):
            term = ((b - beta.to(device=b.device, dtype=b.dtype)) ** 2).sum()
            total = term if total is None else total + term
        return self.lam * total

    def config(self) -> dict:
        """JSON-friendly description (enough to rebuild it for the same model)."""
        return {"type": type(self).__name__, "mu": self.mu, "sigma": self.sigma, "lam": self.lam, "seed": self.seed}

    def extra_repr(self) -> str:
        return f"mu={self.mu}, sigma={self.sigma}, lam={self.lam}, seed={self.seed}, layers={self.num_layers}"


class BiasL2Reg(BiasReg):
    """The control: lam * sum of squared hidden biases (BiasReg with mu = sigma = 0)."""

    def __init__(self, model: nn.Module, lam: float = 1e-3, seed: int = 0):
        super().__init__(model, mu=0.0, sigma=0.0, lam=lam, seed=seed)


def random_search_space() -> dict:
    """Our ranges for the small random search over BiasReg's (mu, sigma, lam).

    The paper tuned them by random search but does not publish the ranges; these are our choice:
    mu uniform in [0, 1] (non-negative targets keep ReLU units on), sigma uniform in [0, 1] (spread
    targets break the permutation symmetry), lam log-uniform in [1e-5, 1e-1].
    Returns {name: {"low", "high", "scale": "uniform" | "log"}}.
    """
    return {"mu": {"low": 0.0, "high": 1.0, "scale": "uniform"},
            "sigma": {"low": 0.0, "high": 1.0, "scale": "uniform"},
            "lam": {"low": 1e-5, "high": 1e-1, "scale": "log"}}


def sample_biasreg_params(n: int, seed: int = 0, space: Optional[dict] = None) -> list:
    """``n`` draws of {"mu", "sigma", "lam"} from ``space`` (default ``random_search_space()``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    space = random_search_space() if space is None else space
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = {}
        for name, s in space.items():
            lo, hi = float(s["low"]), float(s["high"])
            if s.get("scale", "uniform") == "log":
                d[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            else:
                d[name] = float(rng.uniform(lo, hi))
        out.append(d)
    return out
