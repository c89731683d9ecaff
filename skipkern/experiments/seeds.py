"""Experiment ``seeds``: many plain nets from different seeds; does being closer to the singular
manifolds go with training worse? (docs/paper.md, result 3)

Each net is a plain net of the shared deep configuration (the first seeds are the ``architectures``
runs, shared through the run cache). Singularity measures per net:
  - fraction_degenerate_rel: fraction of degenerate Hessian eigenvalues (|lambda| <= rel max|lambda|),
    mean over the spectrum checkpoints (the paper's measure; the primary one when spectra are computed);
  - fraction_degenerate: the same with the absolute threshold;
  - fraction_degenerate_init: the scale-free fraction at initialisation only;
  - dead_fraction_init / _early: fraction of dead ReLU units at init / at the first diagnosed epoch;
  - overlap_init: mean |cosine| between hidden activation columns at init;
  - singular_layers_init: numerically singular hidden representations at init.
Each is correlated (Spearman and Pearson, with n and p) with the final training accuracy. The verdict
uses the primary measure only (fixed in the config before seeing data): reproduced when the rank
correlation is negative with p < alpha, not reproduced when positive with p < alpha, else
inconclusive.
"""
from __future__ import annotations

import math
import time

import numpy as np

from skipkern.experiments.architectures import cond_profile, singular_layers
from skipkern.experiments.common import (INCONCLUSIVE, NOT_REPRODUCED, PAPER_CLAIMS, REPRODUCED, Context, Finding,
                                         correlation, fmt, stats)
from skipkern.experiments.deep import (final_values, rank_floor, run_conditions, run_rows, spectrum_values,
                                       write_outputs)
from skipkern.experiments.runs import deep_spec, series
from skipkern.plotting import new_figure, save_figure, scatter_fit

NAME = "seeds"
MEASURES = ("fraction_degenerate_rel", "fraction_degenerate", "fraction_degenerate_init", "dead_fraction_init", "dead_fraction_early",
            "overlap_init", "singular_layers_init")
LABELS = {"fraction_degenerate_rel": "degenerate Hessian eigenvalue fraction (scale-free, mean over checkpoints)",
          "fraction_degenerate": "degenerate Hessian eigenvalue fraction (absolute eps, mean over checkpoints)",
          "fraction_degenerate_init": "degenerate eigenvalue fraction at init (scale-free)",
          "dead_fraction_init": "fraction of dead units at init",
          "dead_fraction_early": "fraction of dead units early in training",
          "overlap_init": "mean |cos| of hidden activations at init",
          "singular_layers_init": "numerically singular layers at init"}


def _diag_summary(rec: dict, name: str, key: str, which: str) -> float:
    xs, ys = series(rec, f"diagnostics.{name}.summary.{key}")
    if ys.size == 0:
        return math.nan
    if which == "init":
        return float(ys[0]) if xs[0] == 0 else math.nan
    later = ys[xs > 0]
    return float(later[0]) if later.size else math.nan


def measures(rec: dict) -> dict:
    """The singularity measures of one run (NaN where not measured)."""
    xs, _ = series(rec, "spectrum.fraction_degenerate")
    return {"fraction_degenerate_rel": spectrum_values(rec, "fraction_degenerate_rel"),
            "fraction_degenerate": spectrum_values(rec, "fraction_degenerate"),
            "fraction_degenerate_init": spectrum_values(rec, "fraction_degenerate_rel", [0]) if 0 in xs else math.nan,
            "dead_fraction_init": _diag_summary(rec, "elimination", "mean_dead_fraction", "init"),
            "dead_fraction_early": _diag_summary(rec, "elimination", "mean_dead_fraction", "early"),
            "overlap_init": _diag_summary(rec, "overlap", "hidden_mean_abs_cos", "init"),
            "singular_layers_init": float(singular_layers(cond_profile(rec, "init")))}


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = list(range(int(cfg["n_nets"])))  # --seeds does not apply: this experiment needs many nets
    records = run_conditions(ctx, NAME, {"plain": [deep_spec(cfg, "plain", s) for s in seeds]})
    acc = final_values(records)["plain"]
    meas = [measures(r) for r in records["plain"]]
    cols = {m: [d[m] for d in meas] for m in MEASURES}
    corr = {m: correlation(cols[m], acc) for m in MEASURES}
    primary = cfg.get("primary_measure", "fraction_degenerate_rel")
    if not np.isfinite(cols[primary]).any():  # no spectra in this configuration: say so and fall back
        primary = "dead_fraction_early"
    alpha = float(cfg.get("alpha", 0.05))
    c = corr[primary]
    if c["n"] < 3 or not math.isfinite(c["spearman_r"]):
        v = INCONCLUSIVE
    elif c["spearman_p"] < alpha:
        v = REPRODUCED if c["spearman_r"] < 0 else NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    others = "; ".join(f"{m}: r_s = {corr[m]['spearman_r']:.2f} (p = {corr[m]['spearman_p']:.2g}, n = {corr[m]['n']})"
                       for m in MEASURES if m != primary and corr[m]["n"] >= 3)
    ev = (f"{len(seeds)} plain nets, final training accuracy {fmt(acc, pct=True)}. Primary measure "
          f"({LABELS[primary]}) vs final training accuracy: Spearman r = {c['spearman_r']:.2f} (p = "
          f"{c['spearman_p']:.2g}), Pearson r = {c['pearson_r']:.2f} (p = {c['pearson_p']:.2g}), n = {c['n']}; "
          f"the paper's trend is a negative correlation (p < {alpha:g} needed). Other measures: {others or 'none'}."
          + (" " + rank_floor(ctx, cfg, records["plain"])[1] if primary.startswith("fraction_degenerate") else ""))
    finding = Finding(3, PAPER_CLAIMS[3], v, ev, [], {"primary": primary, "correlations": corr,
                                                      "final_train_acc": acc, "measures": cols}, "seeds_correlation")
    figs = [_figure(out, cols, acc, corr, primary)]

    def extra(cond: str, r: dict) -> dict:
        return measures(r)

    summary = {"final_train_acc": stats(acc), "primary_measure": primary, "correlations": corr,
               **{m: stats(cols[m]) for m in MEASURES}}
    return write_outputs(ctx, NAME, cfg, seeds, records, [finding], figs, summary, t0,
                         rows=run_rows(records, extra))


def _figure(out, cols: dict, acc: list, corr: dict, primary: str) -> str:
    shown = [primary] + [m for m in ("dead_fraction_init", "overlap_init", "fraction_degenerate_init")
                         if m != primary and np.isfinite(cols[m]).any()]
    shown = shown[:3]
    fig, axes = new_figure(len(shown), 1, width=4.6)
    for ax, m in zip(axes, shown):
        c = corr[m]
        scatter_fit(ax, cols[m], acc, xlabel=LABELS[m], ylabel="final training accuracy",
                    title=f"r_s = {c['spearman_r']:.2f} (p = {c['spearman_p']:.2g}, n = {c['n']})"
                    + (" [primary]" if m == primary else ""))
    save_figure(fig, out, "seeds_correlation")
    return "seeds_correlation"
