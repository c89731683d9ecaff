"""What every op's plain-PyTorch reference shares: the vocabulary (activation and skip names and their
integer codes), the activations act and act', and the plain-torch skip layer.

Each op's own reference, ``<op>_ref`` / ``<op>_bwd_ref`` (the spec, the "torch" backend, the test oracle
and the benchmark baseline), lives beside its glue in ``skipkern/ops/<op>_reference.py``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# The op vocabulary, spelled once: a name's position is the integer code that the op entry passes to
# every kernel (C++ and CUDA enums in csrc/op_codes.h, Triton constexprs in kernels/skip_linear_kernels.py).
ACTIVATIONS = ("relu", "identity", "tanh", "gelu")
SKIPS = ("none", "identity", "dense")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
SKIP_CODES = {name: code for code, name in enumerate(SKIPS)}
KERNEL_ABI = 2  # the compiled bindings' interface (csrc/op_codes.h kAbi): 2 = they take these codes


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
