"""Spectral fractions against exact spectra: error vs Hessian-vector products, and interval coverage.

Hessians: SkipMLP(40 -> width x depth -> 10) of every architecture, at initialisation and after a short
Adam training on real MNIST-1D batches (skipkern.data.load_dataset("mnist1d")), cross-entropy (mean) over
``--samples`` training rows; built column by column from skipkern's fused HVP in float64 (checked
symmetric) and diagonalised by torch.linalg.eigvalsh (the truth). Every method multiplies by the SAME
float64 matrix (a dense operator), so the HVP counts compare like with like:
  plain SLQ      skipkern spectral_density, Rademacher probes, no deflation (Gauss point estimate)
  deflated SLQ   skipkern spectral_density(deflate="auto"): outliers by Lanczos, SLQ on the rest
  adaptive       skipkern spectral_fraction(tol=...): adds steps/probes until the certified width < tol, or
                 builds the matrix from products (reusing those spent) and counts when that is cheaper
                 (row key "route": "slq" or "dense");
                 its answer per tol, and ("adaptive, per round") the estimate of the smallest tol's run
                 after its last round within each budget (its history: what a smaller max_matvecs returns)
  PyHessian      PyHessian 0.1 density() (its Lanczos code, one probe at a time; torch.eig shimmed by
                 eigh, its HVP swapped for the dense matrix), fraction from its nodes and weights
  curvlinops     curvlinops fast_lanczos (Papyan 2020, no reorthogonalisation), fraction from its nodes
                 and weights (its smoothed density cannot resolve these thresholds at all)
Lanczos prefixes are Lanczos runs with fewer steps, so two runs per method, seed and Hessian (16 probes x
256 steps and 4 probes x 1024 steps; PyHessian to 512) give every (probes, steps) budget. Fractions:
degenerate |lambda| <= tau rms and negative lambda < -tau rms (rms = sqrt(tr H^2 / P), tau as in the
experiments). Per budget the error is the worst over the
fractions; a method's curve is, per HVP budget, the best of its probe counts (each method's most
favourable reading) at the 90th percentile over Hessians x seeds. Coverage: how often skipkern's
certified 95% intervals contain the exact fraction (all seeds; errors on the --peer-seeds, where every
method ran). Seed 0 runs on every Hessian first; the JSON and figure are rewritten after every Hessian
(extra.done: the (seed, hessian) pairs finished), so a run cut short keeps what it finished.

    python bench/spectral_fractions.py [--width 16 --depth 6] [--seeds 2] [--large] [--quick]
    python bench/spectral_fractions.py --reuse OLD.json --rerun adaptive   (only the driver afresh)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS_DIR, add_result_args, check_tree, write_results  # noqa: E402
from bench.spectral_peers import curvlinops_quadrature, pyhessian_quadrature  # noqa: E402
from skipkern.hessian import (DenseOperator, HessianOperator, LanczosResult, SpectralDensity, from_lanczos,  # noqa: E402
                              spectral_fraction)
from skipkern.hessian.slq import make_slq  # noqa: E402
from skipkern.nn import SkipMLP  # noqa: E402

ARCHS = ("plain", "residual", "orthogonal", "degenerate", "hyper_residual")
TAUS = (1e-3, 1e-2, 1e-1)
STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
PROBES = (1, 2, 4, 8, 16)
SHORT, LONG = (16, 256), (4, 1024)  # (probes, steps) of the two lockstep runs per method: many short, few long
CERTIFIED = (4, 16)  # probe counts whose certified intervals are computed (coverage); all get point estimates
TOLS = (0.1, 0.02)


def hessian(arch: str, width: int, depth: int, samples: int, train_steps: int, seed: int = 0):
    """(H [P, P] float64, eigenvalues [P], asymmetry) of the mean cross-entropy on MNIST-1D rows, after
    ``train_steps`` Adam steps (batches of 100, lr 1e-3) from the Glorot start; cached under
    $SKIPKERN_CACHE/bench_hessians (the truth of a rerun is the same matrix)."""
    from skipkern.data import default_cache_dir
    path = Path(default_cache_dir()) / "bench_hessians" / f"{arch}-w{width}-d{depth}-n{samples}-t{train_steps}-s{seed}.pt"
    if path.exists():
        d = torch.load(path)
        return d["H"], d["ev"].numpy(), d["asym"]
    H, ev, asym = _build_hessian(arch, width, depth, samples, train_steps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"H": H, "ev": torch.from_numpy(ev), "asym": asym}, path)
    return H, ev, asym


def _build_hessian(arch: str, width: int, depth: int, samples: int, train_steps: int, seed: int):
    from skipkern.data import load_dataset
    d = load_dataset("mnist1d", n_train=samples, n_test=100)
    x, y = d.x_train, d.y_train
    model = SkipMLP(40, width, depth, 10, arch=arch, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(train_steps):
        idx = torch.randint(0, x.shape[0], (100,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model = model.double()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x.double(), y), memory_budget=1 << 29)
    P = op.shape[0]
    H = torch.cat([op @ torch.eye(P, dtype=torch.float64)[:, i:i + 512] for i in range(0, P, 512)], 1)
    asym = float((H - H.T).abs().max() / H.abs().max())
    H = (H + H.T) / 2
    return H, torch.linalg.eigvalsh(H).numpy(), asym


def truth(ev: np.ndarray) -> dict:
    rms = math.sqrt(float(np.mean(ev ** 2)))
    out = {}
    for tau in TAUS:
        e = tau * rms
        out[f"deg{tau:g}"] = ((-e, e), float(np.mean(np.abs(ev) <= e)))
        out[f"neg{tau:g}"] = ((-math.inf, -e), float(np.mean(ev < -e)))
    return out


def truncate(res: LanczosResult, k: int, m: int) -> LanczosResult:
    """The first k probes after m steps of a longer lockstep run (its tridiagonals' leading blocks)."""
    L = res.lengths[:k].clamp(max=m)
    full_b = torch.cat([res.betas[:k], res.beta_last[:k, None]], 1)  # [k, M]: beta_1 .. beta_M
    last = torch.where(res.lengths[:k] > m, full_b[:, m - 1] if m - 1 < full_b.shape[1] else res.beta_last[:k],
                       res.beta_last[:k])
    return LanczosResult(res.alphas[:k, :m].clone(), res.betas[:k, :max(m - 1, 0)].clone(), L, m, beta_last=last)


def gauss_fraction(nodes: np.ndarray, weights: np.ndarray, iv: tuple) -> float:
    a, b = iv
    return float(np.mean((weights * ((nodes >= a) & (nodes <= b))).sum(1)))


def first_probes(d: SpectralDensity, k: int) -> SpectralDensity:
    """The density of the first k probes of ``d`` (its quadrature rules reused, no smoothing grid)."""
    meta = dict(d.meta, lengths=d.meta["lengths"][:k], num_probes=k)
    out = SpectralDensity(d.nodes[:k], d.weights[:k], d.dim, d.sigma, d.grid[:2], np.zeros(2), meta,
                          d.alphas[:k], d.betas[:k], d.deflated)
    out._rules = d._rules[:k]
    return out


def skipkern_runs(H: torch.Tensor, ev: np.ndarray, seed: int, deflate, kmax: int, mmax: int, mmin: int = 1) -> list:
    """Rows (method, probes, steps, hvps, fraction, value, lower, upper, truth) of one plain or deflated run
    of kmax probes and mmax steps, at its step prefixes >= mmin."""
    op = DenseOperator(H)
    slq = make_slq(op, deflate, None, seed, "full", False)
    slq.add_probes(kmax)
    slq.extend(mmax)
    res = slq.lanczos_result()
    d = slq.deflation
    extra = 0 if d is None else d.num_matvecs
    lam = None if d is None else d.values
    meta = {"probe": slq.probe, "product_dtype": "float64"}
    if d is not None and d.count:
        meta["deflation"] = {"residual": d.residual}
    rows, tr = [], truth(ev)
    for m in STEPS:
        if m > res.alphas.shape[1] or m < mmin:
            continue
        full = from_lanczos(truncate(res, kmax, m), H.shape[0], deflated=lam, meta=meta, grid=2)
        for k in PROBES:
            if k > kmax:
                continue
            dens = first_probes(full, k)
            for name, (iv, t) in tr.items():
                row = dict(method="deflated SLQ" if deflate else "plain SLQ", seed=seed, probes=k, steps=m,
                           hvps=extra + k * m, fraction=name, value=gauss_fraction(dens.nodes, dens.weights, iv),
                           truth=t, deflated=0 if d is None else d.count)
                if k in CERTIFIED:
                    f, ft = dens.fraction_in(*iv), dens.fraction_in(*iv, bound="t")
                    row.update(value=f.value, lower=f.lower, upper=f.upper, t_lower=ft.lower, t_upper=ft.upper,
                               dominant=f.dominant)
                rows.append(row)
    return rows


def peer_rows(name: str, quad_fn, H: torch.Tensor, ev: np.ndarray, seed: int, kmax: int, mmax: int) -> list:
    """Rows of a peer's point estimates from its per-probe tridiagonals [k, M, M] (prefixes)."""
    Ts = quad_fn(H, kmax, mmax, seed)
    rows, tr = [], truth(ev)
    for m in STEPS:
        if m > Ts.shape[1]:
            continue
        nodes, weights = [], []
        for T in Ts[:, :m, :m]:
            w, U = np.linalg.eigh(T)
            nodes.append(w)
            weights.append(U[0] ** 2)
        nodes, weights = np.array(nodes), np.array(weights)
        for k in PROBES:
            if k > kmax:
                continue
            for fname, (iv, t) in tr.items():
                rows.append(dict(method=name, seed=seed, probes=k, steps=m, hvps=k * m, fraction=fname,
                                 value=gauss_fraction(nodes[:k], weights[:k], iv), truth=t))
    return rows


def adaptive_rows(H: torch.Tensor, ev: np.ndarray, seed: int, max_matvecs: int, tols=TOLS) -> list:
    """Rows of the driver's final answer per tol (method "adaptive"; coverage is read from these), and of
    the point estimate of the smallest tol's run after its last round within each budget 2^(e/2) (method
    "adaptive, per round", key "budget": about what max_matvecs=budget returns)."""
    tr = truth(ev)
    rows = []
    for tol in sorted(tols, reverse=True):
        r = spectral_fraction(DenseOperator(H), {n: iv for n, (iv, _) in tr.items()}, tol=tol, seed=seed,
                              max_matvecs=max_matvecs, progress=False)
        for name, (iv, t) in tr.items():
            f = r.fractions[name]
            rows.append(dict(method="adaptive", seed=seed, probes=r.num_probes, steps=r.num_steps, hvps=r.num_matvecs,
                             fraction=name, value=f.value, lower=f.lower, upper=f.upper, truth=t, tol=tol,
                             converged=r.converged, deflated=r.num_deflated, dominant=f.dominant, route=r.method))
    for budget in (int(round(2 ** (e / 2))) for e in range(14, 2 * int(math.log2(max_matvecs)) + 1)):
        done = [h for h in r.history if h["num_matvecs"] <= budget]  # what max_matvecs=budget would return
        if not done:
            continue
        h = done[-1]
        for name, (iv, t) in tr.items():
            rows.append(dict(method="adaptive, per round", seed=seed, probes=h["num_probes"], steps=h["num_steps"],
                             hvps=h["num_matvecs"], fraction=name, value=h["values"][name], truth=t, tol=tol,
                             budget=budget, width=h[name][1] - h[name][0]))
    return rows


METHOD_KEYS = {"plain": ("plain SLQ",), "deflated": ("deflated SLQ",), "adaptive": ("adaptive", "adaptive, per round"),
               "pyhessian": ("PyHessian",), "curvlinops": ("curvlinops",)}


def _reusable(path: Optional[Path], rerun: list) -> tuple[dict, dict]:
    """({(seed, arch, width, depth, when): rows of the kept methods}, {same key: the Hessian's info,
    "commit": the file's commit}) from a previous result file."""
    if path is None:
        return {}, {}
    import json
    d = json.loads(Path(path).read_text())
    keep = {m for k, names in METHOD_KEYS.items() if k not in rerun for m in names}
    hs = d["extra"]["hessians"]
    done = {tuple(p) for p in d["extra"]["done"]}
    rows, info = {}, {"commit": d["env"].get("git_commit")}
    for r in d["rows"]:
        if (r["seed"], r["hessian"]) in done and r["method"] in keep:
            h = hs[r["hessian"]]
            key = (r["seed"], h["arch"], h["width"], h["depth"], h["when"])
            rows.setdefault(key, []).append({k: v for k, v in r.items() if k != "hessian"})
            info[key] = h
    return rows, info


def _check_same_hessian(h: dict, ev: np.ndarray) -> None:
    """Reused rows must be of the same matrix (the Hessians are cached, so a rebuilt one would differ)."""
    if h["P"] != ev.size or not math.isclose(h["lambda_max"], float(ev[-1]), rel_tol=1e-9) \
            or not math.isclose(h["rms"], math.sqrt(float(np.mean(ev ** 2))), rel_tol=1e-9):
        raise SystemExit(f"--reuse: the {h['arch']} {h['when']} Hessian differs from the one the file used")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--peer-probes", type=int, default=4)
    ap.add_argument("--peer-seeds", type=int, default=1, help="seeds on which the peers run (the first ones)")
    ap.add_argument("--large", action="store_true", help="also a P ~ 10k Hessian (width 30, depth 10)")
    ap.add_argument("--quick", action="store_true", help="two architectures, two seeds (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=1024, help="Lanczos steps of the longest run")
    ap.add_argument("--tols", type=float, nargs="+", default=list(TOLS), help="widths asked of the adaptive driver")
    ap.add_argument("--adaptive-budget", type=int, default=8192, help="max_matvecs of the adaptive driver")
    ap.add_argument("--cases", type=int, default=None, help="only the first N Hessians (smoke runs)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="a previous result JSON: its rows of the methods not in --rerun are kept for the (seed, "
                         "Hessian) pairs it finished (same Hessians: their sizes and spectra are checked)")
    ap.add_argument("--rerun", nargs="+", default=list(METHOD_KEYS), choices=list(METHOD_KEYS),
                    help="methods computed afresh where --reuse has rows (default: all)")
    add_result_args(ap)
    args = ap.parse_args()
    check_tree("spectral_fractions", args.allow_dirty)
    import subprocess
    started_at = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True).stdout.strip()  # the code that runs
    torch.set_num_threads(args.threads)
    archs = ARCHS[:2] if args.quick else ARCHS
    seeds = list(range(2 if args.quick else args.seeds))
    cases = [(a, args.width, args.depth, when) for a in archs for when in ("init", "trained")]
    if args.large:
        cases += [("residual", 30, 10, "trained"), ("plain", 30, 10, "trained")]
    cases = cases[:args.cases]
    mmax = args.max_steps
    reused, reuse_from = _reusable(args.reuse, args.rerun)
    rows, hessians, done, t_start, loads = [], [], [], time.perf_counter(), [os.getloadavg()[0]]
    for seed in seeds:  # seed by seed over all Hessians (seed 0 everywhere first)
        for hid, (arch, width, depth, when) in enumerate(cases):
            t0 = time.perf_counter()
            H, ev, asym = hessian(arch, width, depth, args.samples, args.train_steps if when == "trained" else 0)
            if seed == seeds[0]:
                P = H.shape[0]
                info = dict(arch=arch, width=width, depth=depth, when=when, P=P, asym=asym,
                            lambda_max=float(ev[-1]), lambda_min=float(ev[0]), rms=math.sqrt(float(np.mean(ev ** 2))),
                            zero_fraction=float(np.mean(np.abs(ev) <= 1e-10 * np.abs(ev).max())),
                            top=[float(v) for v in ev[-12:][::-1]], build_s=time.perf_counter() - t0)
                hessians.append(info)
                print(f"{arch} {when} P={P}: lambda [{ev[0]:.3g}, {ev[-1]:.3g}], rms {info['rms']:.3g}, zeros "
                      f"{info['zero_fraction']:.3f}, top {np.round(ev[-5:][::-1], 3).tolist()} "
                      f"({info['build_s']:.0f} s)", flush=True)
            t1 = time.perf_counter()
            key = (seed, arch, width, depth, when)
            part = [dict(r) for r in reused.get(key, [])]
            if part:
                _check_same_hessian(reuse_from[key], ev)
            run = set(args.rerun) if part else set(METHOD_KEYS)
            for deflate, mkey in ((0, "plain"), ("auto", "deflated")):  # many probes x short runs, few x long
                if mkey in run:
                    part += skipkern_runs(H, ev, seed, deflate, SHORT[0], min(SHORT[1], mmax))
                    part += skipkern_runs(H, ev, seed, deflate, LONG[0], mmax, mmin=SHORT[1] + 1)
            if "adaptive" in run:
                part += adaptive_rows(H, ev, seed, args.adaptive_budget, args.tols)
            for name, fn, steps in (("PyHessian", pyhessian_quadrature, min(mmax, 512)),
                                    ("curvlinops", curvlinops_quadrature, mmax)):
                if seed >= args.peer_seeds:
                    break
                if name.lower() not in run:
                    continue
                try:
                    part += peer_rows(name, fn, H, ev, seed, args.peer_probes, steps)
                except ImportError as exc:
                    print(f"  {name} skipped: {exc}")
            for r in part:
                r["hessian"] = hid
            rows += part
            loads.append(os.getloadavg()[0])
            print(f"  {arch} {when} seed {seed}: {len(part)} rows ({time.perf_counter() - t1:.0f} s, "
                  f"load {loads[-1]:.1f})", flush=True)
            del H
            done.append([seed, hid])
            from bench.spectral_fractions_report import figure, print_summary, summarize
            summary = summarize(rows, hessians, min(args.peer_seeds, seed + 1))
            extra = dict(hessians=hessians, summary=summary, taus=TAUS, steps=STEPS, probes=PROBES, tols=args.tols,
                         adaptive_budget=args.adaptive_budget, done=done, samples=args.samples,
                         train_steps=args.train_steps, tag=args.tag, started_at_commit=started_at,
                         threads=args.threads, wall_s=time.perf_counter() - t_start, load_avg_1min=loads,
                         reused=None if args.reuse is None else {
                             "file": str(args.reuse), "commit": reuse_from.get("commit"),
                             "kept_methods": sorted(set(METHOD_KEYS) - set(args.rerun)),
                             "pairs": len(reused)})
            # written after every Hessian (a run cut short keeps what it finished; ``done`` says what that is)
            path = write_results("spectral_fractions" + (f"_{args.tag}" if args.tag else ""), rows, extra,
                                 allow_dirty=args.allow_dirty)
            n_cmp = len({(r["hessian"], r["seed"]) for r in rows if r["seed"] < summary["compare_seeds"]})
            Ps = sorted({h["P"] for h in hessians})
            note = (f"SkipMLP Hessians (P = {', '.join(map(str, Ps))}), MNIST-1D, {len(hessians)} Hessians (architecture x "
                    f"init/trained); errors over {n_cmp} Hessian x seed, every method on the same ones")
            png = figure(rows, summary, RESULTS_DIR / (path.stem + ".png"), note)
        print_summary(summary)
        print(f"seed {seed} done ({extra['wall_s']:.0f} s): wrote {path} and {png}", flush=True)


if __name__ == "__main__":
    main()
