"""Lanczos tridiagonalisation of k probes in lockstep, float64, with full reorthogonalisation.

Each step is ONE ``op.matmat`` over all active probes (so one pass over the data for a Hessian),
whatever the dtype of the products; the recurrence (alphas, betas) and the Lanczos basis are float64.
Full reorthogonalisation is blocked: the new vectors of all k probes are projected out of their own
stored bases with two batched matrix products, done twice ("twice is enough": Giraud, Langou,
Rozloznik 2005), with no host synchronisation per vector. One host sync per step decides breakdowns:
a probe whose beta falls below ``breakdown_tol`` times its running estimate of ||A|| has found an
invariant subspace; its recurrence stops cleanly and ``lengths`` records its effective number of
steps (the quadrature of that probe is then exact). ``num_steps`` is capped at the dimension P.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from skipkern import distributed as sd
from skipkern.hessian.adapters import as_operator

log = logging.getLogger("skipkern")

__all__ = ["LanczosResult", "lanczos", "rademacher_probes", "default_breakdown_tol", "check_count",
           "probe_seed"]


def check_count(name: str, value, minimum: int = 1) -> int:
    """Validate a user-given count (num_probes, num_steps, k): an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def default_breakdown_tol(dtype: torch.dtype) -> float:
    """Relative beta below which a probe counts as broken down: 1e-12 for float64 products, else
    10 eps of the product dtype (the level at which rounding of the products dominates)."""
    return 1e-12 if dtype == torch.float64 else 10.0 * torch.finfo(dtype).eps


def rademacher_probes(P: int, k: int, seed: Optional[int], device=None) -> Tensor:
    """k unit-norm Rademacher vectors [k, P] float64 (entries +-1/sqrt(P)); CPU generator, so a seed
    gives the same probes on every device."""
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    z = torch.randint(0, 2, (k, P), generator=g, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)
    return z.div_(math.sqrt(P)).to(device)


@dataclass
class LanczosResult:
    """Tridiagonals of k Lanczos runs.

    Attributes:
        alphas: [k, m] float64 diagonals (entries at and past ``lengths[j]`` are 0).
        betas: [k, m-1] float64 off-diagonals (entries at and past ``lengths[j] - 1`` are 0).
        lengths: [k] int64 effective steps of each probe (< m after a breakdown).
        num_matmat: products (= data passes for a HessianOperator) the run took.
        basis: [k, m, P] float64 Lanczos vectors if requested, else None.
        beta_last: [k] float64 norm of each probe's residual after its last step (beta_{L_j}; 0 when the
            probe broke down or spanned its whole space, i.e. when its quadrature is exact).
    """

    alphas: Tensor
    betas: Tensor
    lengths: Tensor
    num_matmat: int
    basis: Optional[Tensor] = None
    beta_last: Optional[Tensor] = None

    @property
    def num_probes(self) -> int:
        return self.alphas.shape[0]

    def tridiagonal(self, j: int) -> Tensor:
        """T_j [L_j, L_j] float64 of probe j (L_j = lengths[j])."""
        n = int(self.lengths[j])
        T = torch.diag(self.alphas[j, :n])
        if n > 1:
            off = self.betas[j, :n - 1]
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        return T

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Gauss quadrature of each probe: (nodes [k, m], weights [k, m]) float64 on the CPU; nodes are
        the Ritz values (eigenvalues of T_j), weights the squared first components of T_j's
        eigenvectors. Entries past lengths[j] have weight 0 (and node 0)."""
        from skipkern.hessian.quadrature import gauss_rule  # LAPACK's tridiagonal solver, O(m^2) per probe
        k, m = self.alphas.shape
        nodes = torch.zeros(k, m, dtype=torch.float64)
        weights = torch.zeros(k, m, dtype=torch.float64)
        a, b = self.alphas.cpu().numpy(), self.betas.cpu().numpy()
        for j in range(k):
            n = int(self.lengths[j])
            ev, w = gauss_rule(a[j, :n], b[j, :n - 1])
            nodes[j, :n], weights[j, :n] = torch.from_numpy(ev), torch.from_numpy(w)
        return nodes, weights


class LanczosRun:
    """Stepwise lockstep Lanczos over the rows of ``Q0`` [k, P] (unit norm, float64).

    ``apply(V [ka, P] float64, idx [ka] long) -> A V`` evaluates the operator on the active rows
    ``idx`` (row j may use its own operator, e.g. a block restriction). ``max_len`` [k] caps each
    probe's steps (its space's dimension). ``extend`` raises the number of steps of a run in progress
    (the storage grows; the next Lanczos vector is always kept), so an adaptive driver can add steps."""

    def __init__(self, apply: Optional[Callable[[Tensor, Tensor], Tensor]], Q0: Tensor, num_steps: int, *,
                 max_len: Optional[Tensor] = None, reorthogonalize: str = "full", breakdown_tol: float = 1e-12):
        if reorthogonalize not in ("full", "none"):
            raise ValueError(f"reorthogonalize must be 'full' or 'none', got {reorthogonalize!r}")
        k, P = Q0.shape
        self.apply, self.k, self.m = apply, k, num_steps
        self.full = reorthogonalize == "full"
        self.tol = breakdown_tol
        dev = Q0.device
        self.basis = Q0.new_zeros(k, num_steps + 1, P)  # one more row: the vector after the last step
        self.basis[:, 0] = Q0
        self.alphas = torch.zeros(k, num_steps, dtype=torch.float64, device=dev)
        self.betas = torch.zeros(k, num_steps, dtype=torch.float64, device=dev)
        self.stopped = torch.full((k,), -1, dtype=torch.int64)  # steps at a breakdown / the cap, -1 if running
        self.max_len = (torch.full((k,), P, dtype=torch.int64) if max_len is None
                        else max_len.to(torch.int64).cpu())
        self.active = torch.ones(k, dtype=torch.bool)
        self.scale = torch.zeros(k, dtype=torch.float64, device=dev)
        self.i = 0
        self.num_matmat = 0

    @property
    def done(self) -> bool:
        return self.i >= self.m or not bool(self.active.any())

    @property
    def lengths(self) -> Tensor:
        """[k] steps of each probe so far (its stop for a probe that broke down or hit its cap)."""
        return torch.where(self.stopped >= 0, self.stopped, torch.full_like(self.stopped, self.i))

    def extend(self, num_steps: int) -> None:
        """Allow ``num_steps`` steps in all (probes that broke down stay stopped)."""
        if num_steps <= self.m:
            return
        k, cap, P = self.basis.shape
        if num_steps + 1 > cap:
            grown = self.basis.new_zeros(k, num_steps + 1, P)
            grown[:, :cap] = self.basis
            self.basis = grown
            for name in ("alphas", "betas"):
                old = getattr(self, name)
                new = old.new_zeros(k, num_steps)
                new[:, :old.shape[1]] = old
                setattr(self, name, new)
        self.m = num_steps

    def step(self) -> None:
        """One Lanczos step of every active probe: one ``apply`` call."""
        V, idx = self.step_begin()
        self.step_end(self.apply(V, idx))

    def step_begin(self) -> tuple[Tensor, Tensor]:
        """(V [ka, P] float64, idx [ka]): the active probes' current vectors, to be multiplied by A."""
        idx = self.active.nonzero().flatten()
        V = self.basis[:, self.i] if idx.numel() == self.k else self.basis[idx.to(self.basis.device), self.i]
        return V, idx

    def step_end(self, Wa: Tensor) -> None:
        """Finish the step from Wa = A V [ka, P] of the vectors ``step_begin`` returned."""
        i, B = self.i, self.basis
        idx = self.active.nonzero().flatten()
        Wa = Wa.to(torch.float64).contiguous()
        self.num_matmat += 1
        W = Wa if idx.numel() == self.k else B.new_zeros(self.k, B.shape[2]).index_copy_(0, idx.to(B.device), Wa)
        v = B[:, i]
        alpha = (W * v).sum(1)
        W -= alpha[:, None] * v
        if i > 0:
            W -= self.betas[:, i - 1, None] * B[:, i - 1]
        if self.full:  # W -= Q (Q^T W), twice, batched over probes (inactive rows are zero)
            # Both products are written as row-vector x matrix, [k, 1, .] @ [k, ., .]: that form streams
            # the stored basis at memory bandwidth (the matrix x column-vector form ran 3-6x slower on CPU).
            Qi = B[:, :i + 1]  # [k, i+1, P]
            for _ in range(2):
                c = torch.bmm(W[:, None, :], Qi.transpose(1, 2))  # [k, 1, i+1] = (Q^T w)^T
                W -= torch.bmm(c, Qi)[:, 0]
        beta = W.norm(dim=1)
        self.last_beta = beta
        active_before = self.active.clone()
        self.alphas[:, i] = torch.where(active_before.to(alpha.device), alpha, torch.zeros_like(alpha))
        self.scale = torch.maximum(self.scale, torch.maximum(alpha.abs(), beta))
        # one host sync per step: which probes broke down or reached their dimension
        broken = (beta <= self.tol * self.scale).cpu() | (self.max_len <= i + 1)
        newly = self.active & broken
        self.stopped[newly] = i + 1
        self.active &= ~broken
        keep = self.active.to(B.device)
        beta = torch.where(keep, beta, torch.zeros_like(beta))
        self.betas[:, i] = beta
        B[:, i + 1] = torch.where(keep[:, None], W / torch.where(keep, beta, torch.ones_like(beta))[:, None],
                                  torch.zeros_like(W))
        self.i += 1

    def restart(self, vec: Tensor) -> None:
        """Continue every stopped probe from ``vec`` [P] made orthogonal to its basis (beta = 0 at the
        seam, so T becomes block diagonal). Used to search past an invariant subspace."""
        i, B = self.i, self.basis
        stopped = (~self.active).nonzero().flatten()
        for j in stopped.tolist():
            v = vec.to(B.dtype).clone()
            for _ in range(2):
                v -= B[j, :i].T @ (B[j, :i] @ v)
            nv = v.norm()
            if float(nv) == 0.0:
                continue
            B[j, i] = v / nv
            self.betas[j, i - 1] = 0.0
            self.active[j] = True
            self.stopped[j] = -1

    def result(self, keep_basis: bool = False) -> LanczosResult:
        m = self.i
        lengths = self.lengths.clone()
        alphas = self.alphas[:, :m].clone()
        betas = self.betas[:, :max(m - 1, 0)].clone()
        last = torch.zeros(self.k, dtype=torch.float64)
        for j in range(self.k):  # zero what lies past each probe's length
            n = int(lengths[j])
            alphas[j, n:] = 0
            betas[j, max(n - 1, 0):] = 0
            if n > 0:
                last[j] = float(self.betas[j, n - 1])
        return LanczosResult(alphas.cpu(), betas.cpu(), lengths, self.num_matmat,
                             self.basis[:, :m] if keep_basis else None, last)


def progress_bar(total: int, progress: bool, desc: str):
    """A tqdm bar with ETA, quiet when progress is False, stderr is not a terminal, or this process
    is not rank 0 of an initialised torch.distributed job."""
    from tqdm.auto import tqdm
    show = progress and sys.stderr.isatty() and sd.is_main()
    return tqdm(total=total, desc=desc, unit="step", disable=not show, leave=False)


def probe_seed(op, seed: Optional[int]) -> Optional[int]:
    """``seed``, or for seed None on an operator with a process group one seed drawn on rank 0 and
    broadcast, so every rank draws the same random probes."""
    return sd.shared_seed(seed, getattr(op, "process_group", None))


def operator_apply(op) -> Callable[[Tensor, Tensor], Tensor]:
    """apply(V [ka, P] float64, idx) for an operator with ``matmat`` ([P, k] -> [P, k])."""
    def apply(V: Tensor, idx: Tensor) -> Tensor:
        return op.matmat(V.T.to(op.dtype)).T
    return apply


def lanczos(op, num_steps: int, *, num_probes: Optional[int] = None, probes: Optional[Tensor] = None,
            reorthogonalize: str = "full", seed: Optional[int] = None, breakdown_tol: Optional[float] = None,
            return_basis: bool = False, progress: bool = False) -> LanczosResult:
    """k Lanczos runs in lockstep: each step is one ``op.matmat`` over all active probes.

    Args:
        op: a symmetric operator: HessianOperator, DenseOperator, a torch tensor or numpy array,
            a scipy LinearOperator, or any object with shape and matmat (skipkern.hessian.adapters).
        num_steps: Lanczos steps m >= 1 (capped at P).
        num_probes: number k of random unit Rademacher probes (default 1 when ``probes`` is None).
        probes: [P, k] starting vectors instead (normalised here; a zero column is an error).
        reorthogonalize: "full" (default; float64 basis, blocked, twice) or "none" (plain three-term
            recurrence, for comparison: it produces ghost eigenvalues).
        seed: seed of the random probes (same seed, same numbers).
        breakdown_tol: relative beta that counts as breakdown (default ``default_breakdown_tol``).
        return_basis: keep the [k, m, P] float64 basis in the result.
        progress: show a tqdm bar (only on a terminal).

    Returns:
        LanczosResult with alphas [k, m], betas [k, m-1], lengths [k].
    """
    check_count("num_steps", num_steps)
    op = as_operator(op)
    P = op.shape[0]
    if probes is not None:
        if isinstance(probes, Tensor) is False:
            raise TypeError(f"probes must be a torch.Tensor [P, k], got {type(probes).__name__}")
        if probes.dim() == 1:
            probes = probes[:, None]
        if probes.dim() != 2 or probes.shape[0] != P:
            raise ValueError(f"probes must have shape [P={P}, k], got {tuple(probes.shape)}")
        if num_probes is not None and num_probes != probes.shape[1]:
            raise ValueError(f"num_probes={num_probes} disagrees with probes of shape {tuple(probes.shape)}")
        Q0 = probes.T.to(device=op.device, dtype=torch.float64)
        norms = Q0.norm(dim=1)
        if bool((norms == 0).any()):
            raise ValueError("probes has a zero column; every probe needs a nonzero start vector")
        Q0 = Q0 / norms[:, None]
    else:
        k = check_count("num_probes", 1 if num_probes is None else num_probes)
        Q0 = rademacher_probes(P, k, probe_seed(op, seed), op.device)
    m = num_steps
    if m > P:
        log.info("lanczos: num_steps=%d > P=%d; capped at %d", m, P, P)
        m = P
    tol = default_breakdown_tol(op.dtype) if breakdown_tol is None else float(breakdown_tol)
    run = LanczosRun(operator_apply(op), Q0, m, reorthogonalize=reorthogonalize, breakdown_tol=tol)
    with progress_bar(m, progress, "Lanczos") as bar:
        while not run.done:
            run.step()
            bar.update(1)
            bar.set_postfix(active=int(run.active.sum()))
    return run.result(keep_basis=return_basis)
