"""Experiment ``symmetry``: skips as symmetry breakers (after Orhan 2017, "Skip Connections as Effective
Symmetry-Breaking", arXiv:1701.09175 v1-v4).

1. Binary toy (``skipkern.landscape.binary_toy``): every configuration of a net with +-1 weights (default
   3 inputs, two hidden layers of 3 sign units, one output: 2^21 configurations) in three versions,
   plain, adjacent-layer skips and DenseNet-style skips. Per version: the number of distinct functions
   on the 2^d inputs, the class sizes (configurations computing one function), and for each of
   ``n_teachers`` teacher tasks (``toy_teacher``: "random" labellings of the inputs by default, or
   "plain": sign(o) of a random plain configuration; constant labellings redrawn; loss ``toy_loss``,
   hinge by default): the number of global minima and the fraction of configurations that are
   single-flip local minima (no flip of one weight lowers the loss). The paper's exact toy is not
   public; every choice above is a config key (``toy_*``). Our first design drew the teachers from
   plain configurations: with sign units those tasks are all images of one another under the
   symmetries of the input cube, so all ten gave identical numbers and an interval over tasks meant
   nothing; random labellings give genuinely different tasks.
2. Deep nets: one non-skip way of breaking the symmetry beside the skips. BiasReg (fixed random per-unit
   bias targets beta ~ N(mu, sigma^2), ``skipkern.regularizers``) with pre-registered parameters
   (``biasreg``, not tuned on these runs) against plain, residual and hyper-residual (DenseNet-style
   sum of earlier layers) nets of the shared deep-net configuration, per init family. Plain, residual
   and hyper-residual runs are the ones ``architectures`` trains (shared run cache).
Verdicts follow ``neighbour_predictions`` (S1-S4 toy, S5-S6 deep nets).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time

import numpy as np
import torch

from skipkern.experiments.common import Context, Finding, read_json, write_csv, write_json
from skipkern.experiments.neighbour_predictions import DEEP, TOY, prediction
from skipkern.experiments.neighbour_stats import paired_t, threads
from skipkern.experiments.verdicts import combine, judge, judge_interval

NAME = "symmetry"
VERSIONS = ("plain", "adjacent", "dense")
TOY_CLAIM = ("Orhan (2017): skips between adjacent layers break the permutation symmetry of a layer's units; "
             "DenseNet-style skips also break the rescaling symmetry between layers (binary-weight toy).")
DEEP_CLAIM = ("Orhan (2017): skips help deep nets train by breaking symmetries, and other ways of breaking them "
              "help too (here: BiasReg's fixed random bias targets).")
_TOY = {"tiny": dict(toy_input_dim=2, toy_widths=[2, 2], toy_activation="sign", toy_loss="hinge",
                     toy_teacher="orbits", n_teachers=3, teacher_seed=0),
        "quick": dict(toy_input_dim=3, toy_widths=[3, 3], toy_activation="sign", toy_loss="hinge",
                      toy_teacher="orbits", n_teachers=10, teacher_seed=0),
        "full": dict(toy_input_dim=3, toy_widths=[3, 3], toy_activation="sign", toy_loss="hinge",
                     toy_teacher="orbits", n_teachers=20, teacher_seed=0)}
_DEEP = dict(deep_conditions=["plain", "residual", "hyper_residual", "biasreg"],
             biasreg={"mu": 0.5, "sigma": 0.5, "lam": 1e-3}, threads=None)


def configs(deep_base: dict) -> dict:
    """The recipe's configurations: the shared deep-net base of each mode plus the toy's settings."""
    return {m: dict(copy.deepcopy(deep_base[m]), **copy.deepcopy(_TOY[m]), **copy.deepcopy(_DEEP)) for m in _TOY}


# ------------------------------------------------------------------------------------------- toy
def _teachers(plain_out: torch.Tensor, cfg: dict) -> list:
    """The teacher tasks [(plain configuration or -1, labels [X], weight)] of ``toy_teacher``:
    "orbits" (default): every non-constant labelling of the inputs, one representative per orbit of the
        input cube's symmetries (``label_orbits``) weighted by the orbit's size: averages are exact over
        all 2^(2^d) - 2 tasks. Needs an odd activation and hidden widths equal to the input dimension
        (then the symmetries map each version onto itself, so an orbit shares one landscape);
    "random": ``n_teachers`` uniform random labellings; "plain": sign(o) of ``n_teachers`` random plain
        configurations (realisable by the plain net; with sign units all such tasks lie in one orbit, so
        they give identical numbers). Constant labellings are redrawn."""
    kind = cfg["toy_teacher"]
    if kind == "orbits":
        from skipkern.landscape.binary_toy import label_orbits
        d = int(cfg["toy_input_dim"])
        if cfg["toy_activation"] not in ("sign", "tanh") or any(int(w) != d for w in cfg["toy_widths"]):
            raise ValueError(f"toy_teacher 'orbits' needs an odd activation (sign, tanh) and hidden widths equal to "
                             f"toy_input_dim={d}, got {cfg['toy_activation']!r} and {cfg['toy_widths']}; use "
                             f"toy_teacher='random'")
        return [(-1, y, float(w)) for y, w in label_orbits(d)]
    if kind not in ("random", "plain"):
        raise ValueError(f"toy_teacher must be 'orbits', 'random' or 'plain', got {kind!r}")
    g = torch.Generator().manual_seed(int(cfg["teacher_seed"]))
    out = []
    while len(out) < int(cfg["n_teachers"]):
        if kind == "plain":
            c = int(torch.randint(0, plain_out.shape[0], (1,), generator=g))
            y = torch.sign(plain_out[c])
        else:
            c, y = -1, torch.randint(0, 2, (plain_out.shape[1],), generator=g).to(torch.float64) * 2 - 1
        if (y == 0).any() or (y == y[0]).all():
            continue
        out.append((c, y, 1.0))
    return out


def toy(cfg: dict, progress: bool = False) -> dict:
    """Enumerate the three versions and judge them on the teacher tasks (pure computation)."""
    from skipkern.landscape.binary_toy import BinaryToy, class_size_histogram, class_size_stats
    res: dict = {"versions": {}, "teachers": []}
    teachers = None
    for v in VERSIONS:
        net = BinaryToy(int(cfg["toy_input_dim"]), tuple(cfg["toy_widths"]), v, cfg["toy_activation"])
        t0 = time.perf_counter()
        out = net.outputs()
        inv, counts, table = net.functions(out)
        if teachers is None:  # the plain version comes first: its configurations are the teachers
            teachers = _teachers(out, cfg)
            res["teachers"] = [{"config": c, "labels": y.tolist(), "weight": w} for c, y, w in teachers]
        del out
        per = []
        for c, y, w in teachers:
            loss = BinaryToy.loss(table, y, cfg["toy_loss"])[inv]
            lm = net.local_minima(loss)
            glob = lm["global"]
            per.append({"teacher_config": c, "weight": w, "min_loss": lm["min"], "global_minima": int(glob.sum()),
                        "global_functions": int(torch.unique(inv[glob]).numel()),
                        "local_min_fraction": float(lm["weak"].double().mean()),
                        "strict_local_min_fraction": float(lm["strict"].double().mean()),
                        "bad_local_min_fraction": float((lm["weak"] & ~glob).double().mean())})
        res["versions"][v] = {"stats": class_size_stats(counts), "histogram": class_size_histogram(counts),
                              "teachers": per, "num_weights": net.num_weights, "seconds": time.perf_counter() - t0}
    return res


def _toy_cached(ctx: Context, cfg: dict) -> dict:
    ident = {k: cfg[k] for k in _TOY["quick"]}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    path = ctx.exp_dir(NAME) / f"toy-{key}.json"
    if path.is_file():
        rec = read_json(path)
        if rec.get("identity") == ident:
            return rec
    with threads(1 if cfg.get("threads") is None else cfg["threads"]):
        rec = dict(toy(cfg), identity=ident)
    write_json(path, rec)
    return read_json(path)


def _toy_finding(cfg: dict, t: dict) -> Finding:
    st = {v: t["versions"][v]["stats"] for v in VERSIONS}
    lf = {v: np.asarray([p["local_min_fraction"] for p in t["versions"][v]["teachers"]]) for v in VERSIONS}
    wt = np.asarray([p["weight"] for p in t["versions"]["plain"]["teachers"]], dtype=float)
    mean = {v: float(np.sum(wt * lf[v]) / wt.sum()) for v in VERSIONS}
    outs = []
    exact = "exact enumeration: the interval is the point"
    for key, a, b, stat in (("S1", "adjacent", "plain", "log2_functions"),
                            ("S2", "dense", "adjacent", "log2_functions"),
                            ("S3", "plain", "adjacent", "log2_weighted_class_size")):
        e = st[a][stat] - st[b][stat]
        outs.append(judge_interval(prediction(key), e, e, e, (1,), detail=exact))
    d = np.log10(lf["plain"]) - np.log10(lf["adjacent"])
    w = np.asarray([p["weight"] for p in t["versions"]["plain"]["teachers"]], dtype=float)
    if cfg["toy_teacher"] == "orbits":  # every task enumerated: the weighted mean is exact
        m = float(np.sum(w * d) / w.sum())
        outs.append(judge_interval(prediction("S4"), m, m, m, (int(w.sum()),), detail=(
            f"exact mean over all {int(w.sum())} non-constant labellings ({len(w)} symmetry orbits)")))
    else:
        m, lo, hi, n = paired_t(d)
        outs.append(judge_interval(prediction("S4"), m, lo, hi, (n,),
                                   detail=f"paired t over {n} sampled teacher tasks"))
    verdict, reason = combine(outs)
    ev = (f"{t['versions']['plain']['num_weights']} binary weights ({cfg['toy_input_dim']} inputs, hidden widths "
          f"{cfg['toy_widths']}, {cfg['toy_activation']} units), 2^{t['versions']['plain']['num_weights']} "
          "configurations "
          "per version. Distinct functions: " + ", ".join(f"{v} {st[v]['functions']:,}" for v in VERSIONS)
          + "; size-weighted mean class size: "
          + ", ".join(f"{v} {st[v]['weighted_mean_class_size']:,.0f}" for v in VERSIONS)
          + f". Over {_tasks(cfg, t)} ({cfg['toy_loss']} loss), single-flip local minima (task-weighted mean, range "
          "over tasks): " + ", ".join(f"{v} {100 * mean[v]:.2f}% ({100 * lf[v].min():.2f}-{100 * lf[v].max():.2f}%)"
                                      for v in VERSIONS)
          + "; global minima (configurations, task-weighted mean): " + ", ".join(
              f"{v} {np.sum(wt * [p['global_minima'] for p in t['versions'][v]['teachers']]) / wt.sum():,.0f}"
              for v in VERSIONS) + ".")
    caveats = ["The toy's size, activation, teacher and loss are our choices (the paper's toy is not public); with "
               "sign units and +-1 weights the only rescaling is by -1, which the skips break as well.",
               "Skips add fixed identity terms, so the skip versions compute larger outputs; counts of functions and "
               "local minima do not depend on that scale, losses do."]
    return Finding(TOY, TOY_CLAIM, verdict, ev, numbers={v: st[v] for v in VERSIONS}, figure="symmetry_class_sizes",
                   reason=reason, outcomes=outs, caveats=caveats)


# ---------------------------------------------------------------------------------------- deep
def _deep(ctx: Context, cfg: dict) -> tuple:
    from skipkern.experiments.deep import acc_evidence, families_of, final_values, gates_of, run_families, seeds_of
    from skipkern.experiments.runs import deep_spec
    seeds = seeds_of(ctx, cfg)
    reg = tuple(sorted(dict(kind="biasreg", **cfg["biasreg"]).items()))
    specs: dict = {}
    for fam in families_of(cfg):
        conds = {}
        for c in cfg["deep_conditions"]:
            if c == "biasreg":  # no spectra: this study compares training accuracy only
                conds[c] = [deep_spec(dict(cfg, spectra=[]), "plain", s, fam, regularizer=reg, label="biasreg")
                            for s in seeds]
            else:
                conds[c] = [deep_spec(cfg, c, s, fam) for s in seeds]
        specs[fam] = conds
    by_family = run_families(ctx, NAME, specs)
    findings = []
    for fam, recs in by_family.items():
        acc = final_values(recs)
        gates = gates_of(recs)
        outs = []
        for key in ("S5", "S6"):
            p = prediction(key)
            if p.a in acc and p.b in acc:
                outs.append(judge(p, {p.a: acc[p.a], p.b: acc[p.b]}, {c: gates[c] for c in (p.a, p.b) if c in gates}))
        verdict, reason = combine(outs)
        ev = (f"Depth {cfg['depth']}, width {cfg['width']}, {fam} init; BiasReg mu = {cfg['biasreg']['mu']}, sigma = "
              f"{cfg['biasreg']['sigma']}, lam = {cfg['biasreg']['lam']} (fixed in advance, not tuned). "
              + acc_evidence(acc, cfg["steps"]))
        findings.append(Finding(DEEP, DEEP_CLAIM, verdict, ev, numbers={"final_train_acc": acc}, figure="symmetry_deep",
                                family=fam, reason=reason, outcomes=outs,
                                caveats=["BiasReg's (mu, sigma, lam) are the middle of our search ranges, not "
                                         "tuned; the biasreg experiment tunes them."]))
    return by_family, findings, seeds


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    t = _toy_cached(ctx, cfg)
    findings = [_toy_finding(cfg, t)]
    from skipkern.experiments.symmetry_figures import class_size_figure, local_minima_figure
    figs = [class_size_figure(out, cfg, t), local_minima_figure(out, cfg, t)]
    by_family, deep_findings, seeds = ({}, [], [])
    if cfg.get("deep_conditions"):
        by_family, deep_findings, seeds = _deep(ctx, cfg)
        from skipkern.experiments.deep import accuracy_figure
        figs.append(accuracy_figure(out, "symmetry_deep", by_family, "symmetry breakers"))
    findings += deep_findings
    toy_rows = [dict(version=v, teacher=i, **p) for v in VERSIONS for i, p in enumerate(t["versions"][v]["teachers"])]
    sections = [{"title": "Symmetry breaking on a binary-weight toy (after Orhan 2017)",
                 "text": ("Class sizes: for each version, the fraction of all configurations whose function is "
                          "computed by a class of the given size (bins of powers of 2). Local minima: one line per "
                          "teacher task (or symmetry orbit of tasks). "
                          "Per-teacher numbers: symmetry_toy.csv; class-size histograms: results.json."),
                 "figures": figs[1:2]}]  # the class sizes are shown with the toy's finding
    write_csv(out / "symmetry_toy.csv", toy_rows)
    if by_family:
        from skipkern.experiments.deep import write_outputs
        return write_outputs(ctx, NAME, cfg, seeds, by_family, findings, figs, {"toy": _toy_summary(t)}, t0,
                             extra={"toy": t}, sections=sections)
    result = {"experiment": NAME, "config": cfg, "context": ctx.describe(), "summary": {"toy": _toy_summary(t)},
              "toy": t, "findings": [f.to_dict() for f in findings], "figures": figs, "sections": sections,
              "elapsed_s": time.perf_counter() - t0}
    write_json(out / "results.json", result)
    return result


def _tasks(cfg: dict, t: dict) -> str:
    """The teacher tasks in words, with how many give distinct numbers (tasks related by a symmetry of
    the input cube give the same)."""
    ws = [p["weight"] for p in t["versions"]["plain"]["teachers"]]
    if cfg["toy_teacher"] == "orbits":
        return f"all {int(sum(ws))} non-constant labellings of the inputs ({len(ws)} symmetry orbits)"
    keys = zip(*[[(p["local_min_fraction"], p["global_minima"], p["min_loss"]) for p in t["versions"][v]["teachers"]]
                 for v in VERSIONS])
    return f"{len(ws)} {cfg['toy_teacher']} teacher tasks ({len(set(keys))} distinct landscapes)"


def _toy_summary(t: dict) -> dict:
    out = {}
    for v in VERSIONS:
        ps = t["versions"][v]["teachers"]
        w = np.asarray([p["weight"] for p in ps], dtype=float)
        mean = {k: float(np.sum(w * np.asarray([p[k] for p in ps], dtype=float)) / w.sum())
                for k in ("local_min_fraction", "bad_local_min_fraction", "strict_local_min_fraction", "global_minima")}
        out[v] = dict(t["versions"][v]["stats"], **{f"mean_{k}": x for k, x in mean.items()})
    return out
