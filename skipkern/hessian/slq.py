"""Stochastic Lanczos quadrature: the engine (probes in lockstep, optional outlier deflation, steps
and probes added on demand) and ``spectral_density``.

Every Lanczos step of every probe set in flight is ONE ``op.matmat`` (one data pass for a
HessianOperator). With deflation (skipkern.hessian.deflation) the probes are uniform on the unit
sphere of the deflated space and the operator is Pi A Pi (Pi = I - U U^T, applied in float64 before
and after each product), so the Krylov spaces stay off the deflated vectors; the quadrature is then
combined exactly with the deflated eigenvalues (skipkern.hessian.density.from_lanczos).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from skipkern.hessian.adapters import as_operator
from skipkern.hessian.dense import KnownSpan
from skipkern.hessian.deflation import Deflation, find_outliers, probe_generator, sphere_probes
from skipkern.hessian.density import SpectralDensity, from_lanczos
from skipkern.hessian.lanczos import (LanczosResult, LanczosRun, check_count, default_breakdown_tol, probe_seed,
                                      progress_bar, rademacher_probes)

__all__ = ["SLQ", "spectral_density", "PROBES"]

PROBES = ("rademacher", "sphere")


class SLQ:
    """Lanczos of a growing set of probes on ``op`` (deflated by ``deflation`` when given).

    Args:
        op: a CurvatureOperator; deflation: a Deflation or None; probe: "rademacher" or "sphere"
        ("sphere" is required with a deflation); seed: probe seed; reorthogonalize: "full" or "none".
    """

    def __init__(self, op, *, deflation: Optional[Deflation] = None, probe: str = "sphere",
                 seed: Optional[int] = None, reorthogonalize: str = "full"):
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        if deflation is not None and deflation.count and probe != "sphere":
            raise ValueError("deflation needs probe='sphere' (Rademacher probes cannot be projected off the "
                             "deflated vectors and stay Rademacher)")
        self.op, self.deflation, self.probe, self.seed = op, deflation, probe, seed
        self.reorthogonalize = reorthogonalize
        self.P = op.shape[0]
        self.n = self.P - (deflation.count if deflation is not None else 0)
        self.runs: list[LanczosRun] = []
        self.m = 0
        self.num_matvecs = 0 if deflation is None else deflation.num_matvecs
        self.num_products = 0
        self._gen = probe_generator(seed, "sphere probes")  # not the stream of a model seeded alike
        self.known: Optional[KnownSpan] = None  # set it to keep the span of every product (dense route)

    @property
    def num_probes(self) -> int:
        return sum(r.k for r in self.runs)

    def _apply(self, V: Tensor) -> Tensor:
        d = self.deflation
        if d is not None:
            V = d.project(V)
        W = self.op.matmat(V.T.to(self.op.dtype)).T.to(torch.float64)
        self.num_matvecs += V.shape[0]
        self.num_products += 1
        if self.known is not None:
            self.known.add(V, W)
        return W if d is None else d.project(W)

    def _new_probes(self, k: int) -> Tensor:
        if self.probe == "rademacher":  # the historical probes: seed, seed + 1, ... per added set
            s = None if self.seed is None else self.seed + len(self.runs)
            return rademacher_probes(self.P, k, s, self.op.device)
        return sphere_probes(self.P, k, self._gen, self.op.device, self.deflation)

    def _step_all(self, runs: list[LanczosRun]) -> None:
        live = [r for r in runs if not r.done]
        Vs = [r.step_begin()[0] for r in live]
        W = self._apply(torch.cat(Vs, 0))
        start = 0
        for r, V in zip(live, Vs):
            r.step_end(W[start:start + V.shape[0]])
            start += V.shape[0]

    def add_probes(self, k: int, bar=None) -> None:
        """k more probes, run up to the current number of steps (by themselves: k vectors per product)."""
        check_count("num_probes", k)
        tol = default_breakdown_tol(self.op.dtype)
        run = LanczosRun(None, self._new_probes(k), max(self.m, 1), max_len=torch.full((k,), self.n),
                         reorthogonalize=self.reorthogonalize, breakdown_tol=tol)
        self.runs.append(run)
        if self.m:
            while not run.done:
                self._step_all([run])
                if bar is not None:
                    bar.update(0)

    def extend(self, num_steps: int, bar=None) -> None:
        """Run every probe to ``num_steps`` Lanczos steps (capped at the space's dimension)."""
        num_steps = min(num_steps, self.n)
        if num_steps <= self.m:
            return
        for r in self.runs:
            r.extend(num_steps)
        while not all(r.done for r in self.runs):
            self._step_all(self.runs)
            if bar is not None:
                bar.update(1)
        self.m = num_steps

    def lanczos_result(self) -> LanczosResult:
        """All probes' tridiagonals as one LanczosResult (m = the current number of steps)."""
        parts = [r.result() for r in self.runs]
        m = max(p.alphas.shape[1] for p in parts)

        def pad(t: Tensor, cols: int) -> Tensor:
            return torch.nn.functional.pad(t, (0, cols - t.shape[1]))
        return LanczosResult(torch.cat([pad(p.alphas, m) for p in parts]),
                             torch.cat([pad(p.betas, max(m - 1, 0)) for p in parts]),
                             torch.cat([p.lengths for p in parts]), self.num_products,
                             beta_last=torch.cat([p.beta_last for p in parts]))

    def density(self, *, sigma=None, grid=None, meta: Optional[dict] = None) -> SpectralDensity:
        d = self.deflation
        info = {"probe": self.probe, "num_probes": self.num_probes, "seed": self.seed,
                "reorthogonalize": self.reorthogonalize, "num_matvecs": self.num_matvecs,
                "product_dtype": str(self.op.dtype).replace("torch.", "")}
        if d is not None and d.count:
            info["deflation"] = {"count": d.count, "residual": d.residual, "num_matvecs": d.num_matvecs,
                                 "steps": d.steps, **d.info}
        info.update(meta or {})
        return from_lanczos(self.lanczos_result(), self.P, sigma=sigma, grid=grid, meta=info,
                            deflated=None if d is None else d.values)


def make_slq(op, deflate: Union[str, int], probe: Optional[str], seed: Optional[int], reorthogonalize: str,
             progress: bool) -> SLQ:
    """An SLQ on ``op`` (any operator kind) with its deflation found (the seed shared across ranks)."""
    op = as_operator(op)
    seed = probe_seed(op, seed)  # seed None under a process group: one seed, broadcast from rank 0
    probe = probe or ("rademacher" if deflate == 0 else "sphere")
    deflation = None
    if deflate != 0:
        deflation = find_outliers(op, deflate, seed=seed, progress=progress)
    return SLQ(op, deflation=deflation, probe=probe, seed=seed, reorthogonalize=reorthogonalize)


def spectral_density(op, *, num_probes: int = 10, num_steps: int = 80, sigma: Optional[float] = None,
                     grid=None, seed: Optional[int] = None, progress: bool = True, reorthogonalize: str = "full",
                     deflate: Union[str, int] = 0, probe: Optional[str] = None) -> SpectralDensity:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    All probes run in lockstep: ``num_steps`` products of ``num_probes`` vectors each (for a
    HessianOperator, ``num_steps`` passes over the data), after the deflation search if any.

    Args:
        op: a symmetric operator (HessianOperator, DenseOperator, tensor, numpy array, scipy
            LinearOperator, any object with shape and matmat; skipkern.hessian.adapters).
        num_probes: random unit probes k >= 1 (standard errors need k >= 2).
        num_steps: Lanczos steps m >= 1 (capped at the dimension).
        sigma: Gaussian smoothing width (default: 1% of the Ritz-value range).
        grid: evaluation points [G], or a point count (default 1000) spanning the Ritz values +- 5 sigma.
        seed: probe seed (same seed, same numbers).
        progress: tqdm bar with ETA per Lanczos step (quiet when not on a terminal).
        reorthogonalize: "full" (default) or "none".
        deflate: 0 (default: none), "auto" (the outliers, skipkern.hessian.deflation) or a count k of
            largest-magnitude eigenpairs, deflated and combined exactly with the SLQ of the rest.
        probe: "rademacher" (default without deflation) or "sphere" (default and required with it).

    Returns:
        SpectralDensity; its ``fraction_*`` methods return certified fractions.
    """
    check_count("num_probes", num_probes)
    check_count("num_steps", num_steps)
    slq = make_slq(op, deflate, probe, seed, reorthogonalize, progress)
    with progress_bar(min(num_steps, slq.n), progress, "Lanczos") as bar:
        slq.add_probes(num_probes)
        slq.extend(num_steps, bar)
    return slq.density(sigma=sigma, grid=grid)
