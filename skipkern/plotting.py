"""Figure helpers for the experiments: matplotlib on the Agg backend (no display needed), every figure
saved as PNG and SVG.

Conventions every experiment figure follows: one colour per condition across every figure
(``color_for``), one line style per init family (``FAMILY_STYLE``), legends outside the data
(``legend_outside``), integer ticks for layer indices, log axes where values span decades, and every
band or error bar says what it is and over how many seeds (95% confidence interval of the mean, t
distribution, unless a label says otherwise). Functions take plain numbers (lists / numpy arrays),
never models, so each experiment decides what to plot and these helpers only decide how.
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plt", "new_figure", "save_figure", "band_plot", "bar_plot", "scatter_fit", "layer_plot",
           "color_for", "legend_outside", "mean_ci", "wrap", "FIGURE_FORMATS", "FAMILY_STYLE", "BAND_LABEL"]

FIGURE_FORMATS = ("png", "svg")
BAND_LABEL = "mean ± 95% CI"

# One colour per condition, the same in every figure; no two conditions share one.
_COLORS = {
    "plain": "#d62728", "residual": "#1f77b4", "hyper_residual": "#2ca02c", "orthogonal": "#9467bd",
    "malicious": "#ff7f0e", "biasreg": "#8c564b", "biasl2reg": "#bcbd22", "biasreg_bn": "#17becf",
    "skip": "#393b79", "near_overlap": "#637939", "near_elimination": "#e7ba52", "random": "#7f7f7f",
}
_CYCLE = ["#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d"]
FAMILY_STYLE = {"glorot": "-", "scaled": "--"}


def color_for(name: str, index: int = 0) -> str:
    """Colour of a condition: fixed for the named ones; ``degenerate_<p>`` on a light-to-deep pink scale by
    p (so every fraction p has its own); others from a neutral cycle by ``index``."""
    key = name.lower()
    for fam in FAMILY_STYLE:  # "scaled residual" -> residual's colour
        if key.startswith(fam + " "):
            key = key[len(fam) + 1:]
    if key in _COLORS:
        return _COLORS[key]
    if key.startswith("degenerate"):
        try:
            p = float(key.split("_", 1)[1])
        except (IndexError, ValueError):
            p = 0.5
        return matplotlib.colors.to_hex(plt.get_cmap("RdPu")(0.3 + 0.45 * min(max(p, 0.0), 1.0)))
    return _CYCLE[index % len(_CYCLE)]


def wrap(text: str, width: int = 48) -> str:
    """Wrap a title so it fits its panel."""
    return "\n".join(textwrap.wrap(text, width)) if text else text


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8):
    """A figure with nrows x ncols axes (always a flat list of axes), constrained layout (labels fit)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    return fig, list(axes.ravel())


def save_figure(fig, out_dir: Union[str, os.PathLike], stem: str) -> list[str]:
    """Save ``fig`` as <out_dir>/<stem>.png and .svg, close it, and return the two paths.
    Under torch.distributed only rank 0 writes (the other ranks close the figure and return the paths)."""
    from skipkern import distributed as sd
    out = Path(out_dir)
    paths = [str(out / f"{stem}.{fmt}") for fmt in FIGURE_FORMATS]
    if sd.is_main():
        out.mkdir(parents=True, exist_ok=True)
        for p in paths:
            fig.savefig(p, dpi=120 if p.endswith(".png") else None)
    plt.close(fig)
    return paths


def legend_outside(where, handles=None, ncol: Optional[int] = None, fontsize: int = 8) -> None:
    """A legend below the axes (an Axes) or below the whole figure (a Figure): never over the data.
    The column count fits the labels into the width of the axes or figure."""
    if hasattr(where, "get_legend_handles_labels") and handles is None:
        handles, _ = where.get_legend_handles_labels()
    if not handles:
        return
    n = len(handles)
    is_axes = hasattr(where, "transAxes")
    fig = where.figure if is_axes else where
    width_in = fig.get_figwidth() * (where.get_position().width if is_axes else 1.0)
    longest = max(len(str(h.get_label())) for h in handles)
    fit = max(1, int(width_in * 14 / (longest + 5)))  # ~14 characters per inch at this font size
    ncol = ncol or min(n, fit)
    if is_axes:
        where.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize=fontsize,
                     frameon=False)
    else:
        where.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=fontsize, frameon=False)


def mean_ci(v: np.ndarray, axis: int = 0, level: float = 0.95) -> tuple:
    """(mean, half-width of the t confidence interval, n) over ``axis``, ignoring NaN; half-width 0
    with fewer than 2 values."""
    from scipy import stats as sps
    v = np.asarray(v, dtype=float)
    with np.errstate(all="ignore"):
        n = np.sum(np.isfinite(v), axis=axis)
        mean = np.nanmean(v, axis=axis)
        sd = np.nanstd(v, axis=axis, ddof=1)
        t = sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
        half = np.where(n > 1, t * sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, half, n


def band_plot(ax, x: Sequence[float], runs: Mapping[str, np.ndarray], *, xlabel: str, ylabel: str,
              title: Optional[str] = None, logy: bool = False, styles: Optional[Mapping[str, str]] = None,
              colors: Optional[Mapping[str, str]] = None, legend: bool = True,
              clip: Optional[tuple] = None) -> None:
    """Mean curve with a 95% confidence band of the mean per condition (the legend says n).

    Args:
        x: [T] abscissa. runs: condition -> [n_seeds, T] values (NaN entries are ignored).
        styles / colors: optional line style / colour per condition (default solid / ``color_for``).
        clip: (low, high) range of the quantity (e.g. (0, 1) for accuracies): bands stop there.
    """
    x = np.asarray(x, dtype=float)
    for i, (name, vals) in enumerate(runs.items()):
        v = np.atleast_2d(np.asarray(vals, dtype=float))
        mean, half, n = mean_ci(v)
        c = (colors or {}).get(name, color_for(name, i))
        ls = (styles or {}).get(name, "-")
        ok = np.isfinite(mean)
        ax.plot(x[:mean.shape[0]][ok], mean[ok], color=c, ls=ls, lw=1.6,
                label=f"{name} ({BAND_LABEL}, n={int(np.max(n)) if n.size else 0})")
        if v.shape[0] > 1:
            lo, hi = mean - half, mean + half
            if clip is not None:
                lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
            ax.fill_between(x[:mean.shape[0]][ok], lo[ok], hi[ok], color=c, alpha=0.18, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(wrap(title), fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        legend_outside(ax)


def bar_plot(ax, groups: Mapping[str, Sequence[float]], *, ylabel: str, title: Optional[str] = None,
             xlabel: str = "condition", colors: Optional[Mapping[str, str]] = None) -> None:
    """One bar per condition at the mean, error bar = 95% CI of the mean (cut at 0 below), dots = seeds."""
    names = list(groups)
    for i, name in enumerate(names):
        v = np.asarray(groups[name], dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        c = (colors or {}).get(name, color_for(name, i))
        _, half, _ = mean_ci(v)
        m = float(v.mean())
        ax.bar(i, m, color=c, alpha=0.6, yerr=[[min(float(half), m) if m >= 0 else float(half)], [float(half)]],
               capsize=4)
        ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(wrap(title), fontsize=10)
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
    ax.set_xlabel(wrap(xlabel, 44))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(wrap(title), fontsize=10)
    ax.grid(alpha=0.3)


def layer_plot(ax, runs: Mapping[str, np.ndarray], *, ylabel: str, title: Optional[str] = None,
               logy: bool = False, cap: Optional[float] = None, styles: Optional[Mapping[str, str]] = None,
               colors: Optional[Mapping[str, str]] = None, legend: bool = True, clip: Optional[tuple] = None) -> None:
    """Per-layer values (layer 1..L on x, integer ticks) as the mean with a 95% CI band per condition
    (geometric mean and a band in log10 on a log axis).

    Args:
        runs: condition -> [n_seeds, L]. cap: values above it (and inf) are drawn at ``cap`` with a
            marker, so numerically infinite condition numbers stay visible on a log axis.
        clip: (low, high) range of the quantity (e.g. (0, 1) for fractions): bands stop there.
    """
    for i, (name, vals) in enumerate(runs.items()):
        v = np.atleast_2d(np.asarray(vals, dtype=float))
        capped = None
        if cap is not None:
            capped = ~np.isfinite(v) | (v > cap)
            v = np.where(capped, cap, v)
        layers = np.arange(1, v.shape[1] + 1)
        c = (colors or {}).get(name, color_for(name, i))
        ls = (styles or {}).get(name, "-")
        if logy:
            with np.errstate(all="ignore"):
                lv = np.log10(np.where(v > 0, v, np.nan))
            m, half, _ = mean_ci(lv)
            ax.plot(layers, 10 ** m, color=c, ls=ls, marker="o", ms=3,
                    label=f"{name} (geometric mean ± 95% CI, n={v.shape[0]})")
            if v.shape[0] > 1:
                top = math.log10(cap) if cap is not None else np.inf  # nothing is drawn above the cap
                ax.fill_between(layers, 10 ** np.minimum(m - half, top), 10 ** np.minimum(m + half, top), color=c,
                                alpha=0.18, lw=0)
        else:
            m, half, _ = mean_ci(v)
            ax.plot(layers, m, color=c, ls=ls, marker="o", ms=3, label=f"{name} ({BAND_LABEL}, n={v.shape[0]})")
            if v.shape[0] > 1:
                lo, hi = m - half, m + half
                if clip is not None:
                    lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
                ax.fill_between(layers, lo, hi, color=c, alpha=0.18, lw=0)
        if capped is not None and capped.any():
            hit = capped.mean(0) > 0
            ax.scatter(layers[hit], np.full(hit.sum(), cap), marker="^", color=c, s=18, zorder=3)
    if cap is not None:
        ax.axhline(cap, color="k", lw=0.8, ls=":", label=f"numerically singular (drawn at {cap:.0e})")
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden layer")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(wrap(title), fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        legend_outside(ax)

