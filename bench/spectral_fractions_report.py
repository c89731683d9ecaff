"""Summary, table and figure of bench/spectral_fractions.py rows (see its docstring).

Error of a configuration (method, probes, steps; for the adaptive driver, tol) on one Hessian and seed:
the worst |estimate - exact| over a group of fractions ("degenerate": |lambda| <= tau rms for every tau;
"negative": lambda < -tau rms). Its score: the 90th percentile over Hessians x seeds; its cost: the mean
HVP count (deflation search included). A method's curve is the lower envelope over its configurations;
"needed" is the fewest HVPs whose score is <= the target (0.01).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["summarize", "figure", "print_summary"]

GROUPS = {"degenerate": "deg", "negative": "neg"}
TARGET = 0.01
METHODS = ("plain SLQ", "deflated SLQ", "adaptive", "adaptive, per round", "PyHessian", "curvlinops")


def _config(r: dict) -> tuple:
    """The driver's answer is one configuration per tol (its probes and steps are its own choice), its
    point estimate within a budget one per budget; the other methods' per (probes, steps)."""
    fixed = r["method"] not in ("adaptive", "adaptive, per round")
    return (r["method"], r.get("tol"), r.get("budget"), r["probes"] if fixed else None, r["steps"] if fixed else None)


def _scores(rows: list, prefix: str) -> dict:
    """{config: (mean hvps, q90 error, per-(hessian, seed) errors)} for fractions starting with prefix."""
    worst: dict = defaultdict(lambda: defaultdict(float))
    hvps: dict = defaultdict(list)
    for r in rows:
        if not r["fraction"].startswith(prefix):
            continue
        c, key = _config(r), (r["hessian"], r["seed"])
        worst[c][key] = max(worst[c][key], abs(r["value"] - r["truth"]))
        hvps[c].append(r["hvps"])
    return {c: (float(np.mean(hvps[c])), float(np.quantile(list(e.values()), 0.9)), dict(e)) for c, e in worst.items()}


def _envelope(scores: dict, method: str) -> list:
    pts = sorted((h, e) for c, (h, e, _) in scores.items() if c[0] == method)
    out, best = [], np.inf
    for h, e in pts:
        if e < best:
            best = e
            out.append((h, e))
    if pts and pts[-1][0] > out[-1][0]:  # the largest budget run, so the curve does not seem to stop early
        out.append((pts[-1][0], best))
    return out


def _coverage(rows: list, lo: str, hi: str) -> dict:
    hits: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        if r.get(lo) is None:
            continue
        h = hits[r["method"]]
        h[0] += r[lo] - 1e-12 <= r["truth"] <= r[hi] + 1e-12
        h[1] += 1
    return {m: {"covered": c, "total": t, "rate": c / t} for m, (c, t) in hits.items()}


def summarize(rows: list, hessians: list, compare_seeds: int) -> dict:
    """Errors on the seeds every method ran (< compare_seeds), coverage on all. With Hessians of several
    sizes, each size is summarised by itself (``by_P``; HVP counts of different P do not mix) and the
    top level holds the smallest P's summary with the coverage over all."""
    Ps = sorted({int(h["P"]) for h in hessians})
    if len(Ps) < 2:
        return _summarize_one(rows, hessians, compare_seeds)
    by = {}
    for P in Ps:
        ids = {i for i, h in enumerate(hessians) if int(h["P"]) == P}
        by[str(P)] = _summarize_one([r for r in rows if r["hessian"] in ids], [hessians[i] for i in sorted(ids)],
                                    compare_seeds)
    out = dict(by[str(Ps[0])], P=Ps, by_P=by)
    out.update(coverage=_coverage(rows, "lower", "upper"), coverage_t=_coverage(rows, "t_lower", "t_upper"))
    return out


def _summarize_one(rows: list, hessians: list, compare_seeds: int) -> dict:
    out = {"target": TARGET, "P": sorted({int(h["P"]) for h in hessians}), "coverage": _coverage(rows, "lower", "upper"),
           "coverage_t": _coverage(rows, "t_lower", "t_upper"), "compare_seeds": compare_seeds}
    same = [r for r in rows if r["seed"] < compare_seeds]
    for group, prefix in GROUPS.items():
        sc = _scores(same, prefix)
        g = {"envelope": {m: _envelope(sc, m) for m in METHODS}}
        g["needed"] = {m: next((h for h, e in g["envelope"][m] if e <= TARGET), None) for m in METHODS}
        base = g["needed"]["plain SLQ"]
        g["savings_vs_plain"] = {m: (base / n if base and n else None) for m, n in g["needed"].items()}
        adaptive = {c[1]: (h, e) for c, (h, e, _) in sc.items() if c[0] == "adaptive"}
        g["adaptive_by_tol"] = {str(t): {"hvps": h, "q90_error": e} for t, (h, e) in sorted(adaptive.items())}
        out[group] = g
    widths = [r["upper"] - r["lower"] for r in rows if r["method"] == "adaptive"]
    out["adaptive_converged"] = float(np.mean([r["converged"] for r in rows if r["method"] == "adaptive"])) \
        if widths else None
    out["deflated_counts"] = sorted({r.get("deflated", 0) for r in rows if r["method"] == "deflated SLQ"})
    routes = [r.get("route", "slq") for r in rows if r["method"] == "adaptive"]
    out["adaptive_dense_share"] = float(np.mean([x == "dense" for x in routes])) if routes else None
    return out


def print_summary(s: dict) -> None:
    for P, one in s.get("by_P", {}).items():
        print(f"-- P = {P}")
        print_summary(one)
    if "by_P" in s:
        print("-- all sizes")
        for key in ("coverage", "coverage_t"):
            print(f"{key}: " + ", ".join(f"{m} {v['covered']}/{v['total']} = {v['rate']:.3f}" for m, v in s[key].items()))
        return
    for group in GROUPS:
        g = s[group]
        print(f"{group}: HVPs for a 90th-percentile error <= {s['target']} "
              + ", ".join(f"{m} {('%.0f' % n) if n else '>max'}" for m, n in g["needed"].items()))
        print("   savings vs plain SLQ: " + ", ".join(f"{m} {v:.2f}x" for m, v in g["savings_vs_plain"].items() if v))
        print("   adaptive: " + ", ".join(f"tol {t}: {v['hvps']:.0f} HVPs, q90 err {v['q90_error']:.4f}"
                                          for t, v in g["adaptive_by_tol"].items()))
    for key in ("coverage", "coverage_t"):
        print(f"{key}: " + ", ".join(f"{m} {v['covered']}/{v['total']} = {v['rate']:.3f}" for m, v in s[key].items()))


def figure(rows: list, s: dict, path: Path, note: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    parts = list(s["by_P"].items()) if "by_P" in s else [(str(s["P"][0]) if s.get("P") else "", s)]
    fig, grid = plt.subplots(len(parts), 2, figsize=(11, 4.2 * len(parts)), sharey=True, squeeze=False)
    for i, (axes, (P, one)) in enumerate(zip(grid, parts)):
        _panels(axes, one, P, len(parts) > 1, legend=i == 0)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panels(axes, s: dict, P: str, titled: bool, legend: bool = True) -> None:
    styles = {"plain SLQ": ("C0", "-"), "deflated SLQ": ("C1", "-"), "adaptive": ("C2", "o"),
              "adaptive, per round": ("C2", "-"), "PyHessian": ("C3", "--"), "curvlinops": ("C4", ":")}
    labels = {"adaptive": "adaptive, answer at tol " + ", ".join(s["negative"]["adaptive_by_tol"]),
              "adaptive, per round": "adaptive, estimate within a budget (smallest tol)"}
    for ax, group in zip(axes, GROUPS):
        for m in METHODS:
            if m == "adaptive":
                pts = [(v["hvps"], v["q90_error"]) for v in s[group]["adaptive_by_tol"].values()]
            else:
                pts = s[group]["envelope"][m]
            if not pts:
                continue
            x, y = zip(*pts)
            color, ls = styles[m]
            if m == "adaptive":
                ax.plot(x, np.maximum(y, 1e-5), ls, color=color, label=labels[m])
                for tol, xi, yi in zip(s[group]["adaptive_by_tol"], x, y):
                    exact = " (exact, drawn at 1e-5)" if yi < 1e-5 else ""
                    ax.annotate(f"tol {tol}{exact}", (xi, max(yi, 1e-5)), xytext=(-4 if exact else 4, 3),
                                textcoords="offset points", fontsize=7, color=color, ha="right" if exact else "left")
            else:
                ax.step(x, np.maximum(y, 1e-5), where="post", color=color, ls=ls, label=labels.get(m, m))
        ax.axhline(s["target"], color="k", lw=0.7, ls="--")
        for dim in s.get("P", []):
            ax.axvline(dim, color="0.5", lw=0.7, ls=":")
            ax.annotate(f"P = {dim}", (dim, 0.5), xytext=(3, 0), textcoords="offset points", fontsize=7, color="0.4",
                        rotation=90, va="center")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Hessian-vector products (deflation search included)")
        ax.set_title(({"degenerate": "degenerate: |lambda| <= tau rms(lambda)",
                       "negative": "negative: lambda < -tau rms(lambda)"}[group] + ", tau = 1e-3, 1e-2, 1e-1")
                     + (f"\nHessians with P = {P}" if titled else ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("90th percentile over Hessians x seeds\nof the worst |error| over tau")
    if legend:
        axes[0].legend(fontsize=7.5, loc="center left")


def main() -> None:
    """Re-summarise a result file with this module (rewrites its extra.summary, recording the commit that
    did, and redraws its figure beside it)."""
    import argparse
    import json
    import subprocess
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("result", type=Path)
    args = ap.parse_args()
    d = json.loads(args.result.read_text())
    e = d["extra"]
    e["summary"] = summarize(d["rows"], e["hessians"], e["summary"]["compare_seeds"])
    e["summary_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    args.result.write_text(json.dumps(d, indent=1, default=str) + "\n")
    print_summary(e["summary"])
    Ps = sorted({h["P"] for h in e["hessians"]})
    n = len({(r["hessian"], r["seed"]) for r in d["rows"] if r["seed"] < e["summary"]["compare_seeds"]})
    note = (f"SkipMLP Hessians (P = {', '.join(map(str, Ps))}), MNIST-1D, {len(e['hessians'])} Hessians (architecture x "
            f"init/trained); errors over {n} Hessian x seed, every method on the same ones")
    print(figure(d["rows"], e["summary"], args.result.with_suffix(".png"), note))


if __name__ == "__main__":
    main()
