"""Fused Hessian-vector products of a SkipMLP: Pearlmutter's R-op carrying all k directions at once.

Layers l = 0 .. L (L = depth; layer L is the linear output layer), h_0 = x:
    z_l = h_l W_l^T + b_l,   h_{l+1} = act(z_l) + S_l h_l + c_l sum_{i<l} h_i P_i^T     (l < L)
    logits = z_L,            loss = sum_r w_r ell(logits_r, y_r)
For directions (dW_l, db_l), R{.} the directional derivative:
    R z_l = R h_l W_l^T + h_l dW_l^T + db_l
    R h_{l+1} = act'(z_l) R z_l + S_l R h_l + c_l sum_{i<l} R h_i P_i^T
    R g_L = H_ell(logits) R logits                                    (softmax-CE or MSE, per row)
    R delta_l = R g_{l+1} act'(z_l) + g_{l+1} act''(z_l) R z_l        (act'' = 0 for relu/identity)
    R dW_l = R delta_l^T h_l + delta_l^T R h_l,   R db_l = sum_rows R delta_l   <- the HVP
    R g_l = R delta_l W_l + delta_l dW_l + S_l^T R g_{l+1} + (hyper terms)^T
All R-tensors are [n, k, width] (row-major over the batch), so each term is ONE 2-D GEMM:
the n*k rows share W_l ([n*k, K] @ W^T), the k direction matrices share the activations
(h_l @ [dW | db]^T_flat: [n, K+1] @ [K+1, k*N]; R delta^T h: [k*N, n] @ [n, K+1]). Bias terms ride in
the GEMMs through a ones column; additions go through addmm_ where the operands allow.
Per product: the primal forward/backward (h_l, act', act'', delta_l, d loss/d h_l) is computed once per
row chunk and cached while the chunk's rows and the parameters keep their values (so Lanczos, which
multiplies by the same Hessian every step, pays it once); the [n, k, width] R-tensors live in
workspace buffers reused across layers and calls. Everything held (directions, results, workspace,
cache, one parameter snapshot) counts against ``memory_budget`` (skipkern.hessian.fused_memory).
FLOPs: 12 n K N per direction and layer (6 GEMMs), i.e. 2 gradients per direction, + 1 gradient
per product (or none when cached). The elementwise passes on the [n, k, width] buffers (act', act''
masks, identity skip and hyper-sum adds; R delta = R g act' + g act'' R z) are one pass each through the
op skipkern.ops.rop_epilogue (cpp / triton kernels, torch reference in skipkern.ops.rop_epilogue_reference),
resolved once per product: ``epilogue_backend``, else SKIPKERN_BACKEND, else auto (cpp on CPU tensors,
triton on CUDA, torch otherwise). The GEMMs are torch's, except on CPU tensors of plain and residual nets,
where skipkern's C++ R-layers run each layer's GEMMs and epilogue fused (skipkern.hessian.hvp_cpu).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from skipkern import backends
from skipkern.hessian.fused_loss import loss_spec, loss_terms, row_weights
from skipkern.hessian.fused_memory import PrimalCache, footprint, tensor_bytes
from skipkern.hessian.hvp_cpu import cpu_layers_reason, rop_chunk_cpu
from skipkern.nn.skip_mlp import SkipMLP
from skipkern.ops import rop_epilogue
from skipkern.reference import activation_grad_ref, activation_ref

__all__ = ["FusedHVP", "supports", "loss_spec"]

log = logging.getLogger("skipkern")

_SMOOTH = ("tanh", "gelu")
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation_grad2(z: Tensor, activation: str) -> Tensor:
    """act''(z) for the smooth activations (tanh, exact gelu)."""
    if activation == "tanh":
        t = torch.tanh(z)
        return -2.0 * t * (1.0 - t * t)
    if activation == "gelu":
        return _INV_SQRT_2PI * torch.exp(-0.5 * z * z) * (2.0 - z * z)
    raise ValueError(f"activation_grad2 is for {_SMOOTH}, got {activation!r}")


def _param_slots(model: SkipMLP) -> dict[str, tuple[int, str]]:
    """{parameter name: (layer index, "weight" | "bias")} from the model's layer description."""
    slots = {}
    for s in model.layer_specs():
        slots[s["weight_name"]] = (s["index"], "weight")
        if s["bias_name"] is not None:
            slots[s["bias_name"]] = (s["index"], "bias")
    return slots


def supports(model: nn.Module, loss_fn: Callable, names: Sequence[str]) -> tuple[bool, str]:
    """Whether the fused backend can compute this Hessian, and if not, why."""
    if not isinstance(model, SkipMLP):
        return False, f"model is a {type(model).__name__}, not a SkipMLP"
    specs = model.layer_specs()
    if any(sp["norm"] is not None for sp in specs):
        return False, "SkipMLP has BatchNorm layers (batchnorm_layers)"
    spec, why = loss_spec(loss_fn)
    if spec is None:
        return False, why
    slots = _param_slots(model)
    bad = [n for n in names if n not in slots]
    if bad:
        return False, f"parameters {bad[:3]} are not layer weights/biases"
    return True, ""


class FusedHVP:
    """Batched HVPs of a SkipMLP by the analytic R-op (see module docstring). ``cpu_layers``: "auto"
    (skipkern's C++ R-layers where they run, skipkern.hessian.hvp_cpu) or "off" (torch GEMMs)."""

    cpu_layers = "auto"
    _cpu_why = None

    def __init__(self, model: SkipMLP, loss_fn: Callable, names: Sequence[str], dtype: torch.dtype,
                 epilogue_backend: Optional[str] = None):
        if epilogue_backend is not None and epilogue_backend != "auto" and epilogue_backend not in backends.BACKENDS:
            raise ValueError(f"epilogue_backend must be None, 'auto' or one of {sorted(backends.BACKENDS)}, "
                             f"got {epilogue_backend!r}")
        self.model, self.names, self.dtype = model, list(names), dtype
        self.epilogue_backend = epilogue_backend
        self._rop = None  # backend of the rop_epilogue op, resolved once per product by batch_hvp
        self.spec, _ = loss_spec(loss_fn)
        slots = _param_slots(model)
        self.where = [slots[n] for n in self.names]
        self._ws: dict[str, Tensor] = {}
        self._cache = PrimalCache()

    # ------------------------------------------------------------------------------- pieces
    def _layers(self) -> list[dict]:
        """Per layer, from SkipMLP.layer_specs(), detached and cast to the product dtype: w [N, K],
        b [N] or None, kind ("none" | "identity" | "dense"), q (the dense skip), act, c (hyper
        coefficient) and p (hyper source matrix or None)."""
        dt = self.dtype

        def cast(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.detach().to(dt)
        return [dict(w=cast(s["weight"]), b=cast(s["bias"]), kind=s["skip"], q=cast(s["skip_weight"]),
                     act=s["activation"], c=float(s["hyper_coefficient"]), p=cast(s["hyper_source"]))
                for s in self.model.layer_specs()]

    def _row_weights(self, logits_shape: tuple, y: Tensor, batch_index: int) -> Tensor:
        return row_weights(self.spec, logits_shape, y, batch_index, self.dtype)

    def _loss_terms(self, logits: Tensor, y: Tensor, w: Tensor):
        return loss_terms(self.spec, logits, y, w)

    def _directions(self, Vt: Tensor, layers: list[dict]) -> list[Optional[Tensor]]:
        """Per layer [k, N, K(+1)]: [dW | db] of the k directions (None if the layer is not selected)."""
        k = Vt.shape[0]
        dirs: list[Optional[Tensor]] = [None] * len(layers)
        off = 0
        for (i, what), name in zip(self.where, self.names):
            L = layers[i]
            N, K = L["w"].shape
            size = N * K if what == "weight" else N
            if dirs[i] is None:
                dirs[i] = Vt.new_zeros(k, N, K + (L["b"] is not None))
            if what == "weight":
                dirs[i][:, :, :K] = Vt[:, off:off + size].view(k, N, K)
            else:
                dirs[i][:, :, K] = Vt[:, off:off + size]
            off += size
        return dirs

    def held_bytes(self) -> int:
        """Bytes this object holds between products: workspace buffers, primal cache, snapshot."""
        return tensor_bytes([self._ws, self._cache.entries, self._cache.snapshot or []])

    def _plan(self, n: int, k: int, P: int, budget: int, layers: list[dict]) -> tuple[int, int]:
        """(rows per chunk, bytes the primal cache may hold) within ``budget`` (see fused_memory)."""
        isz = torch.finfo(self.dtype).bits // 8
        fixed, ws_row, pr_row = footprint(layers, k, P, isz, tensor_bytes(self._cache.snapshot or []))
        room = budget - fixed
        if room < ws_row + 2 * pr_row:
            self._cache.warn_small_budget(budget, fixed + ws_row + 2 * pr_row)
            return 1, 0
        rows = min(n, room // (ws_row + 2 * pr_row))
        ws = max(rows * ws_row, tensor_bytes(self._ws))
        return rows, max(0, room - ws - rows * pr_row)

    # ------------------------------------------------------------------------------- product
    def batch_hvp(self, x: Tensor, y: Tensor, Vt: Tensor, memory_budget: int, batch_index: int = 0) -> Tensor:
        """Hessian of the batch's sum-form loss (``_row_weights``) times each row of Vt [k, P] -> [k, P]."""
        layers = self._layers()
        if x.dim() != 2 or x.shape[1] != layers[0]["w"].shape[1]:
            raise ValueError(f"inputs must have shape [n, {layers[0]['w'].shape[1]}], got {tuple(x.shape)} "
                             f"on batch {batch_index}")
        n, k = x.shape[0], Vt.shape[0]
        w_rows = self._row_weights((n, layers[-1]["w"].shape[0]), y, batch_index)
        self._cache.check_state(self._state_tensors(), (self.dtype,) + tuple(L["act"] for L in layers))
        dirs = self._directions(Vt, layers)
        res: list[Optional[Tensor]] = [None if d is None else torch.zeros_like(d) for d in dirs]
        rows, room = self._plan(n, k, Vt.shape[1], memory_budget, layers)
        width = max(L["w"].shape[0] for L in layers)
        # One resolution per product (the registry logs once which backend ran).
        self._rop = rop_epilogue.resolve_backend(self.epilogue_backend, x.device, self.dtype, (min(rows, n), k, width))
        loss = 0.0
        for r0 in range(0, n, rows):
            loss += float(self._chunk(x[r0:r0 + rows], y[r0:r0 + rows], w_rows[r0:r0 + rows],
                                      layers, dirs, res, (batch_index, r0, rows), room))
        if not math.isfinite(loss):
            raise ValueError(f"loss is {loss} (not finite) on data batch {batch_index}; "
                             f"check the inputs, targets and parameters for NaN/inf")
        out = torch.empty_like(Vt)
        off = 0
        for i, what in self.where:
            N, K = layers[i]["w"].shape
            if what == "weight":
                out[:, off:off + N * K] = res[i][:, :, :K].reshape(k, N * K)
                off += N * K
            else:
                out[:, off:off + N] = res[i][:, :, K]
                off += N
        return out

    def _buf(self, name: str, shape: tuple, like: Tensor) -> Tensor:
        """A reusable workspace buffer: large [n, k, width] tensors are allocated once per operator, not
        per layer and call (fresh multi-MB allocations cost page faults comparable to the GEMMs)."""
        need = math.prod(shape)
        t = self._ws.get(name)
        if t is None or t.numel() < need or t.dtype != like.dtype or t.device != like.device:
            t = self._ws[name] = torch.empty(need, dtype=like.dtype, device=like.device)
        return t[:need].view(shape)

    def release_workspace(self) -> None:
        """Free the cached [n, k, width] buffers and primal passes (re-created by the next product)."""
        self._ws = {}
        self._cache.clear()

    def _primal(self, x: Tensor, y: Tensor, w: Tensor, layers: list[dict]) -> dict:
        """Forward and backward of the loss on one row chunk, everything the R-pass reuses for all k:
        augmented inputs A[l] = [h_l, 1] [n, K(+1)], act'(z_l), act''(z_l) (smooth activations),
        delta_l = d loss / d z_l (GZ) and d loss / d h_l (GH), the loss and its logit-space Hessian."""
        n, Lout = x.shape[0], len(layers) - 1
        ones = x.new_ones(n, 1)
        A, D1, D2 = [], [], []
        h, hsum, logits = x, None, None
        for l, L in enumerate(layers):
            W, b = L["w"], L["b"]
            A.append(torch.cat([h, ones], 1) if b is not None else (h.clone() if l == 0 else h))
            z = torch.addmm(b, h, W.T) if b is not None else h @ W.T
            if l == Lout:
                logits = z
                break
            act = L["act"]
            D1.append(activation_grad_ref(z, act))
            D2.append(activation_grad2(z, act) if act in _SMOOTH else None)
            h_new = activation_ref(z, act)
            if L["kind"] == "identity":
                h_new = h_new + h
            elif L["kind"] == "dense":
                h_new = torch.addmm(h_new, h, L["q"].T)
            if L["c"]:
                h_new = h_new + L["c"] * hsum
            if L["p"] is not None:  # this layer's input h_l feeds the hyper terms of later layers
                hsum = h @ L["p"].T if hsum is None else torch.addmm(hsum, h, L["p"].T)
            h = h_new
        loss, g, hop, hop_held = self._loss_terms(logits, y, w)
        GZ: list = [None] * (Lout + 1)
        GH: list = [None] * (Lout + 1)  # GH[l] = d loss / d h_l (l >= 1)
        gz, gh_next, acc = g, None, None
        for l in range(Lout, 0, -1):
            L = layers[l]
            GZ[l] = gz
            gh = gz @ L["w"]
            if L["kind"] == "identity":
                gh = gh + gh_next
            elif L["kind"] == "dense":
                gh = torch.addmm(gh, gh_next, L["q"])
            if L["p"] is not None and acc is not None:  # sum_{j>l} c_j g_{j+1}, through P_l
                gh = torch.addmm(gh, acc, L["p"])
            if L["c"]:
                acc = gh_next * L["c"] if acc is None else acc.add(gh_next, alpha=L["c"])
            GH[l] = gh
            gz = gh * D1[l - 1]
            gh_next = gh
        GZ[0] = gz
        # X, Y: the chunk's rows as the cache compares them (X is a view of A[0], no copy with a bias)
        return dict(A=A, D1=D1, D2=D2, GZ=GZ, GH=GH, loss=loss, hop=hop, hop_held=hop_held,
                    X=A[0][:, :x.shape[1]], Y=y.clone())

    def _cached_primal(self, key: tuple, x: Tensor, y: Tensor, w: Tensor, layers: list[dict], room: int) -> dict:
        """The primal pass of a chunk, from the cache when its rows and the parameters are unchanged
        (Lanczos multiplies by the same Hessian every step), else computed and kept if it fits."""
        hit = self._cache.get(key, x, y)
        if hit is not None:
            return hit
        primal = self._primal(x, y, w, layers)
        self._cache.admit(key, primal, room)
        return primal

    def _state_tensors(self) -> list[Tensor]:
        return [t for s in self.model.layer_specs()
                for t in (s["weight"], s["bias"], s["skip_weight"], s["hyper_source"]) if t is not None]

    def _chunk(self, x: Tensor, y: Tensor, w: Tensor, layers: list[dict], dirs: list, res: list,
               key: tuple, room: int) -> Tensor:
        """R-pass of one row chunk for all k directions; accumulates R [dW | db] into ``res``."""
        pr = self._cached_primal(key, x, y, w, layers, room)
        why = "off" if self.cpu_layers == "off" else cpu_layers_reason(x, self.dtype, layers, self._rop)
        if why != self._cpu_why:  # log the path once per change
            self._cpu_why = why
            log.info("hessian: fused R-pass on %s", "skipkern's C++ R-layers" if not why else f"torch GEMMs ({why})")
        if not why:
            rop_chunk_cpu(self, pr, x, layers, dirs, res)
            return pr["loss"]
        A, D1, D2, GZ, GH = pr["A"], pr["D1"], pr["D2"], pr["GZ"], pr["GH"]
        n, k, Lout = x.shape[0], dirs_k(dirs), len(layers) - 1
        # ---- R-forward into reusable buffers; None stands for an R-tensor that is exactly zero
        # (layers below the first selected one).
        T2, RA = [], []  # act''(z) * R z per hidden layer, R inputs R h_l
        Rh, Rhsum, Rlogits = None, None, None
        for l, L in enumerate(layers):
            W = L["w"]
            N, K = W.shape
            a = A[l]
            RA.append(Rh)
            out = self._buf("rlog" if l == Lout else f"ra{l + 1}", (n, k, N), x)
            have = False
            if dirs[l] is not None:  # h dW^T + db for all k at once: [n, K+1] @ [K+1, k*N]
                torch.mm(a, dirs[l].view(k * N, -1).T, out=out.view(n, k * N))
                have = True
            if Rh is not None:  # R h W^T: the n*k rows share W
                _mm_into(out.view(n * k, N), Rh.view(n * k, K), W.T, have)
                have = True
            if l == Lout:
                Rlogits = out if have else None
                break
            if not have:  # no direction reaches this layer yet: Rh and Rhsum are None too, R h_{l+1} = 0
                T2.append(None)
                continue
            # one pass: t2 = R z act''(z); R h_{l+1} = R z act'(z) + [R h_l] + c_l R hsum
            T2.append(rop_epilogue.rop_epilogue_fwd(
                out, D1[l], D2[l], Rh if L["kind"] == "identity" else None,
                Rhsum if L["c"] else None, float(L["c"]),
                None if D2[l] is None else self._buf(f"t2_{l}", (n, k, N), x), backend=self._rop))
            if L["kind"] == "dense" and Rh is not None:
                _mm_into(out.view(n * k, N), Rh.view(n * k, K), L["q"].T, True)
            if L["p"] is not None and Rh is not None:
                buf = self._buf("rhsum", (n, k, N), x)
                _mm_into(buf.view(n * k, N), Rh.view(n * k, K), L["p"].T, Rhsum is not None)
                Rhsum = buf
            Rh = out
        # ---- R-backward
        Rgz = None if Rlogits is None else pr["hop"](Rlogits)
        Rgh_next, Racc = None, None
        for l in range(Lout, -1, -1):
            L = layers[l]
            W = L["w"]
            N, K = W.shape
            gz, Ra = GZ[l], RA[l]
            if res[l] is not None:  # R [dW | db] = R delta^T [h, 1] + delta^T [R h, 0]
                if Rgz is not None:
                    res[l].view(k * N, -1).addmm_(Rgz.view(n, k * N).T, A[l])
                if Ra is not None:
                    res[l][:, :, :K] += (gz.T @ Ra.view(n, k * K)).view(N, k, K).permute(1, 0, 2)
            if l == 0:
                break
            rgh = self._buf(f"rgh{l % 2}", (n, k, K), x)
            have = False
            if Rgz is not None:  # R delta W: the n*k rows share W
                torch.mm(Rgz.view(n * k, N), W, out=rgh.view(n * k, K))
                have = True
            if dirs[l] is not None:  # delta dW for all k: [n, N] @ [N, k*K]
                dWp = dirs[l][:, :, :K].permute(1, 0, 2).reshape(N, k * K)
                _mm_into(rgh.view(n, k * K), gz, dWp, have)
                have = True
            if L["kind"] == "identity" and Rgh_next is not None:
                rgh.add_(Rgh_next) if have else rgh.copy_(Rgh_next)
                have = True
            elif L["kind"] == "dense" and Rgh_next is not None:
                _mm_into(rgh.view(n * k, K), Rgh_next.view(n * k, N), L["q"], have)
                have = True
            if L["p"] is not None and Racc is not None:  # sum_{j>l} c_j R g_{j+1}, through P_l
                _mm_into(rgh.view(n * k, K), Racc.view(n * k, N), L["p"], have)
                have = True
            if L["c"] and Rgh_next is not None:  # layer l's own hyper input, for the layers below
                if Racc is None:
                    Racc = torch.mul(Rgh_next, L["c"], out=self._buf("racc", (n, k, N), x))
                else:
                    Racc.add_(Rgh_next, alpha=L["c"])
            Rgh = rgh if have else None
            # to layer l-1: R delta = R g act'(z) + g act''(z) R z
            d1, t2, gh = D1[l - 1], T2[l - 1], GH[l]
            Rgz = None
            if Rgh is not None or t2 is not None:  # one pass
                Rgz = rop_epilogue.rop_epilogue_bwd(Rgh, d1, gh, t2, self._buf("rgz", (n, k, K), x), backend=self._rop)
            Rgh_next = Rgh
        return pr["loss"]


def _mm_into(out: Tensor, a: Tensor, b: Tensor, accumulate: bool) -> None:
    """out = a @ b, or out += a @ b (one GEMM either way)."""
    if accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


def dirs_k(dirs: list) -> int:
    for d in dirs:
        if d is not None:
            return d.shape[0]
    raise ValueError("no parameters selected")
