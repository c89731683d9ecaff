"""Hessian spectral core: batched Hessian-vector products, stochastic Lanczos quadrature, traces,
extreme eigenvalues and per-block spectra.

- ``HessianOperator(model, loss_fn, data, ...)``: the data-mean loss Hessian as a [P, P] operator
  (backends "fused" for SkipMLP, "generic" for any module); ``DenseOperator`` for explicit matrices.
- ``lanczos``: k float64, fully reorthogonalised Lanczos runs in lockstep (one product per step).
- ``spectral_density`` -> ``SpectralDensity``; ``trace``; ``top_eigenvalues``;
  ``block_spectral_density`` / ``block_trace`` for per-layer blocks from the same data passes.
"""
from skipkern.hessian.blocks import block_spectral_density, block_trace, parameter_groups
from skipkern.hessian.density import Estimate, SpectralDensity, from_lanczos, spectral_density
from skipkern.hessian.eigen import top_eigenvalues
from skipkern.hessian.lanczos import LanczosResult, lanczos
from skipkern.hessian.operator import CurvatureOperator, DenseOperator, HessianOperator
from skipkern.hessian.trace import trace

__all__ = ["HessianOperator", "DenseOperator", "CurvatureOperator", "lanczos", "LanczosResult",
           "spectral_density", "SpectralDensity", "from_lanczos", "Estimate", "trace", "top_eigenvalues",
           "block_spectral_density", "block_trace", "parameter_groups"]
