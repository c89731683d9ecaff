"""Experiment ``architectures``: plain vs residual vs hyper-residual nets (docs/paper.md, results 1, 2, 7),
in each init family.

Same depth, width, data, seeds and step budget for the three. Measured per run: training accuracy over
the steps (result 1); the Hessian eigenvalue density at initialisation and at the end, with the
degenerate fraction at comparable thresholds, its probe error and quadrature bounds (result 2; the
paper's central figure is the densities themselves); the condition number of each hidden
representation (result 7: numerically infinite deep in plain nets, finite in residual nets; Oyedotun
et al.), plus dead units, participation ratio and gradient norms per layer.
"""
from __future__ import annotations

import math
import time

import numpy as np

from skipkern.experiments.common import Context, fmt, stats
from skipkern.experiments.deep import (LOG10_COND_CAP, acc_evidence, acc_summary, accuracy_figure, families_of,
                                       final_values, finding, gates_of, run_families, seeds_of, write_outputs)
from skipkern.experiments.runs import deep_spec, diag_series
from skipkern.experiments.spectra import TAU, TAUS, density_figure, fraction_key, run_spectra
from skipkern.plotting import color_for, layer_plot, legend_outside, mean_ci, new_figure, save_figure

NAME = "architectures"
ARCHS = ("plain", "residual", "hyper_residual")


def cond_profile(rec: dict, which: str = "final") -> np.ndarray:
    """Per-layer condition numbers [depth] at the first ("init") or last ("final") diagnosed epoch."""
    d = diag_series(rec, "condition_numbers", "condition_number")
    if not d:
        return np.full(rec["identity"]["depth"], np.nan)
    return d[min(d)] if which == "init" else d[max(d)]


def log10_capped(profile: np.ndarray) -> np.ndarray:
    """log10 of condition numbers with inf and values above 10^LOG10_COND_CAP drawn at the cap."""
    p = np.asarray(profile, dtype=float)
    with np.errstate(all="ignore"):
        lg = np.where(np.isfinite(p) & (p > 0), np.log10(p), LOG10_COND_CAP)
    return np.minimum(lg, LOG10_COND_CAP)


def cond_measures(rec: dict, which: str = "final") -> dict:
    """log10 condition number of the last hidden layer and its least-squares slope over the layers
    (decades per layer), both with numerically singular layers at the cap; singular-layer count."""
    lg = log10_capped(cond_profile(rec, which))
    layers = np.arange(1, lg.size + 1)
    ok = np.isfinite(lg)
    slope = float(np.polyfit(layers[ok], lg[ok], 1)[0]) if ok.sum() >= 2 else math.nan
    return {"log10_cond_last": float(lg[-1]), "log10_cond_slope": slope,
            "singular_layers": int((lg >= LOG10_COND_CAP).sum())}


def spectral_values(records: dict, when: str, tau: float = TAU, kind: str = "degenerate") -> tuple:
    """({condition: per-seed Gauss estimates}, {condition: (per-seed lower bounds, upper bounds)},
    {condition: per-seed N(C-1)/P}) of the fraction at threshold tau x rms at ``when``."""
    vals, bounds, ratio = {}, {}, {}
    key = fraction_key(kind, tau)
    for c, recs in records.items():
        fr = [run_spectra(r).get(when, {}) for r in recs]
        if not any(key in f for f in fr):
            continue
        vals[c] = [f.get(key, {}).get("value", math.nan) for f in fr]
        bounds[c] = ([f.get(key, {}).get("lower", math.nan) for f in fr],
                     [f.get(key, {}).get("upper", math.nan) for f in fr])
        ratio[c] = [f.get("rank_ratio", math.nan) for f in fr]
    return vals, bounds, ratio


def rank_sentence(ratio: dict) -> str:
    """Where N (C - 1) is below P (a data-rank floor), by how much; else that it is above."""
    r = [v for vs in ratio.values() for v in vs if math.isfinite(v)]
    if not r:
        return ""
    lo = min(r)
    if lo >= 1:
        return (f"Data rank: N (C - 1) / P = {lo:.2f} or more, so the data do not force zero eigenvalues (no "
                f"data-rank floor).")
    return (f"Data rank: N (C - 1) / P = {lo:.2f} < 1: at least {1 - lo:.0%} of the eigenvalues are zero in every "
            f"net because of the sample count alone; the fractions can differ only above that floor.")


def specs_for(ctx: Context, cfg: dict, archs=ARCHS) -> dict:
    seeds = seeds_of(ctx, cfg)
    return {fam: {a: [deep_spec(cfg, a, s, fam) for s in seeds] for a in archs} for fam in families_of(cfg)}


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    by_fam = run_families(ctx, NAME, specs_for(ctx, cfg))
    findings, summary, figs = [], {}, []
    figs.append(accuracy_figure(out, "architectures_train_accuracy", by_fam,
                                f"depth {cfg['depth']}, width {cfg['width']}"))
    for fam, records in by_fam.items():
        gates = gates_of(records)
        acc = final_values(records)
        findings.append(finding(1, fam, acc, gates, acc_evidence(acc, cfg["steps"]), {"final_train_acc": acc},
                                "architectures_train_accuracy"))
        density = density_figure(out, f"architectures_density_{fam}", _spectra_files(records),
                                 f"Hessian eigenvalue density, {fam} init, depth {cfg['depth']}, width {cfg['width']}")
        figs.append(density)
        deg, bounds, ratio = spectral_values(records, "end")
        deg0, _, _ = spectral_values(records, "init")
        resolved = _resolved(ctx, cfg, records)
        if deg:
            ev2 = (f"Fraction of Hessian eigenvalues with |λ| <= {TAU:g} x rms(λ) after training (Gauss estimate; "
                   f"quadrature bounds [lower, upper] averaged over seeds): "
                   + "; ".join(f"{a} {fmt(deg[a], pct=True)} [{np.nanmean(bounds[a][0]):.1%}, "
                               f"{np.nanmean(bounds[a][1]):.1%}]" for a in deg)
                   + ". At initialisation: " + "; ".join(f"{a} {fmt(deg0[a], pct=True)}" for a in deg0) + ". "
                   + rank_sentence(ratio))
            cav = ["Each interval below covers the quadrature bounds of every run; where they are wide the m-step "
                   "quadrature lumps the eigenvalues near zero into one Ritz node and cannot resolve the threshold.",
                   f"Threshold sweep (tau in {list(TAUS)}) in architectures/architectures_threshold_sweep_{fam}.png."]
            numbers = {"fraction_degenerate": deg, "bounds": bounds, "init": deg0, "rank_ratio": ratio}
            if "end" in resolved:  # the adaptively resolved fractions replace the fixed-size quadrature's
                rv = {a: [d["value"] for d in resolved["end"][a]] for a in resolved["end"]}
                rb = {a: ([d["lower"] for d in resolved["end"][a]], [d["upper"] for d in resolved["end"][a]])
                      for a in resolved["end"]}
                deg, bounds = rv, rb
                ev2 = (f"Certified fraction of Hessian eigenvalues with |λ| <= {TAU:g} x rms(λ) after training, "
                       f"resolved adaptively (interval narrower than {cfg['resolve_tol']:g} or "
                       f"{cfg['resolve_max_matvecs']} Hessian-vector products; value [lower, upper], seed means): "
                       + _resolved_text(resolved["end"]) + ". " + ev2)
                numbers["resolved"] = resolved
            if "init" in resolved:
                ev2 += " Resolved at initialisation: " + _resolved_text(resolved["init"]) + "."
                numbers["resolved"] = resolved
            findings.append(finding(2, fam, {"fraction_degenerate": deg}, gates, ev2, numbers, density,
                                    bounds={"fraction_degenerate": bounds}, caveats=cav))
            figs.append(_sweep_figure(out, fam, records))
        cm = {a: [cond_measures(r) for r in records[a]] for a in ARCHS}
        cm0 = {a: [cond_measures(r, "init") for r in records[a]] for a in ARCHS}
        vals7 = {m: {a: [d[m] for d in cm[a]] for a in ARCHS} for m in ("log10_cond_last", "log10_cond_slope")}
        ev7 = (f"After training, log10 condition number of the last hidden representation (numerically singular "
               f"drawn at {LOG10_COND_CAP:g}): " + "; ".join(f"{a} {fmt(vals7['log10_cond_last'][a], 2)}" for a in ARCHS)
               + "; slope over the layers (decades per layer): "
               + "; ".join(f"{a} {fmt(vals7['log10_cond_slope'][a], 3)}" for a in ARCHS)
               + "; numerically singular layers: "
               + "; ".join(f"{a} {fmt([d['singular_layers'] for d in cm[a]], 1)}" for a in ARCHS)
               + ". At initialisation, last layer: "
               + "; ".join(f"{a} {fmt([d['log10_cond_last'] for d in cm0[a]], 2)}" for a in ARCHS) + ".")
        findings.append(finding(7, fam, vals7, gates, ev7, {"final": cm, "init": cm0},
                                "architectures_condition_numbers"))
        summary[fam] = acc_summary(records)
        for a in deg:
            summary[fam][a]["fraction_degenerate_end"] = stats(deg[a])
    figs.append(_condition_figure(out, by_fam))
    figs.append(_diagnostics_figure(out, by_fam))
    return write_outputs(ctx, NAME, cfg, seeds, by_fam, findings, [f for f in figs if f], summary, t0)


def _resolved(ctx: Context, cfg: dict, records: dict) -> dict:
    """{when: {condition: [resolved fraction per seed]}} for the ``resolve_fractions`` checkpoints ([]: none)."""
    from skipkern.experiments.spectra import resolved_fraction
    from tqdm.auto import tqdm
    whens = list(cfg.get("resolve_fractions") or [])
    jobs = [(w, a, r) for w in whens for a, recs in records.items() for r in recs]
    out: dict = {}
    for w, a, r in tqdm(jobs, desc=f"{NAME}: resolved fractions", disable=not ctx.progress or not jobs):
        d = resolved_fraction(r, ctx, w, TAU, float(cfg.get("resolve_tol", 0.1)),
                              int(cfg.get("resolve_max_matvecs", 1500)))
        out.setdefault(w, {}).setdefault(a, []).append(d)
    return {w: by for w, by in out.items() if all(all(d for d in v) for v in by.values())}


def _resolved_text(by: dict) -> str:
    return "; ".join(f"{a} {np.mean([d['value'] for d in v]):.1%} [{np.mean([d['lower'] for d in v]):.1%}, "
                     f"{np.mean([d['upper'] for d in v]):.1%}] ({sum(not d['converged'] for d in v)} of {len(v)} "
                     f"not converged)" for a, v in by.items())


def _spectra_files(records: dict) -> dict:
    return {a: {w: [r["spectra"][w]["path"] for r in recs if w in (r.get("spectra") or {})] for w in ("init", "end")}
            for a, recs in records.items()}


def _sweep_figure(out, fam: str, records: dict) -> str:
    """Degenerate fraction against the threshold tau (x rms), with quadrature bounds, init and end."""
    fig, axes = new_figure(2, 1, width=5.2, height=3.8)
    for ax, when in zip(axes, ("init", "end")):
        for a, recs in records.items():
            est, lo, hi = [], [], []
            for tau in TAUS:
                v, b, _ = spectral_values({a: recs}, when, tau)
                if a not in v:
                    break
                est.append(mean_ci(v[a])[0]), lo.append(np.nanmean(b[a][0])), hi.append(np.nanmean(b[a][1]))
            if len(est) != len(TAUS):
                continue
            c = color_for(a)
            ax.plot(TAUS, est, marker="o", color=c, label=f"{a}: Gauss estimate (mean of n={len(recs)} seeds)")
            ax.fill_between(TAUS, lo, hi, color=c, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("threshold tau (|λ| <= tau x rms(λ))")
        ax.set_ylabel("fraction of eigenvalues")
        ax.set_title(f"{fam} init, {'at initialisation' if when == 'init' else 'after training'}: shaded = "
                     f"quadrature bounds (seed mean)", fontsize=9)
        ax.grid(alpha=0.3)
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    stem = f"architectures_threshold_sweep_{fam}"
    save_figure(fig, out, stem)
    return stem


def _condition_figure(out, by_fam: dict) -> str:
    fams = list(by_fam)
    fig, axes = new_figure(len(fams), 2, width=5.4, height=3.6)
    cap = 10.0 ** LOG10_COND_CAP
    for j, fam in enumerate(fams):
        for i, which in enumerate(("init", "final")):
            runs = {a: np.stack([cond_profile(r, which) for r in by_fam[fam][a]]) for a in ARCHS}
            layer_plot(axes[i * len(fams) + j], runs, ylabel="condition number", logy=True, cap=cap, legend=False,
                       title=f"{fam} init: {'at initialisation' if which == 'init' else 'after training'}")
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, "architectures_condition_numbers")
    return "architectures_condition_numbers"


def _diagnostics_figure(out, by_fam: dict) -> str:
    panels = [("elimination", "dead_fraction", "fraction of dead units", False),
              ("linear_dependence", "normalized_pr", "participation ratio / width", False),
              ("gradient_norms", "weight_grad_norm", "weight-gradient norm (hidden layers)", True)]
    fams = list(by_fam)
    fig, axes = new_figure(len(panels), len(fams), width=4.6, height=3.4)
    for i, fam in enumerate(fams):
        for j, (diag, arr, label, logy) in enumerate(panels):
            runs = {}
            for a in ARCHS:
                prof = [diag_series(r, diag, arr) for r in by_fam[fam][a]]
                # gradient norms list the output layer too: keep the hidden layers only
                prof = [p[max(p)][:r["identity"]["depth"]] for p, r in zip(prof, by_fam[fam][a]) if p]
                if prof:
                    runs[a] = np.stack(prof)
            if runs:
                layer_plot(axes[i * len(panels) + j], runs, ylabel=label, logy=logy, legend=False,
                           title=f"{fam} init: {label}, after training", clip=None if logy else (0.0, 1.0))
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    save_figure(fig, out, "architectures_diagnostics")
    return "architectures_diagnostics"

