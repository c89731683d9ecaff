"""Experiment ``architectures``: plain vs residual vs hyper-residual nets (docs/paper.md, results 1, 2, 7).

Same depth, width, data and budget for the three; several seeds each. Measured per run: training
accuracy over epochs (result 1), the fractions of degenerate (|lambda| <= eps) and negative Hessian
eigenvalues at the spectrum checkpoints (result 2), and the per-layer diagnostics, among them the
condition number of each hidden representation (result 7: numerically infinite deep in plain nets,
finite in residual nets; Oyedotun et al.).
"""
from __future__ import annotations

import math
import time

import numpy as np

from skipkern.experiments.common import (PAPER_CLAIMS, Context, Finding, compare, fmt, stats, verdict)
from skipkern.experiments.deep import (LOG10_COND_CAP, accuracy_figure, acc_summary, curves, final_values,
                                       rank_floor, run_conditions, run_rows, seeds_of, spectrum_values,
                                       write_outputs)
from skipkern.experiments.runs import deep_spec, diag_series
from skipkern.plotting import band_plot, layer_plot, new_figure, save_figure

NAME = "architectures"
ARCHS = ("plain", "residual", "hyper_residual")


def cond_profile(rec: dict, which: str = "final") -> np.ndarray:
    """Per-layer condition numbers [depth] at the first ("init") or last ("final") diagnosed epoch."""
    d = diag_series(rec, "condition_numbers", "condition_number")
    if not d:
        return np.full(rec["identity"]["depth"], np.nan)
    return d[min(d)] if which == "init" else d[max(d)]


def singular_layers(profile: np.ndarray) -> int:
    """Hidden layers whose representation is numerically singular (cond inf or above 10^LOG10_COND_CAP)."""
    p = np.asarray(profile, dtype=float)
    return int((~np.isfinite(p) | (p > 10 ** LOG10_COND_CAP)).sum())


def max_finite_log10(profile: np.ndarray) -> float:
    """log10 of the largest finite condition number of a profile (NaN if none is finite)."""
    p = np.asarray(profile, dtype=float)
    p = p[np.isfinite(p)]
    return float(np.log10(p.max())) if p.size else math.nan


def specs_for(ctx: Context, cfg: dict, archs=ARCHS) -> dict:
    seeds = seeds_of(ctx, cfg)
    return {a: [deep_spec(cfg, a, s) for s in seeds] for a in archs}


def run(ctx: Context, cfg: dict) -> dict:
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = seeds_of(ctx, cfg)
    records = run_conditions(ctx, NAME, specs_for(ctx, cfg))
    acc = final_values(records)

    # result 1: training accuracy
    c1 = [compare("hyper_residual", acc["hyper_residual"], "residual", acc["residual"], ">=", pct=True),
          compare("residual", acc["residual"], "plain", acc["plain"], ">", pct=True)]
    f1 = Finding(1, PAPER_CLAIMS[1], verdict(c1),
                 "Final training accuracy after {} epochs: ".format(cfg["epochs"])
                 + "; ".join(f"{a} {fmt(acc[a], pct=True)}" for a in ARCHS) + ".", c1,
                 {"final_train_acc": acc}, "architectures_train_accuracy")

    # result 2: degenerate eigenvalue fraction, averaged over the spectrum checkpoints of each run. The
    # verdict uses the scale-free threshold (|lambda| <= rel * max|lambda|); the absolute one is reported.
    deg = {a: [spectrum_values(r, "fraction_degenerate_rel") for r in records[a]] for a in ARCHS}
    deg_abs = {a: [spectrum_values(r, "fraction_degenerate") for r in records[a]] for a in ARCHS}
    neg = {a: [spectrum_values(r, "fraction_negative_rel") for r in records[a]] for a in ARCHS}
    scale = {a: [spectrum_values(r, "spectral_scale") for r in records[a]] for a in ARCHS}
    if all(np.isfinite(v).any() for v in deg.values()):
        c2 = [compare("plain", deg["plain"], "residual", deg["residual"], ">", pct=True),
              compare("residual", deg["residual"], "hyper_residual", deg["hyper_residual"], ">", pct=True)]
        ev2 = (f"Fraction of Hessian eigenvalues with |lambda| <= {cfg.get('degenerate_rel')} x max|lambda|, mean "
               f"over the checkpoints at epochs {list(cfg.get('spectrum_at', ()))}: "
               + "; ".join(f"{a} {fmt(deg[a], pct=True)}" for a in ARCHS)
               + f". With the absolute threshold |lambda| <= {cfg.get('degenerate_eps')}: "
               + "; ".join(f"{a} {fmt(deg_abs[a], pct=True)}" for a in ARCHS)
               + ". Negative fraction (lambda < -threshold): " + "; ".join(f"{a} {fmt(neg[a], pct=True)}" for a in ARCHS)
               + ". Spectral scale max|lambda|: " + "; ".join(f"{a} {fmt(scale[a], 3)}" for a in ARCHS) + ". "
               + rank_floor(ctx, cfg, records["plain"])[1])
        f2 = Finding(2, PAPER_CLAIMS[2], verdict(c2), ev2, c2,
                     {"fraction_degenerate_rel": deg, "fraction_degenerate_abs": deg_abs, "fraction_negative_rel": neg,
                      "spectral_scale": scale}, "architectures_spectra")
    else:
        f2 = Finding(2, PAPER_CLAIMS[2], "inconclusive", "No Hessian spectra were computed in this configuration "
                     "(spectrum_at is empty).", [], {}, "")

    # result 7: condition numbers of the hidden representations (end of training; init reported too)
    sing = {w: {a: [singular_layers(cond_profile(r, w)) for r in records[a]] for a in ("plain", "residual")}
            for w in ("init", "final")}
    maxlog = {a: [max_finite_log10(cond_profile(r)) for r in records[a]] for a in ARCHS}
    c7 = [compare("plain", sing["final"]["plain"], "residual", sing["final"]["residual"], ">"),
          compare("residual", sing["final"]["residual"], "zero", [0.0], "<=", tol=0.5)]
    for c in c7:
        c.text = "numerically singular hidden layers (cond > 1e8 or inf) after training: " + c.text
    depth = cfg["depth"]
    ev7 = (f"Hidden layers (of {depth}) whose representation matrix is numerically singular, after training: "
           f"plain {fmt(sing['final']['plain'], 1)}, residual {fmt(sing['final']['residual'], 1)}; at "
           f"initialisation: plain {fmt(sing['init']['plain'], 1)}, residual {fmt(sing['init']['residual'], 1)}. "
           f"Largest finite log10 condition number after training: "
           + "; ".join(f"{a} {fmt(maxlog[a], 2)}" for a in ARCHS) + ".")
    f7 = Finding(7, PAPER_CLAIMS[7], verdict(c7), ev7, c7, {"singular_layers": sing, "max_finite_log10_cond": maxlog},
                 "architectures_condition_numbers")

    figs = [accuracy_figure(out, "architectures_train_accuracy", records,
                            f"depth {depth}, width {cfg['width']}: training accuracy")]
    figs.append(_spectra_figure(out, records, cfg))
    figs.append(_condition_figure(out, records))
    figs.append(_diagnostics_figure(out, records))
    figs = [f for f in figs if f]

    def extra(cond: str, r: dict) -> dict:
        return {"singular_layers_init": singular_layers(cond_profile(r, "init")),
                "singular_layers_final": singular_layers(cond_profile(r, "final"))}

    summary = acc_summary(records)
    for a in ARCHS:
        summary[a].update(mean_fraction_degenerate_rel=stats(deg[a]), mean_fraction_degenerate_abs=stats(deg_abs[a]),
                          mean_fraction_negative_rel=stats(neg[a]), mean_spectral_scale=stats(scale[a]))
    return write_outputs(ctx, NAME, cfg, seeds, records, [f1, f2, f7], figs, summary, t0,
                         rows=run_rows(records, extra))


def _spectra_figure(out, records: dict, cfg: dict) -> str:
    panels = [("spectrum.fraction_degenerate_rel", f"fraction |lambda| <= {cfg.get('degenerate_rel')} max|lambda|",
               "degenerate eigenvalues (scale-free)", False),
              ("spectrum.fraction_degenerate", f"fraction |lambda| <= {cfg.get('degenerate_eps')}",
               "degenerate eigenvalues (absolute)", False),
              ("spectrum.fraction_negative_rel", "fraction of negative eigenvalues", "negative eigenvalues", False),
              ("spectrum.spectral_scale", "max |lambda| (spectral scale)", "Hessian scale", True)]
    ep, _ = curves(records, panels[0][0])
    if ep.size == 0:
        return ""
    fig, axes = new_figure(2, 2, width=5.0)
    for ax, (key, ylabel, title, logy) in zip(axes, panels):
        epochs, vals = curves(records, key)
        band_plot(ax, epochs, vals, xlabel="epoch", ylabel=ylabel, title=title, logy=logy)
        for line in ax.get_lines():
            line.set_marker("o")
    save_figure(fig, out, "architectures_spectra")
    return "architectures_spectra"


def _condition_figure(out, records: dict) -> str:
    fig, axes = new_figure(2, 1, width=5.2)
    cap = 10.0 ** LOG10_COND_CAP
    for ax, which in zip(axes, ("init", "final")):
        runs = {a: np.stack([cond_profile(r, which) for r in records[a]]) for a in ARCHS}
        layer_plot(ax, runs, ylabel="condition number of hidden representation", logy=True, cap=cap,
                   title=f"condition numbers per layer ({'initialisation' if which == 'init' else 'after training'})")
    save_figure(fig, out, "architectures_condition_numbers")
    return "architectures_condition_numbers"


def _diagnostics_figure(out, records: dict) -> str:
    panels = [("elimination", "dead_fraction", "fraction of dead units", False),
              ("linear_dependence", "normalized_pr", "participation ratio / width", False),
              ("gradient_norms", "weight_grad_norm", "weight-gradient norm", True)]
    fig, axes = new_figure(3, 1, width=4.6)
    for ax, (diag, arr, label, logy) in zip(axes, panels):
        runs = {}
        for a in ARCHS:
            prof = [diag_series(r, diag, arr) for r in records[a]]
            prof = [p[max(p)] for p in prof if p]
            if prof:
                runs[a] = np.stack(prof)
        if runs:
            layer_plot(ax, runs, ylabel=label, logy=logy, title=f"{label} (after training)")
    save_figure(fig, out, "architectures_diagnostics")
    return "architectures_diagnostics"
