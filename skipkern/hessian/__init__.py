"""Hessian spectral core: batched Hessian-vector products, stochastic Lanczos quadrature with outlier
deflation and certified fractions, traces, extreme eigenvalues and per-block spectra.

- ``HessianOperator(model, loss_fn, data, ...)``: the Hessian of the full-data loss (its "mean" or
  "sum" reduction honoured) as a [P, P] operator (backends "fused" for SkipMLP, "generic" for any
  module); ``DenseOperator`` for explicit matrices; ``as_operator`` takes tensors, numpy arrays, scipy
  operators and any object with matmat.
- ``lanczos``: k float64, fully reorthogonalised Lanczos runs in lockstep (one product per step).
- ``spectral_density`` -> ``SpectralDensity`` (``deflate=`` the outliers); its fractions are
  ``Fraction`` objects: value, stderr and a certified [lower, upper].
- ``spectral_fraction``: certified fractions to a requested width, adding Lanczos steps and probes, or
  building the matrix from products (``dense_density``: every eigenvalue) when that is cheaper.
- ``trace``; ``top_eigenvalues``; ``block_spectral_density`` / ``block_trace`` for per-layer blocks.
"""
from skipkern.hessian.adapters import as_operator
from skipkern.hessian.adaptive import FractionResult, spectral_fraction
from skipkern.hessian.blocks import block_spectral_density, block_trace, parameter_groups
from skipkern.hessian.deflation import Deflation, find_outliers
from skipkern.hessian.dense import dense_density, dense_matrix
from skipkern.hessian.density import Estimate, SpectralDensity, from_lanczos
from skipkern.hessian.eigen import top_eigenvalues
from skipkern.hessian.fractions import Fraction
from skipkern.hessian.lanczos import LanczosResult, lanczos
from skipkern.hessian.operator import CurvatureOperator, DenseOperator, HessianOperator
from skipkern.hessian.slq import spectral_density
from skipkern.hessian.trace import trace

__all__ = ["HessianOperator", "DenseOperator", "CurvatureOperator", "as_operator", "lanczos", "LanczosResult",
           "spectral_density", "SpectralDensity", "from_lanczos", "Estimate", "Fraction", "spectral_fraction",
           "FractionResult", "dense_density", "dense_matrix", "find_outliers", "Deflation", "trace", "top_eigenvalues",
           "block_spectral_density", "block_trace", "parameter_groups"]
