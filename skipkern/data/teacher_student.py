"""Teacher-student data of the simplified model (after Wei et al. 2008, Amari et al. 2006).

Gaussian inputs x ~ N(0, I_d) and a teacher with hidden units i = 1..k:
    y = sum_i v_i g(J_i . x) + noise * eps,   eps ~ N(0, 1)
g is "erf" (g(u) = erf(u / sqrt(2)), the smooth sigmoid of the soft-committee literature) or "relu".
The default teacher is our choice (the paper's is not public): k = 2 units with orthonormal incoming
vectors J_1, J_2 (so h* = |J_1 - J_2| = sqrt(2)) and v = (1, 1) (so z* = 0), far from both degenerate
lines h = 0 and z = +-1. Pass ``teacher`` to use another.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

__all__ = ["teacher_student", "teacher_output", "activation_fn", "overlap_elimination_coords",
           "TEACHER_ACTIVATIONS"]

TEACHER_ACTIVATIONS = ("erf", "relu")


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """g for the simplified model: "erf" -> erf(u / sqrt(2)), "relu" -> max(u, 0)."""
    if name == "erf":
        return lambda u: torch.erf(u * (1.0 / math.sqrt(2.0)))
    if name == "relu":
        return torch.relu
    raise ValueError(f"activation must be one of {TEACHER_ACTIVATIONS}, got {name!r}")


def teacher_output(x: torch.Tensor, J: torch.Tensor, v: torch.Tensor, activation: str = "erf") -> torch.Tensor:
    """y = sum_i v_i g(J_i . x).  x [n, d], J [k, d], v [k] -> y [n]."""
    if J.dim() != 2 or x.dim() != 2 or J.shape[1] != x.shape[1]:
        raise ValueError(f"need x [n, d] and J [k, d] with the same d, got x {tuple(x.shape)}, J {tuple(J.shape)}")
    if v.shape != (J.shape[0],):
        raise ValueError(f"v must have shape [{J.shape[0]}] (one per row of J), got {tuple(v.shape)}")
    return activation_fn(activation)(x @ J.transpose(0, 1)) @ v


def overlap_elimination_coords(J: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's coordinates of a two-unit model: h = |J_1 - J_2| (overlap), z = (w_1 - w_2)/(w_1 + w_2)
    (elimination). J [..., 2, d], w [..., 2] -> (h [...], z [...]); z is +-inf where w_1 + w_2 = 0."""
    if J.shape[-2] != 2 or w.shape[-1] != 2:
        raise ValueError(f"need J [..., 2, d] and w [..., 2], got {tuple(J.shape)} and {tuple(w.shape)}")
    h = torch.linalg.vector_norm(J[..., 0, :] - J[..., 1, :], dim=-1)
    z = (w[..., 0] - w[..., 1]) / (w[..., 0] + w[..., 1])
    return h, z


def _default_teacher(input_dim: int, g: torch.Generator) -> dict:
    if input_dim >= 2:
        a = torch.randn(input_dim, 2, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))
        J = q.transpose(0, 1).contiguous()
    else:  # one input: two unit-norm "vectors" are +-1; take both +1 scaled apart to stay identifiable
        J = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    return {"J": J, "v": torch.ones(2, dtype=torch.float64)}


def teacher_student(n: int, input_dim: int, *, seed: int, noise: float = 0.0, activation: str = "erf",
                    teacher: Optional[dict] = None, dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Sample n teacher-student pairs.

    Args:
        n: number of samples. input_dim: d.
        seed: seeds the inputs, the noise and the default teacher.
        noise: standard deviation of additive Gaussian label noise.
        activation: "erf" or "relu" (g above).
        teacher: {"J": [k, d], "v": [k]} (tensors or nested lists); None draws the default teacher.
        dtype: dtype of x and y (the teacher is kept in float64).

    Returns:
        x [n, d], y [n] (both ``dtype``), and the teacher {"J": [k, d] float64, "v": [k] float64,
        "activation": str, "noise": float}.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    activation_fn(activation)  # validates the name
    g = torch.Generator().manual_seed(int(seed))
    if teacher is None:
        params = _default_teacher(input_dim, g)
    else:
        if not isinstance(teacher, dict) or "J" not in teacher or "v" not in teacher:
            raise TypeError(f"teacher must be a dict with keys 'J' [k, d] and 'v' [k], got {teacher!r}")
        J = torch.as_tensor(teacher["J"], dtype=torch.float64)
        v = torch.as_tensor(teacher["v"], dtype=torch.float64)
        if J.dim() != 2 or J.shape[1] != input_dim or v.shape != (J.shape[0],):
            raise ValueError(f"teacher J must be [k, input_dim={input_dim}] and v [k], got J {tuple(J.shape)}, "
                             f"v {tuple(v.shape)}")
        params = {"J": J, "v": v}
    x = torch.randn(n, input_dim, generator=g, dtype=torch.float64)
    y = teacher_output(x, params["J"], params["v"], activation)
    if noise > 0:
        y = y + noise * torch.randn(n, generator=g, dtype=torch.float64)
    params.update(activation=activation, noise=float(noise))
    return x.to(dtype), y.to(dtype), params
