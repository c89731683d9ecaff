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
