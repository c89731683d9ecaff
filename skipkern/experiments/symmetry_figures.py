"""Figures of the ``symmetry`` experiment's binary toy: class-size distributions side by side, and the
single-flip local minima and global minima per teacher task."""
from __future__ import annotations

import numpy as np

from skipkern.plotting import new_figure, save_figure

__all__ = ["class_size_figure", "local_minima_figure", "VERSION_COLORS"]

VERSIONS = ("plain", "adjacent", "dense")
VERSION_COLORS = {"plain": "#d62728", "adjacent": "#1f77b4", "dense": "#2ca02c"}
VERSION_LABEL = {"plain": "plain", "adjacent": "adjacent-layer skips", "dense": "DenseNet-style skips"}


def class_size_figure(out, cfg: dict, toy: dict) -> str:
    """Per version: the fraction of configurations whose class (configurations computing the same
    function) has a size in [2^k, 2^(k+1)), and the number of functions per bin, on shared axes."""
    vs = toy["versions"]
    top = max(max(int(s) for s in vs[v]["histogram"]) for v in VERSIONS)
    edges = 2.0 ** np.arange(0, int(np.ceil(np.log2(top + 1))) + 2)
    fig, axes = new_figure(3, 2, width=3.8, height=3.0)
    for j, v in enumerate(VERSIONS):
        h = vs[v]["histogram"]
        sizes = np.asarray([int(s) for s in h], dtype=float)
        nfun = np.asarray([h[s] for s in h], dtype=float)
        conf, _ = np.histogram(sizes, bins=edges, weights=sizes * nfun)
        funs, _ = np.histogram(sizes, bins=edges, weights=nfun)
        st = vs[v]["stats"]
        col = VERSION_COLORS[v]
        for ax, vals, ylab in ((axes[j], conf / st["configurations"], "fraction of configurations"),
                               (axes[3 + j], funs, "number of functions")):
            ax.bar(edges[:-1], vals, width=np.diff(edges), align="edge", color=col, alpha=0.75, edgecolor="k", lw=0.4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel("class size (configurations per function)")
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3, which="both")
        axes[j].set_title(f"{VERSION_LABEL[v]}\n{st['functions']:,} functions, size-weighted mean class "
                          f"{st['weighted_mean_class_size']:,.0f}", fontsize=9)
    for row in (axes[:3], axes[3:]):
        lo = min(a.get_ylim()[0] for a in row)
        hi = max(a.get_ylim()[1] for a in row)
        for a in row:
            a.set_ylim(lo, hi)
    fig.suptitle(f"Binary toy: {vs['plain']['num_weights']} weights in {{-1, +1}}, all "
                 f"{vs['plain']['stats']['configurations']:,} configurations per version; bins [2^k, 2^(k+1))",
                 fontsize=9)
    save_figure(fig, out, "symmetry_class_sizes")
    return "symmetry_class_sizes"


def local_minima_figure(out, cfg: dict, toy: dict) -> str:
    """Per teacher task (one line each): the fraction of configurations that are single-flip local
    minima, and the number of global minima, for the three versions."""
    vs = toy["versions"]
    fig, axes = new_figure(3, 1, width=3.8, height=3.3)
    x = np.arange(len(VERSIONS))
    for key, ax, ylab in (("local_min_fraction", axes[0], "fraction of configurations that are\nsingle-flip local "
                           "minima"), ("bad_local_min_fraction", axes[1], "fraction that are local but not\nglobal "
                           "minima"), ("global_minima", axes[2], "global minima (configurations)")):
        vals = np.asarray([[p[key] for p in vs[v]["teachers"]] for v in VERSIONS], dtype=float)  # [3, T]
        w = np.asarray([p["weight"] for p in vs["plain"]["teachers"]], dtype=float)
        for t in range(vals.shape[1]):
            ax.plot(x, vals[:, t], color="0.6", lw=0.8, marker=None, zorder=1)
        for i, v in enumerate(VERSIONS):
            ax.scatter(np.full(vals.shape[1], i), vals[i], color=VERSION_COLORS[v], s=8 + 40 * w / w.max(), zorder=2)
            ok = vals[i] > 0
            geo = np.exp(np.sum(w[ok] * np.log(vals[i][ok])) / w[ok].sum()) if ok.any() else np.nan
            ax.scatter([i], [geo], color="k", marker="_", s=300, zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels([VERSION_LABEL[v].replace(" skips", "\nskips") for v in VERSIONS], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(ylab, fontsize=8)
        ax.grid(alpha=0.3, axis="y", which="both")
    what = "symmetry orbits of tasks" if cfg["toy_teacher"] == "orbits" else "teacher tasks"
    axes[0].set_title(f"{len(toy['teachers'])} {what} ({cfg['toy_loss']} loss); grey: one each", fontsize=9)
    axes[1].set_title("dot size: tasks in the orbit; bar: weighted geometric mean", fontsize=9)
    save_figure(fig, out, "symmetry_local_minima")
    return "symmetry_local_minima"
