"""Plain-PyTorch reference of skip_linear: the spec, the "torch" backend, the test oracle and the benchmark
baseline, one pair of functions serving all four.

    z = x @ W^T + b                      x [B, K], W [N, K], b [N]      -> z [B, N]
    y = act(z) + S(x)                    S(x) = 0 | x (N == K) | x @ Q^T (Q [N, K])
backward, with g = grad_y [B, N] and gz = g * act'(z):
    dx = gz @ W + S^T(g),  dW = gz^T @ x,  db = sum_rows(gz)
The skip kind and the activation are names of skipkern.reference's table (the kernels take their codes).
"""
from __future__ import annotations

from typing import Optional

import torch

from skipkern.reference import SKIPS, activation_grad_ref, activation_ref

__all__ = ["skip_term_ref", "skip_linear_ref", "skip_linear_bwd_ref"]


def skip_term_ref(x: torch.Tensor, q: Optional[torch.Tensor], skip: str) -> Optional[torch.Tensor]:
    """S(x): None for skip "none", x for "identity", x @ Q^T for "dense"."""
    if skip == "none":
        return None
    if skip == "identity":
        return x
    if skip == "dense":
        return x @ q.transpose(0, 1)
    raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")


def skip_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    q: Optional[torch.Tensor],
    skip: str,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of one skip layer. Returns (y [B, N], z [B, N]); z is the saved pre-activation."""
    z = x @ weight.transpose(0, 1)
    if bias is not None:
        z = z + bias
    y = activation_ref(z, activation)
    s = skip_term_ref(x, q, skip)
    if s is not None:
        y = y + s
    return y, z


def skip_linear_bwd_ref(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor,
    q: Optional[torch.Tensor],
    skip: str,
    activation: str,
    has_bias: bool,
    needs_dx: bool = True,
    needs_dw: bool = True,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of one skip layer. Returns (dx [B, K], dW [N, K], db [N]); each is None, and not computed,
    when not asked for (needs_dx, needs_dw, has_bias)."""
    gz = grad_y * activation_grad_ref(z, activation)
    dx = None
    if needs_dx:
        dx = gz @ weight
        if skip == "identity":
            dx = dx + grad_y
        elif skip == "dense":
            dx = dx + grad_y @ q
    dw = gz.transpose(0, 1) @ x if needs_dw else None
    db = gz.sum(0) if has_bias else None
    return dx, dw, db
