"""Experiment ``malicious``: residual vs maliciously initialised residual vs plain (docs/paper.md, result 6),
in each init family.

Malicious initialisation W_l <- W_l - I on the square hidden layers cancels the identity skip at the
start (relu(W x - x) + x), so the net starts close to a plain net with a different init. The paper
finds it trains only slightly worse than the ordinary residual net: the skip connections help by
what they do during training, not only through a good starting point. Plain and residual runs are
shared with ``architectures``; the malicious runs skip the Hessian spectra.
"""
from __future__ import annotations

import time

from skipkern.experiments.common import Context
from skipkern.experiments.deep import (acc_evidence, acc_summary, accuracy_figure, families_of, final_values, finding,
                                       gates_of, run_families, seeds_of, write_outputs)
from skipkern.experiments.runs import deep_spec
from skipkern.experiments.verdicts import welch_interval

NAME = "malicious"


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    no_spec = dict(cfg, spectra=())
    specs = {fam: {"residual": [deep_spec(cfg, "residual", s, fam) for s in seeds],
                   "malicious": [deep_spec(no_spec, "residual", s, fam, malicious=True, label="malicious")
                                 for s in seeds],
                   "plain": [deep_spec(cfg, "plain", s, fam) for s in seeds]} for fam in families_of(cfg)}
    by_fam = run_families(ctx, NAME, specs)
    findings, summary = [], {}
    for fam, records in by_fam.items():
        acc = final_values(records)
        ev = acc_evidence(acc, cfg["steps"])
        d, lo, _, _ = welch_interval(acc["residual"], acc["plain"])
        cav = []
        if not lo > 0:
            cav.append(f"Here residual does not train clearly better than plain (difference {d * 100:+.1f} points, "
                       f"95% CI lower end {lo * 100:+.1f}), so 'malicious is close to residual' says little about "
                       f"the paper's point that skips help during training and not only through the start.")
        findings.append(finding(6, fam, acc, gates_of(records), ev, {"final_train_acc": acc},
                                "malicious_train_accuracy", caveats=cav))
        summary[fam] = acc_summary(records)
    figs = [accuracy_figure(out, "malicious_train_accuracy", by_fam, "malicious init")]
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, findings, figs, summary, t0)
