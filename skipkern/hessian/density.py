"""Spectral density by stochastic Lanczos quadrature (SLQ): the result object.

Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature" (SIMAX 2017);
Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian eigenvalue
density" (ICML 2019). For each unit probe v_j, m Lanczos steps give T_j; its eigenvalues theta_ji
(Ritz values) with weights w_ji = (first component of the eigenvector)^2 form a Gauss quadrature of
v_j^T f(A) v_j = sum_i w_ji f(theta_ji). With E[v v^T] = I/P, the average over probes estimates
(1/P) sum_lambda f(lambda): the density (f = Gaussian kernel), the fraction of eigenvalues in a set
(f = indicator) and the moments (f = lambda^p).

With d deflated eigenvalues (skipkern.hessian.deflation) each probe's quadrature is combined exactly
with them: the bulk weights are scaled by (P - d) / P and every deflated eigenvalue is a node of
weight 1/P in every row, so each row of ``weights`` is a probability measure normalised over P.
Fractions (``fraction_degenerate``, ``fraction_negative``, ``fraction_in``) are certified
(skipkern.hessian.fractions): a point estimate with its standard error and an interval that holds
with a stated confidence, accounting for the quadrature and the probes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

import numpy as np
import torch

from skipkern.hessian.fractions import Fraction, certify
from skipkern.hessian.lanczos import LanczosResult, check_count
from skipkern.hessian.quadrature import cdf_bounds, gauss_cdf_bounds, gauss_rule

__all__ = ["Estimate", "SpectralDensity", "from_lanczos", "ROUNDING_FACTOR"]

# Rounding of the products moves eigenvalues by about this many eps(product dtype) x ||A|| at most:
# measured <= 0.05 eps ||A|| per float32 product on SkipMLP Hessians (depth 4-20, three archs), so
# 4 leaves a margin of ~80.
ROUNDING_FACTOR = 4.0


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
        nodes: [k, m + d] Ritz values per probe, then the d deflated eigenvalues (float64 numpy).
        weights: [k, m + d] weights per probe; each row sums to 1 (0 past a probe's length).
        dim: dimension P of the operator.
        sigma: Gaussian smoothing width of ``density``.
        grid: [G] points where ``values`` is evaluated.
        values: [G] the smoothed density (integrates to ~1 over the real line).
        meta: run facts (num_steps, seed, lengths, num_matmat, probe, deflation, ...).
        alphas, betas: [k, m] the Lanczos tridiagonals of the bulk (betas[j, L_j - 1] is probe j's last
            residual norm, 0 when its quadrature is exact); None in files saved before they were kept.
        deflated: [d] the deflated eigenvalues (empty without deflation).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    sigma: float
    grid: np.ndarray
    values: np.ndarray = field(default=None)
    meta: dict = field(default_factory=dict)
    alphas: Optional[np.ndarray] = None
    betas: Optional[np.ndarray] = None
    deflated: np.ndarray = field(default=None)

    def __post_init__(self):
        self.nodes = np.asarray(self.nodes, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.grid = np.asarray(self.grid, dtype=np.float64)
        self.deflated = np.zeros(0) if self.deflated is None else np.asarray(self.deflated, dtype=np.float64)
        for name in ("alphas", "betas"):
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.values is None:
            self.values = self.density(self.grid, self.sigma)
        self.values = np.asarray(self.values, dtype=np.float64)
        self._rules = None

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    @property
    def probe(self) -> str:
        """Probe distribution: "rademacher" or "sphere" (uniform on the unit sphere)."""
        return self.meta.get("probe", "rademacher")

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

    # ------------------------------------------------------------------------- fractions
    def fraction_in(self, lo: float, hi: float, *, confidence: float = 0.95, bound: str = "rigorous") -> Fraction:
        """Fraction of eigenvalues in [lo, hi] (+-inf allowed): a Fraction with value, stderr and the
        certified [lower, upper] at ``confidence`` (skipkern.hessian.fractions; ``bound="t"`` for
        Student-t probe intervals instead of the guaranteed ones)."""
        lo, hi = float(lo), float(hi)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"the interval must have lo <= hi, got [{lo}, {hi}]")
        per = (self.weights * ((self.nodes >= lo) & (self.nodes <= hi))).sum(1)
        return certify(self, lo, hi, per, confidence=confidence, bound=bound)

    def fraction_degenerate(self, eps: float, *, confidence: float = 0.95, bound: str = "rigorous") -> Fraction:
        """Fraction of eigenvalues with |lambda| <= eps, certified (value, stderr, lower, upper, ...)."""
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return self.fraction_in(-eps, eps, confidence=confidence, bound=bound)

    def fraction_negative(self, eps: float = 0.0, *, confidence: float = 0.95, bound: str = "rigorous") -> Fraction:
        """Fraction of eigenvalues with lambda < -eps, certified (value, stderr, lower, upper, ...)."""
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        per = (self.weights * (self.nodes < -eps)).sum(1)
        return certify(self, -math.inf, -eps, per, confidence=confidence, bound=bound)

    # ---------------------------------------------------- what skipkern.hessian.fractions reads
    def has_tridiagonals(self) -> bool:
        return self.alphas is not None and self.betas is not None

    def probe_tridiagonals(self) -> Iterator[tuple]:
        """Per probe (alpha [L], beta [L-1], beta_L, Gauss rule (nodes, weights), exact)."""
        lengths = self.meta.get("lengths") or [int((w > 0).sum()) for w in self.weights]
        if self._rules is None:
            self._rules = [gauss_rule(self.alphas[j, :n], self.betas[j, :n - 1]) for j, n in enumerate(lengths)]
        for j, n in enumerate(lengths):
            last = float(self.betas[j, n - 1])
            yield self.alphas[j, :n], self.betas[j, :n - 1], last, self._rules[j], last == 0.0

    def cdf_bounds(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-probe bounds (lower [k], upper [k]) on the bulk measure of (-inf, t) and (-inf, t]
        (skipkern.hessian.quadrature), cached per threshold."""
        cache = self.__dict__.setdefault("_cdf_cache", {})
        if t not in cache:
            pairs = [cdf_bounds(a, b, last, t, exact, rule) for a, b, last, rule, exact in self.probe_tridiagonals()]
            cache[t] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
        return cache[t]

    def rounding_floor(self) -> float:
        """How far rounding of the products may move an eigenvalue: ROUNDING_FACTOR eps ||A||."""
        dt = getattr(torch, str(self.meta.get("product_dtype", "float64")), torch.float64)
        live = self.weights > 0
        scale = float(np.abs(self.nodes[live]).max()) if live.any() else 0.0
        return ROUNDING_FACTOR * torch.finfo(dt).eps * scale

    def threshold_uncertainty(self) -> float:
        """rho: the deflation residual bound (or a dense reconstruction's) plus the rounding floor
        (skipkern.hessian.fractions, 3)."""
        known = self.meta.get("deflation", {}).get("residual", 0.0) + self.meta.get("dense", {}).get("residual", 0.0)
        return float(known) + self.rounding_floor()

    def gauss_node_bounds(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-probe Gauss-node bounds [k] on the mass of [a, b] (for files without tridiagonals)."""
        lo, hi = np.zeros(self.num_probes), np.zeros(self.num_probes)
        for j, (th, w) in enumerate(zip(self.nodes, self.weights)):
            keep = w > 0
            la, ua = gauss_cdf_bounds(th[keep], w[keep], a) if math.isfinite(a) else (0.0, 0.0)
            lb, ub = gauss_cdf_bounds(th[keep], w[keep], b) if math.isfinite(b) else (1.0, 1.0)
            lo[j], hi[j] = max(0.0, lb - ua), min(1.0, ub - la)
        return lo, hi

    def _cdf(self, t: float, strict: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per probe: (Gauss estimate, lower, upper) of mu((-inf, t)) (strict) or mu((-inf, t]) from the
        Gauss nodes alone (Chebyshev-Markov-Stieltjes; looser than the certified fractions)."""
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
        """(lower, upper) Gauss-node bounds on the fraction with lambda < -eps, each with its probe SE
        (superseded by ``fraction_negative(eps).lower/.upper``, which are sharper and certified)."""
        _, lo, hi = self._cdf(-eps, strict=True)
        return _mean_se(np.clip(lo, 0, 1)), _mean_se(np.clip(hi, 0, 1))

    def fraction_degenerate_bounds(self, eps: float) -> tuple[Estimate, Estimate]:
        """(lower, upper) Gauss-node bounds on the fraction with |lambda| <= eps (see
        fraction_negative_bounds)."""
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
        d = {"format": "skipkern.SpectralDensity", "version": 2, "dim": int(self.dim),
             "sigma": float(self.sigma), "nodes": self.nodes.tolist(), "weights": self.weights.tolist(),
             "grid": self.grid.tolist(), "values": self.values.tolist(), "meta": self.meta,
             "deflated": self.deflated.tolist()}
        if self.has_tridiagonals():
            d.update(alphas=self.alphas.tolist(), betas=self.betas.tolist())
        return d

    def save(self, path: Union[str, Path]) -> Path:
        """Write to ``.json`` (readable) or ``.npz`` (compact), chosen by the suffix."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        elif path.suffix == ".npz":
            extra = dict(alphas=self.alphas, betas=self.betas) if self.has_tridiagonals() else {}
            np.savez_compressed(path, nodes=self.nodes, weights=self.weights, grid=self.grid, values=self.values,
                                dim=self.dim, sigma=self.sigma, meta=json.dumps(self.meta), deflated=self.deflated,
                                **extra)
        else:
            raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SpectralDensity":
        """Read a file written by ``save`` (also version-1 files, which lack the tridiagonals: their
        fractions fall back to the looser Gauss-node bounds)."""
        path = Path(path)
        if path.suffix == ".json":
            d = json.loads(path.read_text())
            if d.get("format") != "skipkern.SpectralDensity":
                raise ValueError(f"{str(path)!r} is not a saved SpectralDensity")
            get = d.get
        elif path.suffix == ".npz":
            z = np.load(path)
            d = {key: z[key] for key in z.files}
            d["meta"] = json.loads(str(z["meta"]))
            get = d.get
        else:
            raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")
        opt = {key: np.asarray(get(key)) for key in ("alphas", "betas", "deflated") if get(key) is not None}
        return cls(np.asarray(d["nodes"]), np.asarray(d["weights"]), int(d["dim"]), float(d["sigma"]),
                   np.asarray(d["grid"]), np.asarray(d["values"]), d.get("meta", {}), **opt)

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
                 meta: Optional[dict] = None, deflated: Optional[np.ndarray] = None) -> SpectralDensity:
    """SpectralDensity from a LanczosResult of unit-norm probes on an operator of dimension ``dim``
    (with ``deflated`` eigenvalues [d]: the probes ran on the deflated operator, in its space of
    dimension dim - d, and the measures are combined exactly with them)."""
    nodes, weights = res.ritz()
    nodes, weights = nodes.numpy(), weights.numpy()
    ritz_nodes, ritz_weights = nodes, weights
    lam = np.zeros(0) if deflated is None else np.asarray(deflated, dtype=np.float64).reshape(-1)
    k, m = res.alphas.shape
    betas = np.zeros((k, m))
    betas[:, :max(m - 1, 0)] = res.betas.numpy()
    if res.beta_last is not None:
        for j, n in enumerate(res.lengths.tolist()):
            betas[j, n - 1] = float(res.beta_last[j])
    if lam.size:
        weights = np.concatenate([weights * ((dim - lam.size) / dim), np.full((k, lam.size), 1.0 / dim)], 1)
        nodes = np.concatenate([nodes, np.broadcast_to(lam, (k, lam.size))], 1)
    s, g = _default_grid(nodes, weights, sigma, grid)
    info = {"num_steps": int(m), "lengths": res.lengths.tolist(), "num_matmat": res.num_matmat}
    info.update(meta or {})
    dens = SpectralDensity(nodes, weights, int(dim), s, g, meta=info, alphas=res.alphas.numpy(),
                           betas=betas if res.beta_last is not None else None, deflated=lam)
    lengths = res.lengths.tolist()  # the Gauss rules the certified fractions need, already computed
    bulk = np.asarray(ritz_nodes), np.asarray(ritz_weights)
    dens._rules = [(bulk[0][j, :n].copy(), bulk[1][j, :n].copy()) for j, n in enumerate(lengths)]
    return dens
