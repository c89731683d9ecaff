"""Hessian spectra of the deep-net runs: degenerate and negative fractions with comparable thresholds,
their quadrature bounds and probe errors, the data-rank check, and the eigenvalue-density figure.

Thresholds. A fraction of "degenerate" eigenvalues |lambda| <= eps means nothing unless eps means the
same in every net. The nets' Hessians differ in scale by orders of magnitude (a Glorot residual net's
top eigenvalue is ~1e4, a plain one's ~0.4), so one absolute eps sits inside one net's bulk and far
outside another's. We scale eps by each spectrum's root-mean-square eigenvalue,
rms = sqrt(tr(H^2) / P): tau * rms with tau swept over ``TAUS`` (primary ``TAU``). The second moment is
a polynomial of degree 2, which an m-step Gauss quadrature integrates exactly (m >= 2), so the scale
carries only probe noise, unlike max|lambda|, a single Ritz value at the edge. Absolute thresholds
``EPS_ABS`` are recorded too.

Errors. Every fraction comes with the standard error across probes and with the
Chebyshev-Markov-Stieltjes bounds of the quadrature (the true probe measure lies between them). When
the bounds are wide, the quadrature cannot resolve the threshold (most of the mass sits in one Ritz
node near zero) and the verdicts that use the fraction say so instead of trusting the point estimate.

Data rank. The Gauss-Newton part of the cross-entropy Hessian on N samples of C classes has rank at
most N (C - 1), so with N (C - 1) < P at least 1 - N (C - 1) / P of the eigenvalues are zero in every
net, whatever its architecture. ``summarize`` records N (C - 1) / P; the report says where it is below 1.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from skipkern.plotting import color_for, legend_outside, new_figure, save_figure

__all__ = ["TAUS", "TAU", "EPS_ABS", "summarize", "summarize_file", "run_spectra", "fraction_key", "density_figure",
           "log_abs_density"]

TAUS = (1e-3, 1e-2, 1e-1)
TAU = 1e-2
EPS_ABS = (1e-4, 1e-3, 1e-2)


def fraction_key(kind: str, tau: float = TAU) -> str:
    """Field name of a fraction in a spectrum summary, e.g. fraction_key("degenerate", 0.01)."""
    return f"{kind}_tau{tau:g}"


def _estimate(v) -> tuple:
    """(value, stderr) of an Estimate tuple or a fraction object with .value/.stderr."""
    if hasattr(v, "value"):
        return float(v.value), float(getattr(v, "stderr", math.nan))
    return float(v[0]), float(v[1])


def _fraction(dens, kind: str, eps: float) -> dict:
    """value, se, lower, upper of the degenerate (|lambda| <= eps) or negative (lambda < -eps) fraction."""
    f = dens.fraction_degenerate(eps) if kind == "degenerate" else dens.fraction_negative(eps)
    value, se = _estimate(f)
    if hasattr(f, "lower") and hasattr(f, "upper"):  # fraction objects carrying certified bounds
        lo, hi = float(getattr(f.lower, "value", f.lower)), float(getattr(f.upper, "value", f.upper))
    else:
        b = dens.fraction_degenerate_bounds(eps) if kind == "degenerate" else dens.fraction_negative_bounds(eps)
        lo, hi = _estimate(b[0])[0], _estimate(b[1])[0]
    return {"value": value, "se": se, "lower": lo, "upper": hi}


def summarize(dens, samples: Optional[int] = None, num_classes: Optional[int] = None) -> dict:
    """Scale, threshold sweep and data-rank ratio of one SpectralDensity (JSON-friendly)."""
    live = dens.weights > 0
    rms = math.sqrt(max(_estimate(dens.moment(2))[0], 0.0))
    out = {"dim": int(dens.dim), "num_probes": int(dens.num_probes), "num_steps": int(dens.nodes.shape[1]),
           "rms": rms, "max_abs": float(np.abs(dens.nodes[live]).max()) if live.any() else 0.0,
           "trace_per_param": _estimate(dens.moment(1))[0], "taus": list(TAUS), "eps_abs": list(EPS_ABS)}
    for tau in TAUS:
        for kind in ("degenerate", "negative"):
            out[fraction_key(kind, tau)] = _fraction(dens, kind, tau * rms)
    for eps in EPS_ABS:
        out[f"degenerate_abs{eps:g}"] = _fraction(dens, "degenerate", eps)
    if samples is not None and num_classes is not None:
        out["samples"] = int(samples)
        out["rank_ratio"] = samples * (num_classes - 1) / dens.dim
    return out


def summarize_file(path, num_classes: Optional[int] = None, samples: Optional[int] = None) -> dict:
    from skipkern.hessian import SpectralDensity
    dens = SpectralDensity.load(path)
    if samples is None:
        samples = dens.meta.get("samples")
    return summarize(dens, samples, num_classes)


def run_spectra(rec: dict) -> dict:
    """{"init"/"end": summary} of a run record, recomputed from its saved density files when they are
    on disk (so the thresholds and bounds of the current code apply to earlier runs), else as recorded."""
    out = {}
    for when, s in (rec.get("spectra") or {}).items():
        p = s.get("path")
        if p and Path(p).is_file():
            key = (p, Path(p).stat().st_mtime)
            if key not in _SUMMARIES:
                _SUMMARIES[key] = summarize_file(p, rec.get("num_classes"), s.get("samples"))
            out[when] = {**s, **_SUMMARIES[key]}
        else:
            out[when] = s
    return out


_SUMMARIES: dict = {}


# ------------------------------------------------------------------------------------------ figure
def log_abs_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, width: float = 0.15,
                    floor: float = 1e-12) -> tuple:
    """Densities of log10|lambda| for the positive and the negative eigenvalues of one quadrature.

    Each Ritz node is a Gaussian of ``width`` decades at log10|theta| weighted by its Gauss weight
    (nodes below ``floor`` are drawn at it), averaged over probes. Returns (positive [G], negative [G]),
    each integrating to its share of the eigenvalues."""
    pos, neg = np.zeros_like(grid), np.zeros_like(grid)
    k = nodes.shape[0]
    for th, w in zip(nodes, weights):
        keep = w > 0
        th, w = th[keep], w[keep]
        lg = np.log10(np.maximum(np.abs(th), floor))
        kern = np.exp(-0.5 * ((grid[:, None] - lg[None, :]) / width) ** 2) / (width * math.sqrt(2 * math.pi))
        pos += (kern * (w * (th >= 0))[None, :]).sum(1)
        neg += (kern * (w * (th < 0))[None, :]).sum(1)
    return pos / k, neg / k


def density_figure(out, stem: str, spectra: Mapping[str, Mapping[str, Sequence[str]]], title: str) -> str:
    """The paper's central figure: the Hessian eigenvalue density per architecture (columns), at
    initialisation and after training (rows), seeds overlaid, in two views: signed (linear eigenvalue
    axis, log density) and log10|lambda| (positive solid, negative dashed).

    Args:
        spectra: {condition: {"init": [density file per seed], "end": [...]}}.
    """
    from matplotlib.ticker import MaxNLocator

    from skipkern.hessian import SpectralDensity
    conds = [c for c in spectra if any(spectra[c].get(w) for w in ("init", "end"))]
    if not conds:
        return ""
    fig, axes = new_figure(len(conds), 4, width=4.2, height=2.9)
    grid_log = np.linspace(-10, 6, 480)
    for j, c in enumerate(conds):
        color = color_for(c)
        for i, when in enumerate(("init", "end")):
            files = spectra[c].get(when) or []
            ax_s, ax_l = axes[(2 * i) * len(conds) + j], axes[(2 * i + 1) * len(conds) + j]
            dens = [SpectralDensity.load(f) for f in files]
            if dens:
                lo = min(float(d.nodes[d.weights > 0].min()) for d in dens)
                hi = max(float(d.nodes[d.weights > 0].max()) for d in dens)
                pad = 0.05 * (hi - lo) + 1e-12
                grid = np.linspace(lo - pad, hi + pad, 801)
                logs = [np.log10(np.maximum(np.abs(d.nodes[d.weights > 1e-4]), 1e-12)) for d in dens]
                ax_l.set_xlim(max(-10.0, min(v.min() for v in logs) - 1), min(6.0, max(v.max() for v in logs) + 1))
            peak = 0.0
            for d in dens:
                vals = d.density(grid)  # Gaussian smoothing of the Ritz values (width: the density's sigma)
                peak = max(peak, float(vals.max()))
                ax_s.plot(grid, np.maximum(vals, 1e-30), color=color, lw=0.8, alpha=0.7)
                pos, neg = log_abs_density(d.nodes, d.weights, grid_log)
                ax_l.plot(grid_log, pos, color=color, lw=0.8, alpha=0.7)
                ax_l.plot(grid_log, neg, color=color, lw=0.8, alpha=0.7, ls="--")
            when_t = "at initialisation" if when == "init" else "after training"
            ax_s.set_yscale("log")
            if peak > 0:
                ax_s.set_ylim(peak * 1e-7, peak * 3)
            ax_s.set_title(f"{c}, {when_t} (n={len(files)})", fontsize=9)
            ax_s.set_xlabel("eigenvalue λ")
            # eigenvalues up to ~1e5: few ticks and a shared power of ten, so the labels never run together
            ax_s.xaxis.set_major_locator(MaxNLocator(5))
            ax_s.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax_s.set_ylabel("density (log)")
            ax_l.set_title(f"{c}, {when_t}: log10|λ|", fontsize=9)
            ax_l.set_xlabel("log10 |λ|")
            ax_l.set_ylabel("density per decade")
            for ax in (ax_s, ax_l):
                ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=color_for(c), label=c) for c in conds]
    handles += [Line2D([], [], color="k", label="λ > 0 (log view)"),
                Line2D([], [], color="k", ls="--", label="λ < 0 (log view)")]
    fig.suptitle(title + " — one line per seed", fontsize=11)
    legend_outside(fig, handles)
    save_figure(fig, out, stem)
    return stem


# ---------------------------------------------------------------- resolved (adaptive) fractions
def resolved_fraction(rec: dict, ctx, when: str, tau: float = TAU, tol: float = 0.1, max_matvecs: int = 1500) -> dict:
    """Certified degenerate fraction |lambda| <= tau x rms of one finished run, resolved adaptively
    (``skipkern.hessian.adaptive.spectral_fraction``: probes and Lanczos steps are added until the
    certified interval is narrower than ``tol`` or ``max_matvecs`` Hessian-vector products are spent).

    The fixed-size quadrature of the run's own spectrum lumps the eigenvalues near zero into one Ritz
    node and cannot resolve such thresholds; this spends more products on the one interval instead. The
    Hessian is the same as the spectrum's (same samples; "init": the net rebuilt from its seed, "end": the
    checkpoint) and rms is the spectrum's. Cached in ``<run>/spectra/resolved_<when>_tau<tau>.json``, so
    it is computed after training, never changes a run's identity, and is done once.
    Returns {"value", "lower", "upper", "converged", "num_matvecs", "route", "interval", "rms", "time"}.
    """
    import json
    import time as _time

    import torch
    import torch.nn.functional as F

    from skipkern import distributed as sd
    from skipkern.experiments.runs import _build, spec_from_identity
    from skipkern.hessian import HessianOperator
    from skipkern.hessian.adaptive import spectral_fraction

    folder = Path(rec["folder"])
    path = folder / "spectra" / f"resolved_{when}_tau{tau:g}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        if d.get("tol") == tol and d.get("max_matvecs") == max_matvecs:
            return d
    summ = run_spectra(rec).get(when)
    if not summ:
        return {}
    spec = spec_from_identity(rec["identity"])
    data = ctx.dataset(spec.n_train, spec.n_test, spec.data_seed)
    if when == "init":
        model, _ = _build(spec, ctx, data)
    else:
        from skipkern.train import load_checkpoint
        model, _ = load_checkpoint(folder, device=ctx.device)
    n = data.n_train
    g = torch.Generator().manual_seed(int(spec.seed) * 1_000_003 + 3)  # the spectrum's samples
    idx = torch.randperm(n, generator=g)[:min(spec.spectrum_samples, n)].to(data.x_train.device)
    group = ctx.group
    op = HessianOperator(model, F.cross_entropy, (sd.shard(data.x_train[idx], group), sd.shard(data.y_train[idx], group)),
                         process_group=group)
    eps = tau * float(summ["rms"])
    t0 = _time.perf_counter()
    r = spectral_fraction(op, (-eps, eps), tol=tol, max_matvecs=max_matvecs, seed=int(spec.seed) * 7919 + 17,
                          progress=False)
    out = {"value": float(r.value), "lower": float(r.lower), "upper": float(r.upper), "converged": bool(r.converged),
           "num_matvecs": int(r.num_matvecs), "route": r.method, "interval": [-eps, eps], "rms": float(summ["rms"]), "tau": tau,
           "tol": tol, "max_matvecs": max_matvecs, "time": _time.perf_counter() - t0}
    if sd.is_main(group):
        path.write_text(json.dumps(out))
    return out
