"""Experiment ``skips``: identity vs orthogonal vs degenerate skips vs plain (docs/paper.md, result 5),
in each init family.

Orthogonal skips x_{l+1} = relu(W x_l + b) + Q_l x_l (Q_l fixed random orthogonal) should train about
as well as identity skips; degenerate skips (a fraction p of Q_l's singular values zeroed) worse, the
more so the larger p; plain nets worst. The plain and identity (residual) runs are the same runs as in
``architectures`` (shared through the run cache); the new conditions skip the Hessian spectra.
"""
from __future__ import annotations

import time

import numpy as np

from skipkern.experiments.common import Context
from skipkern.experiments.deep import (acc_evidence, acc_summary, accuracy_figure, families_of, final_values, finding,
                                       gates_of, run_families, seeds_of, write_outputs)
from skipkern.experiments.runs import deep_spec
from skipkern.experiments.verdicts import correlation_interval
from skipkern.plotting import color_for, legend_outside, mean_ci, new_figure, save_figure

NAME = "skips"


def degenerate_name(p: float) -> str:
    return f"degenerate_{p:g}"


def specs_for(ctx: Context, cfg: dict) -> dict:
    seeds = seeds_of(ctx, cfg)
    no_spec = dict(cfg, spectra=())
    out = {}
    for fam in families_of(cfg):
        s = {"plain": [deep_spec(cfg, "plain", k, fam) for k in seeds],
             "residual": [deep_spec(cfg, "residual", k, fam) for k in seeds],
             "orthogonal": [deep_spec(no_spec, "orthogonal", k, fam) for k in seeds]}
        for p in cfg["degenerate_fractions"]:
            s[degenerate_name(p)] = [deep_spec(no_spec, "degenerate", k, fam, degenerate_fraction=float(p),
                                               label=degenerate_name(p)) for k in seeds]
        out[fam] = s
    return out


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    fractions = [float(p) for p in cfg["degenerate_fractions"]]
    by_fam = run_families(ctx, NAME, specs_for(ctx, cfg))
    worst = degenerate_name(max(fractions))
    findings, summary = [], {}
    for fam, records in by_fam.items():
        acc = final_values(records)
        ps = [0.0] * len(acc["orthogonal"]) + [p for p in fractions for _ in acc[degenerate_name(p)]]
        accs = list(acc["orthogonal"]) + [a for p in fractions for a in acc[degenerate_name(p)]]
        trend = correlation_interval(ps, accs)
        ev = acc_evidence(acc, cfg["steps"]) + (
            f" Degenerate fraction p vs accuracy (orthogonal = p 0): r_s = {trend['spearman_r']:.2f} "
            f"[{trend['spearman_low']:.2f}, {trend['spearman_high']:.2f}], n = {trend['n']}.")
        findings.append(finding(5, fam, {**acc, "p": ps, "final_train_acc": accs}, gates_of(records), ev,
                                {"final_train_acc": acc, "p_trend": trend}, "skips_train_accuracy",
                                rename={"degenerate_max": worst}))
        summary[fam] = acc_summary(records)
        summary[fam]["p_trend"] = trend
    figs = [accuracy_figure(out, "skips_train_accuracy", by_fam, "skip type"),
            _fraction_figure(out, by_fam, fractions)]
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, findings, figs, summary, t0)


def _fraction_figure(out, by_fam: dict, fractions: list) -> str:
    fams = list(by_fam)
    fig, axes = new_figure(len(fams), 1, width=5.4, height=3.8)
    for ax, fam in zip(axes, fams):
        acc = final_values(by_fam[fam])
        names = ["orthogonal"] + [degenerate_name(p) for p in fractions]
        for p, name in zip([0.0] + fractions, names):
            m, half, n = mean_ci(np.asarray(acc[name]))
            ax.errorbar([p], [m], yerr=[half], marker="o", color=color_for(name), capsize=4,
                        label=f"{name} (mean ± 95% CI, n={int(n)})")
        for name in ("residual", "plain"):
            m, half, n = mean_ci(np.asarray(acc[name]))
            ax.axhspan(m - half, m + half, color=color_for(name), alpha=0.15, lw=0)
            ax.axhline(m, color=color_for(name), ls="--", label=f"{name} (mean, band 95% CI, n={int(n)})")
        ax.set_xlabel("fraction p of zeroed singular values of the skip matrices")
        ax.set_ylabel("final training accuracy")
        ax.set_title(f"{fam} init: accuracy vs p", fontsize=10)
        ax.grid(alpha=0.3)
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, "skips_degenerate_fraction")
    return "skips_degenerate_fraction"


