"""The fused Hessian-vector product of a SkipMLP, arranged for a GPU (a subclass of hvp_fused.FusedHVP).

What changes against FusedHVP (same maths, same primal pass and cache):
- rows per chunk from the GPU's free memory (``memory_fraction`` of torch.cuda.mem_get_info, or the
  operator's memory_budget if larger): 10k CIFAR rows at k = 64 fit in one chunk on an H200 instead of ~44;
- no host synchronisation inside the chunk loop: the chunks' losses are summed on the device and checked
  for NaN/inf once per product;
- each R-layer's GEMMs and elementwise epilogue in one Triton kernel (kernels/rop_layer.py): forward
  R h_{l+1} = act'(z_l) (A_l Dir_l^T + R h_l W_l^T) + R h_l, backward R delta_{l-1} = act'(z_{l-1})
  (R delta_l W_l + delta_l dW_l + R g_{l+1}), where the unfused path runs two GEMMs and a pass each. This
  covers nets without dense or hyper-residual skips, with relu/identity activations and every layer's
  parameters selected (the paper's residual and plain nets); others take FusedHVP's path, logged once;
- ``products``: "fp32" (IEEE), "tf32" (tensor-core fp32 in the R-layer kernels and in torch's GEMMs) or
  "bf16" (bf16 operands, fp32 accumulation, in the R-layer kernels; TF32 in torch's GEMMs); see
  bench/bench_hvp_gpu.py for their effect on the spectrum.
``gpu_operator(...)`` builds a HessianOperator with this product inside.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from skipkern.hessian.hvp_fused import FusedHVP, dirs_k

log = logging.getLogger("skipkern")

__all__ = ["GPUFusedHVP", "gpu_operator", "PRODUCTS"]

PRODUCTS = {"fp32": "ieee", "tf32": "tf32", "bf16": "bf16"}  # -> kernels/rop_layer.py PRODUCTS
WIDE = 512  # layer inputs wider than this take A Dir^T through cuBLAS (the fused kernel re-reads A per direction)
_logged: set = set()


def _log_once(msg: str, *args) -> None:
    if (msg, args) not in _logged:
        _logged.add((msg, args))
        log.info(msg, *args)


class GPUFusedHVP(FusedHVP):
    """FusedHVP with GPU-sized chunks, no per-chunk host sync and fused R-layer kernels (module docstring).

    Args:
        model, loss_fn, names, dtype, epilogue_backend: as FusedHVP.
        products: "fp32", "tf32" or "bf16" (float32 only for the last two).
        memory_fraction: share of the GPU's free memory a product may use for its chunks.
    """

    def __init__(self, model, loss_fn: Callable, names: Sequence[str], dtype: torch.dtype,
                 epilogue_backend: Optional[str] = None, products: str = "fp32", memory_fraction: float = 0.5):
        super().__init__(model, loss_fn, names, dtype, epilogue_backend)
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {tuple(PRODUCTS)}, got {products!r}")
        if products != "fp32" and dtype != torch.float32:
            raise ValueError(f"products={products!r} rounds float32 products; the operator's dtype is {dtype}")
        if not 0.0 < memory_fraction <= 0.9:
            raise ValueError(f"memory_fraction must be in (0, 0.9], got {memory_fraction!r}")
        self.products, self.memory_fraction = products, memory_fraction
        self._loss_acc: Optional[Tensor] = None

    def _budget(self, x: Tensor, memory_budget: int) -> int:
        if x.device.type != "cuda":
            return memory_budget
        free, _ = torch.cuda.mem_get_info(x.device)
        return max(memory_budget, int(free * self.memory_fraction))

    @contextlib.contextmanager
    def _torch_precision(self):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.products != "fp32"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    def batch_hvp(self, x: Tensor, y: Tensor, Vt: Tensor, memory_budget: int, batch_index: int = 0) -> Tensor:
        """As FusedHVP.batch_hvp; the chunk losses stay on the device (one NaN/inf check per product)."""
        self._loss_acc = None
        with self._torch_precision():
            out = super().batch_hvp(x, y, Vt, self._budget(x, memory_budget), batch_index)
        if self._loss_acc is not None and not bool(torch.isfinite(self._loss_acc)):
            raise ValueError(f"loss is {float(self._loss_acc)} (not finite) on data batch {batch_index}; "
                             f"check the inputs, targets and parameters for NaN/inf")
        return out

    def _chunk(self, x: Tensor, y: Tensor, w: Tensor, layers: list, dirs: list, res: list, key: tuple,
               room: int) -> float:
        why = self._unfusable(x, layers, dirs)
        if why:
            _log_once("hessian gpu: unfused R-layers (%s)", why)
            loss = super()._chunk(x, y, w, layers, dirs, res, key, room)
        else:
            loss = self._fused_chunk(x, y, w, layers, dirs, res, key, room)
        self._loss_acc = loss.detach() if self._loss_acc is None else self._loss_acc + loss.detach()
        return 0.0  # FusedHVP sums float(...) per chunk: a host sync; the real sum is kept in _loss_acc

    def _unfusable(self, x: Tensor, layers: list, dirs: list) -> str:
        from skipkern.kernels import rop_layer
        if x.device.type == "cpu" and not rop_layer.INTERPRET:
            return "CPU tensors without the Triton interpreter"
        if x.dtype not in (torch.float32, torch.float64):
            return f"dtype {x.dtype}"
        for i, L in enumerate(layers):
            if L["kind"] not in ("none", "identity") or L["c"] or L["p"] is not None:
                return "dense or hyper-residual skips"
            if i < len(layers) - 1 and L["act"] not in ("relu", "identity"):
                return f"activation {L['act']} (act'' != 0)"
            if dirs[i] is None:
                return "a layer's parameters not selected"
        return ""

    def _fused_chunk(self, x: Tensor, y: Tensor, w: Tensor, layers: list, dirs: list, res: list, key: tuple,
                     room: int) -> Tensor:
        """FusedHVP._chunk for the nets _unfusable accepts, two Triton kernels per layer."""
        from skipkern.kernels.rop_layer import rop_layer_bwd, rop_layer_fwd
        prod = PRODUCTS[self.products]
        pr = self._cached_primal(key, x, y, w, layers, room)
        A, D1, GZ = pr["A"], pr["D1"], pr["GZ"]
        n, k, Lout = x.shape[0], dirs_k(dirs), len(layers) - 1
        RA, Rh = [], None
        for l, L in enumerate(layers):  # R-forward: R h_{l+1} = act'(z_l) R z_l (+ R h_l)
            N = L["w"].shape[0]
            RA.append(Rh)
            out = self._buf("rlog" if l == Lout else f"ra{l + 1}", (n, k, N), x)
            wide = A[l].shape[1] > WIDE  # A Dir^T as one cuBLAS GEMM (reads A once), the rest fused
            if wide:
                torch.mm(A[l], dirs[l].view(k * N, -1).T, out=out.view(n, k * N))
            rop_layer_fwd(A[l], None if wide else dirs[l], Rh, L["w"], None if l == Lout else D1[l],
                          L["kind"] == "identity" and Rh is not None, out, prod, init=wide)
            Rh = out
        Rgz, Rgh_next = pr["hop"](Rh), None
        for l in range(Lout, -1, -1):  # R-backward
            W = layers[l]["w"]
            N, K = W.shape
            gz, Ra = GZ[l], RA[l]
            res[l].view(k * N, -1).addmm_(Rgz.view(n, k * N).T, A[l])  # R delta^T [h, 1]
            if Ra is not None:  # delta^T [R h, 0]
                res[l][:, :, :K] += (gz.T @ Ra.view(n, k * K)).view(N, k, K).permute(1, 0, 2)
            if l == 0:
                break
            keep = layers[l - 1]["kind"] == "identity"  # R g_l feeds layer l-1's identity skip
            rgh = self._buf(f"rgh{l % 2}", (n, k, K), x) if keep else None
            new = self._buf(f"rgz{l % 2}", (n, k, K), x)
            skip_in = Rgh_next if layers[l]["kind"] == "identity" else None
            rop_layer_bwd(Rgz, W, gz, dirs[l], skip_in, D1[l - 1], new, rgh, prod)  # dirs' bias column unread
            Rgz, Rgh_next = new, rgh
        return pr["loss"]


def gpu_operator(model, loss_fn: Callable, data, products: str = "fp32", memory_fraction: float = 0.5, **kw):
    """A HessianOperator(backend="fused", ...) whose products run through GPUFusedHVP.

    Args:
        model, loss_fn, data, **kw: as skipkern.hessian.HessianOperator (backend is "fused").
        products, memory_fraction: as GPUFusedHVP.
    """
    from skipkern.hessian.operator import HessianOperator
    op = HessianOperator(model, loss_fn, data, backend="fused", **kw)
    # the operator builds a FusedHVP; swap in the GPU variant (same constructor arguments)
    op._impl = GPUFusedHVP(model, loss_fn, op.param_names, op._dtype, products=products,
                           memory_fraction=memory_fraction)
    return op
