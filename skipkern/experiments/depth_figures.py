"""Figures of the ``depth`` experiment: log10 condition number against layer index (one panel per depth),
the first numerically singular layer per net, and the convolutional PlainNet vs ResNet."""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from skipkern.plotting import color_for, new_figure, save_figure

__all__ = ["condition_figure", "first_singular_figure", "conv_figure"]

ARCHS = ("plain", "residual")


def _cap_line(ax, cap: float) -> None:
    ax.axhline(cap, color="k", lw=0.8, ls=":")


def condition_figure(out, fam: str, depths: list, rows: list, cfg: dict) -> str:
    """One column per depth; top row at initialisation, bottom row after training; one line per net."""
    cap = float(cfg["cond_cap"])
    fig, axes = new_figure(len(depths), 2, width=3.4, height=3.0)
    for j, d in enumerate(depths):
        for i, (when, key) in enumerate((("at initialisation", "_init"), (f"after {cfg['steps']} steps", "_trained"))):
            ax = axes[i * len(depths) + j]
            for a in ARCHS:
                col = color_for(a)
                rs = [r for r in rows if r["depth"] == d and r["arch"] == a and r[key] is not None]
                for k, r in enumerate(rs):
                    v = np.asarray(r[key], dtype=float)
                    layers = np.arange(1, v.size + 1)
                    ax.plot(layers, v, color=col, lw=1.0, alpha=0.8, label=f"{a} ({len(rs)} nets)" if k == 0 else None)
                    sing = v >= cap
                    if sing.any():
                        ax.scatter(layers[sing], v[sing], color=col, marker="^", s=8, zorder=3)
            _cap_line(ax, cap)
            ax.set_ylim(0, cap + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            ax.set_xlabel("hidden layer")
            ax.set_ylabel("log10 condition number")
            ax.set_title(f"depth {d}, {when}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="center right")
    fig.suptitle(f"{fam} init: log10 condition number of each hidden representation [{cfg['diag_batch']} x "
                 f"{cfg['width']}]; triangles at {cap:g} (dotted): numerically singular", fontsize=9)
    stem = f"depth_condition_{fam}"
    save_figure(fig, out, stem)
    return stem


def first_singular_figure(out, rows: list, depths: list, cfg: dict) -> str:
    """First numerically singular layer against depth, per net; nets with none drawn above the diagonal."""
    fams = sorted({r["family"] for r in rows}, key=lambda f: (f != "glorot", f))
    fig, axes = new_figure(len(fams), 2, width=3.8, height=3.0)
    for j, fam in enumerate(fams):
        for i, (key, when) in enumerate((("first_singular_init", "at initialisation"),
                                         ("first_singular_trained", "after training"))):
            ax = axes[i * len(fams) + j]
            for k, a in enumerate(ARCHS):
                rs = [r for r in rows if r["family"] == fam and r["arch"] == a and r[key] >= 0]
                dx = 0.96 if k == 0 else 1.04
                found = [(r["depth"] * dx, r[key]) for r in rs if r[key] > 0]
                none = [(r["depth"] * dx, r["depth"] * 1.15) for r in rs if r[key] == 0]
                if found:
                    ax.scatter(*zip(*found), color=color_for(a), s=18, label=f"{a}: first singular layer")
                if none:
                    ax.scatter(*zip(*none), color=color_for(a), s=18, marker="o", facecolors="none",
                               label=f"{a}: none singular")
            ax.plot(depths, depths, color="k", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(depths)
            ax.set_xticklabels([str(d) for d in depths])
            ax.set_yticks(sorted({1, 2, 5, *depths}))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("depth (hidden layers)")
            ax.set_ylabel("first numerically singular layer")
            ax.set_title(f"{fam} init, {when}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("First numerically singular hidden layer per net (open circles above the dotted diagonal: none)",
                 fontsize=9)
    save_figure(fig, out, "depth_first_singular")
    return "depth_first_singular"


def conv_figure(out, conv: dict, cfg: dict) -> str:
    """log10 condition number of each block output, PlainNet vs ResNet, one panel per depth."""
    cap = float(cfg["cond_cap"])
    blocks = sorted({r["blocks"] for r in conv["rows"]})
    fig, axes = new_figure(len(blocks), 1, width=3.6, height=3.1)
    for j, b in enumerate(blocks):
        ax = axes[j]
        for a in ARCHS:
            for k, r in enumerate(x for x in conv["rows"] if x["blocks"] == b and x["arch"] == a):
                for when, ls in (("init", "--"), ("trained", "-")):
                    v = np.asarray([cap if not np.isfinite(t) else min(t, cap) for t in r[when]["log10_condition"]])
                    ax.plot(np.arange(1, v.size + 1), v, color=color_for(a), ls=ls, marker="o", ms=3,
                            mfc="none" if when == "init" else color_for(a),
                            label=f"{a}, {when} (acc {100 * r['train_acc']:.0f}%)" if k == 0 and when == "trained"
                            else (f"{a}, init" if k == 0 else None))
        _cap_line(ax, cap)
        ax.set_ylim(0, cap + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("residual / plain block")
        ax.set_ylabel("log10 condition number")
        ax.set_title(f"{b} blocks", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Conv PlainNet vs ResNet on {conv['data']}: block outputs as [{conv['eval_rows']:,} x "
                 f"{conv['channels']}] (rows: samples x positions)", fontsize=9)
    save_figure(fig, out, "depth_conv")
    return "depth_conv"
