"""Experiment ``skip_benefit``: where do skip connections help? The training-accuracy gap
(residual - plain and orthogonal - plain) over the depth and the initial scale (init family and
``gains``, the factor on every hidden weight's standard deviation), with seed intervals.

If skips helped only by keeping the signal at a good scale, the gap would vanish in the
scale-controlled family at every depth; if they help by removing singularities, it should remain and
grow with depth. This is an analysis beyond the paper's seven results: it reports the gaps and their
95% intervals (Welch, over seeds) and makes no verdict. At the base depth and gain 1 the runs are the
``architectures`` / ``skips`` runs (shared through the run cache).
"""
from __future__ import annotations

import time

import numpy as np

from skipkern.experiments.common import Context, write_csv
from skipkern.experiments.deep import families_of, final_values, run_families, seeds_of, write_outputs
from skipkern.experiments.runs import deep_spec
from skipkern.experiments.verdicts import welch_interval
from skipkern.plotting import FAMILY_STYLE, color_for, legend_outside, mean_ci, new_figure, save_figure

NAME = "skip_benefit"
ARCHS = ("plain", "residual", "orthogonal")
GAPS = (("residual", "plain"), ("orthogonal", "plain"))


def cell(arch: str, depth: int, gain: float) -> str:
    return f"{arch}@depth{depth}@gain{gain:g}"


def specs_for(ctx: Context, cfg: dict) -> dict:
    seeds = seeds_of(ctx, cfg)
    out: dict = {}
    for fam in families_of(cfg):
        for g in cfg["gains"]:
            for d in cfg["depths"]:
                # the base depth at gain 1 reuses the architectures / skips runs, unless this recipe has its own budget
                shared = int(d) == int(cfg["depth"]) and float(g) == 1.0 and cfg.get("share_runs", True)
                for a in ARCHS:
                    if shared:  # identical to the architectures / skips specs (label included: same folder)
                        c = cfg if a != "orthogonal" else dict(cfg, spectra=())
                        kw = {}
                    else:
                        c = dict(cfg, depth=int(d), spectra=(), diag_points=0)
                        kw = {"label": f"{a}_d{d}" + (f"_g{g:g}" if float(g) != 1.0 else ""), "init_gain": float(g)}
                    out.setdefault(fam, {})[cell(a, int(d), float(g))] = [deep_spec(c, a, s, fam, **kw) for s in seeds]
    return out


def gap_table(by_fam: dict, cfg: dict) -> list:
    """One row per (family, gain, depth, gap): mean difference, 95% interval, n, and the accuracies."""
    rows = []
    for fam, records in by_fam.items():
        acc = final_values(records)
        for g in cfg["gains"]:
            for d in cfg["depths"]:
                for a, b in GAPS:
                    va, vb = acc[cell(a, int(d), float(g))], acc[cell(b, int(d), float(g))]
                    diff, lo, hi, _ = welch_interval(va, vb)
                    rows.append({"family": fam, "gain": float(g), "depth": int(d), "gap": f"{a} - {b}",
                                 "mean_gap": diff, "low": lo, "high": hi, "n_a": len(va), "n_b": len(vb),
                                 f"acc_{a}": float(np.nanmean(va)), f"acc_{b}": float(np.nanmean(vb))})
    return rows


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    by_fam = run_families(ctx, NAME, specs_for(ctx, cfg))
    rows = gap_table(by_fam, cfg)
    fig = _figure(out, rows, by_fam, cfg, len(seeds))
    lines = []
    for r in rows:
        if r["gain"] == 1.0:
            lines.append(f"{r['family']}, depth {r['depth']}: {r['gap']} = {r['mean_gap'] * 100:+.1f} points "
                         f"[{r['low'] * 100:+.1f}, {r['high'] * 100:+.1f}]")
    text = (f"Final training accuracy gap after {cfg['steps']} steps (width {cfg['width']}, n = {len(seeds)} seeds per "
            f"cell, 95% Welch interval), gain 1: " + "; ".join(lines) + ". Full table: skip_benefit/gaps.csv.")
    write_csv(out / "gaps.csv", rows)
    section = {"title": "Where do skips help? Accuracy gap over depth and initial scale", "text": text,
               "figures": [fig]}
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, [], [fig], {"gaps": rows}, t0, sections=[section])


def _figure(out, rows: list, by_fam: dict, cfg: dict, n: int) -> str:
    fams = list(by_fam)
    gains = [float(g) for g in cfg["gains"]]
    markers = ["o", "s", "^", "D", "v"]
    ncol = max(2, len(fams))
    fig, axes = new_figure(ncol, 2, width=5.2, height=3.8)
    for ax, (a, b) in zip(axes[:2], GAPS):
        for fam in fams:
            for gi, g in enumerate(gains):
                sel = [r for r in rows if r["family"] == fam and r["gain"] == g and r["gap"] == f"{a} - {b}"]
                d = np.array([r["depth"] for r in sel], dtype=float)
                m = np.array([r["mean_gap"] for r in sel])
                err = np.array([[r["mean_gap"] - r["low"] for r in sel], [r["high"] - r["mean_gap"] for r in sel]])
                err = np.where(np.isfinite(err), err, 0.0)
                ax.errorbar(d + (gi - (len(gains) - 1) / 2) * 0.4, m, yerr=err, color=color_for(a),
                            ls=FAMILY_STYLE[fam], marker=markers[gi % len(markers)], capsize=3,
                            label=f"{fam} init, gain {g:g}")
        ax.axhline(0, color="k", lw=0.8)
        _dress(ax, cfg, "training-accuracy gap", f"{a} - {b} (mean, error bar: 95% CI, n={n} seeds each)")
    for j, fam in enumerate(fams):
        ax = axes[ncol + j]
        acc = final_values(by_fam[fam])
        for gi, g in enumerate(gains):
            for a in ARCHS:
                m, half, _ = mean_ci(np.array([acc[cell(a, int(d), g)] for d in cfg["depths"]], dtype=float), axis=1)
                ax.errorbar(cfg["depths"], m, yerr=half, color=color_for(a), ls=FAMILY_STYLE[fam],
                            marker=markers[gi % len(markers)], capsize=3, label=f"{a}, gain {g:g}")
        _dress(ax, cfg, "final training accuracy", f"{fam} init: accuracy per architecture (mean ± 95% CI, n={n})")
    for ax in axes[ncol + len(fams):]:
        ax.set_visible(False)
    save_figure(fig, out, "skip_benefit")
    return "skip_benefit"


def _dress(ax, cfg: dict, ylabel: str, title: str) -> None:
    ax.set_xticks([int(d) for d in cfg["depths"]])
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
