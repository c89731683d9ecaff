"""AutoNEB: a nudged elastic band whose pivots are inserted where the path is highest.

After Draxler, Veschgini, Salmhofer & Hamprecht (ICML 2018), "Essentially No Barriers in Neural
Network Energy Landscape", simplified:
1. Start from the straight line with ``init_pivots`` evenly spaced inner pivots.
2. Each cycle: ``steps`` NEB updates of the inner pivots p_i. Force on p_i, with unit tangent
   tau_i = (p_{i+1} - p_{i-1}) / |p_{i+1} - p_{i-1}| and loss gradient g_i (on a mini-batch):
       F_i = -(g_i - (g_i . tau_i) tau_i) + spring * (|p_{i+1} - p_i| - |p_i - p_{i-1}|) tau_i
   i.e. the gradient's component across the path plus a spring that keeps pivots evenly spaced.
   The pivots move with Adam (or SGD with momentum) along F_i.
3. Then the loss (whole training split, eval mode) is probed at ``probes`` interior points of every
   segment; in the ``insert_per_cycle`` segments whose peak rises most above both of its end pivots
   (by more than ``insert_tol``), a new pivot goes in at the peak, until ``max_nodes``.
The end points never move. Returns the chain as a ``PolyChain``.
"""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from skipkern.landscape.curves import PolyChain
from skipkern.landscape.params import LossEvaluator, Split

__all__ = ["fit_autoneb"]


def _node_losses(ev: LossEvaluator, p: torch.Tensor, xb, yb, train_mode: bool) -> torch.Tensor:
    if ev.bn:  # running statistics cannot be batched: one pivot at a time
        return torch.cat([ev.batch_loss(p[i:i + 1], xb, yb, train_mode) for i in range(p.shape[0])])
    return ev.batch_loss(p, xb, yb, train_mode)


def _eval(ev: LossEvaluator, thetas: torch.Tensor, split: Split) -> torch.Tensor:
    if ev.bn or thetas.shape[0] == 1:
        return torch.cat([ev.losses(thetas[i:i + 1], split) for i in range(thetas.shape[0])])
    return ev.losses(thetas, split)


def fit_autoneb(theta_a: torch.Tensor, theta_b: torch.Tensor, ev: LossEvaluator, split: Split, *, cycles: int = 4,
                steps: int = 100, lr: float = 1e-2, spring: float = 1.0, init_pivots: int = 3,
                insert_per_cycle: int = 1, probes: int = 9, insert_tol: float = 0.0, max_nodes: int = 16,
                optimizer: str = "adam", train_batch: Optional[int] = None, train_mode: bool = False, seed: int = 0,
                progress: bool = False) -> tuple[PolyChain, list]:
    """Fit an AutoNEB chain between theta_a and theta_b (each [1, P], float64).

    Args: see the module docstring. ``train_batch``: mini-batch size of the NEB gradients (None: the
    whole split). Returns (PolyChain with K = 1, per-step mean loss of the inner pivots).
    """
    for name, v, lo in (("cycles", cycles, 1), ("steps", steps, 0), ("init_pivots", init_pivots, 1),
                        ("probes", probes, 1), ("max_nodes", max_nodes, 3), ("insert_per_cycle", insert_per_cycle, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    x, y = split
    n = x.shape[0]
    bs = n if train_batch is None else min(int(train_batch), n)
    g = torch.Generator().manual_seed(int(seed))
    s = torch.linspace(0, 1, init_pivots + 2, dtype=torch.float64, device=theta_a.device)[1:-1, None]
    inner = (1 - s) * theta_a + s * theta_b
    history: list = []
    bar = tqdm(total=cycles * steps, desc="autoneb", disable=not progress, leave=False, dynamic_ncols=True)
    for cycle in range(cycles):
        p = inner.clone().requires_grad_(True)
        opt = (torch.optim.Adam([p], lr=float(lr)) if optimizer == "adam"
               else torch.optim.SGD([p], lr=float(lr), momentum=0.9))
        for _ in range(steps):
            if bs < n:
                idx = torch.randperm(n, generator=g)[:bs].to(x.device)
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            losses = _node_losses(ev, p, xb, yb, train_mode)
            (grad,) = torch.autograd.grad(losses.sum(), p)
            with torch.no_grad():
                full = torch.cat([theta_a, p, theta_b])
                tau = full[2:] - full[:-2]
                tau = tau / tau.norm(dim=1, keepdim=True).clamp_min(1e-30)
                d_next = (full[2:] - full[1:-1]).norm(dim=1)
                d_prev = (full[1:-1] - full[:-2]).norm(dim=1)
                perp = grad - (grad * tau).sum(1, keepdim=True) * tau
                force = -perp + spring * (d_next - d_prev)[:, None] * tau
            opt.zero_grad(set_to_none=True)
            p.grad = -force
            opt.step()
            history.append(float(losses.detach().mean()))
            bar.update(1)
        inner = p.detach()
        if cycle == cycles - 1 or insert_per_cycle == 0:
            continue
        inner = _insert(ev, split, theta_a, theta_b, inner, probes, insert_tol, insert_per_cycle, max_nodes)
    bar.close()
    return PolyChain(torch.cat([theta_a, inner, theta_b])[None]), history


@torch.no_grad()
def _insert(ev: LossEvaluator, split: Split, a: torch.Tensor, b: torch.Tensor, inner: torch.Tensor, probes: int,
            tol: float, per_cycle: int, max_nodes: int) -> torch.Tensor:
    """Insert pivots at the peaks of the highest segments (see module docstring)."""
    nodes = torch.cat([a, inner, b])
    room = max_nodes - nodes.shape[0]
    if room <= 0:
        return inner
    node_loss = _eval(ev, nodes, split)
    w = torch.arange(1, probes + 1, dtype=torch.float64, device=a.device)[:, None] / (probes + 1)
    cand = [(1 - w) * nodes[i] + w * nodes[i + 1] for i in range(nodes.shape[0] - 1)]  # each [probes, P]
    vals = _eval(ev, torch.cat(cand), split).view(len(cand), probes)
    peak, where = vals.max(1)
    rise = peak - torch.maximum(node_loss[:-1], node_loss[1:])
    order = [int(i) for i in torch.argsort(rise, descending=True) if rise[i] > tol][:min(per_cycle, room)]
    new = list(nodes)
    for seg in sorted(order, reverse=True):  # from the back, so earlier indices stay valid
        new.insert(seg + 1, cand[seg][where[seg]])
    return torch.stack(new[1:-1])
