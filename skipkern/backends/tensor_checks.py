"""Launcher-level argument checks, shared by the cpp, cuda and triton backends.

Names (skip kind, activation) and the user-facing shape rules are validated once, at the op entry
(skipkern.ops), which passes integer codes down. Launchers are still called directly (tests,
benchmarks) and the C++/CUDA ones hand raw pointers to kernels, so each checks what memory safety needs:
every tensor has the expected shape and the dtype and device of the first one, and, for the
raw-pointer backends, is contiguous. One cheap test per tensor on the hot path; the detailed message is
built only on failure.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from skipkern.reference import SKIP_CODES

__all__ = ["check_tensors", "skip_linear_sizes", "ieee_only", "DENSE", "IDENTITY"]

IDENTITY, DENSE = SKIP_CODES["identity"], SKIP_CODES["dense"]

Spec = tuple  # (name, tensor or None, expected shape)


def check_tensors(backend: str, specs: Iterable[Spec], dtypes: Optional[Iterable[torch.dtype]],
                  contiguous: bool = True) -> None:
    """Each (name, tensor or None, shape) must be a tensor of that shape with the dtype and device of the
    first tensor; that dtype must be one of ``dtypes`` (None: any); with ``contiguous``, every tensor
    row-major dense. ``backend`` names the caller in the messages.

    Raises TypeError (not a tensor, wrong dtype) or ValueError (shape, device, layout) naming the argument,
    the expected and the actual value.
    """
    specs = [s for s in specs if s[1] is not None]
    if not specs:
        return
    name0, ref, _ = specs[0]
    if not isinstance(ref, Tensor):
        raise TypeError(f"{name0} must be a torch.Tensor, got {type(ref).__name__}")
    dtypes = None if dtypes is None else tuple(dtypes)
    if dtypes is not None and ref.dtype not in dtypes:
        names = [str(d).replace("torch.", "") for d in dtypes]
        allowed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise TypeError(f"{name0} must be {allowed} for the {backend} backend, got {ref.dtype}")
    dtype, device = ref.dtype, ref.device
    for name, t, shape in specs:
        if (isinstance(t, Tensor) and t.dtype == dtype and t.device == device and t.shape == shape
                and (not contiguous or t.is_contiguous())):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
        if t.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (that of {name0}), got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} must be on {device} (that of {name0}), got {t.device}")
        raise ValueError(f"{name} must be contiguous (row-major) for the {backend} backend; pass "
                         f"{name}.contiguous()")


def skip_linear_sizes(x: Tensor, weight: Tensor, q: Optional[Tensor], skip: int) -> tuple[int, int, int]:
    """(B, K, N) of a skip_linear launch: x [B, K], weight [N, K], q [N, K] exactly when skip is dense,
    N == K for the identity skip. ``skip`` is a code of skipkern.reference.SKIP_CODES."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [B, K] and weight [N, K] with the same K, got x {list(x.shape)} and "
                         f"weight {list(weight.shape)}")
    (b, k), n = x.shape, weight.shape[0]
    if skip == IDENTITY and n != k:
        raise ValueError(f"the identity skip needs in_features == out_features, got weight {list(weight.shape)}")
    if (skip == DENSE) != (q is not None):
        raise ValueError(f"q must be given exactly when the skip is dense (skip code {skip}, q "
                         f"{'None' if q is None else 'given'})")
    return b, k, n


def ieee_only(backend: str, precision: Optional[str]) -> str:
    """The ``precision`` argument for a backend whose fp32 products are always IEEE: None / "auto" and "ieee"
    pass (returned normalised), "tf32" raises ValueError naming the argument and the ways out."""
    from skipkern.kernels.precision import check_precision  # torch only: no triton import

    p = check_precision(precision)
    if p == "tf32":
        raise ValueError(f"precision='tf32' cannot be honoured by the {backend} backend: its fp32 products are "
                         f"IEEE (no TF32 path); pass precision=None or 'ieee', or backend='triton' on CUDA "
                         f"tensors for TF32 tensor-core dots")
    return p
