"""A small backend registry.

Each backend is a frozen record; its launcher module (``module``) provides, for every op it
implements, ``<op>_fwd`` / ``<op>_bwd`` plus ``available() -> (ok, reason)`` and
``supports(op, device_type, dtype, shapes) -> (ok, reason)``. The "torch" backend is the plain-PyTorch
reference, so a fallback always exists.

Resolution order: the ``backend=`` argument, then ``SKIPKERN_BACKEND``, then auto:
CUDA tensors try cuda, triton, torch; CPU tensors try cpp, torch. Triton on CPU tensors (the Triton
interpreter, ``TRITON_INTERPRET=1``) only runs when asked for by name. Auto never raises: it records
why it skipped a backend and warns once. An explicit request that cannot run raises and lists the
alternatives.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Sequence

import torch

log = logging.getLogger("skipkern")

__all__ = ["Backend", "BackendStatus", "BACKENDS", "available", "can_run", "resolve", "launcher", "last_used",
           "note_fallback"]


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]
    module: str
    description: str


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cuda", ("cuda",), "skipkern.backends.cuda", "CUDA C++ kernels (skipkern._C_cuda)"),
        Backend("triton", ("cuda", "cpu"), "skipkern.backends.triton",
                "Triton kernels (GPU; CPU only through TRITON_INTERPRET=1)"),
        Backend("cpp", ("cpu",), "skipkern.backends.cpp", "C++ OpenMP kernels (skipkern._C)"),
        Backend("torch", ("cpu", "cuda"), "skipkern.backends.torch_backend", "plain-PyTorch reference"),
    )
}
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}

_modules: dict[str, Optional[ModuleType]] = {}
_import_errors: dict[str, str] = {}
_warned: set = set()
_logged: set = set()
_last_used: dict[str, str] = {}


def launcher(name: str) -> ModuleType:
    """The launcher module of backend ``name`` (raises ImportError with the reason if it fails)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or 'auto', got {name!r}")
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(BACKENDS[name].module)
        except Exception as exc:  # a broken build must be visible, not fatal
            _modules[name] = None
            _import_errors[name] = f"{type(exc).__name__}: {exc}"
    mod = _modules[name]
    if mod is None:
        raise ImportError(f"backend {name!r} failed to import: {_import_errors[name]}")
    return mod


def _status(name: str) -> tuple[bool, str]:
    try:
        mod = launcher(name)
    except ImportError as exc:
        return False, str(exc)
    return mod.available()


def available() -> list[BackendStatus]:
    """Every backend with whether it can run here and, if not, why."""
    out = []
    for name, b in BACKENDS.items():
        ok, reason = _status(name)
        out.append(BackendStatus(name, ok, reason, b.devices, b.description))
    return out


def _requested(backend: Optional[str]) -> str:
    if backend is None or backend == "auto":
        env = os.environ.get("SKIPKERN_BACKEND", "").strip()
        return env if env else "auto"
    return backend


def can_run(name: str, op: str, device_type: str, dtype: torch.dtype, shapes: Sequence = ()) -> tuple[bool, str]:
    """(True, "") when backend ``name`` is available and runs ``op`` on this device type, dtype and shapes,
    else (False, why)."""
    b = BACKENDS[name]
    if device_type not in b.devices:
        return False, f"backend {name!r} runs on {b.devices}, not on {device_type}"
    ok, reason = _status(name)
    if not ok:
        return False, reason
    return launcher(name).supports(op, device_type, dtype, shapes)


def _honours(name: str, precision: Optional[str], dtype: torch.dtype) -> tuple[bool, str]:
    """Whether backend ``name`` can run the fp32 dot ``precision`` asked for (None asks for nothing)."""
    if precision is None:
        return True, ""
    check = getattr(launcher(name), "check_precision", None)
    if check is None:
        return True, ""
    try:
        check(precision, dtype)
    except ValueError as exc:
        return False, str(exc)
    return True, ""


def resolve(op: str, backend: Optional[str], device: torch.device, dtype: torch.dtype,
            shapes: Sequence = (), precision: Optional[str] = None) -> str:
    """Pick the backend that runs ``op`` on tensors of this device/dtype/shapes.

    Args:
        op: op name, e.g. "skip_linear".
        backend: "auto", None, or a backend name. None/"auto" defer to SKIPKERN_BACKEND, then auto.
        device, dtype: of the op's main input.
        shapes: the op's input shapes, passed to each backend's ``supports``.
        precision: the fp32 dot precision the call asks for; auto skips backends that cannot honour it
            (e.g. "tf32" on CUDA goes to triton), an explicit backend is not second-guessed here.
    """
    requested = _requested(backend)
    device_type = torch.device(device).type
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(
                f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {requested!r}"
                + (" (from SKIPKERN_BACKEND)" if backend in (None, "auto") else "")
            )
        ok, reason = can_run(requested, op, device_type, dtype, shapes)
        if not ok:
            alts = [n for n in AUTO_ORDER.get(device_type, ("torch",)) if n != requested
                    and can_run(n, op, device_type, dtype, shapes)[0]]
            raise RuntimeError(
                f"{op}: backend {requested!r} cannot run here: {reason}. "
                f"Usable alternatives for {device_type}/{dtype}: {alts or ['torch']} (or backend='auto')."
            )
        return _record(op, requested, device_type, dtype)
    skipped = []
    for name in AUTO_ORDER.get(device_type, ("torch",)):
        ok, reason = can_run(name, op, device_type, dtype, shapes)
        if ok:
            ok, reason = _honours(name, precision, dtype)
        if ok:
            if skipped:
                key = (op, device_type, dtype, tuple(skipped))
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(f"skipkern {op}: using backend {name!r} on {device_type}/{dtype}; skipped "
                                  + "; ".join(skipped), RuntimeWarning, stacklevel=3)
            return _record(op, name, device_type, dtype)
        skipped.append(f"{name}: {reason}")
    return _record(op, "torch", device_type, dtype)


def _record(op: str, name: str, device_type: str, dtype: torch.dtype) -> str:
    _last_used[op] = name
    key = (op, name, device_type, dtype)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: backend=%s (device=%s, dtype=%s)", op, name, device_type, str(dtype).replace("torch.", ""))
    return name


def note_fallback(op: str, why: str) -> None:
    """Record (and log once) that ``op`` ran as plain torch for a reason outside backend choice."""
    _last_used[op] = "torch"
    key = (op, "fallback", why)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: backend=torch (%s)", op, why)


def last_used(op: str = "skip_linear") -> Optional[str]:
    """Name of the backend the last call of ``op`` resolved to (None before any call)."""
    return _last_used.get(op)
