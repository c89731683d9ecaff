"""Experiment ``skips``: identity vs orthogonal vs degenerate skips vs plain (docs/paper.md, result 5).

Orthogonal skips x_{l+1} = relu(W x_l + b) + Q_l x_l (Q_l fixed random orthogonal) should train about
as well as identity skips; degenerate skips (a fraction p of Q_l's singular values zeroed) worse, the
more so the larger p; plain nets worst. The plain and identity (residual) runs are the same runs as in
``architectures`` (shared through the run cache); the new conditions skip the Hessian spectra.
"""
from __future__ import annotations

import time

import numpy as np

from skipkern.experiments.common import (PAPER_CLAIMS, Context, Finding, compare, correlation, fmt, verdict)
from skipkern.experiments.deep import (acc_summary, accuracy_figure, final_values, run_conditions, seeds_of,
                                       write_outputs)
from skipkern.experiments.runs import deep_spec
from skipkern.plotting import new_figure, save_figure

NAME = "skips"


def degenerate_name(p: float) -> str:
    return f"degenerate_{p:g}"


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    fractions = [float(p) for p in cfg["degenerate_fractions"]]
    no_spec = dict(cfg, spectrum_at=())
    specs = {"plain": [deep_spec(cfg, "plain", s) for s in seeds],
             "residual": [deep_spec(cfg, "residual", s) for s in seeds],
             "orthogonal": [deep_spec(no_spec, "orthogonal", s) for s in seeds]}
    for p in fractions:
        specs[degenerate_name(p)] = [deep_spec(no_spec, "degenerate", s, degenerate_fraction=p,
                                               label=degenerate_name(p)) for s in seeds]
    records = run_conditions(ctx, NAME, specs)
    acc = final_values(records)
    worst = degenerate_name(max(fractions))
    tol = float(cfg.get("equal_tol", 0.03))
    comps = [compare("orthogonal", acc["orthogonal"], "residual (identity)", acc["residual"], "~", tol=tol, pct=True),
             compare(worst, acc[worst], "orthogonal", acc["orthogonal"], "<", pct=True),
             compare("plain", acc["plain"], worst, acc[worst], "<", pct=True)]
    # "trains worse as p grows": rank correlation of p (0 = orthogonal) with accuracy, over all runs
    ps = [0.0] * len(acc["orthogonal"]) + [p for p in fractions for _ in acc[degenerate_name(p)]]
    accs = list(acc["orthogonal"]) + [a for p in fractions for a in acc[degenerate_name(p)]]
    trend = correlation(ps, accs)
    ev = ("Final training accuracy: " + "; ".join(f"{c} {fmt(v, pct=True)}" for c, v in acc.items())
          + f". Degenerate fraction p vs accuracy (orthogonal = p 0): Spearman r = {trend['spearman_r']:.2f} "
          f"(p = {trend['spearman_p']:.2g}, n = {trend['n']}). 'About equal' means within {tol * 100:.0f} "
          f"percentage points or the seed noise.")
    finding = Finding(5, PAPER_CLAIMS[5], verdict(comps), ev, comps, {"final_train_acc": acc, "p_trend": trend},
                      "skips_train_accuracy")
    figs = [accuracy_figure(out, "skips_train_accuracy", records, "skip type: training accuracy"),
            _fraction_figure(out, acc, fractions)]
    summary = acc_summary(records)
    summary["p_trend"] = trend
    return write_outputs(ctx, NAME, cfg, seeds, records, [finding], figs, summary, t0)


def _fraction_figure(out, acc: dict, fractions: list) -> str:
    fig, axes = new_figure(1, 1, width=5.2)
    ax = axes[0]
    ps = [0.0] + fractions
    vals = [np.asarray(acc["orthogonal"])] + [np.asarray(acc[degenerate_name(p)]) for p in fractions]
    ax.errorbar(ps, [v.mean() for v in vals], yerr=[v.std(ddof=1) if v.size > 1 else 0 for v in vals],
                marker="o", color="#9467bd", capsize=4, label="orthogonal (p = 0) / degenerate skips")
    for name, color in (("residual", "#1f77b4"), ("plain", "#d62728")):
        v = np.asarray(acc[name])
        ax.axhline(v.mean(), color=color, ls="--", label=f"{name} (mean)")
    ax.set_xlabel("fraction p of zeroed singular values of the skip matrix")
    ax.set_ylabel("final training accuracy")
    ax.set_title("degenerate skips: accuracy vs p (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out, "skips_degenerate_fraction")
    return "skips_degenerate_fraction"
