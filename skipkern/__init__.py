"""skipkern: fused skip-connection MLP kernels and Hessian spectra.

Reproduces and makes fast Orhan & Pitkow, "Skip Connections Eliminate Singularities" (ICLR 2018).
"""
import importlib as _importlib
import logging as _logging

__version__ = "0.1.0"

_logging.getLogger("skipkern").addHandler(_logging.NullHandler())

__all__ = ["backends", "nn", "ops", "skip_linear", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `import skipkern` (and the command line's entry point) stays cheap:
    # torch loads only when something needs it, and Ctrl-C during start-up reaches the CLI's handler.
    if name in ("backends", "nn", "ops"):
        return _importlib.import_module(f"skipkern.{name}")
    if name == "skip_linear":
        return _importlib.import_module("skipkern.ops").skip_linear
    raise AttributeError(f"module 'skipkern' has no attribute {name!r}")
