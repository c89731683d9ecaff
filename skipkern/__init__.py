"""skipkern: fused skip-connection MLP kernels and Hessian spectra.

Reproduces and makes fast Orhan & Pitkow, "Skip Connections Eliminate Singularities" (ICLR 2018).
"""
import logging as _logging

__version__ = "0.1.0"

_logging.getLogger("skipkern").addHandler(_logging.NullHandler())

from skipkern import backends, nn, ops  # noqa: E402
from skipkern.ops import skip_linear  # noqa: E402

__all__ = ["backends", "nn", "ops", "skip_linear", "__version__"]
