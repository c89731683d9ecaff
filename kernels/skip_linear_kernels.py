# skip_linear in Triton: one fused kernel per layer forward, two fused kernels backward.
#
# Shapes: x [B, K], W [N, K], b [N], Q [N, K] (dense skip), grad_y / z / y [B, N]; any B, N, K >= 0
# (masked tiles), any strides. Kernel dims: M = B (rows), N = out features, K = in features.
#   forward  _skip_linear_fwd_kernel     grid (B/BM, N/BN[, SPLIT_K]): z = x W^T + b, y = act(z) + S(x); the
#            dense skip is a second accumulator fed by the same x tile in the same K loop (x Q^T); the identity
#            skip re-reads the [BM, BN] tile of x in the epilogue. Writes y and z (z is saved for backward).
#            Split-K (wide inputs, e.g. the 3072-wide CIFAR layer at B = 500, where the output tiles are too
#            few to fill the GPU): each of SPLIT_K programs per tile sums one K range into an fp32/fp64
#            workspace; _skip_linear_fwd_reduce_kernel adds the partials and runs the epilogue (no atomics).
#   backward _skip_linear_bwd_dx_kernel  grid (B/BM, K/BK): dx = gz W + S^T(g), gz = g * act'(z) formed per
#            tile from g and z and never written to memory; g Q (dense skip) joins the same N loop.
#            _skip_linear_bwd_dw_kernel  grid (N/BN * K/BK, SPLIT): dW = gz^T x and db = colsum(gz) from the
#            same gz tiles; the batch reduction may be split over SPLIT programs into an fp32/fp64
#            workspace that the launcher sums (deterministic, no atomics).
# Not fused: gz is recomputed by both backward kernels (z is re-read, no activation bitmask); the split
# reductions are a second pass; layers are separate launches (the whole net: kernels/skip_mlp.py).
# Precision: accumulation in fp32 (fp16/bf16/fp32 inputs) or fp64 (fp64 inputs). fp32 dots run on the
# tensor cores in TF32 on the GPU by default; SKIPKERN_TRITON_TF32=0 or precision="ieee" keeps IEEE fp32
# (kernels/precision.py). The interpreter is always IEEE.
# Configs (skip_linear_config.py): the interpreter uses one small config; on the GPU a shape/dtype heuristic,
# or the timed choice cached per problem shape by kernels/tuning.py (SKIPKERN_TRITON_AUTOTUNE=1 tunes).
"""Triton kernels of skip_linear (see the block comment above); the launchers are in kernels/skip_linear.py."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from skipkern.reference import ACTIVATION_CODES, SKIP_CODES

INT32_LIMIT = 2**31 - 1  # kernels index with int32 offsets
# ACTIVATION and SKIP arrive as the integer codes of skipkern.reference's table; named here for the kernels.
_RELU = tl.constexpr(ACTIVATION_CODES["relu"])
_IDENTITY = tl.constexpr(ACTIVATION_CODES["identity"])
_TANH = tl.constexpr(ACTIVATION_CODES["tanh"])
_GELU = tl.constexpr(ACTIVATION_CODES["gelu"])
_SKIP_IDENTITY = tl.constexpr(SKIP_CODES["identity"])
_SKIP_DENSE = tl.constexpr(SKIP_CODES["dense"])
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------ helpers
@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    """act(z) in the accumulator dtype. relu keeps NaN (z < 0 is false for NaN), as torch.relu does."""
    if ACTIVATION == _RELU:
        a = tl.where(z < 0.0, 0.0, z)
    elif ACTIVATION == _TANH:
        # no tanh in tl core and libdevice does not run in the interpreter: the overflow-safe exp form
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        a = tl.where(z < 0.0, -t, t)
    elif ACTIVATION == _GELU:
        a = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    else:
        a = z
    return a


@triton.jit
def _activation_grad(z, ACTIVATION: tl.constexpr):
    """act'(z); relu'(0) = 0 as in torch. Multiplied into g (not tl.where) so NaN in g propagates like
    the reference's g * (z > 0)."""
    if ACTIVATION == _RELU:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACTIVATION == _TANH:
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        d = 1.0 - t * t
    elif ACTIVATION == _GELU:
        d = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d


# ------------------------------------------------------------------------------------------ kernels
@triton.jit
def _skip_linear_fwd_kernel(
    x_ptr, w_ptr, b_ptr, q_ptr, y_ptr, z_ptr, ws_ptr,
    M, N, K, K_SPLIT,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_bn, stride_qn, stride_qk,
    stride_ym, stride_yn, stride_zm, stride_zn, stride_ws, stride_wsp,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)  # this program's K range [k_lo, k_hi) (all of K without split-K)
    k_lo = pid_s * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    acc_dtype = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dtype)
    acc_skip = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dtype)  # fed only by the dense skip
    for k0 in range(k_lo, k_hi, BLOCK_SIZE_K):
        kk = k0 + offs_k
        mask_k = kk < k_hi
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        # W^T tile [BK, BN] read straight from W [N, K] through its strides
        wt = tl.load(w_ptr + kk[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x, wt, acc, input_precision=DOT_PRECISION,
                     out_dtype=acc_dtype)
        if SKIP == _SKIP_DENSE:
            qt = tl.load(q_ptr + kk[:, None] * stride_qk + offs_n[None, :] * stride_qn,
                         mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc_skip = tl.dot(x, qt, acc_skip, input_precision=DOT_PRECISION,
                              out_dtype=acc_dtype)
    if SPLIT_K:  # partial sums of this K range; _skip_linear_fwd_reduce_kernel finishes
        ws_offs = pid_s * stride_ws + offs_m[:, None] * N + offs_n[None, :]
        mask_mn = mask_m[:, None] & mask_n[None, :]
        tl.store(ws_ptr + ws_offs, acc, mask=mask_mn)
        if SKIP == _SKIP_DENSE:
            tl.store(ws_ptr + stride_wsp + ws_offs, acc_skip, mask=mask_mn)
    else:
        _fwd_epilogue(acc, acc_skip, x_ptr, b_ptr, y_ptr, z_ptr, offs_m, offs_n, mask_m, mask_n, stride_xm,
                      stride_xk, stride_bn, stride_ym, stride_yn, stride_zm, stride_zn, ACTIVATION, HAS_BIAS, SKIP)


@triton.jit
def _fwd_epilogue(acc, acc_skip, x_ptr, b_ptr, y_ptr, z_ptr, offs_m, offs_n, mask_m, mask_n, stride_xm, stride_xk,
                  stride_bn, stride_ym, stride_yn, stride_zm, stride_zn,
                  ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SKIP: tl.constexpr):
    """z = acc + b, y = act(z) + S(x) (acc_skip = x Q^T for the dense skip); stores y and z."""
    acc_dtype = acc.dtype
    mask_mn = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n * stride_bn, mask=mask_n, other=0.0)
        acc = acc + b.to(acc_dtype)[None, :]
    y = _activation(acc, ACTIVATION)
    if SKIP == _SKIP_IDENTITY:  # N == K: S(x) is the [BM, BN] tile of x itself
        xs = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xk, mask=mask_mn, other=0.0)
        y = y + xs.to(acc_dtype)
    elif SKIP == _SKIP_DENSE:
        y = y + acc_skip
    tl.store(z_ptr + offs_m[:, None] * stride_zm + offs_n[None, :] * stride_zn,
             acc.to(z_ptr.dtype.element_ty), mask=mask_mn)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=mask_mn)


@triton.jit
def _skip_linear_fwd_reduce_kernel(
    ws_ptr, x_ptr, b_ptr, y_ptr, z_ptr,
    M, N, SPLIT,
    stride_ws, stride_wsp, stride_xm, stride_xk, stride_bn, stride_ym, stride_yn, stride_zm, stride_zn,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SKIP: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
):
    """Split-K forward, second pass: the SPLIT partial sums of a [BM, BN] tile, then the epilogue."""
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask_mn = mask_m[:, None] & mask_n[None, :]
    offs = offs_m[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=ws_ptr.dtype.element_ty)
    acc_skip = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=ws_ptr.dtype.element_ty)
    for s in range(0, SPLIT):
        acc += tl.load(ws_ptr + s * stride_ws + offs, mask=mask_mn, other=0.0)
        if SKIP == _SKIP_DENSE:
            acc_skip += tl.load(ws_ptr + stride_wsp + s * stride_ws + offs, mask=mask_mn, other=0.0)
    _fwd_epilogue(acc, acc_skip, x_ptr, b_ptr, y_ptr, z_ptr, offs_m, offs_n, mask_m, mask_n, stride_xm, stride_xk,
                  stride_bn, stride_ym, stride_yn, stride_zm, stride_zn, ACTIVATION, HAS_BIAS, SKIP)


@triton.jit
def _skip_linear_bwd_dx_kernel(
    g_ptr, z_ptr, w_ptr, q_ptr, dx_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_zm, stride_zn, stride_wn, stride_wk, stride_qn, stride_qk,
    stride_dxm, stride_dxk,
    ACTIVATION: tl.constexpr, SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    acc_dtype = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_n = tl.arange(0, BLOCK_SIZE_N)
    mask_m = offs_m < M
    mask_k = offs_k < K
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=acc_dtype)
    for n0 in range(0, N, BLOCK_SIZE_N):
        nn = n0 + offs_n
        mask_n = nn < N
        mask_mn = mask_m[:, None] & mask_n[None, :]
        g = tl.load(g_ptr + offs_m[:, None] * stride_gm + nn[None, :] * stride_gn, mask=mask_mn, other=0.0)
        w = tl.load(w_ptr + nn[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if ACTIVATION == _IDENTITY:
            gz = g
        else:
            z = tl.load(z_ptr + offs_m[:, None] * stride_zm + nn[None, :] * stride_zn, mask=mask_mn, other=0.0)
            gz = (g.to(acc_dtype) * _activation_grad(z.to(acc_dtype), ACTIVATION)).to(w.dtype)
        acc = tl.dot(gz, w, acc, input_precision=DOT_PRECISION,
                     out_dtype=acc_dtype)
        if SKIP == _SKIP_DENSE:
            qv = tl.load(q_ptr + nn[:, None] * stride_qn + offs_k[None, :] * stride_qk,
                         mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc = tl.dot(g, qv, acc, input_precision=DOT_PRECISION,
                         out_dtype=acc_dtype)
    mask_mk = mask_m[:, None] & mask_k[None, :]
    if SKIP == _SKIP_IDENTITY:  # N == K: S^T(g) is the [BM, BK] tile of g
        gs = tl.load(g_ptr + offs_m[:, None] * stride_gm + offs_k[None, :] * stride_gn, mask=mask_mk, other=0.0)
        acc = acc + gs.to(acc_dtype)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
             acc.to(dx_ptr.dtype.element_ty), mask=mask_mk)


@triton.jit
def _skip_linear_bwd_dw_kernel(
    g_ptr, z_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K, SPLIT,
    stride_gm, stride_gn, stride_zm, stride_zn, stride_xm, stride_xk,
    stride_dws, stride_dwn, stride_dwk, stride_dbs,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_pid_k = tl.maximum(tl.cdiv(K, BLOCK_SIZE_K), 1)  # K == 0 still has one (fully masked) column for db
    pid_n = pid // num_pid_k
    pid_k = pid % num_pid_k
    acc_dtype = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_m = tl.arange(0, BLOCK_SIZE_M)
    mask_n = offs_n < N
    mask_k = offs_k < K
    # this program's slice of the batch: whole blocks, so the split does not depend on BM elsewhere
    rows = tl.cdiv(tl.cdiv(M, SPLIT), BLOCK_SIZE_M) * BLOCK_SIZE_M
    m_start = pid_s * rows
    acc = tl.zeros((BLOCK_SIZE_N, BLOCK_SIZE_K), dtype=acc_dtype)
    db = tl.zeros((BLOCK_SIZE_N,), dtype=acc_dtype)
    for m0 in range(0, rows, BLOCK_SIZE_M):
        mm = m_start + m0 + offs_m
        mask_m = mm < M
        # gz^T tile [BN, BM] loaded transposed through the strides, so no tl.trans is needed
        mask_nm = mask_n[:, None] & mask_m[None, :]
        g = tl.load(g_ptr + offs_n[:, None] * stride_gn + mm[None, :] * stride_gm, mask=mask_nm, other=0.0)
        if ACTIVATION == _IDENTITY:
            gz = g.to(acc_dtype)
        else:
            z = tl.load(z_ptr + offs_n[:, None] * stride_zn + mm[None, :] * stride_zm, mask=mask_nm, other=0.0)
            gz = g.to(acc_dtype) * _activation_grad(z.to(acc_dtype), ACTIVATION)
        x = tl.load(x_ptr + mm[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(gz.to(x.dtype), x, acc, input_precision=DOT_PRECISION,
                     out_dtype=acc_dtype)
        if HAS_BIAS:
            db += tl.sum(gz, axis=1)
    tl.store(dw_ptr + pid_s * stride_dws + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
             acc.to(dw_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_k[None, :])
    if HAS_BIAS:
        if pid_k == 0:  # every K tile computes the same db; the first one writes it
            tl.store(db_ptr + pid_s * stride_dbs + offs_n, db.to(db_ptr.dtype.element_ty), mask=mask_n)
