"""Helpers of the deep-net experiments: run conditions x seeds with one progress bar, tabulate runs,
extract curves, draw the accuracy figure, write the standard files."""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from skipkern.experiments.common import Context, stats, write_csv, write_json
from skipkern.experiments.runs import RunSpec, cached_records, final_metric, series, train_run
from skipkern.plotting import band_plot, bar_plot, new_figure, save_figure

__all__ = ["run_conditions", "run_rows", "curves", "accuracy_figure", "spectrum_values", "seeds_of",
           "write_outputs", "final_values", "LOG10_COND_CAP"]

# Condition numbers above this (or inf) count as numerically singular in float32 (1/eps ~ 8e6).
LOG10_COND_CAP = 8.0


def seeds_of(ctx: Context, cfg: dict) -> list:
    return [int(s) for s in (ctx.seeds if ctx.seeds is not None else cfg["seeds"])]


def run_conditions(ctx: Context, name: str, specs: Mapping[str, Sequence[RunSpec]]) -> dict:
    """Train every spec (conditions x seeds) with one tqdm bar counting epochs (cached runs count at
    once); in ``ctx.jobs`` worker processes when jobs > 1, one after another under DDP when
    torch.distributed is initialised (every rank must call this with the same specs).
    Returns {condition: [record per seed]}."""
    flat = [(c, s) for c, ss in specs.items() for s in ss]
    total = sum(s.epochs for _, s in flat)
    done = [0] * len(flat)
    finished = [False] * len(flat)
    with tqdm(total=total, desc=name, unit="epoch", disable=not ctx.progress, dynamic_ncols=True) as bar:

        def tick(i: int) -> None:
            if not finished[i] and done[i] < flat[i][1].epochs:
                done[i] += 1
                bar.update(1)

        def finish(i: int, rec: dict) -> None:
            finished[i] = True
            bar.update(max(flat[i][1].epochs - done[i], 0))
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
        # workers only for what is not on disk yet; under torch.distributed the ranks train each run
        # together (DDP) instead
        if ctx.jobs > 1 and len(todo) > 1 and ctx.group is None:
            from skipkern.experiments.parallel import run_specs
            fresh = run_specs(ctx, [flat[i][1] for i in todo], lambda j: tick(todo[j]),
                              lambda j, rec: finish(todo[j], rec))
            recs = list(cached)
            for i, r in zip(todo, fresh):
                recs[i] = r
        else:
            recs = list(cached)
            for i in todo:
                c, s = flat[i]
                bar.set_postfix_str(f"{c} seed {s.seed}")
                recs[i] = train_run(s, ctx, lambda rec, i=i: tick(i) if rec.get("epoch", 0) > 0 else None)
                finish(i, recs[i])
        for i, j in dup.items():
            recs[i] = recs[j]
            finish(i, recs[i])
    out: dict = {c: [] for c in specs}
    for (c, _), r in zip(flat, recs):
        out[c].append(r)
    return out


def rank_floor(ctx: Context, cfg: dict, records: Sequence[dict]) -> tuple[float, str]:
    """The data-rank floor of the degenerate fraction and a sentence saying so.

    With n samples and C classes the Gauss-Newton part of the cross-entropy Hessian has rank at most
    n (C - 1), so at least 1 - n (C - 1) / P of its P eigenvalues are zero in any net: the measured
    fractions can differ only above that floor."""
    if not records or not cfg.get("spectrum_at"):
        return math.nan, ""
    ds = ctx.dataset(cfg.get("n_train"), cfg.get("n_test"))
    n = min(int(cfg["spectrum_samples"]), ds.n_train)
    P = int(records[0]["num_params"])
    floor = max(0.0, 1.0 - n * (ds.num_classes - 1) / P)
    return floor, (f"Note: the spectra use {n} samples of {ds.num_classes} classes, so the Gauss-Newton part of the "
                   f"Hessian has rank <= {n * (ds.num_classes - 1)} of P = {P} parameters: at least {floor:.1%} of "
                   f"the eigenvalues are (near) zero in every net, and the fractions differ only above that floor.")


def final_values(records: Mapping[str, list], key: str = "train_acc") -> dict:
    """{condition: [final value per seed]}."""
    return {c: [final_metric(r, key) for r in recs] for c, recs in records.items()}


def spectrum_values(rec: dict, key: str = "fraction_degenerate", epochs: Optional[Sequence[int]] = None) -> float:
    """Mean of a spectrum fraction over the run's spectrum checkpoints (or the given epochs); NaN if
    the run has none."""
    xs, ys = series(rec, f"spectrum.{key}")
    if epochs is not None:
        keep = np.isin(xs, list(epochs))
        ys = ys[keep]
    return float(np.mean(ys)) if ys.size else math.nan


def curves(records: Mapping[str, list], key: str) -> tuple[np.ndarray, dict]:
    """Common epochs and {condition: [n_seeds, T]} of a per-epoch scalar (NaN-padded)."""
    grid: set = set()
    per = {}
    for c, recs in records.items():
        per[c] = [series(r, key) for r in recs]
        for xs, _ in per[c]:
            grid.update(xs.tolist())
    epochs = np.asarray(sorted(grid))
    out = {}
    for c, lst in per.items():
        arr = np.full((len(lst), epochs.size), np.nan)
        for i, (xs, ys) in enumerate(lst):
            arr[i, np.searchsorted(epochs, xs)] = ys
        out[c] = arr
    return epochs, out


def run_rows(records: Mapping[str, list], extra: Optional[Callable[[str, dict], dict]] = None) -> list:
    """One CSV row per run with its final metrics, spectrum means, time and folder."""
    rows = []
    for c, recs in records.items():
        for r in recs:
            ident = r["identity"]
            row = {"condition": c, "seed": ident["seed"], "arch": ident["arch"], "depth": ident["depth"],
                   "width": ident["width"], "epochs": ident["epochs"]}
            for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
                row[f"final_{k}"] = final_metric(r, k)
            for k in ("fraction_degenerate_rel", "fraction_degenerate", "fraction_negative_rel", "spectral_scale"):
                row[f"mean_{k}"] = spectrum_values(r, k)
            if extra is not None:
                row.update(extra(c, r))
            row.update(elapsed_s=r.get("elapsed_s"), cached=r.get("cached", False), folder=r.get("folder"))
            rows.append(row)
    return rows


def accuracy_figure(out, stem: str, records: Mapping[str, list], title: str) -> str:
    """Training accuracy over epochs (mean ± std band) and final training accuracy per seed."""
    fig, axes = new_figure(2, 1, width=5.2)
    epochs, acc = curves(records, "train_acc")
    band_plot(axes[0], epochs, acc, xlabel="epoch", ylabel="training accuracy", title=title)
    bar_plot(axes[1], final_values(records), ylabel="final training accuracy",
             title="final training accuracy (bar: mean, error: std, dots: seeds)")
    save_figure(fig, out, stem)
    return stem


def write_outputs(ctx: Context, name: str, cfg: dict, seeds: list, records: Mapping[str, list], findings: list,
                  figures: list, summary: dict, t0: float, rows: Optional[list] = None, extra: Optional[dict] = None) -> dict:
    """results.json and <name>.csv of a deep experiment; returns the result dict."""
    out = ctx.exp_dir(name)
    rows = run_rows(records) if rows is None else rows
    write_csv(out / f"{name}.csv", rows)
    result = {"experiment": name, "config": cfg, "seeds": seeds, "context": ctx.describe(), "summary": summary,
              "runs": rows, "findings": [f.to_dict() for f in findings], "figures": figures,
              "elapsed_s": time.perf_counter() - t0,
              "train_time_s": float(sum(r.get("elapsed_s") or 0.0 for recs in records.values() for r in recs
                                        if not r.get("cached"))),
              # every run's training time as measured when it was trained (cached runs included)
              "runs_compute_s": float(sum(r.get("elapsed_s") or 0.0 for recs in records.values() for r in recs))}
    if extra:
        result.update(extra)
    write_json(out / "results.json", result)
    return result


def acc_summary(records: Mapping[str, list]) -> dict:
    """{condition: {final_train_acc: stats, final_test_acc: stats}}."""
    return {c: {"final_train_acc": stats(final_values({c: recs})[c]),
                "final_test_acc": stats(final_values({c: recs}, "test_acc")[c])} for c, recs in records.items()}
