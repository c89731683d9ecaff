"""Plain-PyTorch references: the spec of every op, the "torch" backend, the test oracle and the
benchmark baseline, one function serving all four.

skip_linear:  z = x @ W^T + b                      x [B, K], W [N, K], b [N]      -> z [B, N]
              y = act(z) + S(x)                    S(x) = 0 | x (N == K) | x @ Q^T (Q [N, K])
skip_linear_bwd: with g = grad_y [B, N] and gz = g * act'(z),
              dx = gz @ W + S^T(g),  dW = gz^T @ x,  db = sum_rows(gz)
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# The op vocabulary, spelled once: a name's position is the integer code that the op entry passes to
# every kernel (C++ and CUDA enums in csrc/op_codes.h, Triton constexprs in kernels/skip_linear.py).
ACTIVATIONS = ("relu", "identity", "tanh", "gelu")
SKIPS = ("none", "identity", "dense")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
SKIP_CODES = {name: code for code, name in enumerate(SKIPS)}


def activation_code(activation: str) -> int:
    """The integer code of an activation name; ValueError naming the choices for anything else."""
    code = ACTIVATION_CODES.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return code


def skip_code(skip: str) -> int:
    """The integer code of a skip kind ("none", "identity", "dense")."""
    code = SKIP_CODES.get(skip) if isinstance(skip, str) else None
    if code is None:
        raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
    return code

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation_ref(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z), elementwise. gelu is the exact (erf) form."""
    if activation == "relu":
        return torch.relu(z)
    if activation == "identity":
        return z
    if activation == "tanh":
        return torch.tanh(z)
    if activation == "gelu":
        return 0.5 * z * (1.0 + torch.erf(z * _SQRT_HALF))
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activation_grad_ref(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z), elementwise, written in differentiable torch ops (so double backward works).

    relu'(0) is taken as 0, as torch.relu's backward does.
    """
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "identity":
        return torch.ones_like(z)
    if activation == "tanh":
        t = torch.tanh(z)
        return 1.0 - t * t
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


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
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Backward of one skip layer. Returns (dx [B, K], dW [N, K], db [N] or None)."""
    gz = grad_y * activation_grad_ref(z, activation)
    dx = gz @ weight
    if skip == "identity":
        dx = dx + grad_y
    elif skip == "dense":
        dx = dx + grad_y @ q
    dw = gz.transpose(0, 1) @ x
    db = gz.sum(0) if has_bias else None
    return dx, dw, db


def skip_linear_composite(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    skip: Optional[object] = None,
    activation: str = "relu",
) -> torch.Tensor:
    """The same math as skipkern.ops.skip_linear in plain differentiable torch ops (torch eager).

    ``skip`` is None, "identity" or a tensor Q [N, K]. This is what a user would write by hand and
    what the benchmarks call "torch eager".
    """
    z = torch.nn.functional.linear(x, weight, bias)
    y = activation_ref(z, activation)
    if isinstance(skip, torch.Tensor):
        y = y + x @ skip.transpose(0, 1)
    elif skip == "identity":
        y = y + x
    return y
