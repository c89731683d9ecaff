"""The private torch internals of skipkern's eager op path, in one place, each with a public-API fallback.

- ``in_functorch_transform(*tensors)``: is a torch.func transform (grad, vmap, jvp, functionalize) active?
  Custom ops and autograd.Functions carry no functorch rules, so the ops run their plain-torch composite
  inside one. Private: ``torch._C._functorch.peek_interpreter_stack()``. Fallback (the private API missing):
  whether any of ``tensors`` is transformed (below); it misses a transform none of the op's inputs takes
  part in, and functionalize, whose tensors keep a storage.
- ``is_transformed(t)``: a functorch-wrapped or vmap-batched tensor (no plain storage for a kernel to
  read). Private: ``torch._C._functorch.is_functorch_wrapped_tensor / is_batchedtensor /
  is_legacy_batchedtensor``. Fallback (public): such a tensor refuses ``untyped_storage()``.
- ``assume_constant_result(fn)``: torch.compile calls ``fn`` while tracing and treats its result as a
  constant (backend choice is host-side Python). Public: ``torch.compiler.assume_constant_result``, which
  imports torch._dynamo (about a second at every ``import skipkern``); so, while torch._dynamo is not
  loaded, the shim sets the attribute that function sets (private). tests/test_skip_linear.py checks that
  the public function still sets that attribute, and both branches.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Callable, Optional

import torch

__all__ = ["in_functorch_transform", "is_transformed", "assume_constant_result", "functorch_api"]

_NEEDED = ("peek_interpreter_stack", "is_functorch_wrapped_tensor", "is_batchedtensor", "is_legacy_batchedtensor")
CONSTANT_MARKER = "_dynamo_marked_constant"  # set by torch._dynamo.assume_constant_result


def functorch_api() -> Optional[ModuleType]:
    """torch._C._functorch when it has every function the shim uses, else None (then the fallbacks run)."""
    f = getattr(torch._C, "_functorch", None)
    return f if f is not None and all(hasattr(f, name) for name in _NEEDED) else None


_FUNCTORCH: Optional[ModuleType] = functorch_api()  # looked up once: these run on every op call


def is_transformed(t: torch.Tensor) -> bool:
    """A functorch-wrapped or vmap-batched tensor."""
    f = _FUNCTORCH
    if f is not None:
        return f.is_functorch_wrapped_tensor(t) or f.is_batchedtensor(t) or f.is_legacy_batchedtensor(t)
    try:
        t.untyped_storage()
    except (NotImplementedError, RuntimeError):
        return True
    return False


def in_functorch_transform(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a torch.func transform is active (never while torch.compile traces); see the module
    docstring for what the fallback, used without the private API, can see."""
    if torch.compiler.is_compiling():
        return False
    f = _FUNCTORCH
    if f is not None:
        return f.peek_interpreter_stack() is not None
    return any(t is not None and is_transformed(t) for t in tensors)


def _dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def assume_constant_result(fn: Callable) -> Callable:
    """Mark ``fn`` as torch.compile's ``assume_constant_result`` does, without importing torch._dynamo."""
    if _dynamo_loaded():  # already paid for: the public API
        return torch.compiler.assume_constant_result(fn)
    setattr(fn, CONSTANT_MARKER, True)
    return fn
