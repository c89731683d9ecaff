"""report.md: each of the paper's results (docs/paper.md) beside what a ``skipkern repro`` run found, per
init family, with the pre-registered predictions, their 95% intervals and two-sided verdicts.

Reads ``<out>/<experiment>/results.json`` of every registered experiment present and writes
``<out>/report.md`` (Markdown with the figures linked by relative path) plus ``<out>/summary.json``
and ``<out>/summary.csv`` (one row per paper result and init family). Any recipe's findings are
rendered (a finding carries its own claim, family, verdict and outcomes) and so are its descriptive
``sections`` ({"title", "text", "figures"}), so new recipes need no change here.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from pathlib import Path
from typing import Optional, Union

from skipkern.experiments.common import PAPER_CLAIMS, read_json, write_csv, write_json
from skipkern.experiments.registry import ORDER, RECIPES
from skipkern.experiments.verdicts import INCONCLUSIVE, INVALID, NOT_REPRODUCED, REPRODUCED

__all__ = ["collect", "write_report", "machine", "summary_table", "summary_markdown"]

_BADGE = {REPRODUCED: "**reproduced**", NOT_REPRODUCED: "**not reproduced**", INCONCLUSIVE: "**inconclusive**",
          INVALID: "**invalid**", "not run": "not run", "failed": "**failed**"}
FAMILY_TITLE = {"glorot": "Glorot init (the paper's)", "scaled": "scaled init (scale-controlled)", "": "—"}


def collect(out: Union[str, os.PathLike]) -> dict:
    """{experiment: results dict} for every registered experiment folder under ``out`` with a results.json."""
    out = Path(out)
    return {name: read_json(out / name / "results.json") for name in ORDER if (out / name / "results.json").is_file()}


def machine() -> dict:
    """CPU model, core count, load average, OS and versions of the machine writing the report."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    from skipkern import __version__
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1_5_15": [round(v, 2) for v in load],
            "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "skipkern": __version__}


def _fig(exp: str, stem: str, out: Path, caption: str = "") -> str:
    if not stem or not (out / exp / f"{stem}.png").is_file():
        return ""
    return f"![{stem}]({exp}/{stem}.png)  \n*Figure `{exp}/{stem}.png` (also `.svg`).{' ' + caption if caption else ''}*\n"


def _label(f: dict) -> str:
    v = f.get("verdict", "not run")
    badge = _BADGE.get(v, f"**{v}**")
    return f"{badge} ({f['reason']})" if v == INVALID and f.get("reason") else badge


def _primary(f: dict) -> str:
    """'key: effect [95% CI]' of every outcome of a finding, for the summary table."""
    parts = []
    for o in f.get("outcomes", []):
        k, unit = (100.0, " pts") if o.get("pct") else (1.0, "")
        if o.get("estimate") is None or not math.isfinite(o["estimate"]):
            parts.append(f"{o['key']}: n/a")
            continue
        lo, hi = o["low"], o["high"]
        ci = f"[{lo * k:+.3g}, {hi * k:+.3g}]" if math.isfinite(lo) and math.isfinite(hi) else "[no interval]"
        parts.append(f"{o['key']}: {o['estimate'] * k:+.3g}{unit} {ci}")
    return "; ".join(parts)


def _findings(results: dict) -> dict:
    """{result: {family: finding}} over all experiments (each finding tagged with its experiment)."""
    out: dict = {}
    for name, res in results.items():
        for f in res.get("findings", []):
            out.setdefault(f["result"], {})[f.get("family", "")] = dict(f, experiment=name)
    return out


def _sort_key(r) -> tuple:
    return (0, r) if isinstance(r, int) and r > 0 else ((2, 0) if r == 0 else (1, str(r)))


def compute_seconds(res: dict) -> float:
    """The compute time of an experiment's results, as measured when the work was done: its training runs'
    times (kept in their records, so a cached re-run keeps them) plus its own analysis time."""
    analysis = max(0.0, float(res.get("elapsed_s") or 0.0) - float(res.get("train_time_s") or 0.0))
    return float(res.get("runs_compute_s") or 0.0) + analysis


def write_report(out: Union[str, os.PathLike], *, timings: Optional[dict] = None, command: str = "",
                 total_s: Optional[float] = None, failed: Optional[dict] = None) -> Path:
    """Write report.md, summary.json and summary.csv into ``out``; returns the report's path.

    Args:
        timings: {experiment: wall seconds of this invocation} (default: each results.json's elapsed_s);
            the report shows them beside each experiment's compute time (``compute_seconds``).
        command: the command line that produced the run, quoted at the top.
        total_s: wall time of the whole invocation.
        failed: {experiment: error message} of experiments that raised (their results are marked failed,
            and results.json files left by earlier runs of them are ignored).
    """
    from skipkern.experiments.predictions import PREDICTIONS
    out = Path(out)
    failed = dict(failed or {})
    results = {k: v for k, v in collect(out).items() if k not in failed}
    found = _findings(results)
    ctx = next(iter(results.values()), {}).get("context", {})
    fams = sorted({fam for by in found.values() for fam in by if fam}, key=lambda f: (f != "glorot", f)) or ["glorot"]
    mach = machine()
    lines = ["# skipkern: reproduction report", "",
             "Orhan & Pitkow, *Skip Connections Eliminate Singularities* (ICLR 2018): each of the paper's results beside "
             "what this run measured, once with the paper's Glorot initialisation and once with a scale-controlled "
             "initialisation in which every architecture starts with O(1) hidden scale and logits (no normalisation "
             "layers). The second family separates \"skips help by keeping the signal at a good scale\" from \"skips "
             "help by removing singularities\".", "",
             "Verdicts follow predictions registered in code before the runs (`skipkern/experiments/predictions.py`: "
             "direction, smallest effect that counts, statistic, seeds). **reproduced**: the 95% interval of the "
             "effect excludes zero on the predicted side (for \"about equal\" claims: lies inside the stated band); "
             "**not reproduced**: the interval excludes the predicted effect; **inconclusive**: neither; **invalid "
             "(why)**: a condition the comparison uses did not learn (training accuracy not 10 points above chance, "
             "or loss not below its start), both sides sit at the accuracy ceiling, or there are fewer seeds than "
             "registered. Intervals: Welch t over seeds for differences of means, Fisher z (Bonett-Wright) for "
             "Spearman correlations; for spectral fractions they also cover the quadrature bounds of every run.", ""]
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines += [f"- generated: {when}" + (f"; command: `{command}`" if command else ""),
              f"- machine: {mach['cpu']}, {mach['cores']} cores, load average {mach['load_1_5_15']} at the end; "
              f"{mach['os']}; Python {mach['python']}, torch {mach['torch']}, skipkern {mach['skipkern']}",
              f"- mode: {ctx.get('mode', '?')}; data: {ctx.get('data', '?')}"
              + (f" ({ctx.get('data_dir')})" if ctx.get("data_dir") else "")
              + f"; device: {ctx.get('device', '?')}; layer backend: {ctx.get('backend', '?')}; "
              f"{ctx.get('threads', '?')} thread(s) per process, {ctx.get('jobs', 1)} worker(s)"]
    if total_s is not None:
        lines.append(f"- total wall time of this invocation: {total_s / 60:.1f} min; compute time of the results: "
                     f"{sum(compute_seconds(r) for r in results.values()) / 60:.1f} min")
    lines.append("")

    # ------------------------------------------------------------------------------------ summary
    lines += ["## Summary", "", "Effect: the registered predictions' effects (a - b, or r_s) with 95% intervals.", ""]
    table, rows, results_ids = summary_table(found, fams, failed)
    lines += table + [""]
    for fam in fams:
        counts = {}
        for r in rows:
            if r["family"] == fam and r["result"] != 0:
                counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        lines.append(f"- {FAMILY_TITLE.get(fam, fam)}: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    lines.append("")

    # ---------------------------------------------------------------- signal, gates, central figures
    for name, res in results.items():
        for sec in res.get("sections", []) if name == "signal" else []:
            lines += _section(name, sec, out)
            flagged = res.get("flagged_runs", [])
            if flagged:
                lines += ["| experiment | family | condition | seed | initial loss | initial logit std |",
                          "|---|---|---|---|---|---|"]
                lines += [f"| {r.get('experiment', '')} | {r['family']} | {r['condition']} | {r['seed']} | "
                          f"{r['initial_train_loss']:.4g} | {r['initial_logit_std']:.3g} |" for r in flagged[:60]]
                if len(flagged) > 60:
                    lines.append(f"| ... | {len(flagged) - 60} more in signal/results.json | | | | |")
                lines.append("")
    lines += _gates(results)
    dens = [_fig("architectures", f"architectures_density_{fam}", out) for fam in fams]
    if any(dens):
        lines += ["## Hessian eigenvalue densities (the paper's central figure)", "",
                  "Per architecture, at initialisation and after training, one line per seed; signed view (linear "
                  "eigenvalue axis, log density) and log10|λ| view (positive eigenvalues solid, negative dashed). "
                  "Stochastic Lanczos quadrature: the lines are Gaussian-smoothed Ritz values, so structure finer than "
                  "the node spacing is not resolved.", ""] + [d for d in dens if d]

    # ---------------------------------------------------------------------------------- details
    lines += ["## Results in detail", ""]
    shown: set = set()
    for k in results_ids:
        by = found.get(k, {})
        title = "Simplified model (two hidden units)" if k == 0 else f"Result {k}"
        claim = next((f["claim"] for f in by.values()), PAPER_CLAIMS.get(k, str(k)))
        lines += [f"### {title}", "", f"*Paper:* {claim}", ""]
        preds = [p for p in PREDICTIONS if p.result == k]
        if preds:
            lines += ["*Registered predictions:* " + "; ".join(f"{p.key}: {p.text} ({p.rule()}; n >= {p.seeds})"
                                                               for p in preds), ""]
        if not by:
            exp = _experiment_of(k)
            lines += [f"Experiment `{exp}` failed: {failed[exp]}" if exp in failed else f"Experiment `{exp}` was not run.", ""]
            continue
        for fam, f in sorted(by.items(), key=lambda kv: (kv[0] != "glorot", kv[0])):
            lines += [f"#### {FAMILY_TITLE.get(fam, fam) if fam else 'Verdict'}: {_label(f)}", "",
                      f"*This run* (experiment `{f['experiment']}`): {f['evidence']}", ""]
            outs = f.get("outcomes") or []
            if outs:
                lines += ["| prediction | effect [95% CI] | n | verdict |", "|---|---|---|---|"]
                for o in outs:
                    lab = f"invalid ({o['reason']})" if o["verdict"] == INVALID else o["verdict"]
                    ci = _primary({"outcomes": [o]}).split(": ", 1)[1]
                    det = f" ({o['detail']})" if o.get("detail") else ""
                    lines.append(f"| {o['key']}: {o['text']} | {ci}{det} | {', '.join(map(str, o['n']))} | {lab} |")
                lines.append("")
            for c in f.get("caveats") or []:
                lines.append(f"- Caveat: {c}")
            if f.get("caveats"):
                lines.append("")
            stem = (f["experiment"], f.get("figure", ""))
            fig = _fig(*stem, out)
            if fig and stem not in shown:  # a figure shared by both families is shown once
                shown.add(stem)
                lines += [fig]

    # ------------------------------------------------------------------------- other analyses
    for name, res in results.items():
        if name == "signal":
            continue
        for sec in res.get("sections", []):
            lines += _section(name, sec, out)

    lines += ["## Experiments", "", "Compute: the time the experiment's work took when it was done (its training runs, "
              "measured when each was trained, also when this invocation read them from the cache, plus its "
              "analysis). Wall: this invocation.", "",
              "| experiment | tests result | compute | wall (this invocation) | configuration |", "|---|---|---|---|---|"]
    for name, res in results.items():
        t, compute = (timings or {}).get(name, res.get("elapsed_s")), compute_seconds(res)
        tests = ", ".join(str(r) if r else "simplified" for r in RECIPES[name].results) or "—"
        lines.append(f"| `{name}` | {tests} | {compute:.0f} s | {t:.0f} s | {_cfg_line(res)} |")
    others = [f"`{name}/{s}.png`" for name, res in results.items() for s in res.get("figures", [])]
    lines += ["", "Raw numbers: `<experiment>/results.json` (config, per-run values, gates, signal propagation, "
              "findings with their outcomes) and `<experiment>/<experiment>.csv` (one row per run); training runs "
              "with their checkpoints, per-epoch metrics and saved spectra under `runs/`. All figures: "
              + ", ".join(others) + ".", ""]
    lines += ["## Caveats", "",
              "- The paper trained on CIFAR-100 (and CIFAR-10); MNIST-1D is a smaller problem (40 features, 10 classes). "
              "Quick mode also uses shallower, narrower nets (depth 10 instead of the paper's 20, 30 for BiasReg; width 32) "
              "and a short budget (300 steps), so that it fits 10 minutes of a 2-core CPU; the paper-size configuration (`skipkern repro all`, no --quick) uses width 128, depth 30 for "
              "BiasReg and tens of thousands of samples.",
              "- Settings the paper does not publish (budgets, seeds, preprocessing, the hyper-residual form, the "
              "BiasReg search ranges, the BN layer's position, the degenerate-eigenvalue threshold) are our choices, "
              "recorded in each results.json and changeable with `--set`; the scaled init family is ours "
              "(`skipkern/nn/init.py`).",
              "- Hessian densities come from stochastic Lanczos quadrature with few probes and steps; the quadrature "
              "bounds in the result-2 intervals say where it cannot resolve a threshold.", ""]
    path = out / "report.md"
    from skipkern import distributed as sd
    if sd.is_main():
        path.write_text("\n".join(lines))
    write_json(out / "summary.json", {"results": rows, "machine": mach, "command": command, "generated": when,
                                      "timings": timings or {n: r.get("elapsed_s") for n, r in results.items()},
                                      "total_s": total_s, "compute_s": {n: compute_seconds(r) for n, r in results.items()}})
    write_csv(out / "summary.csv", rows)
    return path


def summary_table(found: dict, fams: list, failed: Optional[dict] = None) -> tuple:
    """(Markdown lines of the summary table, one row dict per result and family, the result ids in order)."""
    failed = failed or {}
    lines = ["| # | Paper result | " + " | ".join(FAMILY_TITLE.get(f, f) for f in fams) + " |",
             "|---|---|" + "---|" * len(fams)]
    rows = []
    results_ids = sorted(set(found) | {k for k in PAPER_CLAIMS if k > 0}, key=_sort_key)
    for k in results_ids:
        by = found.get(k, {})
        claim = next((f["claim"] for f in by.values()), PAPER_CLAIMS.get(k, str(k)))
        cells = []
        for i, fam in enumerate(fams):
            f = by.get(fam) or by.get("")
            if f is not None and not f.get("family") and i > 0:  # one finding for both families
                cells.append("(same: does not depend on the init family)")
                continue
            if f is None:
                exp = _experiment_of(k)
                v = "failed" if exp in failed else "not run"
                cells.append(_BADGE[v])
                rows.append({"result": k, "family": fam, "claim": claim, "verdict": v, "reason": failed.get(exp, ""),
                             "effects": "", "evidence": ""})
                continue
            cells.append(f"{_label(f)}<br>{_primary(f)}")
            rows.append({"result": k, "family": fam, "claim": claim, "verdict": f["verdict"], "reason": f.get("reason", ""),
                         "effects": _primary(f), "evidence": f["evidence"]})
        tag = "simplified" if k == 0 else k
        lines.append(f"| {tag} | {claim} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines, rows, results_ids


def summary_markdown(out: Union[str, os.PathLike], results: Optional[tuple] = None) -> str:
    """The summary table of the results under ``out`` (for a README); ``results`` keeps only those
    paper results (e.g. range(0, 8))."""
    found = _findings(collect(out))
    if results is not None:
        found = {k: v for k, v in found.items() if k in set(results)}
    fams = sorted({fam for by in found.values() for fam in by if fam}, key=lambda f: (f != "glorot", f)) or ["glorot"]
    return "\n".join(summary_table(found, fams)[0])


def _experiment_of(result) -> str:
    for name in ORDER:
        if result in RECIPES[name].results:
            return name
    return "?"


def _section(name: str, sec: dict, out: Path) -> list:
    lines = [f"## {sec['title']}", "", sec.get("text", ""), ""]
    for stem in sec.get("figures", []):
        fig = _fig(name, stem, out)
        if fig:
            lines.append(fig)
    return lines


def _cell(value, fmt: str) -> str:
    """A table cell: "-" where the gate has no such number (a regression task has no accuracy)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else format(v, fmt)


def _gates(results: dict) -> list:
    rows = []
    for name, res in results.items():
        for fam, conds in (res.get("gates") or {}).items():
            for c, g in conds.items():
                rows.append((name, fam, c, g))
    if not rows:
        return []
    lines = ["## Sanity gates", "",
             "A condition passes when its mean final training accuracy is at least 10 points above chance and its "
             "mean final training loss is below its mean initial loss; every comparison using a failed condition is "
             "invalid.", "", "| experiment | family | condition | n | initial loss | final loss | final train acc | gate |",
             "|---|---|---|---|---|---|---|---|"]
    for name, fam, c, g in rows:
        n = g.get("numbers", {})
        status = "pass" if g["ok"] else f"**fail**: {g['reason']}"
        lines.append(f"| {name} | {fam or '-'} | {c} | {n.get('n', '')} | {_cell(n.get('mean_init_loss'), '.4g')} | "
                     f"{_cell(n.get('mean_final_loss'), '.4g')} | {_cell(n.get('mean_final_acc'), '.1%')} | {status} |")
    return lines + [""]


def _cfg_line(res: dict) -> str:
    c = res.get("config", {})
    keys = ("depth", "width", "steps", "n_train", "n_test", "lr", "batch_size", "inits", "spectra", "spectrum_probes",
            "spectrum_steps", "spectrum_samples", "degenerate_fractions", "n_nets", "search_candidates", "search_steps",
            "depths", "gains", "input_dim", "n_samples", "activation")
    s = ", ".join(f"{k}={c[k]}" for k in keys if k in c)
    return s + (f"; seeds {res.get('seeds')}" if res.get("seeds") else "")
