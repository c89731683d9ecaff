"""Paths in parameter space, batched over K pairs of end points.

Every path maps t in [0, 1] to a flat parameter vector, with phi(0) = theta_a and phi(1) = theta_b:
    LinearPath   phi(t) = (1 - t) theta_a + t theta_b
    BezierPath   phi(t) = sum_j B_{j,d}(t) theta_j, Bernstein polynomials of degree d = bends + 1 with
                 theta_0 = theta_a, theta_d = theta_b and d - 1 trainable control points (Garipov et
                 al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs"; their main
                 curve is the quadratic one, bends = 1)
    PolyChain    straight segments through N nodes at t = i / (N - 1) (the pivots of AutoNEB)
Points are float64 tensors [K, P]; ``t`` is one value per pair, [K].
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["Path", "LinearPath", "BezierPath", "PolyChain"]


def _check_ends(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"end points must be two [K, P] tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


class Path:
    """Base class: ``points(t [K]) -> [K, P]`` (float64), ``select(k)`` -> the path of pair k (K = 1)."""

    kind = "path"

    @property
    def num_pairs(self) -> int:
        raise NotImplementedError

    def points(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, k: int) -> "Path":
        raise NotImplementedError

    def knots(self) -> list:
        """Values of t where the path has a kink (evaluated exactly in addition to the grid)."""
        return []

    def state(self) -> dict:
        """The tensors that define the path (for torch.save)."""
        raise NotImplementedError

    def _t(self, t) -> torch.Tensor:
        ref = self.state()["theta_a"]
        t = torch.as_tensor(t, dtype=torch.float64, device=ref.device).reshape(-1)
        if t.numel() == 1 and self.num_pairs > 1:
            t = t.expand(self.num_pairs)
        if t.numel() != self.num_pairs:
            raise ValueError(f"t must hold one value per pair ({self.num_pairs}), got {t.numel()}")
        return t


class LinearPath(Path):
    """The straight line between theta_a and theta_b, both [K, P]."""

    kind = "linear"

    def __init__(self, theta_a: torch.Tensor, theta_b: torch.Tensor):
        _check_ends(theta_a, theta_b)
        self.theta_a, self.theta_b = theta_a.to(torch.float64), theta_b.to(torch.float64)

    @property
    def num_pairs(self) -> int:
        return self.theta_a.shape[0]

    def points(self, t) -> torch.Tensor:
        t = self._t(t)[:, None]
        return (1.0 - t) * self.theta_a + t * self.theta_b

    def select(self, k: int) -> "LinearPath":
        return LinearPath(self.theta_a[k:k + 1], self.theta_b[k:k + 1])

    def state(self) -> dict:
        return {"theta_a": self.theta_a, "theta_b": self.theta_b}


class BezierPath(Path):
    """Bezier curve of degree bends + 1 with trainable inner control points.

    Args:
        theta_a, theta_b: end points [K, P]. bends: number of inner control points (1: quadratic).
        controls: [K, bends, P] initial control points; None places them evenly on the straight line
            (the initialisation of Garipov et al.).
    """

    kind = "bezier"

    def __init__(self, theta_a: torch.Tensor, theta_b: torch.Tensor, bends: int = 1,
                 controls: Optional[torch.Tensor] = None):
        _check_ends(theta_a, theta_b)
        if isinstance(bends, bool) or not isinstance(bends, int) or bends < 1:
            raise ValueError(f"bends must be an int >= 1 (1 = quadratic Bezier curve), got {bends!r}")
        self.theta_a, self.theta_b = theta_a.to(torch.float64), theta_b.to(torch.float64)
        if controls is None:
            s = torch.arange(1, bends + 1, dtype=torch.float64, device=theta_a.device) / (bends + 1)
            controls = (1 - s)[None, :, None] * self.theta_a[:, None] + s[None, :, None] * self.theta_b[:, None]
        if controls.shape != (theta_a.shape[0], bends, theta_a.shape[1]):
            raise ValueError(f"controls must be [K, bends, P] = {(theta_a.shape[0], bends, theta_a.shape[1])}, "
                             f"got {tuple(controls.shape)}")
        self.controls = controls.detach().to(torch.float64).clone().requires_grad_(True)
        self.bends = bends
        d = bends + 1
        self._binom = torch.tensor([math.comb(d, j) for j in range(d + 1)], dtype=torch.float64,
                                   device=theta_a.device)

    @property
    def num_pairs(self) -> int:
        return self.theta_a.shape[0]

    def coefficients(self, t) -> torch.Tensor:
        """Bernstein weights [K, d + 1] at t [K]."""
        t = self._t(t)[:, None]
        d = self.bends + 1
        j = torch.arange(d + 1, dtype=torch.float64, device=t.device)[None]
        return self._binom[None] * t ** j * (1.0 - t) ** (d - j)

    def points(self, t) -> torch.Tensor:
        c = self.coefficients(t)
        inner = torch.einsum("kj,kjp->kp", c[:, 1:-1], self.controls)
        return c[:, :1] * self.theta_a + inner + c[:, -1:] * self.theta_b

    def select(self, k: int) -> "BezierPath":
        return BezierPath(self.theta_a[k:k + 1], self.theta_b[k:k + 1], self.bends,
                          self.controls[k:k + 1].detach())

    def state(self) -> dict:
        return {"theta_a": self.theta_a, "theta_b": self.theta_b, "controls": self.controls.detach()}


class PolyChain(Path):
    """Piecewise-linear path through nodes [K, N, P] (N >= 2; first and last are the end points),
    node i at t = i / (N - 1)."""

    kind = "polychain"

    def __init__(self, nodes: torch.Tensor):
        if nodes.dim() != 3 or nodes.shape[1] < 2:
            raise ValueError(f"nodes must be [K, N >= 2, P], got {tuple(nodes.shape)}")
        self.nodes = nodes.detach().to(torch.float64)

    @property
    def num_pairs(self) -> int:
        return self.nodes.shape[0]

    def points(self, t) -> torch.Tensor:
        t = self._t(t)
        n = self.nodes.shape[1] - 1
        s = (t * n).clamp(0, n)
        i = s.floor().long().clamp(max=n - 1)
        w = (s - i)[:, None]
        k = torch.arange(self.num_pairs, device=t.device)
        return (1 - w) * self.nodes[k, i] + w * self.nodes[k, i + 1]

    def knots(self) -> list:
        n = self.nodes.shape[1] - 1
        return [i / n for i in range(1, n)]

    def select(self, k: int) -> "PolyChain":
        return PolyChain(self.nodes[k:k + 1])

    def state(self) -> dict:
        return {"theta_a": self.nodes[:, 0], "theta_b": self.nodes[:, -1], "nodes": self.nodes}
