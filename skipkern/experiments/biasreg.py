"""Experiment ``biasreg``: plain, BiasL2Reg, BiasReg, BiasReg + one batch-norm layer, residual
(docs/paper.md, result 4; depth 30 in the paper), in each init family.

BiasReg adds lam * sum (b - beta)^2 over hidden biases with fixed targets beta ~ N(mu, sigma^2)
(``skipkern.regularizers``). The paper tuned (mu, sigma, lam) by random search; here a small random
search per init family (``search_candidates`` draws from ``random_search_space()``, seed
``search_seed``, each trained ``search_steps`` steps on a held-out seed that none of the compared runs
uses, so the selection does not favour BiasReg on the evaluation seeds) picks the candidate with the
best final training accuracy. BiasL2Reg, the control, uses the chosen lam with mu = sigma = 0. The
batch-norm layer goes after hidden layer ``bn_layer`` (0-based; the paper's position is not public,
our default is the middle layer).
"""
from __future__ import annotations

import math
import time

from skipkern.experiments.common import Context
from skipkern.experiments.deep import (acc_evidence, acc_summary, accuracy_figure, families_of, final_values, finding,
                                       gates_of, run_families, seeds_of, write_outputs)
from skipkern.experiments.runs import deep_spec, final_metric
from skipkern.plotting import color_for, legend_outside, new_figure, save_figure

NAME = "biasreg"
CONDITIONS = ("plain", "biasl2reg", "biasreg", "biasreg_bn", "residual")
SEARCH_SEED = 10_000  # the search trains on this seed, never one of the compared runs' seeds


def _reg(**p) -> tuple:
    return tuple(sorted(dict(kind="biasreg", **p).items()))


def search(ctx: Context, cfg: dict) -> dict:
    """Random search over (mu, sigma, lam) per family: {family: (best parameters, one row per candidate)}."""
    from skipkern.regularizers import sample_biasreg_params

    cands = sample_biasreg_params(int(cfg["search_candidates"]), seed=int(cfg.get("search_seed", 0)))
    base = dict(cfg, spectra=(), steps=int(cfg["search_steps"]), diag_points=0)
    specs = {fam: {f"candidate_{i}": [deep_spec(base, "plain", SEARCH_SEED, fam, label=f"biasreg_search_{i}",
                                                regularizer=_reg(**p))] for i, p in enumerate(cands)}
             for fam in families_of(cfg)}
    recs = run_families(ctx, f"{NAME} search", specs)
    out = {}
    for fam, by_cand in recs.items():
        rows = [{"candidate": name, **p, "seed": SEARCH_SEED, "steps": base["steps"],
                 "final_train_acc": final_metric(rs[0], "train_acc")} for (name, rs), p in zip(by_cand.items(), cands)]
        best = max(rows, key=lambda r: r["final_train_acc"] if math.isfinite(r["final_train_acc"]) else -1)
        for r in rows:
            r["chosen"] = r is best
        out[fam] = ({k: best[k] for k in ("mu", "sigma", "lam")}, rows)
    return out


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    chosen = search(ctx, cfg)
    c = dict(cfg, spectra=())
    bn = int(cfg.get("bn_layer", cfg["depth"] // 2))
    specs = {}
    for fam, (best, _) in chosen.items():
        reg, l2 = _reg(**best), _reg(mu=0.0, sigma=0.0, lam=best["lam"])
        specs[fam] = {"plain": [deep_spec(c, "plain", s, fam) for s in seeds],
                      "biasl2reg": [deep_spec(c, "plain", s, fam, regularizer=l2, label="biasl2reg") for s in seeds],
                      "biasreg": [deep_spec(c, "plain", s, fam, regularizer=reg, label="biasreg") for s in seeds],
                      "biasreg_bn": [deep_spec(c, "plain", s, fam, regularizer=reg, batchnorm_layers=(bn,),
                                               label="biasreg_bn") for s in seeds],
                      "residual": [deep_spec(c, "residual", s, fam) for s in seeds]}
    by_fam = run_families(ctx, NAME, specs)
    findings, summary = [], {}
    for fam, records in by_fam.items():
        best, rows = chosen[fam]
        acc = final_values(records)
        ev = (f"Depth {cfg['depth']}, width {cfg['width']}. Random search over {len(rows)} (mu, sigma, lam) candidates "
              f"({cfg['search_steps']} steps, held-out seed {SEARCH_SEED}) chose mu = {best['mu']:.3g}, sigma = "
              f"{best['sigma']:.3g}, lam = {best['lam']:.2g}. " + acc_evidence(acc, cfg["steps"]))
        findings.append(finding(4, fam, acc, gates_of(records), ev, {"final_train_acc": acc, "chosen": best},
                                "biasreg_train_accuracy"))
        summary[fam] = acc_summary(records)
        summary[fam]["chosen"] = best
    figs = [accuracy_figure(out, "biasreg_train_accuracy", by_fam, f"depth {cfg['depth']}: BiasReg study"),
            _search_figure(out, {fam: rows for fam, (_, rows) in chosen.items()})]
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, findings, figs, summary, t0,
                         extra={"search": {fam: rows for fam, (_, rows) in chosen.items()},
                                "chosen": {fam: b for fam, (b, _) in chosen.items()}, "bn_layer": bn})


def _search_figure(out, rows_by_fam: dict) -> str:
    fams = list(rows_by_fam)
    fig, axes = new_figure(3, len(fams), width=3.8, height=3.2)
    labels = (("mu", "mu (mean of bias targets)"), ("sigma", "sigma (spread of targets)"),
              ("lam", "lam (penalty weight)"))
    for i, fam in enumerate(fams):
        rows = rows_by_fam[fam]
        for j, (k, lab) in enumerate(labels):
            ax = axes[i * 3 + j]
            ax.scatter([r[k] for r in rows], [r["final_train_acc"] for r in rows], color=color_for("biasreg"),
                       label="candidate")
            ch = [r for r in rows if r["chosen"]]
            ax.scatter([r[k] for r in ch], [r["final_train_acc"] for r in ch], s=140, facecolors="none",
                       edgecolors="k", lw=1.5, label="chosen")
            if k == "lam":
                ax.set_xscale("log")
            ax.margins(x=0.08, y=0.15)  # the ring around the chosen point stays inside the axes
            ax.set_xlabel(lab)
            ax.set_ylabel("final training accuracy")
            ax.set_title(f"{fam} init: search over {k}", fontsize=10)
            ax.grid(alpha=0.3)
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, "biasreg_search")
    return "biasreg_search"
