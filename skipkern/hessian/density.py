"""Spectral density by stochastic Lanczos quadrature (SLQ).

Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature" (SIMAX 2017);
Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian eigenvalue
density" (ICML 2019). For each unit probe v_j, m Lanczos steps give T_j; its eigenvalues theta_ji
(Ritz values) with weights w_ji = (first component of the eigenvector)^2 form a Gauss quadrature of
v_j^T f(A) v_j = sum_i w_ji f(theta_ji). With E[v v^T] = I/P, the average over probes estimates
(1/P) sum_lambda f(lambda): the density (f = Gaussian kernel), the fraction of eigenvalues in a set
(f = indicator) and the moments (f = lambda^p). Standard errors are across probes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
import torch

from skipkern.hessian.adapters import as_operator
from skipkern.hessian.lanczos import LanczosResult, check_count, lanczos, probe_seed

__all__ = ["Estimate", "SpectralDensity", "spectral_density", "from_lanczos"]


class Estimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error (std across probes / sqrt(probes))."""
    value: float
    stderr: float


def _mean_se(per_probe: np.ndarray) -> Estimate:
    k = per_probe.shape[0]
    se = float(per_probe.std(ddof=1) / math.sqrt(k)) if k > 1 else float("nan")
    return Estimate(float(per_probe.mean()), se)


@dataclass
class SpectralDensity:
    """Quadrature of an SLQ run and its smoothed density.

    Attributes:
        nodes: [k, m] Ritz values per probe (float64 numpy).
        weights: [k, m] Gauss weights per probe; each row sums to 1 (0 past a probe's length).
        dim: dimension P of the operator.
        sigma: Gaussian smoothing width of ``density``.
        grid: [G] points where ``values`` is evaluated.
        values: [G] the smoothed density (integrates to ~1 over the real line).
        meta: run facts (num_steps, seed, lengths, num_matmat, ...).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    sigma: float
    grid: np.ndarray
    values: np.ndarray = field(default=None)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.nodes = np.asarray(self.nodes, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.grid = np.asarray(self.grid, dtype=np.float64)
        if self.values is None:
            self.values = self.density(self.grid, self.sigma)
        self.values = np.asarray(self.values, dtype=np.float64)

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    def density(self, grid: Optional[np.ndarray] = None, sigma: Optional[float] = None) -> np.ndarray:
        """Smoothed density (1/k) sum_j sum_i w_ji N(t; theta_ji, sigma^2) on ``grid`` [G]."""
        t = self.grid if grid is None else np.asarray(grid, dtype=np.float64)
        s = self.sigma if sigma is None else float(sigma)
        if not s > 0:
            raise ValueError(f"sigma must be > 0, got {s}")
        out = np.zeros_like(t)
        for th, w in zip(self.nodes, self.weights):  # per probe: [G, m] kernel, bounded memory
            keep = w > 0
            d = (t[:, None] - th[keep][None, :]) / s
            out += (np.exp(-0.5 * d * d) * w[keep][None, :]).sum(1)
        return out / (self.num_probes * s * math.sqrt(2.0 * math.pi))

    def expectation(self, f) -> Estimate:
        """(1/P) tr f(A) estimated by sum_i w_ji f(theta_ji), with its standard error."""
        per = (self.weights * f(self.nodes)).sum(1)
        return _mean_se(per)

    def fraction_degenerate(self, eps: float) -> Estimate:
        """Fraction of eigenvalues with |lambda| <= eps, with its standard error."""
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return self.expectation(lambda x: (np.abs(x) <= eps).astype(np.float64))

    def fraction_negative(self, eps: float = 0.0) -> Estimate:
        """Fraction of eigenvalues with lambda < -eps, with its standard error."""
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return self.expectation(lambda x: (x < -eps).astype(np.float64))

    def _cdf(self, t: float, strict: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per probe: (Gauss estimate, lower, upper) of mu((-inf, t)) (strict) or mu((-inf, t]).

        The bounds are the Chebyshev-Markov-Stieltjes inequalities of Gauss quadrature: the true
        probe measure lies within the estimate minus the weight of the last node below t and plus the
        weight of the first node above it. They bound the quadrature error, not the probe noise."""
        w = self.weights
        valid = w > 0
        below = valid & ((self.nodes < t) if strict else (self.nodes <= t))
        above = valid & ~below
        est = (w * below).sum(1)
        big = np.where(below, self.nodes, -np.inf)
        small = np.where(above, self.nodes, np.inf)
        rows = np.arange(w.shape[0])
        w_last = np.where(below.any(1), w[rows, big.argmax(1)], 0.0)
        w_first = np.where(above.any(1), w[rows, small.argmin(1)], 0.0)
        return est, est - w_last, est + w_first

    def fraction_negative_bounds(self, eps: float = 0.0) -> tuple[Estimate, Estimate]:
        """(lower, upper) bounds on the fraction with lambda < -eps: the quadrature error of the Gauss
        estimate is confined between them (Chebyshev-Markov-Stieltjes); each carries its probe SE."""
        _, lo, hi = self._cdf(-eps, strict=True)
        return _mean_se(np.clip(lo, 0, 1)), _mean_se(np.clip(hi, 0, 1))

    def fraction_degenerate_bounds(self, eps: float) -> tuple[Estimate, Estimate]:
        """(lower, upper) bounds on the fraction with |lambda| <= eps (see fraction_negative_bounds)."""
        _, lo_b, hi_b = self._cdf(eps, strict=False)
        _, lo_a, hi_a = self._cdf(-eps, strict=True)
        return _mean_se(np.clip(lo_b - hi_a, 0, 1)), _mean_se(np.clip(hi_b - lo_a, 0, 1))

    def moment(self, p: int) -> Estimate:
        """(1/P) sum lambda^p, with its standard error."""
        return self.expectation(lambda x: x ** p)

    def trace(self) -> Estimate:
        """tr(A) = P * first moment, with its standard error."""
        m = self.moment(1)
        return Estimate(m.value * self.dim, m.stderr * self.dim)

    # ------------------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        return {"format": "skipkern.SpectralDensity", "version": 1, "dim": int(self.dim),
                "sigma": float(self.sigma), "nodes": self.nodes.tolist(), "weights": self.weights.tolist(),
                "grid": self.grid.tolist(), "values": self.values.tolist(), "meta": self.meta}

    def save(self, path: Union[str, Path]) -> Path:
        """Write to ``.json`` (readable) or ``.npz`` (compact), chosen by the suffix."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        elif path.suffix == ".npz":
            np.savez_compressed(path, nodes=self.nodes, weights=self.weights, grid=self.grid, values=self.values,
                                dim=self.dim, sigma=self.sigma, meta=json.dumps(self.meta))
        else:
            raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SpectralDensity":
        """Read a file written by ``save``."""
        path = Path(path)
        if path.suffix == ".json":
            d = json.loads(path.read_text())
            if d.get("format") != "skipkern.SpectralDensity":
                raise ValueError(f"{str(path)!r} is not a saved SpectralDensity")
            return cls(np.array(d["nodes"]), np.array(d["weights"]), int(d["dim"]), float(d["sigma"]),
                       np.array(d["grid"]), np.array(d["values"]), d.get("meta", {}))
        if path.suffix == ".npz":
            z = np.load(path)
            return cls(z["nodes"], z["weights"], int(z["dim"]), float(z["sigma"]), z["grid"], z["values"],
                       json.loads(str(z["meta"])))
        raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")

    def plot(self, ax=None, log: bool = False, label: Optional[str] = None, **kwargs):
        """Plot the smoothed density (``log=True``: log-scaled density axis, floored at 1e-12 of the peak).
        Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        y = self.values
        if log:
            y = np.maximum(y, 1e-12 * max(float(y.max()), 1e-300))
            ax.set_yscale("log")
        ax.plot(self.grid, y, label=label, **kwargs)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log)" if log else "density")
        if label is not None:
            ax.legend()
        return ax


def _default_grid(nodes: np.ndarray, weights: np.ndarray, sigma: Optional[float], grid) -> tuple[float, np.ndarray]:
    used = nodes[weights > 0]
    lo, hi = (float(used.min()), float(used.max())) if used.size else (-1.0, 1.0)
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    s = float(sigma) if sigma is not None else 0.01 * span
    if not s > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if grid is None or isinstance(grid, int):
        n = 1000 if grid is None else check_count("grid", grid, 2)
        return s, np.linspace(lo - 5 * s, hi + 5 * s, n)
    g = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64).reshape(-1)
    if g.size < 1:
        raise ValueError("grid must hold at least one point")
    return s, g


def from_lanczos(res: LanczosResult, dim: int, *, sigma: Optional[float] = None, grid=None,
                 meta: Optional[dict] = None) -> SpectralDensity:
    """SpectralDensity from a LanczosResult of unit-norm probes on an operator of dimension ``dim``."""
    nodes, weights = res.ritz()
    nodes, weights = nodes.numpy(), weights.numpy()
    s, g = _default_grid(nodes, weights, sigma, grid)
    info = {"num_steps": int(res.alphas.shape[1]), "lengths": res.lengths.tolist(), "num_matmat": res.num_matmat}
    info.update(meta or {})
    return SpectralDensity(nodes, weights, int(dim), s, g, meta=info)


def spectral_density(op, *, num_probes: int = 10, num_steps: int = 80, sigma: Optional[float] = None,
                     grid=None, seed: Optional[int] = None, progress: bool = True,
                     reorthogonalize: str = "full") -> SpectralDensity:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    All probes run in lockstep: ``num_steps`` products of ``num_probes`` vectors each (for a
    HessianOperator, ``num_steps`` passes over the data).

    Args:
        op: a symmetric operator (HessianOperator, DenseOperator, tensor, numpy array, scipy
            LinearOperator, any object with shape and matmat; skipkern.hessian.adapters).
        num_probes: random unit Rademacher probes k >= 1 (standard errors need k >= 2).
        num_steps: Lanczos steps m >= 1 (capped at P).
        sigma: Gaussian smoothing width (default: 1% of the Ritz-value range).
        grid: evaluation points [G], or a point count (default 1000) spanning the Ritz values +- 5 sigma.
        seed: probe seed (same seed, same numbers).
        progress: tqdm bar with ETA per Lanczos step (quiet when not on a terminal).
        reorthogonalize: "full" (default) or "none".
    """
    check_count("num_probes", num_probes)
    check_count("num_steps", num_steps)
    op = as_operator(op)
    seed = probe_seed(op, seed)  # seed None under a process group: one seed, broadcast from rank 0
    res = lanczos(op, num_steps, num_probes=num_probes, seed=seed, progress=progress,
                  reorthogonalize=reorthogonalize)
    return from_lanczos(res, op.shape[0], sigma=sigma, grid=grid,
                        meta={"seed": seed, "num_probes": num_probes, "reorthogonalize": reorthogonalize,
                              "product_dtype": str(op.dtype).replace("torch.", "")})
