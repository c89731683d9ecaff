"""Experiment ``signal``: how every condition starts and ends, from the runs the other experiments
trained (no training of its own; run it last).

Per init family and condition: the hidden representation's root mean square per layer relative to
the input's (at initialisation and after training), the initial loss against ln(C), the logit scale
and the dead-unit fraction. Runs whose initial loss exceeds 2 ln(C) are listed as flagged: their
softmax starts saturated, so their accuracy after a fixed budget measures the initial scale as much
as the architecture. Reads ``<out>/<experiment>/results.json`` of the experiments present.
"""
from __future__ import annotations

import math
import time

import numpy as np

from skipkern.experiments.common import Context, read_json, write_csv, write_json
from skipkern.plotting import FAMILY_STYLE, color_for, legend_outside, new_figure, save_figure

NAME = "signal"
# the paper's conditions (the other experiments repeat them over many seeds or depths); every experiment's
# flagged runs are listed all the same
SOURCES = ("architectures", "skips", "malicious", "biasreg")


def gather(ctx: Context) -> tuple:
    """({family: {condition: signal entry}}, [flagged run rows]) over the experiments' results.json."""
    from skipkern.experiments.registry import ORDER
    sig: dict = {}
    flagged = []
    for name in ORDER:
        p = ctx.out / name / "results.json"
        if name == NAME or not p.is_file():
            continue
        res = read_json(p)
        flagged += [dict(r, experiment=name) for r in res.get("flagged_runs", [])]
        if name not in SOURCES:
            continue
        for fam, conds in (res.get("signal") or {}).items():
            for c, entry in conds.items():
                fam_d = sig.setdefault(fam, {})
                same = [k for k, e in fam_d.items() if k.split(" (depth")[0] == c]
                if any(fam_d[k]["depth"] == entry["depth"] for k in same):
                    continue
                key = c if not same else f"{c} (depth {entry['depth']})"
                fam_d[key] = entry
    return sig, flagged


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    sig, flagged = gather(ctx)
    figs = [_figure(out, sig)] if sig else []
    rows = []
    for fam, conds in sig.items():
        for c, e in conds.items():
            il = np.asarray(e["init_loss"], dtype=float)
            rows.append({"family": fam, "condition": c, "depth": e["depth"], "runs": len(il),
                         "initial_loss_mean": float(np.nanmean(il)), "ln_c": e["ln_c"],
                         "initial_logit_std_mean": float(np.nanmean(e["init_logit_std"])),
                         "final_logit_std_mean": float(np.nanmean(e["final_logit_std"])) if e["final_logit_std"] else math.nan,
                         "last_layer_ratio_init": float(np.exp(np.nanmean(np.log([r[-1] for r in e["init_ratio"]])))),
                         "dead_init_mean": float(np.nanmean(e["init_dead"])), "flagged_runs": len(e["flagged_seeds"])})
    write_csv(out / "signal.csv", rows)
    n_flag = len(flagged)
    fams_flag = sorted({(r["family"], r["condition"]) for r in flagged})
    text = ("Signal propagation of every condition (mean over seeds; hidden rms relative to the input's rms, "
            "geometric mean over seeds). " + (
                f"{n_flag} run(s) start with a loss above 2 ln(C) (flagged in results.json and listed below): "
                + ", ".join(f"{c} ({f} init)" for f, c in fams_flag) + ". Their accuracy after a fixed budget reflects "
                "the saturated start as well as the architecture." if n_flag else
                "No run starts with a loss above 2 ln(C)."))
    section = {"title": "Signal propagation: how each net starts", "text": text, "figures": figs, "table": rows}
    result = {"experiment": NAME, "config": cfg, "findings": [], "sections": [section], "figures": figs,
              "summary": {"conditions": rows}, "flagged_runs": flagged, "runs": [], "seeds": [],
              "context": ctx.describe(), "elapsed_s": time.perf_counter() - t0}
    write_json(out / "results.json", result)
    return result


def _figure(out, sig: dict) -> str:
    fams = list(sig)
    fig, axes = new_figure(4, len(fams), width=4.3, height=3.4)
    for i, fam in enumerate(fams):
        conds = sig[fam]
        ax_i, ax_f, ax_l, ax_s = axes[4 * i: 4 * i + 4]
        for c, e in conds.items():
            col = color_for(c.split(" (depth")[0])
            ls = ":" if "(depth" in c else FAMILY_STYLE.get(fam, "-")
            for ax, key in ((ax_i, "init_ratio"), (ax_f, "final_ratio")):
                if not e[key]:
                    continue
                r = np.asarray(e[key], dtype=float)
                with np.errstate(all="ignore"):
                    gm = np.exp(np.nanmean(np.log(np.maximum(r, 1e-30)), axis=0))
                ax.plot(np.arange(1, gm.size + 1), gm, color=col, ls=ls, marker="o", ms=2.5,
                        label=f"{c} (n={r.shape[0]})")
        names = list(conds)
        for k, c in enumerate(names):
            col = color_for(c.split(" (depth")[0])
            for ax, key in ((ax_l, "init_loss"), (ax_s, "init_logit_std")):
                v = np.asarray(conds[c][key], dtype=float)
                ax.scatter(np.full(v.size, k) + np.linspace(-0.15, 0.15, v.size), v, color=col, s=14)
                ax.scatter([k], [np.nanmean(v)], color=col, marker="_", s=300)
        lnc = next(iter(conds.values()))["ln_c"]
        for y, ls, lab in ((lnc, "--", "ln C"), (2 * lnc, ":", "2 ln C (flag)")):
            ax_l.axhline(y, color="k", ls=ls, lw=0.8)
            ax_l.text(1.01, y, lab, transform=ax_l.get_yaxis_transform(), va="center", fontsize=7)
        for ax in (ax_i, ax_f):
            ax.set_yscale("log")
            ax.set_xlabel("hidden layer")
            ax.set_ylabel("rms(h_l) / rms(x)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        ax_i.set_title(f"{fam} init: hidden scale at initialisation", fontsize=10)
        ax_f.set_title(f"{fam} init: hidden scale after training", fontsize=10)
        for ax, lab, t in ((ax_l, "initial training loss", "initial loss (dots: seeds, bar: mean)"),
                           (ax_s, "logit standard deviation", "logit scale at initialisation")):
            ax.set_yscale("log")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
            ax.set_ylabel(lab)
            ax.set_title(f"{fam} init: {t}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, "signal_propagation")
    return "signal_propagation"
