"""Figures of the ``connectivity`` experiment: barrier against width (log-log, per input dimension),
final training losses of every net, and the loss along the paths at the largest width."""
from __future__ import annotations

import numpy as np

from skipkern.plotting import color_for, new_figure, save_figure

__all__ = ["figures"]

_ARCH_LABEL = {"plain": "without skip", "skip": "with skip"}


def _by_m(rows: list, key: str, **match) -> dict:
    out: dict = {}
    for r in rows:
        if all(r[k] == v for k, v in match.items()):
            out.setdefault(r["m"], []).append(float(r[key]))
    return dict(sorted(out.items()))


def _log_axes(ax, widths: list) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths)
    ax.set_xticklabels([str(w) for w in widths])
    ax.grid(alpha=0.3, which="both")


def _offset(arch: str) -> float:
    return 0.94 if arch == "plain" else 1.06  # side by side on a log2 axis


def barrier_figure(out, cfg: dict, dims: list, widths: list, pairs: list, summary: dict) -> str:
    methods = list(cfg["methods"])
    fig, axes = new_figure(len(dims), len(methods), width=4.4, height=3.4)
    for r, meth in enumerate(methods):
        for c, n in enumerate(dims):
            ax = axes[r * len(dims) + c]
            for arch in ("plain", "skip"):
                col = color_for("plain" if arch == "plain" else "skip")
                vals = _by_m(pairs, "barrier", n=n, arch=arch, method=meth)
                for m, v in vals.items():
                    v = np.asarray(v)
                    v = v[v > 0]
                    ax.scatter(np.full(v.size, m * _offset(arch)), v, s=9, color=col, alpha=0.45, lw=0)
                ms = [m for m, v in vals.items() if (np.asarray(v) > 0).any()]
                geo = [10 ** np.mean(np.log10([x for x in vals[m] if x > 0])) for m in ms]
                sl = summary["per_n"][n][arch][f"{meth}_slope"]
                lab = (f"{_ARCH_LABEL[arch]}: slope {sl['slope']:+.2f} [{sl['low']:+.2f}, {sl['high']:+.2f}]"
                       if np.isfinite(sl["slope"]) else _ARCH_LABEL[arch])
                ax.plot(ms, geo, color=col, marker="o", ms=4, lw=1.6, label=lab)
                if np.isfinite(sl["slope"]):
                    xs = np.asarray([min(widths), max(widths)], dtype=float)
                    ax.plot(xs, 10 ** (sl["intercept"] + sl["slope"] * np.log10(xs)), color=col, ls=":", lw=1)
            _log_axes(ax, widths)
            ax.set_xlabel("width m of the skip branch")
            ax.set_ylabel(f"training-loss barrier ({meth} path)")
            ax.set_title(f"n = {n}: {meth} path")
            ax.legend(fontsize=7, loc="lower left")
    deep = "m" if cfg["deep_width"] == "m" else str(cfg["deep_width"])
    fig.suptitle(f"Barrier (max along the path - mean of the ends) vs width; deep branch {cfg['depth']} layers of width "
                 f"{deep}\ndots: {int(cfg['n_seeds']) // 2} pairs per width; line: geometric mean; dotted: log-log fit "
                 "(slope and 95% bootstrap CI in the legend)", fontsize=9)
    save_figure(fig, out, "connectivity_barrier_vs_width")
    return "connectivity_barrier_vs_width"


def loss_figure(out, cfg: dict, dims: list, widths: list, nets: list, summary: dict) -> str:
    fig, axes = new_figure(len(dims), 2, width=4.4, height=3.3)
    for c, n in enumerate(dims):
        top, bot = axes[c], axes[len(dims) + c]
        for arch in ("plain", "skip"):
            col = color_for("plain" if arch == "plain" else "skip")
            vals = _by_m(nets, "final_train_loss", n=n, arch=arch)
            for m, v in vals.items():
                v = np.asarray(v)
                top.scatter(np.full(v.size, m * _offset(arch)), v, s=9, color=col, alpha=0.5, lw=0)
            top.plot([m * _offset(arch) for m in vals], [np.median(v) for v in vals.values()], color=col, marker="_",
                     ms=12, lw=1.2, label=f"{_ARCH_LABEL[arch]} (median)")
            exc = {m: np.asarray(v) - np.min(v) for m, v in vals.items()}
            ms = [m for m, e in exc.items() if (e > 0).any()]
            sl = summary["per_n"][n][arch]["excess_slope"]
            lab = (f"{_ARCH_LABEL[arch]}: slope {sl['slope']:+.2f} [{sl['low']:+.2f}, {sl['high']:+.2f}]"
                   if np.isfinite(sl["slope"]) else _ARCH_LABEL[arch])
            bot.plot(ms, [exc[m][exc[m] > 0].mean() for m in ms], color=col, marker="o", ms=4, label=lab)
        for ax in (top, bot):
            _log_axes(ax, widths)
            ax.set_xlabel("width m of the skip branch")
            ax.legend(fontsize=7)
        top.set_ylabel("final training loss (MSE)")
        top.set_title(f"n = {n}: every net ({cfg['n_seeds']} per width)")
        bot.set_ylabel("mean excess over the best net")
        bot.set_title(f"n = {n}: depth of the worse minima")
    save_figure(fig, out, "connectivity_final_losses")
    return "connectivity_final_losses"


def path_figure(out, cfg: dict, dims: list, widths: list, recs: dict) -> str:
    m = max(widths)
    fig, axes = new_figure(len(dims), 1, width=4.4, height=3.3)
    for c, n in enumerate(dims):
        ax = axes[c]
        for arch in ("plain", "skip"):
            col = color_for("plain" if arch == "plain" else "skip")
            prof = recs[(n, arch, m)]["profiles"]
            for meth, ls in (("linear", "--"), ("bezier", "-"), ("autoneb", "-.")):
                if meth not in prof:
                    continue
                t = np.asarray(prof[meth]["t"])
                v = np.asarray(prof[meth]["train"])
                ax.plot(t, np.exp(np.log(v).mean(0)), color=col, ls=ls, lw=1.5, label=f"{_ARCH_LABEL[arch]}, {meth}")
                ax.fill_between(t, v.min(0), v.max(0), color=col, alpha=0.12, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("position along the path t")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title(f"n = {n}, m = {m}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training loss along the paths: geometric mean over pairs, band: min to max over pairs", fontsize=9)
    save_figure(fig, out, "connectivity_paths")
    return "connectivity_paths"


def figures(out, cfg: dict, dims: list, widths: list, nets: list, pairs: list, recs: dict, summary: dict) -> list:
    """All figures; returns their stems (the barrier figure first)."""
    return [barrier_figure(out, cfg, dims, widths, pairs, summary), loss_figure(out, cfg, dims, widths, nets, summary),
            path_figure(out, cfg, dims, widths, recs)]
