"""Experiment ``connectivity``: loss barriers between independently trained solutions against the width m
of a two-layer skip branch (after Wang, Shen, Zhao & Zhang, IJCAI 2020).

Wang et al. prove that a deep ReLU net with a skip connection inherits the landscape of a two-layer
ReLU net of m hidden units: nearly connected sub-level sets, and local minima worse than that net's
global minimum no deeper than O(m^((eta - 1) / n)) (n the input dimension, eta < 1). The paper shows
only loss-surface pictures; its settings are not public. Our design (every choice a config key):
- data: teacher-student regression, x ~ N(0, I_n), y = a random two-layer ReLU teacher of
  ``teacher_width`` units, standardised (a constant predictor has loss 1); n in ``input_dims``;
- nets (``skipkern.landscape.ensembles.DeepSkipNet``): "plain" is a deep ReLU branch of ``depth``
  hidden layers; "skip" adds a two-layer ReLU branch of m units from the input to the output (our
  reading of the paper's architecture). The deep branch has ``deep_width`` units, "m" (default) ties
  it to m, so the plain net grows with m too and both conditions have an m; an int fixes it;
- training: ``n_seeds`` nets per (n, arch, m), independent initialisations, the same data, full-batch
  Adam with cosine decay for ``train_steps`` steps (``train_ensemble`` trains them together);
- paths: nets 2k and 2k + 1 form pair k (disjoint pairs); each pair is connected by a straight line and
  by a quadratic Bezier curve trained as Garipov et al. (2018) (``skipkern.landscape.connect_many``);
  barrier = max along the path - mean of the end losses, on the training loss (test loss beside it);
- statistics: slopes of log10 barrier on log10 m with stratified bootstrap intervals; the gap between
  plain and skip; the depth of bad minima as the excess of each net's final training loss over the
  best net of its setting. Verdicts follow ``neighbour_predictions`` (C1-C4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import numpy as np
import torch.nn.functional as F
from tqdm.auto import tqdm

from skipkern.experiments.common import Context, Finding, read_json, write_csv, write_json
from skipkern.experiments.neighbour_predictions import prediction
from skipkern.experiments.neighbour_stats import (bootstrap_mean_gap, bootstrap_slope, bootstrap_slope_difference,
                                                  threads)
from skipkern.experiments.verdicts import combine, judge_interval

NAME = "connectivity"
ARCHS = ("plain", "skip")
CLAIM = ("Wang et al. (IJCAI 2020): a deep ReLU net with a skip (a two-layer ReLU branch of m units) inherits the "
         "two-layer net's landscape: nearly connected sub-level sets, bad local minima no deeper than "
         "O(m^((eta-1)/n)).")
_VERSION = 1  # bump when the per-setting computation changes (invalidates the setting cache)

CONFIGS = {
    "tiny": dict(input_dims=[2], widths=[4, 8], depth=2, deep_width="m", teacher_width=4, n_train=64, n_test=64,
                 data_seed=0, n_seeds=4, train_steps=30, lr=3e-3, methods=["linear", "bezier"], bezier_steps=10,
                 bezier_lr=1e-2, num_points=5, refine=4, learn_gate=0.9, n_boot=200, threads=1),
    "quick": dict(input_dims=[2, 8], widths=[8, 16, 32, 64], depth=3, deep_width="m", teacher_width=16,
                  n_train=256, n_test=512, data_seed=0, n_seeds=20, train_steps=400, lr=3e-3,
                  methods=["linear", "bezier"], bezier_steps=200, bezier_lr=1e-2, num_points=11, refine=8,
                  learn_gate=0.5, n_boot=2000, threads=1),
    "full": dict(input_dims=[2, 4, 8], widths=[8, 16, 32, 64, 128, 256, 512], depth=4, deep_width="m",
                 teacher_width=16, n_train=1000, n_test=2000, data_seed=0, n_seeds=20, train_steps=4000, lr=2e-3,
                 methods=["linear", "bezier"], bezier_steps=4000, bezier_lr=1e-2, num_points=21, refine=16,
                 learn_gate=0.5, n_boot=2000, threads=None),
}
_ANALYSIS_KEYS = ("input_dims", "widths", "learn_gate", "n_boot", "threads")


def _deep_width(cfg: dict, m: int) -> int:
    dw = cfg["deep_width"]
    if dw == "m":
        return int(m)
    if isinstance(dw, bool) or not isinstance(dw, int) or dw < 1:
        raise ValueError(f"deep_width must be 'm' or a positive int, got {dw!r}")
    return dw


def _identity(ctx: Context, cfg: dict, n: int, arch: str, m: int) -> dict:
    keep = {k: v for k, v in cfg.items() if k not in _ANALYSIS_KEYS}
    return dict(keep, n=n, arch=arch, m=m, device=ctx.device, version=_VERSION)


def _setting(ctx: Context, cfg: dict, n: int, arch: str, m: int, data: dict) -> dict:
    """Train the nets of one (n, arch, m) and connect their pairs; cached under settings/."""
    from skipkern.landscape import connect_many
    from skipkern.landscape.ensembles import DeepSkipNet, ensemble_losses, train_ensemble

    ident = _identity(ctx, cfg, n, arch, m)
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    path = ctx.exp_dir(NAME) / "settings" / f"n{n}-{arch}-m{m}-{key}.json"
    if path.is_file():
        rec = read_json(path)
        if rec.get("identity") == ident:
            return rec
    t0 = time.perf_counter()
    dev = ctx.device
    split = {k: (x.to(dev), y.to(dev)) for k, (x, y) in ((s, data[s]) for s in ("train", "test"))}
    nets = [DeepSkipNet(n, _deep_width(cfg, m), int(cfg["depth"]), m if arch == "skip" else 0, seed=s).to(dev)
            for s in range(int(cfg["n_seeds"]))]
    init = ensemble_losses(nets, F.mse_loss, *split["train"])
    tr = train_ensemble(nets, F.mse_loss, *split["train"], steps=int(cfg["train_steps"]), lr=float(cfg["lr"]))
    test = ensemble_losses(nets, F.mse_loss, *split["test"])
    net_rows = [dict(n=n, arch=arch, m=m, seed=s, init_train_loss=init[s], final_train_loss=tr["final_loss"][s],
                     final_test_loss=test[s]) for s in range(len(nets))]
    a, b = nets[0::2], nets[1::2][:len(nets[0::2])]
    pair_rows, profiles = [], {}
    for method in cfg["methods"]:
        res = connect_many(a[:len(b)], b, F.mse_loss, split, method=method, num_points=int(cfg["num_points"]),
                           refine=int(cfg["refine"]), steps=int(cfg["bezier_steps"]), lr=float(cfg["bezier_lr"]),
                           seed=1000 * n + m)
        for k, r in enumerate(res):
            pair_rows.append(dict(n=n, arch=arch, m=m, pair=k, method=method, barrier=r.barrier,
                                  excess_barrier=r.excess_barrier, barrier_t=r.barrier_t, test_barrier=r.test_barrier,
                                  end_loss_a=r.end_losses[0], end_loss_b=r.end_losses[1],
                                  curve_final_loss=r.history[-1] if r.history else math.nan))
        profiles[method] = {"t": res[0].t.tolist(), "train": [r.train_loss.tolist() for r in res],
                            "test": [r.test_loss.tolist() for r in res]}
    rec = {"identity": ident, "nets": net_rows, "pairs": pair_rows, "profiles": profiles,
           "elapsed_s": time.perf_counter() - t0}
    write_json(path, rec)
    return rec


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    dims, widths = [int(n) for n in cfg["input_dims"]], [int(m) for m in cfg["widths"]]
    if int(cfg["n_seeds"]) < 2:
        raise ValueError(f"n_seeds must be >= 2 (pairs of nets), got {cfg['n_seeds']!r}")
    recs = {}
    with threads(cfg.get("threads")), tqdm(total=len(dims) * len(ARCHS) * len(widths), desc=NAME, unit="setting",
                                           disable=not ctx.progress, dynamic_ncols=True) as bar:
        for n in dims:
            from skipkern.landscape.ensembles import relu_teacher
            data = relu_teacher(int(cfg["n_train"]), n, int(cfg["teacher_width"]), seed=int(cfg["data_seed"]) + n,
                                n_test=int(cfg["n_test"]))
            for arch in ARCHS:
                for m in widths:
                    bar.set_postfix_str(f"n={n} {arch} m={m}")
                    recs[(n, arch, m)] = _setting(ctx, cfg, n, arch, m, data)
                    bar.update(1)
    nets = [r for rec in recs.values() for r in rec["nets"]]
    pairs = [r for rec in recs.values() for r in rec["pairs"]]
    summary, outcomes, gates = _analyse(cfg, dims, widths, nets, pairs)
    from skipkern.experiments.connectivity_figures import figures
    figs = figures(out, cfg, dims, widths, nets, pairs, recs, summary)
    verdict, reason = combine(outcomes)
    finding = Finding("connectivity", CLAIM, verdict, _evidence(cfg, dims, widths, summary), numbers=summary,
                      figure=figs[0], reason=reason, outcomes=outcomes, caveats=_caveats(cfg))
    write_csv(out / f"{NAME}.csv", pairs)
    write_csv(out / f"{NAME}_nets.csv", nets)
    sections = [{"title": "Loss barriers against the width of the skip branch (after Wang et al., IJCAI 2020)",
                 "text": _section_text(cfg), "figures": figs[1:]}]  # figs[0] is shown with the finding
    result = {"experiment": NAME, "config": cfg, "context": ctx.describe(), "summary": summary, "gates": gates,
              "findings": [finding.to_dict()], "figures": figs, "sections": sections,
              "settings_time_s": float(sum(r.get("elapsed_s", 0.0) for r in recs.values())),
              "elapsed_s": time.perf_counter() - t0}
    write_json(out / "results.json", result)
    return result


def _values(rows: list, key: str, **match) -> dict:
    """{m: [row[key]]} of the rows matching ``match``."""
    out: dict = {}
    for r in rows:
        if all(r[k] == v for k, v in match.items()):
            out.setdefault(r["m"], []).append(r[key])
    return out


def _excess(nets: list, **match) -> dict:
    """{m: [final training loss - best of the setting]} (zero for the best net itself, kept out)."""
    out: dict = {}
    for m, v in _values(nets, "final_train_loss", **match).items():
        v = np.asarray(v, dtype=float)
        best = np.nanmin(v)
        out[m] = [float(x - best) for x in v if x > best]
    return out


def _analyse(cfg: dict, dims: list, widths: list, nets: list, pairs: list) -> tuple:
    nb = int(cfg["n_boot"])
    summary: dict = {"per_n": {}}
    outcomes, gates = [], {}
    method = "bezier" if "bezier" in cfg["methods"] else cfg["methods"][0]
    for n in dims:
        s: dict = {}
        for arch in ARCHS:
            loss = _values(nets, "final_train_loss", n=n, arch=arch)
            init = _values(nets, "init_train_loss", n=n, arch=arch)
            mean_final = float(np.mean([x for v in loss.values() for x in v]))
            ok = mean_final < float(cfg["learn_gate"])
            nums = {"mean_final_loss": mean_final, "n": sum(len(v) for v in loss.values()),
                    "mean_init_loss": float(np.mean([x for v in init.values() for x in v]))}
            gates[f"n={n} {arch}"] = {"ok": ok, "numbers": nums, "reason": "" if ok else (
                f"n={n} {arch}: mean final training loss {mean_final:.3g} not below {cfg['learn_gate']} (a constant "
                f"predictor has 1)")}
            s[arch] = {"final_train_loss": {m: _quantiles(v) for m, v in sorted(loss.items())},
                       "excess_slope": _strip(bootstrap_slope(_excess(nets, n=n, arch=arch), nb, seed=n))}
            for meth in cfg["methods"]:
                bars = _values(pairs, "barrier", n=n, arch=arch, method=meth)
                s[arch][f"{meth}_barrier"] = {m: _quantiles(v) for m, v in sorted(bars.items())}
                s[arch][f"{meth}_slope"] = _strip(bootstrap_slope(bars, nb, seed=n))
        bad = [g["reason"] for k, g in gates.items() if k.startswith(f"n={n} ") and not g["ok"]]
        bad_skip = [g["reason"] for k, g in gates.items() if k == f"n={n} skip" and not g["ok"]]
        sl = s["skip"][f"{method}_slope"]
        outcomes.append(_o("C1", n, sl["slope"], sl["low"], sl["high"], sl["n_min"], bad_skip,
                           f"{method} path; {sl['n_points']} pairs, {sl['n_dropped']} non-positive dropped"))
        gap = bootstrap_mean_gap(_values(pairs, "barrier", n=n, arch="plain", method=method),
                                 _values(pairs, "barrier", n=n, arch="skip", method=method), nb, seed=n)
        s["gap_plain_minus_skip"] = gap
        outcomes.append(_o("C2", n, gap["gap"], gap["low"], gap["high"], gap["n_min"], bad,
                           f"{method} path; mean over m = {gap['widths']}"))
        ex = s["skip"]["excess_slope"]
        outcomes.append(_o("C3", n, ex["slope"], ex["low"], ex["high"], ex["n_min"] + 1, bad_skip,
                           f"{ex['n_points']} nets above the best of their setting"))
        summary["per_n"][n] = s
    if len(dims) >= 2:
        lo_n, hi_n = min(dims), max(dims)
        d = bootstrap_slope_difference(_values(pairs, "barrier", n=lo_n, arch="skip", method=method),
                                       _values(pairs, "barrier", n=hi_n, arch="skip", method=method), nb, seed=7)
        summary["slope_difference"] = dict(d, n_small=lo_n, n_large=hi_n)
        bad = [g["reason"] for k, g in gates.items() if k in (f"n={lo_n} skip", f"n={hi_n} skip") and not g["ok"]]
        outcomes.append(_o("C4", None, d["difference"], d["low"], d["high"], d["n_min"], bad,
                           f"n = {lo_n} minus n = {hi_n}, {method} path"))
    summary["method"] = method
    return summary, outcomes, {"": gates}


def _o(key: str, n, est, low, high, n_min: int, bad: list, detail: str):
    o = judge_interval(prediction(key), est, low, high, (int(n_min),), detail=detail + "; 95% bootstrap interval",
                       invalid=bad)
    return dataclasses.replace(o, key=key if n is None else f"{key} (n={n})")


def _quantiles(v) -> dict:
    a = np.asarray(v, dtype=float)
    return {"n": int(a.size), "median": float(np.median(a)), "q10": float(np.quantile(a, 0.1)),
            "q90": float(np.quantile(a, 0.9)), "min": float(a.min()), "max": float(a.max()),
            "geo_mean": float(10 ** np.mean(np.log10(a[a > 0]))) if (a > 0).any() else math.nan}


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "samples"}


def _evidence(cfg: dict, dims: list, widths: list, summary: dict) -> str:
    meth = summary["method"]
    parts = [f"Teacher-student regression (teacher: two-layer ReLU, {cfg['teacher_width']} units), deep branch "
             f"{cfg['depth']} hidden layers of width {cfg['deep_width']}, m in {widths}, {cfg['n_seeds']} nets per "
             f"setting ({int(cfg['n_seeds']) // 2} pairs), {cfg['train_steps']} Adam steps."]
    for n in dims:
        s = summary["per_n"][n]
        sk, pl = s["skip"][f"{meth}_slope"], s["plain"][f"{meth}_slope"]
        g = s["gap_plain_minus_skip"]
        parts.append(f"n = {n}: {meth} barrier slope with skip {sk['slope']:+.2f} [{sk['low']:+.2f}, "
                     f"{sk['high']:+.2f}], without {pl['slope']:+.2f} [{pl['low']:+.2f}, {pl['high']:+.2f}] "
                     "(log10/log10); plain minus skip "
                     f"{g['gap']:+.2f} decades [{g['low']:+.2f}, {g['high']:+.2f}].")
    return " ".join(parts)


def _caveats(cfg: dict) -> list:
    return ["The architecture, teacher, widths and budgets are our reading; the paper publishes none of them.",
            "A trained Bezier curve only bounds the lowest barrier from above: a better-trained curve (more steps, "
            "more bends, AutoNEB) can only lower it, so a slope measures how the bound moves with m.",
            "Barrier = max along the path - mean of the ends, so it is at least half the difference of the end "
            "losses; the excess barrier (height above the line between the end losses) is in the CSV.",
            f"With deep_width = {cfg['deep_width']!r} the plain net also widens with m, so its barrier can fall with "
            "m too: C1 alone does not isolate the skip, C2 (with against without at the same m) does. The skip net "
            "has the extra two-layer branch's (n + 2) m parameters."]


def _section_text(cfg: dict) -> str:
    return ("The barrier figure (with the finding above): each point is one pair of independently trained nets; "
            "lines are geometric means per width with the fitted log-log slope (95% bootstrap interval in the "
            "legend). Below: the final training losses of every net (how deep the worse minima are) and the excess "
            "over the best net per setting; the training loss along the straight and Bezier paths at the largest "
            "width. Per-pair numbers: "
            "connectivity.csv; per-net numbers: connectivity_nets.csv; per-setting records with every loss profile: "
            "settings/.")
