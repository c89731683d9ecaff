"""Per-block spectra: density and trace of the diagonal Hessian blocks H_gg of parameter groups g
(by default one group per layer), computed in the same data passes as the full spectrum.

Density. The Krylov space of the block-diagonal restriction P_g H P_g from a probe supported on
block g stays in block g, so per-block Lanczos needs only products H v with v supported on g, read
back on g. We run one Lanczos per block (k probes each, supported on that block, basis of the
block's own dimension P_g, so the float64 bases take k m P numbers in all, like one full run) and
the full run side by side, and stack every active vector of every run into ONE ``op.matmat`` per
step: m data passes in all, the same as the full density alone. The cost is compute, not data:
each step multiplies k (G + 1) vectors instead of k.

Trace. With one set of Rademacher probes z, E[z_g^T (H z)_g] = tr(H_gg) (the cross terms
z_g^T H_gh z_h have mean zero), so every block trace comes from the full Hutchinson product for
free, with standard errors across probes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from skipkern.hessian.density import Estimate, SpectralDensity, from_lanczos
from skipkern.hessian.lanczos import (LanczosRun, check_count, default_breakdown_tol, probe_seed, progress_bar,
                                      rademacher_probes)
from skipkern.hessian.trace import rademacher

__all__ = ["parameter_groups", "block_spectral_density", "block_trace"]

Groups = Optional[dict[str, Union[str, Sequence[str]]]]


def parameter_groups(op, groups: Groups = None) -> dict[str, Tensor]:
    """{group: flat indices [P_g] (int64)} of an operator with ``param_names`` and ``param_offsets``.

    Args:
        op: a HessianOperator (anything with param_names, param_offsets, param_sizes).
        groups: None (one group per module: the parameter name without its last part, e.g.
            "layers.3" holds "layers.3.weight" and "layers.3.bias"), or {name: entries}, each entry a
            parameter name or a module prefix ("layers.3" matches "layers.3.weight"). A parameter
            may belong to one group only; parameters in no group are left out.
    """
    for attr in ("param_names", "param_offsets", "param_sizes"):
        if not hasattr(op, attr):
            raise TypeError(f"op must be a HessianOperator (with {attr}); got {type(op).__name__}")
    names = list(op.param_names)
    if groups is None:
        spec: dict[str, list[str]] = {}
        for n in names:
            spec.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    else:
        if not isinstance(groups, dict) or not groups:
            raise ValueError(f"groups must be a non-empty dict {{name: parameter names or prefixes}}, got {groups!r}")
        spec = {}
        for g, entries in groups.items():
            entries = [entries] if isinstance(entries, str) else list(entries)
            hit = [n for n in names if any(n == e or n.startswith(e + ".") for e in entries)]
            if not hit:
                raise ValueError(f"groups[{g!r}] = {entries} matches no parameter of the operator "
                                 f"(names: {names[:6]}{'...' if len(names) > 6 else ''})")
            spec[g] = hit
        seen: dict[str, str] = {}
        for g, hit in spec.items():
            for n in hit:
                if n in seen:
                    raise ValueError(f"parameter {n!r} is in groups {seen[n]!r} and {g!r}; groups must not overlap")
                seen[n] = g
    where = {n: (o, s) for n, o, s in zip(names, op.param_offsets, op.param_sizes)}
    return {g: torch.cat([torch.arange(where[n][0], where[n][0] + where[n][1]) for n in hit])
            for g, hit in spec.items()}


def block_trace(op, num_probes: int, groups: Groups = None, seed: Optional[int] = None) -> dict[str, Estimate]:
    """Hutchinson traces of every diagonal block and of the whole operator from ONE product.

    Returns:
        {group: Estimate(value, stderr)} plus "full"; stderr is NaN with one probe.
    """
    check_count("num_probes", num_probes)
    idx = parameter_groups(op, groups)
    Z = rademacher(op.shape[0], num_probes, probe_seed(op, seed), op.device)
    prod = Z * op.matmat(Z.to(op.dtype)).to(torch.float64)  # [P, k]: z_i (H z)_i
    out = {}
    for g, rows in list(idx.items()) + [("full", None)]:
        per = prod.sum(0) if rows is None else prod[rows.to(prod.device)].sum(0)
        se = float(per.std(unbiased=True) / math.sqrt(num_probes)) if num_probes > 1 else float("nan")
        out[g] = Estimate(float(per.mean()), se)
    return out


def block_spectral_density(op, groups: Groups = None, *, num_probes: int = 10, num_steps: int = 80,
                           sigma: Optional[float] = None, grid=None, seed: Optional[int] = None,
                           progress: bool = True, include_full: bool = True) -> dict[str, SpectralDensity]:
    """SLQ densities of every diagonal block H_gg (and of H) in one set of data passes.

    Args:
        op: a HessianOperator.
        groups: see ``parameter_groups`` (default: one group per layer/module).
        num_probes, num_steps, sigma, grid, seed, progress: as in ``spectral_density`` (per block;
            each block's steps are capped at its dimension P_g; ``sigma``/``grid`` default per block).
        include_full: also the full Hessian's density, under the key "full".

    Returns:
        {group: SpectralDensity} (dim = P_g), plus "full" when ``include_full``.
    """
    check_count("num_probes", num_probes)
    check_count("num_steps", num_steps)
    idx = parameter_groups(op, groups)
    P, dev = op.shape[0], op.device
    seed = probe_seed(op, seed)  # seed None under a process group: one seed, broadcast from rank 0
    tol = default_breakdown_tol(op.dtype)
    entries = list(idx.items()) + ([("full", None)] if include_full else [])
    runs = []
    for b, (g, rows) in enumerate(entries):
        dim = P if rows is None else rows.numel()
        q0 = rademacher_probes(dim, num_probes, None if seed is None else seed + 1000003 * b, dev)
        runs.append(LanczosRun(None, q0, min(num_steps, dim), breakdown_tol=tol))
    rows_dev = [None if r is None else r.to(dev) for _, r in entries]
    passes = 0
    with progress_bar(num_steps, progress, "block Lanczos") as bar:
        while not all(r.done for r in runs):
            live = [(r, rows) for r, rows in zip(runs, rows_dev) if not r.done]
            full_vs = []
            for r, rows in live:  # embed each run's active vectors into R^P
                V, _ = r.step_begin()
                if rows is None:
                    full_vs.append(V)
                else:
                    E = V.new_zeros(V.shape[0], P)
                    E[:, rows] = V
                    full_vs.append(E)
            Vall = torch.cat(full_vs, 0)  # [sum ka, P]
            Wall = op.matmat(Vall.T.to(op.dtype)).T.to(torch.float64)
            passes += 1
            start = 0
            for (r, rows), V in zip(live, full_vs):
                Wr = Wall[start:start + V.shape[0]]
                start += V.shape[0]
                r.step_end(Wr if rows is None else Wr[:, rows])
            bar.update(1)
    out = {}
    for (g, rows), r in zip(entries, runs):
        dim = P if rows is None else rows.numel()
        meta = {"seed": seed, "num_probes": num_probes, "block": g, "data_passes": passes,
                "product_dtype": str(op.dtype).replace("torch.", "")}
        out[g] = from_lanczos(r.result(), dim, sigma=sigma, grid=grid, meta=meta)
    return out
