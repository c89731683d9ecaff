"""Fixed skip matrices and initialisers (reproducible from a seed or a torch.Generator)."""
from __future__ import annotations

import math
from typing import Optional

import torch


def _generator(seed: Optional[int], generator: Optional[torch.Generator]) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item()))
    return g


def random_orthogonal(rows: int, cols: int, *, seed: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, dtype=torch.float32) -> torch.Tensor:
    """A [rows, cols] matrix with orthonormal rows or columns (whichever is fewer), Haar-distributed:
    QR of a Gaussian matrix with the sign correction Q <- Q diag(sign(diag R))."""
    g = _generator(seed, generator)
    n, m = max(rows, cols), min(rows, cols)
    a = torch.randn(n, m, generator=g, dtype=torch.float64)
    qm, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    qm = qm * d
    out = qm if rows >= cols else qm.transpose(0, 1)
    return out.to(dtype).contiguous()


def degenerate_orthogonal(rows: int, cols: int, fraction: float, *, seed: Optional[int] = None,
                          generator: Optional[torch.Generator] = None, dtype=torch.float32) -> torch.Tensor:
    """U diag(s) V^T with U, V random orthogonal and s = 1 except round(fraction * min(rows, cols))
    singular values set to 0: the paper's "degenerate skip" (fraction 0 gives an orthogonal Q)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"degenerate_fraction must lie in [0, 1], got {fraction}")
    g = _generator(seed, generator)
    m = min(rows, cols)
    u = random_orthogonal(rows, m, generator=g, dtype=torch.float64)
    v = random_orthogonal(cols, m, generator=g, dtype=torch.float64)
    s = torch.ones(m, dtype=torch.float64)
    n_zero = int(round(fraction * m))
    if n_zero:
        s[m - n_zero:] = 0.0
    return ((u * s) @ v.transpose(0, 1)).to(dtype).contiguous()


def glorot_normal_(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Glorot (Xavier) normal: N(0, 2 / (fan_in + fan_out)), in place."""
    fan_out, fan_in = weight.shape
    std = math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        w = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * std
        weight.copy_(w.to(weight.dtype))
    return weight


# ------------------------------------------------------------------------------- init families
INITS = ("glorot", "scaled")


def glorot_std(fan_in: int, fan_out: int) -> float:
    """Standard deviation of Glorot (Xavier) normal weights: sqrt(2 / (fan_in + fan_out))."""
    return math.sqrt(2.0 / (fan_in + fan_out))


def branch_scale(depth: int) -> float:
    """alpha = 1 / max(depth - 1, 1): the scaled family's factor on every trainable skip branch.

    A ReLU branch adds a non-negative vector to a carried signal that is itself non-negative (identity
    skips), so the two add coherently: the mean square grows by about (1 + alpha / sqrt(pi))^2 per
    layer. Over the depth - 1 skip layers that stays below exp(2 / sqrt(pi)) ~ 3 in mean square only
    if alpha shrinks like 1 / depth; 1 / sqrt(depth) (enough for zero-mean branches) still grows like
    exp(sqrt(depth))."""
    return 1.0 / max(int(depth) - 1, 1)


def scaled_stds(arch: str, in_features: int, width: int, depth: int, out_features: int, *,
                degenerate_fraction: float = 0.5, gain: float = 1.0) -> list:
    """Weight standard deviations of the scale-controlled family, one per layer [depth + 1].

    Rules (mean square = (1/n) |h|^2 over the n units of a layer):
      - input layer (no skip, ReLU): He normal sqrt(2 / in_features), so E ms(h_1) = ms(x);
      - plain hidden layers: He normal sqrt(2 / width) (the ReLU halves the mean square, the 2 restores it);
      - identity / orthogonal skips: the carried signal already keeps the mean square, so the trainable
        branch relu(W h) gets He * alpha with alpha = ``branch_scale(depth)``;
      - degenerate skips Q (a fraction p of singular values zero) carry only (1 - p) of the mean square,
        so the branch must supply the rest: He * sqrt(p + alpha^2);
      - output layer (linear): 0.5 sqrt(1 / width), so every logit has standard deviation ~ rms(h_depth) / 2
        and the initial loss stays near ln(C) (within ~0.5 when the last hidden layer's rms is up to twice
        the input's), never the saturated softmax of a large logit scale.
    ``gain`` multiplies every hidden (not output) standard deviation, for init-scale sweeps.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    alpha = branch_scale(depth)
    he = math.sqrt(2.0 / width)
    if arch == "plain":
        hidden = he
    elif arch in ("residual", "orthogonal", "hyper_residual"):
        hidden = he * alpha
    elif arch == "degenerate":
        hidden = he * math.sqrt(float(degenerate_fraction) + alpha * alpha)
    else:
        raise ValueError(f"arch must be one of plain, residual, orthogonal, degenerate, hyper_residual; got {arch!r}")
    return ([gain * math.sqrt(2.0 / in_features)] + [gain * hidden] * (depth - 1)
            + [0.5 * math.sqrt(1.0 / width)])


def hyper_scale(depth: int, hyper_skip: str, hyper_reduce: str = "mean") -> float:
    """Factor gamma on the fixed hyper-residual matrices P_k in the scaled family.

    The hyper term c_j sum_{k<j} P_k h_k adds to the carried h_j; its norm is r_j |h| with
    r_j = gamma c_j sqrt(j - 1) for random orthogonal P_k (the rotated copies are nearly orthogonal to
    each other and to h_j, so they add incoherently and the mean square grows by r_j^2) and
    r_j = gamma c_j (j - 1) for identity P_k (non-negative copies of h add coherently, so the norm grows
    by r_j). gamma is chosen so that the growth summed over the layers stays O(1) at any depth D:
    orthogonal + mean 1/sqrt(D), orthogonal + sum 1/D, identity + mean 1/D, identity + sum 1/D^2."""
    d = float(max(int(depth) - 1, 1))
    if hyper_skip not in ("orthogonal", "identity") or hyper_reduce not in ("mean", "sum"):
        raise ValueError(f"hyper_skip must be 'orthogonal' or 'identity' and hyper_reduce 'mean' or 'sum', got "
                         f"{hyper_skip!r}, {hyper_reduce!r}")
    if hyper_skip == "orthogonal":
        return 1.0 / math.sqrt(d) if hyper_reduce == "mean" else 1.0 / d
    return 1.0 / d if hyper_reduce == "mean" else 1.0 / (d * d)
