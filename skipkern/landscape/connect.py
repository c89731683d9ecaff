"""``connect``: the loss along a path between two trained networks, and its barrier.

    res = connect(net_a, net_b, F.mse_loss, {"train": (x, y), "test": (xt, yt)}, method="bezier")
    res.barrier, res.test_barrier, res.t, res.train_loss, res.model_at(0.5)

Barrier (the definition asked for here, as in Frankle et al. 2020): the largest loss along the path
minus the mean of the two end-point losses,
    B = max_t L(phi(t)) - (L(phi(0)) + L(phi(1))) / 2.
It is >= |L_a - L_b| / 2 >= 0 by construction, since the end points are on the path. Also reported:
the excess barrier max_t [L(phi(t)) - ((1 - t) L_a + t L_b)], the height above the straight line
between the end losses (0 for a path that is never worse than the interpolated end losses).
The maximum is taken over a grid of ``num_points`` values of t (plus the path's kinks) and then
refined by golden-section search in the two grid cells around the best grid point (``refine``).

Methods:
    "linear"   straight line.
    "bezier"   quadratic (or higher, ``bends``) Bezier curve trained as Garipov et al. (2018) do:
               minimise E_{t ~ U(0, 1)} L(phi(t)) over the control points, one t drawn per step and
               pair, on mini-batches of the training data, starting from the straight line.
    "autoneb"  nudged elastic band with automatic pivot insertion (after Draxler et al. 2018,
               "Essentially No Barriers in Neural Network Energy Landscape"), see ``neb.py``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skipkern.landscape.curves import BezierPath, LinearPath, Path
from skipkern.landscape.params import LossEvaluator, ParamLayout, Split, as_splits, stack_flat

__all__ = ["connect", "connect_many", "PathResult", "barrier", "profile", "fit_bezier", "METHODS"]

METHODS = ("linear", "bezier", "autoneb")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def barrier(t: Sequence[float], losses: Sequence[float]) -> dict:
    """Barrier numbers of one loss profile. t [T] ascending from 0 to 1, losses [T].

    Returns {"barrier": max - mean of ends, "barrier_t": argmax t, "excess_barrier": max of the height
    above the line between the end losses, "max_loss", "end_losses": (L_0, L_1)}."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(losses, dtype=float)
    if t.shape != v.shape or t.ndim != 1 or t.size < 2:
        raise ValueError(f"t and losses must be two 1-D arrays of one length >= 2, got {t.shape} and {v.shape}")
    i = int(np.nanargmax(v))
    line = (1.0 - t) * v[0] + t * v[-1]
    return {"barrier": float(v[i] - 0.5 * (v[0] + v[-1])), "barrier_t": float(t[i]),
            "excess_barrier": float(np.nanmax(v - line)), "max_loss": float(v[i]),
            "end_losses": (float(v[0]), float(v[-1]))}


def profile(path: Path, ev: LossEvaluator, split: Split, grid: Sequence[float],
            bn_data: Optional[Split] = None) -> np.ndarray:
    """Losses [K, T] of every pair at every t of ``grid`` on one split."""
    cols = [ev.losses(path.points(float(t)), split, bn_data).cpu().numpy() for t in grid]
    return np.stack(cols, axis=1)


def _refine(path: Path, ev: LossEvaluator, split: Split, grid: np.ndarray, vals: np.ndarray, iters: int,
            bn_data: Optional[Split]) -> tuple[np.ndarray, np.ndarray]:
    """Golden-section maximisation of each pair's loss in the two grid cells around its grid maximum
    (all pairs at once). Returns (t_max [K], loss_max [K]), never below the grid maximum."""
    K, T = vals.shape
    i = np.nanargmax(vals, axis=1)
    best_t, best_v = grid[i].copy(), vals[np.arange(K), i].copy()
    lo, hi = grid[np.maximum(i - 1, 0)].astype(float), grid[np.minimum(i + 1, T - 1)].astype(float)
    if iters <= 0 or np.all(hi - lo <= 0):
        return best_t, best_v

    def f(t: np.ndarray) -> np.ndarray:
        return ev.losses(path.points(torch.as_tensor(t)), split, bn_data).cpu().numpy()

    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        left = fc >= fd  # the maximum lies in [lo, d]
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        new_c, new_d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
        t_new = np.where(left, new_c, new_d)
        f_new = f(t_new)
        c, d = np.where(left, t_new, d), np.where(left, c, t_new)
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
        for tt, ff in ((c, fc), (d, fd)):
            better = ff > best_v
            best_t, best_v = np.where(better, tt, best_t), np.where(better, ff, best_v)
    return best_t, best_v


def fit_bezier(path: BezierPath, ev: LossEvaluator, split: Split, *, steps: int, lr: float,
               batch_size: Optional[int] = None, seed: int = 0, train_mode: bool = False, optimizer: str = "adam",
               lr_decay: str = "cosine", progress: bool = False, desc: str = "bezier") -> list:
    """Train the control points of ``path`` in place (Garipov et al. 2018): minimise the sum over
    pairs of L(phi_k(t_k)) with t_k ~ U(0, 1) redrawn every step, on mini-batches of ``batch_size``
    samples (None: the whole split), with Adam (default) or SGD with momentum 0.9 (``optimizer``;
    Garipov et al. use SGD; Adam needs no tuning to the loss scale but random-walks where the loss is
    flat to rounding, e.g. along a valley of exact minima). ``lr_decay``: "cosine" (to 0 at the last
    step, so a fixed budget ends converged) or "none". Returns the per-step loss, averaged over pairs."""
    if isinstance(steps, bool) or int(steps) < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if lr_decay not in ("cosine", "none"):
        raise ValueError(f"lr_decay must be 'cosine' or 'none', got {lr_decay!r}")
    x, y = split
    n = x.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    opt = (torch.optim.Adam([path.controls], lr=float(lr)) if optimizer == "adam"
           else torch.optim.SGD([path.controls], lr=float(lr), momentum=0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(int(steps), 1)) if lr_decay == "cosine" else None
    bs = n if batch_size is None else min(int(batch_size), n)
    history = []
    for _ in tqdm(range(int(steps)), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        t = torch.rand(path.num_pairs, generator=g, dtype=torch.float64)
        if bs < n:
            idx = torch.randperm(n, generator=g)[:bs].to(x.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        loss = ev.batch_loss(path.points(t.to(path.controls.device)), xb, yb, train_mode=train_mode)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # pairs are independent: the sum gives each its own gradient
        opt.step()
        if sched is not None:
            sched.step()
        history.append(float(loss.detach().mean()))
    path.controls.requires_grad_(False)
    return history


@dataclass
class PathResult:
    """One connected pair.

    Attributes:
        method: "linear", "bezier" or "autoneb". t: [T] grid of t. train_loss, test_loss: [T] losses
            (test_loss None without test data). barrier, barrier_t, excess_barrier: on the training
            loss (see module docstring); test_*: the same on the test loss (None without test data).
        end_losses: (L_a, L_b) training losses of the end points.
        path: the path itself (K = 1); ``params_at(t)`` / ``model_at(t)`` read points off it.
        history: per-step training loss of the curve fit (empty for "linear").
        settings: the options used.
    """

    method: str
    t: np.ndarray
    train_loss: np.ndarray
    test_loss: Optional[np.ndarray]
    barrier: float
    barrier_t: float
    excess_barrier: float
    end_losses: tuple
    test_barrier: Optional[float] = None
    test_barrier_t: Optional[float] = None
    test_excess_barrier: Optional[float] = None
    path: Optional[Path] = field(default=None, repr=False)
    history: list = field(default_factory=list, repr=False)
    settings: dict = field(default_factory=dict)
    _layout: Optional[ParamLayout] = field(default=None, repr=False)
    _template: Optional[nn.Module] = field(default=None, repr=False)

    def params_at(self, t: float) -> dict:
        """{name: tensor} of the point at t (model dtype)."""
        return self._layout.unflatten(self.path.points(float(t))[0])

    def model_at(self, t: float) -> nn.Module:
        """A copy of the first model carrying the parameters of the point at t (its buffers, BatchNorm
        statistics included, are the first model's: recompute them on your data before evaluating)."""
        return self._layout.load(copy.deepcopy(self._template), self.path.points(float(t))[0])

    def to_dict(self) -> dict:
        """Numbers only (no tensors): method, t, losses, barriers, history, settings."""
        return {"method": self.method, "t": self.t.tolist(), "train_loss": self.train_loss.tolist(),
                "test_loss": None if self.test_loss is None else self.test_loss.tolist(),
                "barrier": self.barrier, "barrier_t": self.barrier_t, "excess_barrier": self.excess_barrier,
                "end_losses": list(self.end_losses), "test_barrier": self.test_barrier,
                "test_barrier_t": self.test_barrier_t, "test_excess_barrier": self.test_excess_barrier,
                "history": list(self.history), "settings": dict(self.settings)}

    def save(self, file) -> None:
        """torch.save of ``to_dict()`` plus the path's tensors (key "path", with its kind)."""
        torch.save({**self.to_dict(), "path": {"kind": self.path.kind, **self.path.state()}}, file)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def connect_many(models_a: Sequence[nn.Module], models_b: Sequence[nn.Module], loss_fn: Callable,
                 data: Union[Split, Mapping[str, Split]], *, method: str = "linear", test_data: Optional[Split] = None,
                 num_points: int = 21, refine: int = 20, batch_size: Optional[int] = None, steps: int = 500,
                 lr: float = 1e-2, bends: int = 1, train_batch: Optional[int] = None, train_mode: Optional[bool] = None,
                 optimizer: str = "adam", lr_decay: str = "cosine", seed: int = 0, progress: bool = False,
                 neb: Optional[dict] = None) -> list:
    """``connect`` for K pairs (models_a[k], models_b[k]) of one architecture, evaluated and (for
    "bezier") trained together in batched forward passes. Returns K ``PathResult``."""
    _check_method(method)
    if len(models_a) != len(models_b) or not models_a:
        raise ValueError(f"models_a and models_b must be two equally long, non-empty sequences, got "
                         f"{len(models_a)} and {len(models_b)}")
    if isinstance(num_points, bool) or int(num_points) < 2:
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    splits = as_splits(data, test_data)
    layout = ParamLayout(models_a[0])
    splits = {k: (x.to(layout.device), y.to(layout.device)) for k, (x, y) in splits.items()}
    ev = LossEvaluator(models_a[0], loss_fn, layout, batch_size)
    if ev.bn and len(models_a) > 1:
        raise ValueError("models with BatchNorm: call connect() once per pair (running statistics are recomputed "
                         "at every point)")
    a, b = stack_flat(layout, models_a), stack_flat(layout, models_b)
    tm = ev.bn if train_mode is None else bool(train_mode)
    settings = dict(method=method, num_points=int(num_points), refine=int(refine), batch_size=batch_size)
    if method == "linear":
        return _results(LinearPath(a, b), ev, splits, settings, [[] for _ in models_a], layout, models_a[0])
    if method == "bezier":
        path = BezierPath(a, b, bends)
        hist = fit_bezier(path, ev, splits["train"], steps=steps, lr=lr, batch_size=train_batch, seed=seed,
                          train_mode=tm, optimizer=optimizer, lr_decay=lr_decay, progress=progress)
        settings.update(steps=int(steps), lr=float(lr), bends=int(bends), train_batch=train_batch, seed=int(seed),
                        train_mode=tm, optimizer=optimizer, lr_decay=lr_decay)
        return _results(path, ev, splits, settings, [hist for _ in models_a], layout, models_a[0])
    from skipkern.landscape.neb import fit_autoneb
    opts = dict(neb or {})
    settings.update(neb=opts, seed=int(seed), train_batch=train_batch, train_mode=tm)
    out = []
    for k in range(len(models_a)):  # chains grow to different node counts: one pair at a time
        chain, hist = fit_autoneb(a[k:k + 1], b[k:k + 1], ev, splits["train"], seed=seed + k,
                                  train_batch=train_batch, train_mode=tm, progress=progress, **opts)
        out += _results(chain, ev, splits, settings, [hist], layout, models_a[0])
    return out


def _results(path: Path, ev: LossEvaluator, splits: dict, settings: dict, histories: list, layout: ParamLayout,
             template: nn.Module) -> list:
    """Profiles on every split, refined maxima and one PathResult per pair of ``path``."""
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, settings["num_points"]), path.knots()]))
    curves = {}
    for name, split in splits.items():
        vals = profile(path, ev, split, grid, splits["train"])
        t_max, v_max = _refine(path, ev, split, grid, vals, settings["refine"], splits["train"])
        curves[name] = (vals, t_max, v_max)
    results = []
    for k in range(path.num_pairs):
        out = {}
        for name, (vals, t_max, v_max) in curves.items():
            bar = barrier(grid, vals[k])
            ends = 0.5 * (vals[k, 0] + vals[k, -1])
            line = (1.0 - t_max[k]) * vals[k, 0] + t_max[k] * vals[k, -1]
            out[name] = dict(bar, barrier=float(max(v_max[k], bar["max_loss"]) - ends), barrier_t=float(t_max[k]),
                             excess_barrier=float(max(bar["excess_barrier"], v_max[k] - line)))
        tr, te = out["train"], out.get("test")
        results.append(PathResult(
            method=settings["method"], t=grid.copy(), train_loss=curves["train"][0][k].copy(),
            test_loss=None if te is None else curves["test"][0][k].copy(), barrier=tr["barrier"],
            barrier_t=tr["barrier_t"], excess_barrier=tr["excess_barrier"], end_losses=tr["end_losses"],
            test_barrier=None if te is None else te["barrier"], test_barrier_t=None if te is None else te["barrier_t"],
            test_excess_barrier=None if te is None else te["excess_barrier"], path=path.select(k),
            history=list(histories[k]), settings=dict(settings), _layout=layout, _template=template))
    return results


def connect(model_a: nn.Module, model_b: nn.Module, loss_fn: Callable, data: Union[Split, Mapping[str, Split]], *,
            method: str = "linear", **kwargs) -> PathResult:
    """The loss along a path from ``model_a`` to ``model_b`` (same architecture), and its barrier.

    Args:
        model_a, model_b: the two end points (their parameters; buffers are taken from model_a).
        loss_fn: ``loss_fn(model(x), y) -> scalar`` mean over the batch (F.mse_loss, F.cross_entropy).
        data: (x, y) training data [N, ...], or {"train": (x, y), "test": (x, y)}.
        method: "linear", "bezier" or "autoneb" (module docstring).
        test_data: (x, y) evaluated along the path as well (or the "test" entry of ``data``).
        num_points: grid of t in [0, 1] (default 21). refine: golden-section iterations around the grid
            maximum (0: grid only).
        batch_size: evaluation chunk size (None: whole split).
        steps, lr, bends, train_batch, optimizer, lr_decay, seed: Bezier training (default Adam, 500
            steps at lr 1e-2 with cosine decay on the whole training split; bends = 1 is the quadratic
            curve; see ``fit_bezier``) and AutoNEB's mini-batches.
        train_mode: module mode while fitting curves (default: train mode only with BatchNorm).
        neb: AutoNEB options (see ``skipkern.landscape.neb.fit_autoneb``).
        progress: tqdm bar for curve fitting.

    Returns:
        PathResult: t, train/test loss along the path, barriers, the path (params_at / model_at).
    """
    return connect_many([model_a], [model_b], loss_fn, data, method=method, **kwargs)[0]
