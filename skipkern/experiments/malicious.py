"""Experiment ``malicious``: residual vs maliciously initialised residual vs plain (docs/paper.md, result 6).

Malicious initialisation W_l <- W_l - I on the square hidden layers cancels the identity skip at the
start (relu(W x - x) + x), so the net starts close to a plain net with a different init. The paper
finds it trains only slightly worse than the ordinary residual net: the skip connections help by
what they do during training, not only through a good starting point. Plain and residual runs are
shared with ``architectures``; the malicious runs skip the Hessian spectra.
"""
from __future__ import annotations

import time

from skipkern.experiments.common import (PAPER_CLAIMS, Context, Finding, compare, fmt, verdict)
from skipkern.experiments.deep import (acc_summary, accuracy_figure, final_values, run_conditions, seeds_of,
                                       write_outputs)
from skipkern.experiments.runs import deep_spec

NAME = "malicious"


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    no_spec = dict(cfg, spectrum_at=())
    specs = {"residual": [deep_spec(cfg, "residual", s) for s in seeds],
             "malicious": [deep_spec(no_spec, "residual", s, malicious=True, label="malicious") for s in seeds],
             "plain": [deep_spec(cfg, "plain", s) for s in seeds]}
    records = run_conditions(ctx, NAME, specs)
    acc = final_values(records)
    slack = float(cfg.get("slight_tol", 0.05))
    comps = [compare("malicious", acc["malicious"], "residual", acc["residual"], ">=", tol=slack, pct=True)]
    comps[0].text = (f"malicious at most {slack * 100:.0f} percentage points (or the seed noise) below residual: "
                     + comps[0].text)
    ev = ("Final training accuracy: " + "; ".join(f"{c} {fmt(v, pct=True)}" for c, v in acc.items())
          + f". 'Only slightly worse' is read as: not more than {slack * 100:.0f} percentage points (or the seed "
          f"noise) below the residual net.")
    if compare("residual", acc["residual"], "plain", acc["plain"], ">").outcome != "holds":
        ev += (" Caution: here the residual net does not train better than the plain net (result 1), so this "
               "comparison says little about the paper's point that the skips help during training and not only "
               "through the starting point.")
    finding = Finding(6, PAPER_CLAIMS[6], verdict(comps), ev, comps, {"final_train_acc": acc},
                      "malicious_train_accuracy")
    figs = [accuracy_figure(out, "malicious_train_accuracy", records, "malicious init: training accuracy")]
    return write_outputs(ctx, NAME, cfg, seeds, records, [finding], figs, acc_summary(records), t0)
