"""The R-pass of the fused HVP on skipkern's own CPU kernels (csrc/rop_layer.cpp).

``FusedHVP`` computes the same maths with torch GEMMs plus one elementwise ``rop_epilogue`` pass per
layer; on CPU tensors (float32/float64, the cpp backend available) and for nets without dense or
hyper-residual skips (plain, residual; any activation) it runs each layer here instead, as three
kernels that fuse both GEMMs of a term into one register-tile reduction with the epilogue in the
write-back (see the C++ file): R-forward (R z, then R h' = R z act' + R h and t2 = R z act''), the
weight term R [dW | db] += R delta^T [h, 1] + delta^T [R h, 0], and the R-backward (R g = R delta W +
delta dW + R g' for the identity skip, then the next R delta = R g act' + g t2). The R-tensors are
direction-major here, [k, n, width] (the torch path's are [n, k, width]), so that a register tile's
rows are contiguous. The primal pass and its cache are FusedHVP's. ``FusedHVP.cpu_layers = "off"``
keeps the torch-GEMM path (for comparisons).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["cpu_layers_reason", "rop_chunk_cpu"]

_KERNELS = ("rop_layer_fwd_cpu", "rop_layer_grad_cpu", "rop_layer_back_cpu")
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}

try:
    from skipkern import _C
except Exception:  # reported by cpu_layers_reason
    _C = None


def cpu_layers_reason(x: Tensor, dtype: torch.dtype, layers: list[dict], epilogue: str) -> str:
    """"" when the C++ R-layers can run this product, else why not."""
    if epilogue != "cpp":
        return f"the rop_epilogue backend is {epilogue!r}, not cpp"
    if x.device.type != "cpu" or dtype not in _DTYPES:
        return f"C++ R-layers run float32/float64 CPU tensors, not {dtype} on {x.device}"
    if _C is None or any(not hasattr(_C, k) for k in _KERNELS):
        return "skipkern._C lacks the rop_layer kernels (stale build?); rebuild with python3 setup.py build_ext --inplace"
    if any(L["kind"] == "dense" or L["c"] or L["p"] is not None for L in layers):
        return "the net has dense or hyper-residual skips"
    return ""


def _p(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def rop_chunk_cpu(impl, pr: dict, x: Tensor, layers: list[dict], dirs: list, res: list) -> None:
    """R-pass of one row chunk for all k directions (FusedHVP._chunk's maths); accumulates R [dW | db]
    into ``res``. ``impl``: the FusedHVP (its workspace buffers), ``pr``: the chunk's primal pass."""
    A, D1, D2, GZ, GH = pr["A"], pr["D1"], pr["D2"], pr["GZ"], pr["GH"]
    n, Lout = x.shape[0], len(layers) - 1
    k = next(d.shape[0] for d in dirs if d is not None)
    dt = _DTYPES[impl.dtype]
    T2, RA = [], []
    Rh, Rlogits = None, None
    for l, L in enumerate(layers):  # ---- R-forward
        W = L["w"].contiguous()
        N, K = W.shape
        Ka = A[l].shape[1]
        RA.append(Rh)
        if dirs[l] is None and Rh is None:  # no direction reaches this layer yet: R h_{l+1} = 0
            if l == Lout:
                break
            T2.append(None)
            continue
        last = l == Lout
        out = impl._buf("rlog" if last else f"ra{l + 1}", (k, n, N), x)
        d2 = None if last else D2[l]
        t2 = None if d2 is None else impl._buf(f"t2_{l}", (k, n, N), x)
        _C.rop_layer_fwd_cpu(dt, _p(A[l]), _p(dirs[l]), _p(Rh), _p(W), 0 if last else _p(D1[l]), _p(d2), _p(t2),
                             out.data_ptr(), L["kind"] == "identity" and Rh is not None, n, k, K, Ka, N)
        if last:
            Rlogits = out
            break
        T2.append(t2)
        Rh = out
    # ---- R-backward (the loss Hessian works on [n, k, C] views)
    Rgz = None if Rlogits is None else pr["hop"](Rlogits.transpose(0, 1)).transpose(0, 1).contiguous()
    Rgh_next = None
    for l in range(Lout, -1, -1):
        L = layers[l]
        W = L["w"].contiguous()
        N, K = W.shape
        Ka = A[l].shape[1]
        Ra = RA[l]
        if res[l] is not None and (Rgz is not None or Ra is not None):
            _C.rop_layer_grad_cpu(dt, _p(Rgz), _p(A[l]), _p(GZ[l] if Ra is not None else None), _p(Ra),
                                  res[l].data_ptr(), n, k, K, Ka, N)
        if l == 0:
            break
        identity = L["kind"] == "identity" and Rgh_next is not None
        d1, t2, gh = D1[l - 1], T2[l - 1], GH[l]
        if Rgz is None and dirs[l] is None:  # no GEMM term: R g is the skip's alone
            Rgh = Rgh_next if identity else None
            Rgz = None
            if Rgh is not None or t2 is not None:
                Rgz = impl._buf(f"rgz{l % 2}", (k, n, K), x)
                torch.mul(Rgh, d1, out=Rgz) if Rgh is not None else Rgz.zero_()
                if t2 is not None:
                    Rgz.addcmul_(gh, t2)
            Rgh_next = Rgh
            continue
        keep = layers[l - 1]["kind"] == "identity"  # the layer below adds this R g through its skip
        rgh = impl._buf(f"rgh{l % 2}", (k, n, K), x) if keep else None
        rgz = impl._buf(f"rgz{l % 2}", (k, n, K), x)
        _C.rop_layer_back_cpu(dt, _p(Rgz), _p(W), _p(GZ[l] if dirs[l] is not None else None), _p(dirs[l]),
                              _p(Rgh_next if identity else None), _p(d1), _p(gh if t2 is not None else None), _p(t2),
                              _p(rgh), rgz.data_ptr(), n, k, K, Ka, N)
        Rgz, Rgh_next = rgz, rgh
