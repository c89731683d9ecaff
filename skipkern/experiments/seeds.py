"""Experiment ``seeds``: many plain nets from different seeds; does being closer to the singular
manifolds go with training worse? (docs/paper.md, result 3), in each init family.

Each net is a plain net of the shared deep configuration (the first seeds are the ``architectures``
runs, shared through the run cache; the others take only the end-of-training spectrum). Singularity
measures per net, each registered with a predicted negative correlation with the final training
accuracy (``predictions``, 3a-3d):
  - fraction_degenerate: Hessian eigenvalues with |lambda| <= tau x rms(lambda) after training;
  - dead_fraction (elimination): units never active on the diagnosis batch, mean over layers and over
    the diagnosed checkpoints after initialisation;
  - overlap: mean |cosine| between the activation columns of the units of a layer, same averaging;
  - linear_dependence: 1 - participation ratio / width of the activation covariance, same averaging.
Each correlation comes with its 95% interval, Pearson's r beside it, and the range of r_s when any one
net is left out.
"""
from __future__ import annotations

import math
import time

import numpy as np


from skipkern.experiments.common import Context, fmt, stats
from skipkern.experiments.deep import (families_of, final_values, finding, gates_of, run_families, seeds_of,
                                       write_outputs)
from skipkern.experiments.runs import deep_spec, series
from skipkern.experiments.spectra import TAU, fraction_key, run_spectra
from skipkern.experiments.verdicts import INVALID, correlation_interval
from skipkern.plotting import color_for, new_figure, save_figure, scatter_fit

NAME = "seeds"
MEASURES = ("fraction_degenerate", "dead_fraction", "overlap", "linear_dependence")
LABELS = {"fraction_degenerate": f"degenerate Hessian fraction (|λ| <= {TAU:g} rms, end)",
          "dead_fraction": "dead-unit fraction (mean during training)",
          "overlap": "mean |cos| between units (during training)",
          "linear_dependence": "1 - participation ratio / width (during training)"}


def _during(rec: dict, name: str, key: str) -> float:
    """Mean of a diagnostics summary over the diagnosed checkpoints after initialisation."""
    xs, ys = series(rec, f"diagnostics.{name}.summary.{key}", x="epoch")
    later = ys[xs > 0]
    return float(later.mean()) if later.size else math.nan


def measures(rec: dict) -> dict:
    """The singularity measures of one run (NaN where not measured)."""
    end = run_spectra(rec).get("end", {})
    return {"fraction_degenerate": end.get(fraction_key("degenerate", TAU), {}).get("value", math.nan),
            "dead_fraction": _during(rec, "elimination", "mean_dead_fraction"),
            "overlap": _during(rec, "overlap", "hidden_mean_abs_cos"),
            "linear_dependence": 1.0 - _during(rec, "linear_dependence", "mean_normalized_pr")}


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    shared = set(seeds_of(ctx, cfg))  # these nets are the architectures runs (identical specs)
    seeds = list(range(int(cfg["n_nets"])))  # --seeds does not apply: this experiment needs many nets
    end_only = dict(cfg, spectra=("end",))
    specs = {fam: {"plain": [deep_spec(cfg if s in shared else end_only, "plain", s, fam) for s in seeds]}
             for fam in families_of(cfg)}
    by_fam = run_families(ctx, NAME, specs)
    findings, summary, figs = [], {}, []
    for fam, records in by_fam.items():
        acc = final_values(records)["plain"]
        cols = {m: [measures(r)[m] for r in records["plain"]] for m in MEASURES}
        corr = {m: correlation_interval(cols[m], acc) for m in MEASURES}
        ev = (f"{len(seeds)} plain nets, final training accuracy {fmt(acc, pct=True)}. Spearman r_s with the final "
              f"training accuracy [95% CI]: " + "; ".join(
                  f"{m} {corr[m]['spearman_r']:.2f} [{corr[m]['spearman_low']:.2f}, {corr[m]['spearman_high']:.2f}]"
                  for m in MEASURES) + ". The paper's trend is a negative correlation for each.")
        gate = gates_of(records)["plain"]
        cav = [] if gate.ok else [f"The plain nets did not learn ({gate.reason}): their spread in accuracy is noise "
                                  f"around chance, so these correlations say little."]
        bounds = [run_spectra(r).get("end", {}).get(fraction_key("degenerate", TAU), {}) for r in records["plain"]]
        lo = [b["lower"] for b in bounds if "lower" in b]
        hi = [b["upper"] for b in bounds if "upper" in b]
        if lo and float(np.mean(hi)) - float(np.mean(lo)) > 0.1:
            cav.append(f"3a correlates the Gauss point estimates of the degenerate fraction, but their quadrature bounds "
                       f"span {np.mean(lo):.0%} to {np.mean(hi):.0%} on average: the quadrature does not resolve this "
                       f"threshold, so the differences between nets that 3a ranks are mostly below its resolution.")
        f = finding(3, fam, {**cols, "final_train_acc": acc}, {}, ev, {"correlations": corr, "measures": cols,
                                                                       "final_train_acc": acc},
                    f"seeds_correlation_{fam}", caveats=cav)
        if not gate.ok:  # a correlation over nets that learned nothing cannot support the claim either way
            for o in f.outcomes:
                o.verdict, o.reason, o.failed = INVALID, gate.reason, ["plain"]
            f.verdict, f.reason = INVALID, "did not learn: plain"
        findings.append(f)
        figs.append(_figure(out, fam, cols, acc, corr))
        summary[fam] = {"final_train_acc": stats(acc), "correlations": corr, **{m: stats(cols[m]) for m in MEASURES}}
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, findings, figs, summary, t0)


def _figure(out, fam: str, cols: dict, acc: list, corr: dict) -> str:
    fig, axes = new_figure(len(MEASURES), 1, width=4.2, height=3.6)
    for ax, m in zip(axes, MEASURES):
        c = corr[m]
        scatter_fit(ax, cols[m], acc, xlabel=LABELS[m], ylabel="final training accuracy", color=color_for("plain"),
                    title=f"r_s = {c['spearman_r']:.2f} [{c['spearman_low']:.2f}, {c['spearman_high']:.2f}], "
                          f"n = {c['n']}")
    fig.suptitle(f"{fam} init: plain nets, singularity measures vs final training accuracy (dashed: least squares)",
                 fontsize=10)
    stem = f"seeds_correlation_{fam}"
    save_figure(fig, out, stem)
    return stem


