"""Helpers of the deep-net experiments: run conditions x seeds x init families with one progress bar,
sanity gates, judge registered predictions, tabulate runs, draw the accuracy figure, write the files."""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from skipkern.experiments.common import Context, Finding, PAPER_CLAIMS, fmt, stats, write_csv, write_json
from skipkern.experiments.predictions import predictions_for
from skipkern.experiments.runs import RunSpec, cached_records, final_metric, initial_metric, series, train_run
from skipkern.experiments.verdicts import Gate, combine, gate_condition, judge
from skipkern.plotting import FAMILY_STYLE, band_plot, bar_plot, legend_outside, new_figure, save_figure

__all__ = ["run_conditions", "run_families", "families_of", "run_rows", "curves", "accuracy_figure", "seeds_of",
           "write_outputs", "final_values", "gates_of", "finding", "signal_of", "LOG10_COND_CAP"]

# Condition numbers above this (or inf) count as numerically singular in float32 (1/eps ~ 8e6).
LOG10_COND_CAP = 8.0


def seeds_of(ctx: Context, cfg: dict) -> list:
    return [int(s) for s in (ctx.seeds if ctx.seeds is not None else cfg["seeds"])]


def families_of(cfg: dict) -> list:
    """The init families a recipe runs ("glorot": the paper's scheme, "scaled": scale-controlled)."""
    fams = list(cfg.get("inits", ["glorot"]))
    bad = [f for f in fams if f not in FAMILY_STYLE]
    if bad or not fams:
        raise ValueError(f"inits must list init families from {tuple(FAMILY_STYLE)}, got {fams}")
    return fams


def run_conditions(ctx: Context, name: str, specs: Mapping[str, Sequence[RunSpec]]) -> dict:
    """Train every spec (conditions x seeds) with one tqdm bar counting optimiser steps (cached runs
    count at once); in ``ctx.jobs`` worker processes when jobs > 1, one after another under DDP when
    torch.distributed is initialised (every rank must call this with the same specs).
    Returns {condition: [record per seed]}."""
    flat = [(c, s) for c, ss in specs.items() for s in ss]
    total = sum(s.steps for _, s in flat)
    done = [0] * len(flat)
    with tqdm(total=total, desc=name, unit="step", disable=not ctx.progress, dynamic_ncols=True) as bar:

        def tick(i: int, step: int) -> None:
            step = min(int(step), flat[i][1].steps)
            if step > done[i]:
                bar.update(step - done[i])
                done[i] = step

        def finish(i: int, rec: dict) -> None:
            tick(i, flat[i][1].steps)
            bar.set_postfix_str(f"{flat[i][0]} seed {flat[i][1].seed} done")

        cached = cached_records([s for _, s in flat], ctx)  # one collective under torch.distributed
        first: dict = {}  # a spec listed twice is trained once (two writers must not share a folder)
        dup: dict = {}
        todo = []
        for i, r in enumerate(cached):
            if r is not None:
                finish(i, r)
                continue
            k = flat[i][1].key(ctx)
            if k in first:
                dup[i] = first[k]
            else:
                first[k] = i
                todo.append(i)
        if ctx.jobs > 1 and len(todo) > 1 and ctx.group is None:
            from skipkern.experiments.parallel import run_specs
            fresh = run_specs(ctx, [flat[i][1] for i in todo], lambda j, step: tick(todo[j], step),
                              lambda j, rec: finish(todo[j], rec))
            recs = list(cached)
            for i, r in zip(todo, fresh):
                recs[i] = r
        else:
            recs = list(cached)
            for i in todo:
                c, s = flat[i]
                bar.set_postfix_str(f"{c} seed {s.seed}")
                recs[i] = train_run(s, ctx, lambda rec, i=i: tick(i, rec.get("step", 0)))
                finish(i, recs[i])
        for i, j in dup.items():
            recs[i] = recs[j]
            finish(i, recs[i])
    out: dict = {c: [] for c in specs}
    for (c, _), r in zip(flat, recs):
        out[c].append(r)
    return out


def run_families(ctx: Context, name: str, specs: Mapping[str, Mapping[str, Sequence[RunSpec]]]) -> dict:
    """``run_conditions`` over {family: {condition: specs}} in one batch (so workers stay busy across
    families); returns {family: {condition: [record per seed]}}."""
    flat = {f"{fam}\t{c}": ss for fam, conds in specs.items() for c, ss in conds.items()}
    recs = run_conditions(ctx, name, flat)
    out: dict = {fam: {} for fam in specs}
    for key, rs in recs.items():
        fam, c = key.split("\t", 1)
        out[fam][c] = rs
    return out


def final_values(records: Mapping[str, list], key: str = "train_acc") -> dict:
    """{condition: [final value per seed]}."""
    return {c: [final_metric(r, key) for r in recs] for c, recs in records.items()}


def gates_of(records: Mapping[str, list], margin: float = 0.1) -> dict:
    """{condition: Gate} from the runs' initial and final training loss and final training accuracy."""
    out = {}
    for c, recs in records.items():
        if not recs:
            continue
        k = int(recs[0].get("num_classes", 10))
        out[c] = gate_condition(c, [initial_metric(r) for r in recs], [final_metric(r, "train_loss") for r in recs],
                                [final_metric(r) for r in recs], k, margin)
    return out


def finding(result: int, family: str, values: Mapping[str, Sequence[float]], gates: Mapping[str, Gate],
            evidence: str, numbers: dict, figure: str, bounds: Optional[dict] = None, caveats: Sequence[str] = (),
            rename: Optional[Mapping[str, str]] = None) -> Finding:
    """Judge the registered predictions of ``result`` on ``values`` ({condition: per-seed metric}; a
    prediction's metric picks ``values[metric]`` when the values are keyed by metric first).

    rename: maps a prediction's condition names to the recipe's (e.g. degenerate_max -> degenerate_0.9)."""
    outs = []
    rn = dict(rename or {})
    for p in predictions_for(result):
        vals = values.get(p.metric, values) if isinstance(values.get(p.metric), Mapping) else values
        a, b = rn.get(p.a, p.a), rn.get(p.b, p.b)
        v = {p.a: vals.get(a, []), p.b: vals.get(b, [])}
        g = {k: gates[c] for k, c in ((p.a, a), (p.b, b)) if c in gates}
        bd = None
        if bounds is not None and p.metric in bounds and a in bounds[p.metric] and b in bounds[p.metric]:
            bd = {p.a: bounds[p.metric][a], p.b: bounds[p.metric][b]}
        outs.append(judge(p, v, g, bounds=bd))
    v, reason = combine(outs)
    return Finding(result, PAPER_CLAIMS.get(result, str(result)), v, evidence, [], numbers, figure, family, reason,
                   outs, list(caveats))


def signal_of(records: Mapping[str, list]) -> dict:
    """Per condition: the signal propagation at init and after training (per seed), for the report."""
    out = {}
    for c, recs in records.items():
        sig = [r.get("signal", {}) for r in recs]
        if not all(s.get("init") for s in sig):
            continue
        ident = recs[0]["identity"]
        out[c] = {"depth": ident["depth"], "width": ident["width"], "init": ident["init"],
                  "init_ratio": [s["init"]["hidden_ratio"] for s in sig],
                  "final_ratio": [s["final"]["hidden_ratio"] for s in sig if s.get("final")],
                  "init_loss": [s["init"].get("loss", math.nan) for s in sig],
                  "init_logit_std": [s["init"]["logit_std"] for s in sig],
                  "final_logit_std": [s["final"]["logit_std"] for s in sig if s.get("final")],
                  "init_dead": [s["init"]["mean_dead_fraction"] for s in sig],
                  "final_dead": [s["final"]["mean_dead_fraction"] for s in sig if s.get("final")],
                  "ln_c": sig[0]["init"]["ln_c"],
                  "flagged_seeds": [r["identity"]["seed"] for r, s in zip(recs, sig) if s["init"].get("loss_flag")]}
    return out


def curves(records: Mapping[str, list], key: str, x: str = "step") -> tuple[np.ndarray, dict]:
    """Common x values (steps by default) and {condition: [n_seeds, T]} of a per-epoch scalar (NaN-padded)."""
    grid: set = set()
    per = {}
    for c, recs in records.items():
        per[c] = [series(r, key, x) for r in recs]
        for xs, _ in per[c]:
            grid.update(xs.tolist())
    xs_all = np.asarray(sorted(grid))
    out = {}
    for c, lst in per.items():
        arr = np.full((len(lst), xs_all.size), np.nan)
        for i, (xs, ys) in enumerate(lst):
            arr[i, np.searchsorted(xs_all, xs)] = ys
        out[c] = arr
    return xs_all, out


def run_rows(records: Mapping[str, list], extra: Optional[Callable[[str, dict], dict]] = None,
             family: str = "") -> list:
    """One CSV row per run: final metrics, initial loss (and its flag), spectra, time and folder."""
    from skipkern.experiments.spectra import TAU, fraction_key, run_spectra
    rows = []
    for c, recs in records.items():
        for r in recs:
            ident = r["identity"]
            sig = r.get("signal", {}).get("init", {})
            row = {"family": family or ident.get("init"), "condition": c, "seed": ident["seed"], "arch": ident["arch"],
                   "depth": ident["depth"], "width": ident["width"], "steps": ident["steps"],
                   "initial_train_loss": initial_metric(r), "initial_loss_flag": bool(sig.get("loss_flag", False)),
                   "initial_logit_std": sig.get("logit_std", math.nan)}
            for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
                row[f"final_{k}"] = final_metric(r, k)
            for when, s in run_spectra(r).items():
                f = s.get(fraction_key("degenerate", TAU), {})
                row[f"{when}_fraction_degenerate"] = f.get("value", math.nan)
                row[f"{when}_fraction_degenerate_lower"] = f.get("lower", math.nan)
                row[f"{when}_fraction_degenerate_upper"] = f.get("upper", math.nan)
                row[f"{when}_rank_ratio"] = s.get("rank_ratio", math.nan)
            if extra is not None:
                row.update(extra(c, r))
            row.update(elapsed_s=r.get("elapsed_s"), cached=r.get("cached", False), folder=r.get("folder"))
            rows.append(row)
    return rows


def accuracy_figure(out, stem: str, by_family: Mapping[str, Mapping[str, list]], title: str) -> str:
    """Training accuracy over optimiser steps (mean ± 95% CI band) and the final training accuracy per
    seed, one column per init family, one colour per condition."""
    fams = list(by_family)
    fig, axes = new_figure(len(fams), 2, width=5.4, height=3.6)
    for j, fam in enumerate(fams):
        records = by_family[fam]
        steps, acc = curves(records, "train_acc")
        band_plot(axes[j], steps, acc, xlabel="optimiser step", ylabel="training accuracy",
                  title=f"{title} [{fam} init]", legend=False, clip=(0.0, 1.0))
        axes[j].set_ylim(0, 1.02)
        bar_plot(axes[len(fams) + j], final_values(records), ylabel="final training accuracy",
                 title=f"final training accuracy [{fam} init] (bar: mean, error: 95% CI, dots: seeds)")
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, stem)
    return stem


def write_outputs(ctx: Context, name: str, cfg: dict, seeds: list, by_family: Mapping[str, Mapping[str, list]],
                  findings: list, figures: list, summary: dict, t0: float, rows: Optional[list] = None,
                  extra: Optional[dict] = None, sections: Sequence[dict] = ()) -> dict:
    """results.json and <name>.csv of a deep experiment; returns the result dict. ``sections`` are
    descriptive parts for the report ({"title", "text", "figures"}); the signal propagation and the
    flagged runs (initial loss above 2 ln C) of every condition go in as well."""
    out = ctx.exp_dir(name)
    if rows is None:
        rows = [row for fam, recs in by_family.items() for row in run_rows(recs, family=fam)]
    write_csv(out / f"{name}.csv", rows)
    flagged = [{k: r[k] for k in ("family", "condition", "seed", "initial_train_loss", "initial_logit_std")}
               for r in rows if r.get("initial_loss_flag")]
    all_recs = [r for recs in by_family.values() for rs in recs.values() for r in rs]
    result = {"experiment": name, "config": cfg, "seeds": seeds, "context": ctx.describe(), "summary": summary,
              "runs": rows, "findings": [f.to_dict() for f in findings], "figures": figures,
              "sections": list(sections), "signal": {fam: signal_of(recs) for fam, recs in by_family.items()},
              "gates": {fam: {c: g.to_dict() for c, g in gates_of(recs).items()} for fam, recs in by_family.items()},
              "flagged_runs": flagged, "elapsed_s": time.perf_counter() - t0,
              "train_time_s": float(sum(r.get("elapsed_s") or 0.0 for r in all_recs if not r.get("cached"))),
              # every run's training time as measured when it was trained (cached runs included)
              "runs_compute_s": float(sum(r.get("elapsed_s") or 0.0 for r in all_recs))}
    if extra:
        result.update(extra)
    write_json(out / "results.json", result)
    return result


def acc_summary(records: Mapping[str, list]) -> dict:
    """{condition: {final_train_acc: stats, final_test_acc: stats}}."""
    return {c: {"final_train_acc": stats(final_values({c: recs})[c]),
                "final_test_acc": stats(final_values({c: recs}, "test_acc")[c])} for c, recs in records.items()}


def acc_evidence(acc: Mapping[str, Sequence[float]], steps: int) -> str:
    """'Final training accuracy after N steps: a x ± y (n=5); ...' for an evidence text."""
    return f"Final training accuracy after {steps} steps: " + "; ".join(
        f"{c} {fmt(v, pct=True)}" for c, v in acc.items()) + "."
