"""Any symmetric operator as a CurvatureOperator: what ``lanczos``, ``spectral_density``,
``spectral_fraction``, ``trace`` and ``top_eigenvalues`` accept.

- a CurvatureOperator (HessianOperator, DenseOperator, ...): used as it is;
- a torch tensor or numpy array [P, P]: a DenseOperator (checked symmetric; integer arrays become
  float64);
- a scipy LinearOperator or sparse matrix: products through numpy on the CPU, in the operator's
  float dtype (float64 when it has none);
- any object with ``shape`` (P, P) and ``matmat`` (e.g. a curvlinops operator): products in the
  object's ``dtype`` and on its ``device`` when it has them (float64 on the CPU otherwise); ``matmat``
  receives a torch tensor [P, k], or a numpy array if it rejects the tensor, and may return either.
The operator must be symmetric; only explicit matrices can be checked.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from skipkern.hessian.operator import CurvatureOperator, DenseOperator

__all__ = ["as_operator", "ScipyOperator", "MatmatOperator"]

_ACCEPTED = ("a CurvatureOperator (HessianOperator, DenseOperator), a torch tensor or numpy array [P, P], "
             "a scipy LinearOperator or sparse matrix, or an object with shape (P, P) and matmat([P, k])")


def _torch_dtype(dt: Any) -> Optional[torch.dtype]:
    if isinstance(dt, torch.dtype):
        return dt if dt.is_floating_point else None
    try:
        np_dt = np.dtype(dt)
    except TypeError:
        return None
    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32,
            np.dtype(np.float16): torch.float16}.get(np_dt)


def _check_shape(shape: Any, what: str) -> int:
    try:
        P, Q = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must have a shape (P, P), got {shape!r}") from None
    if P != Q or P < 1:
        raise ValueError(f"{what} must be square with P >= 1, got shape {(P, Q)}")
    return P


class ScipyOperator(CurvatureOperator):
    """A scipy LinearOperator (or sparse matrix) [P, P]: float64 (or its float dtype) on the CPU."""

    def __init__(self, lin: Any):
        super().__init__()
        from scipy.sparse.linalg import aslinearoperator
        self.lin = aslinearoperator(lin)
        P = _check_shape(self.lin.shape, "the scipy operator")
        self._shape = (P, P)
        self._dtype = _torch_dtype(self.lin.dtype) or torch.float64
        self._device = torch.device("cpu")

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.lin.matmat(V.cpu().numpy())
        return torch.as_tensor(np.asarray(out), dtype=self._dtype)


class MatmatOperator(CurvatureOperator):
    """Any object with ``shape`` and ``matmat`` (module docstring)."""

    def __init__(self, obj: Any):
        super().__init__()
        self.obj = obj
        P = _check_shape(obj.shape, f"{type(obj).__name__}")
        self._shape = (P, P)
        self._dtype = _torch_dtype(getattr(obj, "dtype", None)) or torch.float64
        dev = getattr(obj, "device", None)
        self._device = torch.device(dev) if isinstance(dev, (str, torch.device)) else torch.device("cpu")
        self._numpy: Optional[bool] = None  # whether matmat wants numpy (decided on the first call)

    def _matmat(self, V: Tensor) -> Tensor:
        if self._numpy is None:
            try:
                out = self.obj.matmat(V)
                self._numpy = False
            except (TypeError, AttributeError, ValueError):
                out = self.obj.matmat(V.cpu().numpy())
                self._numpy = True
        else:
            out = self.obj.matmat(V.cpu().numpy() if self._numpy else V)
        out = torch.as_tensor(np.asarray(out) if not isinstance(out, Tensor) else out)
        if tuple(out.shape) != tuple(V.shape):
            raise ValueError(f"{type(self.obj).__name__}.matmat returned shape {tuple(out.shape)} for input "
                             f"{tuple(V.shape)}; it must map [P, k] to [P, k]")
        return out.to(device=self._device, dtype=self._dtype)


def as_operator(op: Any) -> CurvatureOperator:
    """``op`` as a CurvatureOperator (module docstring); raises TypeError for anything else."""
    if isinstance(op, CurvatureOperator):
        return op
    if isinstance(op, (Tensor, np.ndarray)):
        if not (op.dtype.is_floating_point if isinstance(op, Tensor) else np.issubdtype(op.dtype, np.floating)):
            op = op.to(torch.float64) if isinstance(op, Tensor) else op.astype(np.float64)
        return DenseOperator(op)
    try:
        import scipy.sparse as sp
        from scipy.sparse.linalg import LinearOperator
        if isinstance(op, LinearOperator) or sp.issparse(op):
            return ScipyOperator(op)
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    if callable(getattr(op, "matmat", None)) and hasattr(op, "shape"):
        return MatmatOperator(op)
    raise TypeError(f"op must be {_ACCEPTED}; got {type(op).__name__}")
