# rop_layer in Triton: one R-op layer of the fused Hessian-vector product, GEMMs and epilogue in one kernel.
#
# Shapes (contiguous, one dtype; n rows, k directions): A [n, K1] (the layer input h_l, with a ones column
# when the layer has a bias, K1 = K or K + 1); Dir [k, N, K1] (the directions [dW | db]); W [N, K];
# R-tensors [n, k, width]; D1 [n, width] (act'(z), broadcast over k).
#   forward  _rop_layer_fwd_kernel  grid (n/BM, k, N/BN):
#            out[i, d] = A[i] Dir[d]^T + Rh[i, d] W^T, then (EPILOGUE) out = out * D1[i] (+ Rh[i, d], identity skip);
#            HAS_INIT adds what out holds (a wide input layer's A Dir^T, one cuBLAS GEMM that reads A once)
#            i.e. R h_{l+1} = act'(z_l) R z_l + R h_l in one pass (the unfused path: two GEMMs and an epilogue pass)
#   backward _rop_layer_bwd_kernel  grid (n/BM, k, K/BK):
#            rgh[i, d] = Rgz[i, d] W + gz[i] Dir[d][:, :K] (+ Rgh_next[i, d], identity skip), written when asked
#            (the next layer's identity skip reads it), and Rgz_new[i, d] = rgh[i, d] * D1[i]
# Covers the layers of nets without dense or hyper-residual skips and with act'' = 0 (relu, identity); the
# caller (skipkern/hessian/hvp_gpu.py) takes the unfused path for the rest. PRODUCTS: "ieee", "tf32" (fp32
# tensor cores) or "bf16" (operand tiles rounded to bf16, fp32 accumulation; GPU only).
"""Triton kernels and launchers for rop_layer (see the block comment above)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

INT32_LIMIT = 2**31 - 1
PRODUCTS = ("ieee", "tf32", "bf16")


@triton.jit
def _dot(a, b, acc, PRODUCTS: tl.constexpr):
    if PRODUCTS == "bf16":
        acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRODUCTS, out_dtype=acc.dtype)  # Triton 3.6 infers fp32
    return acc


@triton.jit
def _rop_layer_fwd_kernel(a_ptr, dir_ptr, rh_ptr, w_ptr, d1_ptr, out_ptr, n, k, N, K, K1,
                          HAS_DIR: tl.constexpr, HAS_RH: tl.constexpr, EPILOGUE: tl.constexpr,
                          SKIP_IDENTITY: tl.constexpr, HAS_INIT: tl.constexpr, PRODUCTS: tl.constexpr,
                          BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):
    d = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = tl.program_id(2) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    mask_m = offs_m < n
    mask_n = offs_n < N
    acc_dt = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    mask_mn = mask_m[:, None] & mask_n[None, :]
    out_offs = offs_m[:, None] * (k * N) + d * N + offs_n[None, :]
    if HAS_INIT:  # out already holds a term (A Dir^T of a wide input layer, one cuBLAS GEMM)
        acc = tl.load(out_ptr + out_offs, mask=mask_mn, other=0.0).to(acc_dt)
    else:
        acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt)
    if HAS_DIR:  # A[i] Dir[d]^T: the direction's [dW | db] against the layer input [h, 1]
        for k0 in range(0, K1, BLOCK_SIZE_K):
            kk = k0 + offs_k
            mask_k = kk < K1
            a = tl.load(a_ptr + offs_m[:, None] * K1 + kk[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            dt = tl.load(dir_ptr + d * N * K1 + offs_n[None, :] * K1 + kk[:, None],
                         mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = _dot(a, dt, acc, PRODUCTS)
    if HAS_RH:  # R h[i, d] W^T
        for k0 in range(0, K, BLOCK_SIZE_K):
            kk = k0 + offs_k
            mask_k = kk < K
            r = tl.load(rh_ptr + offs_m[:, None] * (k * K) + d * K + kk[None, :], mask=mask_m[:, None] & mask_k[None, :],
                        other=0.0)
            wt = tl.load(w_ptr + offs_n[None, :] * K + kk[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = _dot(r, wt, acc, PRODUCTS)
    if EPILOGUE:
        acc = acc * tl.load(d1_ptr + offs_m[:, None] * N + offs_n[None, :], mask=mask_mn, other=0.0).to(acc_dt)
        if SKIP_IDENTITY:  # N == K
            acc += tl.load(rh_ptr + offs_m[:, None] * (k * K) + d * K + offs_n[None, :], mask=mask_mn,
                           other=0.0).to(acc_dt)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask_mn)


@triton.jit
def _rop_layer_bwd_kernel(rgz_ptr, w_ptr, gz_ptr, dir_ptr, rghn_ptr, d1_ptr, rgh_ptr, out_ptr, n, k, N, K, K1,
                          HAS_RGZ: tl.constexpr, HAS_DIR: tl.constexpr, SKIP_IDENTITY: tl.constexpr,
                          STORE_RGH: tl.constexpr, PRODUCTS: tl.constexpr,
                          BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):
    d = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_k = tl.program_id(2) * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_n = tl.arange(0, BLOCK_SIZE_N)
    mask_m = offs_m < n
    mask_k = offs_k < K
    acc_dt = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=acc_dt)
    for n0 in range(0, N, BLOCK_SIZE_N):
        nn = n0 + offs_n
        mask_n = nn < N
        mask_mn = mask_m[:, None] & mask_n[None, :]
        mask_nk = mask_n[:, None] & mask_k[None, :]
        if HAS_RGZ:  # R delta[i, d] W
            r = tl.load(rgz_ptr + offs_m[:, None] * (k * N) + d * N + nn[None, :], mask=mask_mn, other=0.0)
            w = tl.load(w_ptr + nn[:, None] * K + offs_k[None, :], mask=mask_nk, other=0.0)
            acc = _dot(r, w, acc, PRODUCTS)
        if HAS_DIR:  # delta[i] dW[d]
            g = tl.load(gz_ptr + offs_m[:, None] * N + nn[None, :], mask=mask_mn, other=0.0)
            dw = tl.load(dir_ptr + d * N * K1 + nn[:, None] * K1 + offs_k[None, :], mask=mask_nk, other=0.0)
            acc = _dot(g, dw, acc, PRODUCTS)
    mask_mk = mask_m[:, None] & mask_k[None, :]
    if SKIP_IDENTITY:  # N == K: R g_{l+1}[i, d]
        acc += tl.load(rghn_ptr + offs_m[:, None] * (k * K) + d * K + offs_k[None, :], mask=mask_mk,
                       other=0.0).to(acc_dt)
    if STORE_RGH:
        tl.store(rgh_ptr + offs_m[:, None] * (k * K) + d * K + offs_k[None, :], acc.to(rgh_ptr.dtype.element_ty),
                 mask=mask_mk)
    d1 = tl.load(d1_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_mk, other=0.0).to(acc_dt)
    tl.store(out_ptr + offs_m[:, None] * (k * K) + d * K + offs_k[None, :], (acc * d1).to(out_ptr.dtype.element_ty),
             mask=mask_mk)


INTERPRET = type(_rop_layer_fwd_kernel).__name__ == "InterpretedFunction"


def _blocks(dtype: torch.dtype) -> tuple:
    if INTERPRET:
        return 64, 64, 64
    return (32, 32, 32) if dtype == torch.float64 else (64, 64, 32)


def _check(named: dict, products: str) -> torch.dtype:
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}")
    ts = [t for t in named.values() if t is not None]
    dtype, dev = ts[0].dtype, ts[0].device
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype != dtype or t.device != dev or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {dtype} on {dev}, got {t.dtype} on {t.device} "
                             f"(contiguous: {t.is_contiguous()})")
        if t.numel() > INT32_LIMIT:
            raise ValueError(f"{name} has {t.numel()} elements; the kernels index with int32 (use smaller chunks)")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rop_layer supports float32 and float64, got {dtype}")
    if products == "bf16" and (INTERPRET or dtype != torch.float32):
        raise ValueError("products='bf16' needs float32 tensors on the GPU (bf16 dots are wrong in the interpreter)")
    return dtype


def rop_layer_fwd(a: torch.Tensor, dirs: Optional[torch.Tensor], rh: Optional[torch.Tensor], w: torch.Tensor,
                  d1: Optional[torch.Tensor], identity: bool, out: torch.Tensor, products: str = "ieee",
                  init: bool = False) -> torch.Tensor:
    """out [n, k, N] = [out +] A Dir^T + Rh W^T, then * D1 (+ Rh when identity) if d1 is given.

    Args:
        a [n, K1]; dirs [k, N, K1] or None; rh [n, k, K] or None; w [N, K]; d1 [n, N] or None (no epilogue:
            the output layer); identity: add Rh (needs N == K and rh); out [n, k, N] (written);
        products: "ieee", "tf32" or "bf16". init: add to what ``out`` holds (a wide layer's A Dir^T from cuBLAS:
            this kernel re-reads A once per direction, which only pays while A stays in L2).
    """
    _check(dict(a=a, dirs=dirs, rh=rh, w=w, d1=d1, out=out), products)
    n, k, N = out.shape
    K, K1 = w.shape[1], a.shape[1]
    if identity and (rh is None or N != K):
        raise ValueError(f"identity skip needs rh and N == K, got rh given: {rh is not None}, N={N}, K={K}")
    bm, bn, bk = _blocks(w.dtype)
    grid = (triton.cdiv(n, bm), k, triton.cdiv(N, bn))
    _rop_layer_fwd_kernel[grid](a, w if dirs is None else dirs, w if rh is None else rh, w, w if d1 is None else d1, out,
                                n, k, N, K, K1, HAS_DIR=dirs is not None, HAS_RH=rh is not None,
                                EPILOGUE=d1 is not None, SKIP_IDENTITY=identity, HAS_INIT=init, PRODUCTS=products,
                                BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk)
    return out


def rop_layer_bwd(rgz: Optional[torch.Tensor], w: torch.Tensor, gz: torch.Tensor, dirs: Optional[torch.Tensor],
                  rgh_next: Optional[torch.Tensor], d1: torch.Tensor, out: torch.Tensor, rgh: Optional[torch.Tensor] = None,
                  products: str = "ieee") -> torch.Tensor:
    """out [n, k, K] = (Rgz W + gz Dir[:, :, :K] (+ Rgh_next)) * D1; that sum also into ``rgh`` when given.

    Args:
        rgz [n, k, N] or None; w [N, K]; gz [n, N]; dirs [k, N, K1] or None; rgh_next [n, k, K] or None (the
            identity skip's R g_{l+1}); d1 [n, K]; out [n, k, K]; rgh [n, k, K] or None.
    """
    _check(dict(rgz=rgz, w=w, gz=gz, dirs=dirs, rgh_next=rgh_next, d1=d1, out=out, rgh=rgh), products)
    n, k, K = out.shape
    N, K1 = w.shape[0], (dirs.shape[2] if dirs is not None else w.shape[1])
    bm, bn, bk = _blocks(w.dtype)
    grid = (triton.cdiv(n, bm), k, triton.cdiv(K, bk))
    _rop_layer_bwd_kernel[grid](w if rgz is None else rgz, w, gz, w if dirs is None else dirs,
                                w if rgh_next is None else rgh_next, d1, w if rgh is None else rgh, out,
                                n, k, N, K, K1, HAS_RGZ=rgz is not None, HAS_DIR=dirs is not None,
                                SKIP_IDENTITY=rgh_next is not None, STORE_RGH=rgh is not None, PRODUCTS=products,
                                BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk)
    return out
