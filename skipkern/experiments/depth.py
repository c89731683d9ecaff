"""Experiment ``depth``: condition numbers and numerical ranks of hidden representations in very deep plain
and residual nets (after Oyedotun, Al Ismaeil & Aouada, IEEE TNNLS 2022).

Oyedotun et al. report that the hidden representations of 164-layer PlainNets lose rank (numerically
infinite condition numbers from about layer 80 on CIFAR-10), while ResNets' never do, their condition
numbers starting high in early layers and falling to moderate values. Here:
1. Fully connected nets (SkipMLP "plain" and "residual", the shared deep-net width, data and budget of
   this mode) of every depth in ``depths``, in every init family of ``inits`` ("glorot", the paper's,
   and "scaled"), ``seeds`` nets each. Every hidden layer's representation matrix [B, width] on a
   fixed batch of ``diag_batch`` > width training samples: condition number s_max / s_min and
   numerical rank (float64 SVD; numerically singular when s_min is at or below the rank tolerance of
   float32, ``skipkern.diagnostics.numerical_rank_tol``), at initialisation and after training. The
   runs go through the shared run cache (``runs.py``), as the other deep recipes.
2. Convolutional nets (``depth_conv``): PlainNet vs ResNet of ``conv_blocks`` blocks on image-shaped
   data generated offline (CIFAR-10/100 with --data cifar10 --data-dir DIR), block outputs captured by
   forward hooks on named modules and flattened as channels. Descriptive (no verdict).
log10 condition numbers are capped at ``cond_cap`` (singular layers drawn and counted there).
Verdicts follow ``neighbour_predictions`` (D1-D3, at the largest depth, after training, per family).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np

from skipkern.experiments.common import Context, Finding, write_csv
from skipkern.experiments.neighbour_predictions import prediction
from skipkern.experiments.neighbour_stats import newcombe_difference, paired_t
from skipkern.experiments.verdicts import combine, judge, judge_interval

NAME = "depth"
ARCHS = ("plain", "residual")
CLAIM = ("Oyedotun et al. (TNNLS 2022): with depth, plain nets' hidden representations become numerically singular "
         "(infinite condition numbers deep in 164-layer nets); residual nets' never do, their condition numbers "
         "start high in early layers and fall to moderate values.")
_SPEC = {
    "tiny": dict(depths=[3, 6], steps=6, seeds=[0, 1, 2], diag_points=1, spectra=[], cond_cap=8.0,
                 conv_blocks=[1, 2], conv_channels=4, conv_size=8, conv_classes=3, conv_n_train=48,
                 conv_eval_batch=8, conv_steps=2, conv_lr=1e-3, conv_batch=16, conv_seeds=[0], conv_batchnorm=True,
                 conv_data_seed=0, conv_threads=1),
    "quick": dict(depths=[10, 40, 164], steps=50, eval_points=2, seeds=[0, 1, 2], diag_points=1, spectra=[],
                  cond_cap=8.0, conv_blocks=[2, 8], conv_channels=16, conv_size=16, conv_classes=10,
                  conv_n_train=1000, conv_eval_batch=64, conv_steps=50, conv_lr=1e-3, conv_batch=64, conv_seeds=[0],
                  conv_batchnorm=True, conv_data_seed=0, conv_threads=1),
    "full": dict(depths=[10, 20, 40, 80, 164], seeds=[0, 1, 2, 3, 4], diag_points=1, spectra=[], cond_cap=8.0,
                 conv_blocks=[4, 16, 40], conv_channels=32, conv_size=32, conv_classes=10, conv_n_train=20000,
                 conv_eval_batch=128, conv_steps=3000, conv_lr=1e-3, conv_batch=128, conv_seeds=[0, 1, 2],
                 conv_batchnorm=True, conv_data_seed=0, conv_threads=None),
}


def configs(deep_base: dict) -> dict:
    """The recipe's configurations: the shared deep-net base of each mode with the depth settings."""
    return {m: dict(copy.deepcopy(deep_base[m]), **copy.deepcopy(_SPEC[m])) for m in _SPEC}


def _layers(rec: dict, last: bool, cap: float) -> dict:
    """Per-layer numbers of one run at initialisation (last False) or after training (last True)."""
    from skipkern.experiments.runs import diag_series
    out = {}
    for name, key in (("condition_numbers", "log10_condition"), ("condition_numbers", "rank"),
                      ("condition_numbers", "singular"), ("condition_numbers", "width"), ("elimination", "dead_units")):
        ser = diag_series(rec, name, key)
        if not ser:
            if key in ("width", "dead_units"):  # older records: no rank-deficit attribution
                continue
            return {}
        out[key] = np.asarray(ser[max(ser) if last else min(ser)], dtype=float)
    lg = out["log10_condition"]
    out["capped"] = np.where(np.isnan(lg), np.nan, np.where(np.isfinite(lg), np.minimum(lg, cap), cap))
    sing = out["singular"] > 0
    out["first_singular"] = int(np.argmax(sing)) + 1 if sing.any() else 0
    if "width" in out and "dead_units" in out:  # singular layers whose rank deficit is exactly their dead units
        out["dead_explained"] = int(np.sum(sing & (out["width"] - out["rank"] == out["dead_units"])))
    return out


def _row(fam: str, arch: str, depth: int, rec: dict, cap: float) -> dict:
    from skipkern.experiments.runs import final_metric
    i, f = _layers(rec, False, cap), _layers(rec, True, cap)
    return {"family": fam, "arch": arch, "depth": depth, "seed": rec["identity"]["seed"],
            "final_train_acc": final_metric(rec), "final_train_loss": final_metric(rec, "train_loss"),
            "first_singular_init": i.get("first_singular", -1), "first_singular_trained": f.get("first_singular", -1),
            "singular_layers_init": int(np.sum(i["singular"])) if i else -1,
            "singular_layers_trained": int(np.sum(f["singular"])) if f else -1,
            "log10_cond_last_init": float(i["capped"][-1]) if i else math.nan,
            "log10_cond_last_trained": float(f["capped"][-1]) if f else math.nan,
            "min_rank_trained": int(np.min(f["rank"])) if f else -1,
            "singular_by_dead_units_trained": f.get("dead_explained", -1) if f else -1,
            "_init": i.get("capped"), "_trained": f.get("capped"), "elapsed_s": rec.get("elapsed_s")}


def _outcomes(rows: list, depth: int) -> list:
    at = {a: [r for r in rows if r["arch"] == a and r["depth"] == depth] for a in ARCHS}
    last = {a: [r["log10_cond_last_trained"] for r in at[a]] for a in ARCHS}
    outs = [judge(prediction("D1"), last)]
    k = {a: sum(1 for r in at[a] if r["singular_layers_trained"] > 0) for a in ARCHS}
    n = {a: sum(1 for r in at[a] if r["singular_layers_trained"] >= 0) for a in ARCHS}
    d, lo, hi = newcombe_difference(k["plain"], n["plain"], k["residual"], n["residual"])
    outs.append(judge_interval(prediction("D2"), d, lo, hi, (min(n.values()),), detail=(
        f"plain {k['plain']}/{n['plain']}, residual {k['residual']}/{n['residual']} nets with a singular layer; "
        "Newcombe hybrid score interval")))
    diffs = []
    for r in at["residual"]:
        v = r["_trained"]
        if v is None or len(v) < 4:
            continue
        q = len(v) // 4
        diffs.append(float(np.nanmean(v[:q]) - np.nanmean(v[-q:])))
    m, lo, hi, nn = paired_t(diffs)
    outs.append(judge_interval(prediction("D3"), m, lo, hi, (nn,), detail=f"t interval over {nn} residual nets"))
    return outs


def run(ctx: Context, cfg: dict) -> dict:
    from skipkern.experiments.deep import families_of, gates_of, run_families, seeds_of, write_outputs
    from skipkern.experiments.runs import deep_spec
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds, depths, cap = seeds_of(ctx, cfg), [int(d) for d in cfg["depths"]], float(cfg["cond_cap"])
    if int(cfg["diag_batch"]) <= int(cfg["width"]):
        raise ValueError(f"diag_batch ({cfg['diag_batch']}) must exceed width ({cfg['width']}): a representation "
                         f"matrix with fewer rows than columns is singular by construction")
    specs = {fam: {f"{a}@{d}": [deep_spec(cfg, a, s, fam, depth=d, label=f"depth{d}-{a}") for s in seeds]
                   for d in depths for a in ARCHS} for fam in families_of(cfg)}
    by_family = run_families(ctx, NAME, specs)
    rows, findings = [], []
    for fam, recs in by_family.items():
        fam_rows = [_row(fam, c.split("@")[0], int(c.split("@")[1]), r, cap) for c, rs in recs.items() for r in rs]
        rows += fam_rows
        outs = _outcomes(fam_rows, max(depths))
        verdict, reason = combine(outs)
        # D1-D3 concern representations, not accuracy, so the learning gate does not void them; a net that
        # did not learn is still measured "after training", and the caveat says so
        failed = [g.reason for c, g in gates_of(recs).items() if c.endswith(f"@{max(depths)}") and not g.ok]
        caveats = _caveats(cfg) + ([f"At depth {max(depths)} the learning gate fails ({'; '.join(failed)}): 'after "
                                    "training' is then close to 'at initialisation'."] if failed else [])
        findings.append(Finding("depth", CLAIM, verdict, _evidence(cfg, fam, fam_rows, depths), numbers=_numbers(
            fam_rows, depths), figure=f"depth_condition_{fam}", family=fam, reason=reason, outcomes=outs,
            caveats=caveats))
    from skipkern.experiments.depth_conv import conv_study
    from skipkern.experiments.neighbour_stats import threads
    with threads(cfg.get("conv_threads")):  # small convolutions: one thread unless told otherwise
        conv = conv_study(ctx, cfg)
    from skipkern.experiments.depth_figures import conv_figure, condition_figure, first_singular_figure
    figs = [condition_figure(out, fam, depths, [r for r in rows if r["family"] == fam], cfg) for fam in by_family]
    figs += [first_singular_figure(out, rows, depths, cfg), conv_figure(out, conv, cfg)]
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    layers = [dict(family=r["family"], arch=r["arch"], depth=r["depth"], seed=r["seed"], layer=i + 1,
                   log10_cond_init=r["_init"][i] if r["_init"] is not None else math.nan,
                   log10_cond_trained=r["_trained"][i] if r["_trained"] is not None else math.nan)
              for r in rows for i in range(r["depth"])]
    write_csv(out / "depth_layers.csv", layers)
    sections = [{"title": "Condition numbers of hidden representations in very deep nets (after Oyedotun et al. 2022)",
                 "text": (f"One panel per depth; top row at initialisation, bottom row after {cfg['steps']} steps; one "
                          f"line per net; numerically singular layers drawn at the cap ({cap:g}). "
                          f"Convolutional nets on {conv['data']}: block outputs flattened as channels "
                          f"({conv['eval_rows']:,} rows of {conv['channels']} channels). Per-net numbers: depth.csv; "
                          "per-layer numbers: depth_layers.csv."), "figures": figs[len(by_family):]}]
    summary = {"per_family": {f.family: f.numbers for f in findings}}
    return write_outputs(ctx, NAME, cfg, seeds, by_family, findings, figs, summary, t0, rows=public,
                         extra={"conv": conv}, sections=sections)


def _numbers(rows: list, depths: list) -> dict:
    out = {}
    for d in depths:
        for a in ARCHS:
            rs = [r for r in rows if r["depth"] == d and r["arch"] == a]
            out[f"{a}@{d}"] = {"nets": len(rs),
                               "nets_singular_trained": sum(r["singular_layers_trained"] > 0 for r in rs),
                               "nets_singular_init": sum(r["singular_layers_init"] > 0 for r in rs),
                               "first_singular_trained": [r["first_singular_trained"] for r in rs],
                               "log10_cond_last_trained": [r["log10_cond_last_trained"] for r in rs],
                               "final_train_acc": [r["final_train_acc"] for r in rs]}
    return out


def _evidence(cfg: dict, fam: str, rows: list, depths: list) -> str:
    parts = [f"Width {cfg['width']}, {cfg['steps']} Adam steps, {fam} init, evaluation batch {cfg['diag_batch']}."]
    for d in depths:
        bits = []
        for a in ARCHS:
            rs = [r for r in rows if r["depth"] == d and r["arch"] == a]
            first = [r["first_singular_trained"] for r in rs if r["first_singular_trained"] > 0]
            bits.append(f"{a} {sum(r['singular_layers_trained'] > 0 for r in rs)}/{len(rs)} singular after training"
                        + (f" (first singular layer {min(first)}-{max(first)})" if first else "")
                        + f", {sum(r['singular_layers_init'] > 0 for r in rs)}/{len(rs)} at init, train acc "
                        + f"{100 * np.nanmean([r['final_train_acc'] for r in rs]):.0f}%")
        parts.append(f"Depth {d}: " + "; ".join(bits) + ".")
    sing = sum(r["singular_layers_trained"] for r in rows if r["arch"] == "plain" and r["singular_layers_trained"] > 0)
    dead = sum(max(r["singular_by_dead_units_trained"], 0) for r in rows if r["arch"] == "plain")
    if sing:
        parts.append(f"In the plain nets, {dead} of {sing} numerically singular layers (after training) lose exactly as "
                     "many dimensions as they have dead ReLU units (never active on the batch: an elimination "
                     "singularity); in the others live units are linearly dependent as well.")
    return " ".join(parts)


def _caveats(cfg: dict) -> list:
    return ["Oyedotun et al. trained on CIFAR with convolutional nets; the verdicts here are on fully connected nets "
            "(MNIST-1D unless --data says otherwise) of the shared width; the convolutional part is descriptive.",
            f"'Numerically singular' uses the float32 rank tolerance (Numerical Recipes rule); condition numbers are "
            f"capped at 10^{cfg['cond_cap']:g} for the statistics, so D1 compares capped values.",
            "A Glorot-initialised net that diverges (non-finite loss) has no finite representation: its runs drop out "
            "and the comparison becomes invalid for lack of nets."]
