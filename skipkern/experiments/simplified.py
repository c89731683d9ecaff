"""Experiment ``simplified``: the two-hidden-unit teacher-student model, plain vs skip (docs/paper.md,
"Simplified model"; after Wei et al. 2008 and Amari et al. 2006).

Student, for input x [d] (Gaussian), g = erf(u/sqrt 2) or ReLU:
    plain: f(x) = w_1 g(J_1.x) + w_2 g(J_2.x)
    skip:  f(x) = w_1 (g(J_1.x) + x_1) + w_2 (g(J_2.x) + x_2)     (unit i also gets input x_i after g)
The teacher has the student's form (``teacher="matched"``, our choice: the paper's teacher is not
public) with the data module's default parameters J* (orthonormal rows) and v* = (1, 1). Loss
0.5 mean (f - y)^2 over a fixed sample, full-batch gradient descent in float64, many starts at once
(vectorised over starts). Tracked: h = |J_1 - J_2| (overlap) and z = (w_1 - w_2)/(w_1 + w_2)
(elimination). Measured:
  - loss curves and the (h, z) trajectories, and the share of training steps spent near the
    degenerate lines (h < h_eps or |z| > z_eps, while the loss is still above the escape threshold);
  - steps to escape (loss below ``escape_loss``);
  - the nullity of the Fisher (Gauss-Newton) matrix on the overlap line J_1 = J_2 (plain: w_1, w_2 enter
    only through w_1 + w_2; skip: they stay identifiable through x_1, x_2) and with unit 2 silent
    (J_2 = 0: plain loses w_2, skip keeps it through x_2);
  - the gradient flow field in the (h, z) plane, on the 2-D slice through the teacher
    J_{1,2} = J_c +- (h/2) u, w_{1,2} = W (1 +- z)/2 (J_c, u, W from the teacher).
Self-contained: its own gradient-descent loop, no train.py.
"""
from __future__ import annotations

import math
import time

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from tqdm.auto import tqdm

from skipkern.data import activation_fn, teacher_student
from skipkern.experiments.common import Context, fmt, stats, write_csv, write_json
from skipkern.experiments.deep import finding
from skipkern.plotting import color_for, legend_outside, new_figure, plt, save_figure

NAME = "simplified"
VARIANTS = ("plain", "skip")
INITS = ("near_overlap", "near_elimination", "random")


def _gprime(a: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "erf":
        return math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * a * a)
    return (a > 0).to(a.dtype)


def features(J: torch.Tensor, x: torch.Tensor, skip: bool, activation: str):
    """Hidden outputs phi [S, n, 2] (with skip inputs) and pre-activations a [S, n, 2].
    J [S, 2, d], x [n, d]."""
    a = torch.einsum("nd,skd->snk", x, J)
    phi = activation_fn(activation)(a)
    if skip:
        phi = phi + x[:, :2]
    return phi, a


def loss_and_grads(J: torch.Tensor, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, skip: bool,
                   activation: str):
    """Loss [S] and its gradients dJ [S, 2, d], dw [S, 2] for S parameter sets at once (analytic)."""
    phi, a = features(J, x, skip, activation)
    r = (phi * w[:, None, :]).sum(-1) - y  # [S, n]
    n = x.shape[0]
    loss = 0.5 * (r * r).mean(1)
    dw = torch.einsum("sn,snk->sk", r, phi) / n
    dJ = torch.einsum("snk,nd->skd", r[..., None] * w[:, None, :] * _gprime(a, activation), x) / n
    return loss, dJ, dw


def hz(J: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h = |J_1 - J_2| [S] and z = (w_1 - w_2)/(w_1 + w_2) [S]."""
    h = torch.linalg.vector_norm(J[:, 0] - J[:, 1], dim=-1)
    z = (w[:, 0] - w[:, 1]) / (w[:, 0] + w[:, 1])
    return h, z


def fisher_nullity(J: torch.Tensor, w: torch.Tensor, x: torch.Tensor, skip: bool, activation: str,
                   rel_tol: float = 1e-10) -> torch.Tensor:
    """Number of numerically zero eigenvalues [S] (below ``rel_tol`` times the largest) of the Fisher /
    Gauss-Newton matrix mean_n grad f grad f^T over theta = (J_1, J_2, w_1, w_2), dimension 2d + 2:
    the count of parameter directions that leave the output unchanged to first order."""
    phi, a = features(J, x, skip, activation)
    gJ = (w[:, None, :] * _gprime(a, activation))[..., None] * x[None, :, None, :]  # [S, n, 2, d]
    grad = torch.cat([gJ.flatten(2), phi], dim=-1)  # [S, n, 2d + 2]
    G = torch.einsum("snp,snq->spq", grad, grad) / x.shape[0]
    ev = torch.linalg.eigvalsh(G)
    return (ev <= rel_tol * ev[:, -1:]).sum(-1)


def initial_points(kind: str, starts: int, d: int, eps: float, g: torch.Generator):
    """Starting parameters J [S, 2, d], w [S, 2] of one kind: near the overlap line (J_2 = J_1 + eps),
    near the elimination line (w_2 = eps * N(0,1)) or random (J ~ N(0, I/d), w ~ N(0, 0.25))."""
    J = torch.randn(starts, 2, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    w = 0.5 * torch.randn(starts, 2, generator=g, dtype=torch.float64)
    if kind == "near_overlap":
        J[:, 1] = J[:, 0] + eps * torch.randn(starts, d, generator=g, dtype=torch.float64)
    elif kind == "near_elimination":
        w[:, 1] = eps * torch.randn(starts, generator=g, dtype=torch.float64)
    elif kind != "random":
        raise ValueError(f"init kind must be one of {INITS}, got {kind!r}")
    return J, w


def _teacher_targets(cfg: dict, seed: int, skip: bool):
    x, y, teacher = teacher_student(cfg["n_samples"], cfg["input_dim"], seed=seed, activation=cfg["activation"],
                                    dtype=torch.float64)
    if skip and cfg["teacher"] == "matched":
        y = y + x[:, :2] @ teacher["v"]
    return x, y, teacher


def run_descent(cfg: dict, seed: int, skip: bool, pbar=None) -> dict:
    """Gradient descent from every start of one seed. Returns loss/h/z traces [S, T_rec] and the
    start labels."""
    x, y, teacher = _teacher_targets(cfg, seed, skip)
    g = torch.Generator().manual_seed(10_000 + int(seed))
    Js, ws, labels = [], [], []
    for kind in cfg["inits"]:
        J, w = initial_points(kind, cfg["starts"], cfg["input_dim"], cfg["init_eps"], g)
        Js.append(J), ws.append(w), labels.extend([kind] * cfg["starts"])
    J, w = torch.cat(Js), torch.cat(ws)
    every = cfg["record_every"]
    rec_loss, rec_h, rec_z, steps = [], [], [], []
    for t in range(cfg["steps"] + 1):
        loss, dJ, dw = loss_and_grads(J, w, x, y, skip, cfg["activation"])
        if t % every == 0 or t == cfg["steps"]:
            h, z = hz(J, w)
            rec_loss.append(loss.clone()), rec_h.append(h), rec_z.append(z), steps.append(t)
        if t == cfg["steps"]:
            break
        J -= cfg["lr"] * dJ
        w -= cfg["lr"] * dw
        if pbar is not None and t % 200 == 0:
            pbar.update(min(200, cfg["steps"] - t))
    return {"steps": np.asarray(steps), "loss": torch.stack(rec_loss, 1).numpy(), "h": torch.stack(rec_h, 1).numpy(),
            "z": torch.stack(rec_z, 1).numpy(), "labels": labels, "teacher": teacher, "x": x, "y": y}


def trace_metrics(tr: dict, cfg: dict) -> dict:
    """Per-start escape step and share of steps near the degenerate lines, pooled into one seed's
    numbers (median escape step over starts, fraction escaped, mean near-line share, median final loss)."""
    loss, h, z, steps = tr["loss"], tr["h"], tr["z"], tr["steps"]
    escaped = loss < cfg["escape_loss"]
    first = np.where(escaped.any(1), np.argmax(escaped, 1), -1)
    esc_step = np.where(first >= 0, steps[np.maximum(first, 0)], np.inf)
    near = (h < cfg["h_eps"]) | (np.abs(z) > cfg["z_eps"])
    stuck = near & ~escaped  # near a degenerate line while the loss is still high
    share = stuck.mean(1)
    return {"median_escape_step": float(np.median(esc_step)), "fraction_escaped": float(np.isfinite(esc_step).mean()),
            "near_line_share": float(share.mean()), "median_final_loss": float(np.median(loss[:, -1])),
            "escape_steps": esc_step.tolist()}


def flow_field(cfg: dict, seed: int, skip: bool, grid: int):
    """(dh/dt, dz/dt) of gradient flow on the teacher slice; returns H, Z, DH, DZ [grid, grid]."""
    x, y, teacher = _teacher_targets(cfg, seed, skip)
    Jt, vt = teacher["J"], teacher["v"]
    jc, diff = 0.5 * (Jt[0] + Jt[1]), Jt[0] - Jt[1]
    u = diff / torch.linalg.vector_norm(diff)
    W = float(vt.sum())
    hs = torch.linspace(0.0, cfg["h_max"], grid, dtype=torch.float64)
    zs = torch.linspace(-cfg["z_max"], cfg["z_max"], grid, dtype=torch.float64)
    Hg, Zg = torch.meshgrid(hs, zs, indexing="xy")
    h, z = Hg.reshape(-1), Zg.reshape(-1)
    J = torch.stack([jc + 0.5 * h[:, None] * u, jc - 0.5 * h[:, None] * u], 1)
    w = torch.stack([0.5 * W * (1 + z), 0.5 * W * (1 - z)], 1)
    _, dJ, dw = loss_and_grads(J, w, x, y, skip, cfg["activation"])
    dh = -((dJ[:, 0] - dJ[:, 1]) @ u)
    dz = -2.0 * (w[:, 1] * dw[:, 0] - w[:, 0] * dw[:, 1]) / (w[:, 0] + w[:, 1]) ** 2
    shape = Hg.shape
    return Hg.numpy(), Zg.numpy(), dh.reshape(shape).numpy(), dz.reshape(shape).numpy()


def degenerate_line_nullity(cfg: dict, seed: int, skip: bool, line: str, points: int = 16) -> np.ndarray:
    """Fisher nullity at random points of a degenerate line: "overlap" (J_1 = J_2) or "elimination"
    (J_2 = 0, unit 2 silent: g(0) = 0 for erf and ReLU)."""
    x, _, _ = _teacher_targets(cfg, seed, skip)
    g = torch.Generator().manual_seed(20_000 + int(seed))
    d = cfg["input_dim"]
    J1 = torch.randn(points, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    J2 = J1.clone() if line == "overlap" else torch.zeros_like(J1)
    w = 0.5 + torch.rand(points, 2, generator=g, dtype=torch.float64)
    return fisher_nullity(torch.stack([J1, J2], 1), w, x, skip, cfg["activation"]).numpy()


def run(ctx: Context, cfg: dict) -> dict:
    """Run the recipe; writes results.json, simplified.csv and the figures into <out>/simplified/."""
    t0 = time.perf_counter()
    out = ctx.exp_dir(NAME)
    seeds = list(ctx.seeds if ctx.seeds is not None else cfg["seeds"])
    per = {v: [] for v in VARIANTS}
    traces = {}
    rows = []
    total = len(seeds) * len(VARIANTS) * cfg["steps"]
    with tqdm(total=total, desc=f"{NAME}: gradient descent", disable=not ctx.progress, leave=False) as pbar:
        for seed in seeds:
            for v in VARIANTS:
                tr = run_descent(cfg, seed, v == "skip", pbar)
                m = trace_metrics(tr, cfg)
                for line in ("overlap", "elimination"):
                    m[f"fisher_nullity_{line}"] = float(np.median(degenerate_line_nullity(cfg, seed, v == "skip", line)))
                per[v].append(m)
                rows.append({"variant": v, "seed": seed, **{k: m[k] for k in m if k != "escape_steps"}})
                if seed == seeds[0]:
                    traces[v] = tr
    fields = ["median_escape_step", "fraction_escaped", "near_line_share", "median_final_loss",
              "fisher_nullity_overlap", "fisher_nullity_elimination"]
    summary = {v: {f: stats([m[f] for m in per[v]]) for f in fields} for v in VARIANTS}

    figs = _figures(ctx, cfg, seeds[0], traces, out)
    col = {f: {v: [m[f] for m in per[v]] for v in VARIANTS} for f in fields}
    # The verdict rests on the overlap line's nullity and on the time spent stuck near the lines. The
    # nullity with unit 2 silent is reported only: with erf, g(J_2.x) ~ c J_2.x near J_2 = 0 spans the
    # skip input x_2, so the skip model keeps one null direction there too.
    fe = [m["fraction_escaped"] for m in per["plain"]], [m["fraction_escaped"] for m in per["skip"]]
    evidence = (f"Fisher nullity (parameter directions that leave the output unchanged, of {2 * cfg['input_dim'] + 2}) "
                f"on the overlap line: plain {fmt(col['fisher_nullity_overlap']['plain'], 1)}, skip "
                f"{fmt(col['fisher_nullity_overlap']['skip'], 1)}; with unit 2 silent: plain "
                f"{fmt(col['fisher_nullity_elimination']['plain'], 1)}, skip "
                f"{fmt(col['fisher_nullity_elimination']['skip'], 1)}. Share of steps stuck near a degenerate "
                f"line: plain {fmt(col['near_line_share']['plain'])}, skip {fmt(col['near_line_share']['skip'])}. "
                f"Median steps to loss < {cfg['escape_loss']:g}: plain {fmt(col['median_escape_step']['plain'], 0)}, "
                f"skip {fmt(col['median_escape_step']['skip'], 0)} (starts that got there: plain {fmt(fe[0], 2)}, "
                f"skip {fmt(fe[1], 2)}).")
    from skipkern.experiments.verdicts import welch_interval
    esc = welch_interval(col["median_escape_step"]["skip"], col["median_escape_step"]["plain"])
    frac = welch_interval(col["fraction_escaped"]["skip"], col["fraction_escaped"]["plain"])
    cav = ["The Fisher nullity is a property of the model at the chosen points, not of training: its interval is "
           "degenerate when every seed gives the same count.",
           "The registered predictions concern the degenerate lines. Whether the skip model also trains faster is "
           f"a separate question, not registered: median escape step skip - plain = {esc[0]:+.0f} [{esc[1]:+.0f}, "
           f"{esc[2]:+.0f}] steps, fraction of starts that escaped skip - plain = {frac[0]:+.2f} [{frac[1]:+.2f}, "
           f"{frac[2]:+.2f}] (95% Welch intervals over seeds).",
           "The loss curves show one seed; the share of stuck steps and the escape times are over all seeds."]
    f0 = finding(0, "", col, {}, evidence, col, figs[0], caveats=cav)
    write_csv(out / f"{NAME}.csv", rows)
    result = {"experiment": NAME, "config": cfg, "seeds": seeds, "context": ctx.describe(), "summary": summary,
              "runs": rows, "findings": [f0.to_dict()], "figures": figs,
              "elapsed_s": time.perf_counter() - t0}
    write_json(out / "results.json", result)
    return result


# light grey (slow) to black (fast): slow regions stay visible and the coloured trajectories stand out
_GREYS = ListedColormap(plt.get_cmap("Greys")(np.linspace(0.3, 1.0, 256)))


def _figures(ctx: Context, cfg: dict, seed: int, traces: dict, out) -> list:
    fig, axes = new_figure(2, 1, width=5.2)
    colors = {k: color_for(k) for k in INITS}
    for ax, v in zip(axes, VARIANTS):
        tr = traces[v]
        for i, lab in enumerate(tr["labels"]):
            ax.plot(tr["steps"], np.maximum(tr["loss"][i], 1e-16), color=colors[lab], lw=0.8, alpha=0.7,
                    label=lab if lab not in tr["labels"][:i] else None)
        ax.axhline(cfg["escape_loss"], color="k", ls=":", lw=0.8, label="escape threshold")
        ax.set_yscale("log")
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("training loss (MSE / 2)")
        ax.set_title(f"{v}: loss curves, one per start (seed {seed})", fontsize=10)
        ax.grid(alpha=0.3)
    legend_outside(fig, axes[0].get_legend_handles_labels()[0])
    stem_loss = f"{NAME}_loss_curves"
    save_figure(fig, out, stem_loss)

    fig, axes = new_figure(2, 1, width=5.2, height=4.4)
    fields = {v: flow_field(cfg, seed, v == "skip", cfg["grid"]) for v in VARIANTS}
    speeds = {v: np.log10(np.hypot(f[2], f[3]) + 1e-12) for v, f in fields.items()}
    both = np.concatenate([v.ravel() for v in speeds.values()])
    # one scale for both panels; its range is the 2nd-98th percentile so that the near-zero speeds at the
    # fixed points do not wash out the contrast everywhere else
    norm = matplotlib.colors.Normalize(float(np.percentile(both, 2)), float(np.percentile(both, 98)), clip=True)
    for ax, v in zip(axes, VARIANTS):
        H, Z, DH, DZ = fields[v]
        strm = ax.streamplot(H, Z, DH, DZ, color=speeds[v], cmap=_GREYS, norm=norm, density=1.0, linewidth=0.7,
                             arrowsize=0.7)
        tr = traces[v]
        # z passes through +-inf when w1 + w2 changes sign: break the line there instead of drawing a jump
        zz = np.where(np.abs(tr["z"]) <= cfg["z_max"], tr["z"], np.nan)
        for i, lab in enumerate(tr["labels"]):
            ax.plot(tr["h"][i], zz[i], color=colors[lab], lw=0.9, alpha=0.85,
                    label=lab if lab not in tr["labels"][:i] else None)
            ax.plot(tr["h"][i, 0], zz[i, 0], "o", color=colors[lab], ms=2.5)
        for zl in (-1, 1):
            ax.axhline(zl, color="r", ls="--", lw=0.8)
        ax.axvline(0, color="r", ls="--", lw=1.5)
        ax.set_xlim(0, cfg["h_max"])
        ax.set_ylim(-cfg["z_max"], cfg["z_max"])
        ax.set_xlabel("h = |J1 - J2| (overlap)")
        ax.set_ylabel("z = (w1 - w2)/(w1 + w2) (elimination)")
        ax.set_title(f"{v}: gradient flow (teacher slice) + trajectories", fontsize=10)
    fig.colorbar(strm.lines, ax=axes, label="log10 flow speed\n(one scale for both panels, 2nd-98th percentile)")
    from matplotlib.lines import Line2D
    lines = Line2D([], [], color="r", ls="--", lw=0.8, label="degenerate lines h = 0, |z| = 1")
    legend_outside(fig, axes[0].get_legend_handles_labels()[0] + [lines])
    stem_flow = f"{NAME}_flow_field"
    save_figure(fig, out, stem_flow)
    return [stem_loss, stem_flow]


CONFIGS = {
    "tiny": dict(seeds=[0], input_dim=3, n_samples=64, activation="erf", lr=0.2, steps=200, starts=2,
                 inits=list(INITS), init_eps=0.01, teacher="matched", record_every=10, escape_loss=1e-3,
                 h_eps=0.1, z_eps=0.9, grid=9, h_max=2.5, z_max=2.0),
    "quick": dict(seeds=[0, 1, 2, 3, 4], input_dim=4, n_samples=400, activation="erf", lr=0.2, steps=3000, starts=6,
                  inits=list(INITS), init_eps=0.01, teacher="matched", record_every=10, escape_loss=1e-3,
                  h_eps=0.1, z_eps=0.9, grid=25, h_max=2.5, z_max=2.0),
    "full": dict(seeds=[0, 1, 2, 3, 4], input_dim=4, n_samples=1000, activation="erf", lr=0.1, steps=20000,
                 starts=16, inits=list(INITS), init_eps=0.01, teacher="matched", record_every=20, escape_loss=1e-3,
                 h_eps=0.1, z_eps=0.9, grid=31, h_max=2.5, z_max=2.0),
}
