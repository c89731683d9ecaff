"""Figure helpers for the experiments: matplotlib on the Agg backend (no display needed), every figure
saved as PNG and SVG with labelled axes.

Functions take plain numbers (lists / numpy arrays), never models, so each experiment decides what to
plot and these helpers only decide how.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "new_figure", "save_figure", "band_plot", "bar_plot", "scatter_fit", "layer_plot",
           "color_for", "FIGURE_FORMATS"]

FIGURE_FORMATS = ("png", "svg")

# One colour per condition, stable across figures, so "plain" is the same red everywhere.
_COLORS = {
    "plain": "#d62728", "residual": "#1f77b4", "hyper_residual": "#2ca02c", "orthogonal": "#9467bd",
    "identity": "#1f77b4", "malicious": "#ff7f0e", "biasreg": "#8c564b", "biasl2reg": "#e377c2",
    "biasreg_bn": "#17becf", "skip": "#1f77b4",
}
_CYCLE = ["#7f7f7f", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2"]


def color_for(name: str, index: int = 0) -> str:
    """Colour of a condition: fixed for the paper's named ones, else from a neutral cycle."""
    key = name.lower()
    if key in _COLORS:
        return _COLORS[key]
    return _CYCLE[index % len(_CYCLE)]


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8):
    """A figure with nrows x ncols axes (always a flat list of axes)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, list(axes.ravel())


def save_figure(fig, out_dir: Union[str, os.PathLike], stem: str) -> list[str]:
    """Save ``fig`` as <out_dir>/<stem>.png and .svg, close it, and return the two paths.
    Under torch.distributed only rank 0 writes (the other ranks close the figure and return the paths)."""
    from skipkern import distributed as sd
    out = Path(out_dir)
    paths = [str(out / f"{stem}.{fmt}") for fmt in FIGURE_FORMATS]
    if sd.is_main():
        out.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        for p in paths:
            fig.savefig(p, dpi=120 if p.endswith(".png") else None)
    plt.close(fig)
    return paths


def band_plot(ax, x: Sequence[float], runs: Mapping[str, np.ndarray], *, xlabel: str, ylabel: str,
              title: Optional[str] = None, logy: bool = False) -> None:
    """Mean curve with a +-1 standard deviation band per condition.

    Args:
        x: [T] abscissa. runs: condition -> [n_seeds, T] values (NaN entries are ignored).
    """
    x = np.asarray(x, dtype=float)
    for i, (name, vals) in enumerate(runs.items()):
        v = np.atleast_2d(np.asarray(vals, dtype=float))
        with np.errstate(all="ignore"):
            mean = np.nanmean(v, axis=0)
            std = np.nanstd(v, axis=0) if v.shape[0] > 1 else np.zeros_like(mean)
        c = color_for(name, i)
        ax.plot(x[:mean.shape[0]], mean, color=c, label=f"{name} (n={v.shape[0]})", lw=1.8)
        if v.shape[0] > 1:
            ax.fill_between(x[:mean.shape[0]], mean - std, mean + std, color=c, alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def bar_plot(ax, groups: Mapping[str, Sequence[float]], *, ylabel: str, title: Optional[str] = None,
             xlabel: str = "condition") -> None:
    """One bar per condition at the mean, error bar = standard deviation, dots = individual seeds."""
    names = list(groups)
    for i, name in enumerate(names):
        v = np.asarray(groups[name], dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        c = color_for(name, i)
        ax.bar(i, v.mean(), color=c, alpha=0.6, yerr=v.std(ddof=1) if v.size > 1 else 0.0, capsize=4)
        ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")


def scatter_fit(ax, x: Sequence[float], y: Sequence[float], *, xlabel: str, ylabel: str,
                title: Optional[str] = None, color: str = "#d62728") -> None:
    """Scatter of paired values with a least-squares line (when at least 3 finite pairs)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], color=color, s=22, alpha=0.8)
    if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
        k, b = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(xs, k * xs + b, color="k", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)


def layer_plot(ax, runs: Mapping[str, np.ndarray], *, ylabel: str, title: Optional[str] = None,
               logy: bool = False, cap: Optional[float] = None) -> None:
    """Per-layer values (layer 1..L on x) as mean +- std over seeds per condition.

    Args:
        runs: condition -> [n_seeds, L]. cap: values above it (and inf) are drawn at ``cap`` with a
            marker, so numerically infinite condition numbers stay visible on a log axis.
    """
    for i, (name, vals) in enumerate(runs.items()):
        v = np.atleast_2d(np.asarray(vals, dtype=float))
        capped = None
        if cap is not None:
            capped = ~np.isfinite(v) | (v > cap)
            v = np.where(capped, cap, v)
        layers = np.arange(1, v.shape[1] + 1)
        c = color_for(name, i)
        if logy:
            with np.errstate(all="ignore"):
                lv = np.log10(v)
            mean, std = 10 ** lv.mean(0), lv.std(0)
            ax.plot(layers, mean, color=c, marker="o", ms=3, label=f"{name} (n={v.shape[0]}, geometric mean)")
            if v.shape[0] > 1:
                ax.fill_between(layers, mean / 10 ** std, mean * 10 ** std, color=c, alpha=0.2, lw=0)
        else:
            mean, std = v.mean(0), v.std(0)
            ax.plot(layers, mean, color=c, marker="o", ms=3, label=f"{name} (n={v.shape[0]})")
            if v.shape[0] > 1:
                ax.fill_between(layers, mean - std, mean + std, color=c, alpha=0.2, lw=0)
        if capped is not None and capped.any():
            frac = capped.mean(0)
            hit = frac > 0
            ax.scatter(layers[hit], np.full(hit.sum(), cap), marker="^", color=c, s=18, zorder=3)
    if cap is not None:
        ax.axhline(cap, color="k", lw=0.8, ls=":", label=f"numerically singular (drawn at {cap:.0e})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("hidden layer")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
