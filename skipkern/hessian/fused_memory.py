"""What the fused R-op holds, counted against ``memory_budget``, and its cache of primal passes.

A product of k directions holds (bytes of the product dtype unless said otherwise):
- fixed: the directions and results per layer ([k, N, K+1] twice) and the returned [k, P]; the
  GEMM temporaries of the weight-gradient terms (2 k max_l N_l K_l); the layers cast to the product
  dtype (P) and ONE snapshot of the parameters and fixed skip/hyper matrices (their own dtype),
  against which the cache is checked once per batch;
- per row of a chunk, the workspace: the [n, k, width] R-tensors of every layer (R h_l, act'' R z
  for smooth activations, the hyper sums, four backward buffers and the loss-Hessian temporaries);
- the C++ R-layers' scratch (skipkern.hessian.hvp_cpu; grow-only, kept by the calling thread): packed
  directions (k times a layer's parameters) and, per row, (threads + 2) x 2 widths of packed operands;
- per row of a chunk, the primal pass: the inputs [h_l, 1], act'(z_l), act''(z_l), d loss/d z_l,
  d loss/d h_l, softmax and row weights, and the chunk's inputs and targets (the snapshot the cache
  compares against: the data is checked by value, so a batch moved to the device or dtype again, or
  re-yielded by a DataLoader, still hits).
Rows per chunk are the most for which fixed + rows (workspace + 2 primal) fits; the cache keeps a
chunk's primal pass only while fixed + workspace + cached + one more chunk's primal still fits, so
the total never exceeds the budget (when even one row does not fit, one row per chunk and no cache,
with a warning).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger("skipkern")

__all__ = ["footprint", "PrimalCache", "tensor_bytes"]

_SMOOTH = ("tanh", "gelu")


def tensor_bytes(obj) -> int:
    """Bytes of the distinct storages behind the tensors in a (nested) list/tuple/dict (a view and
    its base count once)."""
    seen: dict[int, int] = {}

    def walk(o) -> None:
        if isinstance(o, Tensor):
            st = o.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
    walk(obj)
    return sum(seen.values())


def footprint(layers: list[dict], k: int, P: int, isz: int, state_bytes: int) -> tuple[int, int, int]:
    """(fixed bytes, workspace bytes per row, primal bytes per row) of a product of k directions.

    Args:
        layers: the fused layer list (w [N, K], act, p, ...); k: directions; P: selected parameters;
        isz: bytes per element of the product dtype; state_bytes: bytes of the parameter snapshot.
    """
    Ns = [L["w"].shape[0] for L in layers]
    Ks = [L["w"].shape[1] for L in layers]
    hidden = layers[:-1]
    smooth = sum(L["w"].shape[0] for L in hidden if L["act"] in _SMOOTH)
    hyper = any(L["p"] is not None for L in layers)
    C, max_k = Ns[-1], max(Ks[1:] or [1])
    layer_params = sum(N * (K + 1) for N, K in zip(Ns, Ks))
    widest = max(N * (K + 1) for N, K in zip(Ns, Ks))
    fixed = isz * (2 * k * layer_params + k * P + 4 * k * widest + layer_params)
    fixed += state_bytes
    ws_row = isz * k * (sum(Ns) + smooth + (2 * max(Ns[:-1] or [1]) if hyper else 0) + 4 * max_k + 3 * C)
    ws_row += isz * (torch.get_num_threads() + 2) * 2 * max(Ns + Ks)
    primal_row = isz * (sum(K + 1 for K in Ks) + 2 * sum(Ns[:-1]) + smooth + sum(Ks[1:]) + 3 * C + 2) + 8 * C
    return fixed, ws_row, primal_row


class PrimalCache:
    """Primal passes keyed by (batch index, first row, rows), valid while the parameters equal ONE
    snapshot (checked by value: also catches changes made through ``.data``) and the chunk's inputs
    and targets equal the copies the entry holds."""

    def __init__(self) -> None:
        self.entries: dict[tuple, dict] = {}
        self.snapshot: Optional[list[Tensor]] = None
        self.meta: Optional[tuple] = None
        self._warned = False

    def bytes(self) -> int:
        return tensor_bytes([self.snapshot or [], list(self.entries.values())])

    def clear(self) -> None:
        self.entries, self.snapshot, self.meta = {}, None, None

    def check_state(self, tensors: list[Tensor], meta: tuple) -> None:
        """Drop every entry when a parameter or the dtype/activations changed; keep one snapshot."""
        if (self.snapshot is not None and self.meta == meta and len(self.snapshot) == len(tensors)
                and all(torch.equal(a, b) for a, b in zip(self.snapshot, tensors))):
            return
        self.entries = {}
        self.snapshot = [t.detach().clone() for t in tensors]
        self.meta = meta

    def get(self, key: tuple, x: Tensor, y: Tensor) -> Optional[dict]:
        e = self.entries.get(key)
        if e is not None and e["X"].shape == x.shape and e["Y"].shape == y.shape \
                and torch.equal(e["X"], x) and torch.equal(e["Y"], y):
            return e
        return None

    def admit(self, key: tuple, primal: dict, room: int) -> None:
        """Keep ``primal`` if the cache with it stays within ``room`` bytes (else drop any old entry)."""
        self.entries.pop(key, None)
        if tensor_bytes([list(self.entries.values()), primal]) <= room:
            self.entries[key] = primal

    def warn_small_budget(self, budget: int, need: int) -> None:
        if not self._warned:
            self._warned = True
            log.warning("hessian: memory_budget=%d bytes is below what one row of the fused product needs "
                        "(%d bytes); running one row per chunk without a primal cache", budget, need)
