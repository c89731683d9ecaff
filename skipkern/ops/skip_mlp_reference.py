"""Plain-PyTorch reference of the whole-MLP op skip_mlp: the spec, the "torch" backend, the test oracle and
the vjp behind double backward, one pair of functions serving all four.

The net (L = depth hidden layers of width W; the stacked-tensor form of a SkipMLP without BatchNorm):
    z_0 = x W_in^T + b_in,                 h_1 = act(z_0)
    z_j = h_j W_j^T + b_j,                 h_{j+1} = act(z_j) + S_j(h_j) + c_j sum_{k<j} P_k h_k    j = 1 .. L-1
    logits = h_L W_out^T + b_out
S_j(h) = 0 ("none"), h ("identity") or h Q_j^T ("dense"); the hyper-residual sum is present when P is given
(P_k for k = 1 .. L-2, c_j = 0 for j < 2). Tensors: x [B, K0], w_in [W, K0], w [L-1, W, W], q [L-1, W, W],
p [L-2, W, W], c [L], w_out [C, W]; outputs logits [B, C], H [L, B, W] = h_1 .. h_L, Z [L, B, W] = z_0 ..
z_{L-1}.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from skipkern.reference import activation_grad_ref, activation_ref

__all__ = ["skip_mlp_ref", "skip_mlp_bwd_ref"]


def _hyper(p: Optional[Tensor]) -> bool:
    return p is not None and p.shape[0] > 0


def skip_mlp_ref(x: Tensor, w_in: Tensor, b_in: Optional[Tensor], w: Tensor, b: Optional[Tensor],
                 q: Optional[Tensor], p: Optional[Tensor], c: Optional[Tensor], w_out: Tensor,
                 b_out: Optional[Tensor], skip: str, activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of the whole net. Returns (logits [B, C], H [L, B, W], Z [L, B, W])."""
    L = w.shape[0] + 1
    z = F.linear(x, w_in, b_in)
    h = activation_ref(z, activation)
    Hs, Zs, hsum = [h], [z], None
    for j in range(1, L):
        z = F.linear(h, w[j - 1], None if b is None else b[j - 1])
        hn = activation_ref(z, activation)
        if skip == "identity":
            hn = hn + h
        elif skip == "dense":
            hn = hn + h @ q[j - 1].transpose(0, 1)
        if _hyper(p):
            if j >= 2:
                hn = hn + c[j].to(hn.dtype) * hsum
            if j <= L - 2:
                contrib = h @ p[j - 1].transpose(0, 1)
                hsum = contrib if hsum is None else hsum + contrib
        Hs.append(hn)
        Zs.append(z)
        h = hn
    return F.linear(h, w_out, b_out), torch.stack(Hs), torch.stack(Zs)


def skip_mlp_bwd_ref(g_out: Tensor, x: Tensor, w_in: Tensor, w: Tensor, q: Optional[Tensor], p: Optional[Tensor],
                     c: Optional[Tensor], w_out: Tensor, H: Tensor, Z: Tensor, skip: str, activation: str,
                     has_bias: bool, needs_dx: bool) -> tuple:
    """Backward from g_out = d loss / d logits [B, C], written in differentiable torch ops.

    Returns:
        (dx [B, K0] or None, dW_in, db_in?, dW [L-1, W, W], db [L-1, W]?, dW_out, db_out?), bias gradients
        None unless has_bias.
    """
    L = w.shape[0] + 1
    dw_out = g_out.transpose(0, 1) @ H[L - 1]
    db_out = g_out.sum(0) if has_bias else None
    g = g_out @ w_out
    r = None  # sum_{i>j} c_i g_{i+1}: what the hyper terms above send back through P_j
    dws, dbs = [None] * (L - 1), [None] * (L - 1)
    for j in range(L - 1, 0, -1):
        gz = g * activation_grad_ref(Z[j], activation)
        dws[j - 1] = gz.transpose(0, 1) @ H[j - 1]
        dbs[j - 1] = gz.sum(0)
        dh = gz @ w[j - 1]
        if skip == "identity":
            dh = dh + g
        elif skip == "dense":
            dh = dh + g @ q[j - 1]
        if _hyper(p):
            if j <= L - 2 and r is not None:
                dh = dh + r @ p[j - 1]
            cg = c[j].to(g.dtype) * g
            r = cg if r is None else r + cg
        g = dh
    gz = g * activation_grad_ref(Z[0], activation)
    dx = gz @ w_in if needs_dx else None
    dw = torch.stack(dws) if dws else w.new_zeros(w.shape)
    db = (torch.stack(dbs) if dbs else w.new_zeros(w.shape[:2])) if has_bias else None
    return dx, gz.transpose(0, 1) @ x, gz.sum(0) if has_bias else None, dw, db, dw_out, db_out
