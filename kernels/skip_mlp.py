# skip_mlp in Triton: the whole SkipMLP (input layer, depth-1 square skip layers, output layer) in one
# forward launch and one backward launch per block of rows, plus a weight-gradient kernel.
#
# Shapes (contiguous, one dtype): x [B, K0]; w_in [W, K0], b_in [W]; w [L-1, W, W], b [L-1, W] (hidden
# layers j = 1 .. L-1, L = depth); q [L-1, W, W] (dense skips); p [L-2, W, W] and c [L] (hyper-residual:
# h_{j+1} += c_j sum_{k<j} P_k h_k, c_j = 0 for j < 2); w_out [C, W], b_out [C]. W <= 256 (WIDTH_P, the
# power of two >= W, is a constexpr).
#   forward  _skip_mlp_fwd_kernel  grid (B/BM,): each program carries its BM rows through all L+1 layers.
#            h [BM, WIDTH_P] is the A operand of every dot; each layer's output is produced in column chunks
#            of BLOCK_SIZE_N (W^T chunk [WIDTH_P, BN]) and written once, z_j and h_{j+1} into Z [L, B, W] and
#            H [L, B, W] (the backward reads them). With one chunk (SINGLE: BN >= WIDTH_P, the fast path for W <= 128
#            in fp32) h stays in registers from layer to layer; with several, the next layer's h is read back
#            from H after a block barrier (L1/L2-resident: the program wrote it a moment ago). The hyper-residual
#            running sum lives in registers (one chunk) or in a [B, W] scratch (several).
#   backward _skip_mlp_bwd_kernel  grid (B/BM,): top-down, g = d loss / d h in registers; per layer gz = g act'(z)
#            is written once to GZ [L, B, W]; dh = gz W + S^T g + P_j^T (sum_{i>j} c_i g_{i+1}) in chunks (ping-pong
#            [2, B, W] scratch when chunked); dx = gz_0 W_in only when x needs a gradient (NEEDS_DX).
#            _skip_mlp_dw_kernel   grid (layers, N/BN * K/BK): dW_l = GZ_l^T A_l and db_l = colsum(GZ_l), each
#            program reducing over the whole batch (a grouped GEMM: no partial buffers, no atomics, no contention).
#            Three launches: the input layer (A = x), the L-1 hidden layers together, the output layer.
# Precision: fp32 accumulation (fp64 for fp64); fp32 dots are TF32 on the GPU unless opted out (precision.py).
# Not fused: the loss; dW is a second pass over GZ and H (one read each); relu masks are recomputed from Z.
"""Triton kernels and launchers for the whole-MLP fused skip_mlp (see the block comment above)."""
from __future__ import annotations

import logging
from typing import Optional

import torch
import triton
import triton.language as tl

from skipkern.kernels.precision import dot_precision
from skipkern.kernels.skip_mlp_config import launch, pow2, problem_key
from skipkern.kernels.skip_linear_kernels import _activation, _activation_grad
from skipkern.reference import ACTIVATIONS, SKIP_CODES, SKIPS

log = logging.getLogger("skipkern")

# SKIP and ACTIVATION arrive as the integer codes of skipkern.reference's table (as in skip_linear).
_SKIP_IDENTITY = tl.constexpr(SKIP_CODES["identity"])
_SKIP_DENSE = tl.constexpr(SKIP_CODES["dense"])
MAX_WIDTH = 256
INT32_LIMIT = 2**31 - 1


@triton.jit
def _skip_mlp_fwd_kernel(
    x_ptr, w_in_ptr, b_in_ptr, w_ptr, b_ptr, q_ptr, p_ptr, c_ptr, w_out_ptr, b_out_ptr,
    h_ptr, z_ptr, hs_ptr, out_ptr,
    M, K0, WIDTH, C, L,
    ACTIVATION: tl.constexpr, SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, HYPER: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WIDTH_P: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    dt = x_ptr.dtype.element_ty
    acc_dt = tl.float64 if dt == tl.float64 else tl.float32
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    mask_m = offs_m < M
    offs_w = tl.arange(0, WIDTH_P)
    mask_w = offs_w < WIDTH
    offs_bn = tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    mw = M * WIDTH
    ww = WIDTH * WIDTH
    rows = offs_m[:, None] * WIDTH
    mask_full = mask_m[:, None] & mask_w[None, :]
    # ---- input layer: z_0 = x W_in^T + b_in, h_1 = act(z_0) (no skip)
    keep = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=dt)
    for n0 in range(0, WIDTH, BLOCK_SIZE_N):
        offs_n = n0 + offs_bn
        mask_n = offs_n < WIDTH
        acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt)
        for k0 in range(0, K0, BLOCK_SIZE_K):
            kk = k0 + offs_k
            mask_k = kk < K0
            xt = tl.load(x_ptr + offs_m[:, None] * K0 + kk[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            wt = tl.load(w_in_ptr + offs_n[None, :] * K0 + kk[:, None], mask=mask_k[:, None] & mask_n[None, :],
                         other=0.0)
            acc = tl.dot(xt, wt, acc, input_precision=DOT_PRECISION,
                         out_dtype=acc_dt)
        if HAS_BIAS:
            acc += tl.load(b_in_ptr + offs_n, mask=mask_n, other=0.0).to(acc_dt)[None, :]
        hn = _activation(acc, ACTIVATION)
        mask_mn = mask_m[:, None] & mask_n[None, :]
        tl.store(z_ptr + rows + offs_n[None, :], acc.to(dt), mask=mask_mn)
        tl.store(h_ptr + rows + offs_n[None, :], hn.to(dt), mask=mask_mn)
        keep = hn.to(dt)
    if SINGLE:
        h = keep
    else:
        tl.debug_barrier()
        h = tl.load(h_ptr + rows + offs_w[None, :], mask=mask_full, other=0.0)
    # ---- hidden layers j = 1 .. L-1: h_{j+1} = act(h_j W_j^T + b_j) + S_j h_j [+ c_j hsum_j]
    hsum = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt)  # sum_{k<j} P_k h_k (one-chunk path)
    for j in range(1, L):
        wl = w_ptr + (j - 1) * ww
        hin = h_ptr + (j - 1) * mw + rows
        if HYPER:
            c = tl.load(c_ptr + j).to(acc_dt)
        for n0 in range(0, WIDTH, BLOCK_SIZE_N):
            offs_n = n0 + offs_bn
            mask_n = offs_n < WIDTH
            mask_wn = mask_w[:, None] & mask_n[None, :]
            mask_mn = mask_m[:, None] & mask_n[None, :]
            wt = tl.load(wl + offs_n[None, :] * WIDTH + offs_w[:, None], mask=mask_wn, other=0.0)
            acc = tl.dot(h, wt, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt), input_precision=DOT_PRECISION,
                         out_dtype=acc_dt)
            if HAS_BIAS:
                acc += tl.load(b_ptr + (j - 1) * WIDTH + offs_n, mask=mask_n, other=0.0).to(acc_dt)[None, :]
            hn = _activation(acc, ACTIVATION)
            if SKIP == _SKIP_IDENTITY:
                if SINGLE:
                    hn += h.to(acc_dt)
                else:
                    hn += tl.load(hin + offs_n[None, :], mask=mask_mn, other=0.0).to(acc_dt)
            elif SKIP == _SKIP_DENSE:
                qt = tl.load(q_ptr + (j - 1) * ww + offs_n[None, :] * WIDTH + offs_w[:, None], mask=mask_wn,
                             other=0.0)
                hn = tl.dot(h, qt, hn, input_precision=DOT_PRECISION,
                            out_dtype=acc_dt)
            if HYPER:
                if SINGLE:
                    hs = hsum
                else:
                    hs = tl.load(hs_ptr + rows + offs_n[None, :], mask=mask_mn, other=0.0).to(acc_dt)
                hn += c * hs
                if j <= L - 2:  # h_j feeds the hyper terms of the layers above through P_j
                    pt = tl.load(p_ptr + (j - 1) * ww + offs_n[None, :] * WIDTH + offs_w[:, None], mask=mask_wn,
                                 other=0.0)
                    hs = tl.dot(h, pt, hs, input_precision=DOT_PRECISION,
                                out_dtype=acc_dt)
                    if SINGLE:
                        hsum = hs
                    else:
                        tl.store(hs_ptr + rows + offs_n[None, :], hs.to(dt), mask=mask_mn)
            tl.store(z_ptr + j * mw + rows + offs_n[None, :], acc.to(dt), mask=mask_mn)
            tl.store(h_ptr + j * mw + rows + offs_n[None, :], hn.to(dt), mask=mask_mn)
            keep = hn.to(dt)
        if SINGLE:
            h = keep
        else:
            tl.debug_barrier()
            h = tl.load(h_ptr + j * mw + rows + offs_w[None, :], mask=mask_full, other=0.0)
    # ---- output layer: logits = h_L W_out^T + b_out (linear)
    for c0 in range(0, C, BLOCK_SIZE_N):
        offs_c = c0 + offs_bn
        mask_c = offs_c < C
        wt = tl.load(w_out_ptr + offs_c[None, :] * WIDTH + offs_w[:, None], mask=mask_w[:, None] & mask_c[None, :],
                     other=0.0)
        acc = tl.dot(h, wt, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt), input_precision=DOT_PRECISION,
                     out_dtype=acc_dt)
        if HAS_BIAS:
            acc += tl.load(b_out_ptr + offs_c, mask=mask_c, other=0.0).to(acc_dt)[None, :]
        tl.store(out_ptr + offs_m[:, None] * C + offs_c[None, :], acc.to(dt), mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def _skip_mlp_bwd_kernel(
    g_ptr, w_in_ptr, w_ptr, q_ptr, p_ptr, c_ptr, w_out_ptr, z_ptr, gz_ptr, gs_ptr, dx_ptr,
    M, K0, WIDTH, C, L,
    ACTIVATION: tl.constexpr, SKIP: tl.constexpr, HYPER: tl.constexpr, NEEDS_DX: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WIDTH_P: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    dt = w_ptr.dtype.element_ty
    acc_dt = tl.float64 if dt == tl.float64 else tl.float32
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    mask_m = offs_m < M
    offs_w = tl.arange(0, WIDTH_P)
    mask_w = offs_w < WIDTH
    offs_bn = tl.arange(0, BLOCK_SIZE_N)
    mw = M * WIDTH
    ww = WIDTH * WIDTH
    rows = offs_m[:, None] * WIDTH
    mask_full = mask_m[:, None] & mask_w[None, :]
    # ---- output layer: g_L = d loss / d h_L = g_logits W_out
    acc = tl.zeros((BLOCK_SIZE_M, WIDTH_P), dtype=acc_dt)
    for c0 in range(0, C, BLOCK_SIZE_N):
        offs_c = c0 + offs_bn
        mask_c = offs_c < C
        gc = tl.load(g_ptr + offs_m[:, None] * C + offs_c[None, :], mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        wo = tl.load(w_out_ptr + offs_c[:, None] * WIDTH + offs_w[None, :], mask=mask_c[:, None] & mask_w[None, :],
                     other=0.0)
        acc = tl.dot(gc, wo, acc, input_precision=DOT_PRECISION,
                     out_dtype=acc_dt)
    g = acc.to(dt)
    if not SINGLE:  # chunks of g are read back for the identity skip
        tl.store(gs_ptr + rows + offs_w[None, :], g, mask=mask_full)
        tl.debug_barrier()
    # ---- hidden layers, top-down: gz_j = g act'(z_j); g_j = gz_j W_j + S_j^T g + P_j^T r_j
    r = tl.zeros((BLOCK_SIZE_M, WIDTH_P), dtype=acc_dt)  # r_j = sum_{i>j} c_i g_{i+1} (hyper-residual)
    for t in range(0, L - 1):
        j = L - 1 - t
        src = gs_ptr + (t % 2) * mw + rows
        dst = gs_ptr + ((t + 1) % 2) * mw + rows
        z = tl.load(z_ptr + j * mw + rows + offs_w[None, :], mask=mask_full, other=0.0).to(acc_dt)
        gz = (g.to(acc_dt) * _activation_grad(z, ACTIVATION)).to(dt)
        tl.store(gz_ptr + j * mw + rows + offs_w[None, :], gz, mask=mask_full)
        keep = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=dt)
        for k0 in range(0, WIDTH, BLOCK_SIZE_N):
            offs_n = k0 + offs_bn
            mask_n = offs_n < WIDTH
            mask_wn = mask_w[:, None] & mask_n[None, :]
            mask_mn = mask_m[:, None] & mask_n[None, :]
            wk = tl.load(w_ptr + (j - 1) * ww + offs_w[:, None] * WIDTH + offs_n[None, :], mask=mask_wn, other=0.0)
            dh = tl.dot(gz, wk, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dt), input_precision=DOT_PRECISION,
                        out_dtype=acc_dt)
            if SKIP == _SKIP_IDENTITY:
                if SINGLE:
                    dh += g.to(acc_dt)
                else:
                    dh += tl.load(src + offs_n[None, :], mask=mask_mn, other=0.0).to(acc_dt)
            elif SKIP == _SKIP_DENSE:
                qk = tl.load(q_ptr + (j - 1) * ww + offs_w[:, None] * WIDTH + offs_n[None, :], mask=mask_wn, other=0.0)
                dh = tl.dot(g, qk, dh, input_precision=DOT_PRECISION,
                            out_dtype=acc_dt)
            if HYPER:
                if j <= L - 2:
                    pk = tl.load(p_ptr + (j - 1) * ww + offs_w[:, None] * WIDTH + offs_n[None, :], mask=mask_wn,
                                 other=0.0)
                    dh = tl.dot(r.to(dt), pk, dh, input_precision=DOT_PRECISION,
                                out_dtype=acc_dt)
            if not SINGLE:
                tl.store(dst + offs_n[None, :], dh.to(dt), mask=mask_mn)
            keep = dh.to(dt)
        if HYPER:
            r += tl.load(c_ptr + j).to(acc_dt) * g.to(acc_dt)
        if SINGLE:
            g = keep
        else:
            tl.debug_barrier()
            g = tl.load(dst + offs_w[None, :], mask=mask_full, other=0.0)
    # ---- input layer: gz_0 = g act'(z_0); dx = gz_0 W_in
    z = tl.load(z_ptr + rows + offs_w[None, :], mask=mask_full, other=0.0).to(acc_dt)
    gz = (g.to(acc_dt) * _activation_grad(z, ACTIVATION)).to(dt)
    tl.store(gz_ptr + rows + offs_w[None, :], gz, mask=mask_full)
    if NEEDS_DX:
        offs_k = tl.arange(0, BLOCK_SIZE_K)
        for k0 in range(0, K0, BLOCK_SIZE_K):
            kk = k0 + offs_k
            mask_k = kk < K0
            wk = tl.load(w_in_ptr + offs_w[:, None] * K0 + kk[None, :], mask=mask_w[:, None] & mask_k[None, :],
                         other=0.0)
            dx = tl.dot(gz, wk, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=acc_dt), input_precision=DOT_PRECISION,
                        out_dtype=acc_dt)
            tl.store(dx_ptr + offs_m[:, None] * K0 + kk[None, :], dx.to(dt), mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _skip_mlp_dw_kernel(
    gz_ptr, a_ptr, dw_ptr, db_ptr,
    M, N, K, stride_gl, stride_al, stride_dwl, stride_dbl,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    layer = tl.program_id(0)
    pid = tl.program_id(1)
    num_pid_k = tl.cdiv(K, BLOCK_SIZE_K)
    pid_n = pid // num_pid_k
    pid_k = pid % num_pid_k
    dt = a_ptr.dtype.element_ty
    acc_dt = tl.float64 if dt == tl.float64 else tl.float32
    gz_ptr += layer * stride_gl
    a_ptr += layer * stride_al
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_m = tl.arange(0, BLOCK_SIZE_M)
    mask_n = offs_n < N
    mask_k = offs_k < K
    acc = tl.zeros((BLOCK_SIZE_N, BLOCK_SIZE_K), dtype=acc_dt)
    db = tl.zeros((BLOCK_SIZE_N,), dtype=acc_dt)
    for m0 in range(0, M, BLOCK_SIZE_M):
        mm = m0 + offs_m
        mask_mm = mm < M
        gzt = tl.load(gz_ptr + mm[None, :] * N + offs_n[:, None], mask=mask_n[:, None] & mask_mm[None, :], other=0.0)
        a = tl.load(a_ptr + mm[:, None] * K + offs_k[None, :], mask=mask_mm[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(gzt, a, acc, input_precision=DOT_PRECISION,
                     out_dtype=acc_dt)
        if HAS_BIAS:
            db += tl.sum(gzt.to(acc_dt), axis=1)
    tl.store(dw_ptr + layer * stride_dwl + offs_n[:, None] * K + offs_k[None, :], acc.to(dt),
             mask=mask_n[:, None] & mask_k[None, :])
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(db_ptr + layer * stride_dbl + offs_n, db.to(dt), mask=mask_n)


INTERPRET = type(_skip_mlp_fwd_kernel).__name__ == "InterpretedFunction"  # fixed when this module loads


# ---------------------------------------------------------------------------------------- launchers
def _check(x: torch.Tensor, w_in: torch.Tensor, w: torch.Tensor, w_out: torch.Tensor, named: dict, skip: int,
           activation: int) -> tuple[int, int, int, int, int]:
    """Validate the launcher inputs; returns (B, K0, W, C, L)."""
    if not (isinstance(skip, int) and 0 <= skip < len(SKIPS)):
        raise ValueError(f"skip must be a code of skipkern.reference.SKIP_CODES {SKIP_CODES}, got {skip!r}")
    if not (isinstance(activation, int) and 0 <= activation < len(ACTIVATIONS)):
        raise ValueError(f"activation must be a code of skipkern.reference.ACTIVATION_CODES, got {activation!r}")
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float32, float64, float16 or bfloat16 for the Triton kernels, got {x.dtype}")
    if INTERPRET and x.dtype == torch.bfloat16:
        raise TypeError("x is bfloat16, but bf16 tl.dot is wrong in the Triton interpreter; use a GPU or float32")
    if x.device.type == "cpu" and not INTERPRET:
        raise ValueError("x is a CPU tensor but TRITON_INTERPRET was not 1 when skipkern.kernels was imported; "
                         "CPU tensors only run through the Triton interpreter")
    if x.dim() != 2 or w_in.dim() != 2 or w.dim() != 3 or w_out.dim() != 2:
        raise ValueError(f"expected x [B, K0], w_in [W, K0], w [L-1, W, W], w_out [C, W]; got x {tuple(x.shape)}, "
                         f"w_in {tuple(w_in.shape)}, w {tuple(w.shape)}, w_out {tuple(w_out.shape)}")
    (m, k0), width, c, L = x.shape, w_in.shape[0], w_out.shape[0], w.shape[0] + 1
    if width > MAX_WIDTH:
        raise ValueError(f"the fused skip_mlp kernel handles widths up to {MAX_WIDTH}, got {width}; use the "
                         f"per-layer path (SkipMLP(fused=None))")
    expect = {"w_in": (width, k0), "w": (L - 1, width, width), "w_out": (c, width), "b_in": (width,),
              "b": (L - 1, width), "b_out": (c,), "q": (L - 1, width, width), "p": (max(L - 2, 0), width, width),
              "c": (L,), "g_out": (m, c), "H": (L, m, width), "Z": (L, m, width)}
    for name, t in dict(named, x=x, w_in=w_in, w=w, w_out=w_out).items():
        if name in expect and tuple(t.shape) != expect[name]:
            raise ValueError(f"{name} must have shape {list(expect[name])}, got {list(t.shape)}")
        if t.dtype != x.dtype and name != "c":
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; all inputs must share one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    if (skip == SKIP_CODES["dense"]) != ("q" in named):
        raise ValueError(f"q must be given exactly when skip is dense (skip={SKIPS[skip]!r}, q given: {'q' in named})")
    if ("p" in named) != ("c" in named):
        raise ValueError("the hyper-residual terms need both p [L-2, W, W] and c [L], or neither")
    if max(2 * L * m * width, m * k0, width * k0, L * width * width, m * c) > INT32_LIMIT:
        raise ValueError(f"B={m}, K0={k0}, W={width}, C={c}, depth={L} exceed the int32 indexing of the kernels")
    return m, k0, width, c, L


def _c(t: Optional[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
    """Contiguous tensor, or ``fallback`` for an absent or empty one (its pointer is never read)."""
    return fallback if t is None or t.numel() == 0 else t.contiguous()


def skip_mlp_fwd(x: torch.Tensor, w_in: torch.Tensor, b_in: Optional[torch.Tensor], w: torch.Tensor,
                 b: Optional[torch.Tensor], q: Optional[torch.Tensor], p: Optional[torch.Tensor],
                 c: Optional[torch.Tensor], w_out: torch.Tensor, b_out: Optional[torch.Tensor], skip: int,
                 activation: int, precision: Optional[str] = None, blocks: Optional[tuple] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole-MLP forward. Returns (logits [B, C], H [L, B, W] = h_1 .. h_L, Z [L, B, W] = z_0 .. z_{L-1}).

    Args:
        x [B, K0]; w_in [W, K0]; b_in [W]?; w [L-1, W, W]; b [L-1, W]?; q [L-1, W, W] when skip == "dense";
            p [L-2, W, W] and c [L] (hyper-residual, c_j = 0 for j < 2; c in the accumulation dtype: float64
            for float64, else float32); w_out [C, W]; b_out [C]?. Biases are all given or all None.
        skip, activation: integer codes (skipkern.reference SKIP_CODES of the hidden layers' skip: none,
            identity, dense; ACTIVATION_CODES: relu, identity, tanh, gelu).
        precision: fp32 dots, "auto" (TF32 on the GPU unless SKIPKERN_TRITON_TF32=0), "ieee" or "tf32".
        blocks: (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K) forcing one config (tests: BN < W takes the
            chunked path); else kernels/skip_mlp_config.py chooses.
    """
    named = {k: v for k, v in dict(b_in=b_in, b=b, q=q, p=p, c=c, b_out=b_out).items() if v is not None}
    m, k0, width, cc, L = _check(x, w_in, w, w_out, named, skip, activation)
    has_bias = b_in is not None
    if (b is None) == has_bias and L > 1 or (b_out is None) == has_bias:
        raise ValueError("b_in, b and b_out must all be given or all be None")
    dev, dt = x.device, x.dtype
    out = torch.empty((m, cc), dtype=dt, device=dev)
    H = torch.empty((L, m, width), dtype=dt, device=dev)
    Z = torch.empty((L, m, width), dtype=dt, device=dev)
    if m == 0:
        return out, H, Z
    hyper = p is not None and p.shape[0] > 0
    x = x.contiguous()
    w_in = w_in.contiguous()
    consts = dict(ACTIVATION=activation, SKIP=skip, HAS_BIAS=has_bias, HYPER=hyper,
                  DOT_PRECISION=dot_precision(dt, INTERPRET, precision), WIDTH_P=pow2(width))

    def run(cfg: tuple) -> None:
        bm, bn, bk, warps, stages = cfg
        hs = torch.zeros((m, width), dtype=dt, device=dev) if hyper and bn < pow2(width) else H
        _skip_mlp_fwd_kernel[(triton.cdiv(m, bm),)](
            x, w_in, _c(b_in, w_in), _c(w, w_in), _c(b, w_in), _c(q, w_in), _c(p, w_in), _c(c, w_in),
            w_out.contiguous(), _c(b_out, w_in), H, Z, hs, out, m, k0, width, cc, L, **consts,
            SINGLE=bn >= pow2(width), BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, num_warps=warps, num_stages=stages)

    launch("fwd", run, problem_key(m, width, k0, cc, dt, skip, hyper), (m, width, k0, dt), dev, blocks, INTERPRET)
    return out, H, Z


def skip_mlp_bwd(g_out: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, w: torch.Tensor,
                 q: Optional[torch.Tensor], p: Optional[torch.Tensor], c: Optional[torch.Tensor], w_out: torch.Tensor,
                 H: torch.Tensor, Z: torch.Tensor, skip: int, activation: int, has_bias: bool, needs_dx: bool,
                 precision: Optional[str] = None, blocks: Optional[tuple] = None) -> tuple:
    """Whole-MLP backward from g_out = d loss / d logits [B, C] and the forward's H, Z.

    Returns:
        (dx [B, K0] or None (needs_dx False), dW_in [W, K0], db_in [W]?, dW [L-1, W, W], db [L-1, W]?,
        dW_out [C, W], db_out [C]?), the bias gradients None unless has_bias.
    """
    named = {k: v for k, v in dict(q=q, p=p, c=c, g_out=g_out, H=H, Z=Z).items() if v is not None}
    m, k0, width, cc, L = _check(x, w_in, w, w_out, named, skip, activation)
    dev, dt = x.device, x.dtype
    hyper = p is not None and p.shape[0] > 0
    prec = dot_precision(dt, INTERPRET, precision)
    GZ = torch.empty((L, m, width), dtype=dt, device=dev)
    dx = torch.empty((m, k0), dtype=dt, device=dev) if needs_dx else None
    if m > 0:
        w_in = w_in.contiguous()
        consts = dict(ACTIVATION=activation, SKIP=skip, HYPER=hyper, NEEDS_DX=needs_dx, DOT_PRECISION=prec,
                      WIDTH_P=pow2(width))

        def run(cfg: tuple) -> None:
            bm, bn, bk, warps, stages = cfg
            gs = torch.empty((2, m, width), dtype=dt, device=dev) if bn < pow2(width) else GZ
            _skip_mlp_bwd_kernel[(triton.cdiv(m, bm),)](
                g_out.contiguous(), w_in, _c(w, w_in), _c(q, w_in), _c(p, w_in), _c(c, w_in), w_out.contiguous(),
                Z.contiguous(), GZ, gs, dx if needs_dx else GZ, m, k0, width, cc, L, **consts,
                SINGLE=bn >= pow2(width), BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, num_warps=warps, num_stages=stages)

        launch("bwd", run, problem_key(m, width, k0, cc, dt, skip, hyper), (m, width, k0, dt), dev, blocks,
               INTERPRET)
    H = H.contiguous()
    dw_in, db_in = _dw(GZ[0], x.contiguous(), has_bias, prec, blocks)
    dw, db = _dw(GZ[1:], H[:L - 1], has_bias, prec, blocks)
    dw_out, db_out = _dw(g_out.contiguous(), H[L - 1], has_bias, prec, blocks)
    return dx, dw_in[0], db_in if db_in is None else db_in[0], dw, db, dw_out[0], db_out if db_out is None else db_out[0]


def _dw(gz: torch.Tensor, a: torch.Tensor, has_bias: bool, prec: str, blocks: Optional[tuple]):
    """dW [layers, N, K] = GZ_l^T A_l and db [layers, N] = colsum(GZ_l) for gz [(layers,) B, N], a [(layers,) B, K]."""
    gz3 = gz if gz.dim() == 3 else gz[None]
    a3 = a if a.dim() == 3 else a[None]
    nl, m, n = gz3.shape
    k = a3.shape[2]
    dw = torch.empty((nl, n, k), dtype=a.dtype, device=a.device)
    db = torch.empty((nl, n), dtype=a.dtype, device=a.device) if has_bias else None
    if nl == 0 or n == 0 or k == 0:
        return dw, db
    if m == 0:
        dw.zero_()
        return dw, (db.zero_() if has_bias else None)
    if blocks is not None:
        bm, bn, bk = (int(v) for v in blocks)
    elif INTERPRET:
        bm, bn, bk = min(64, pow2(m)), min(64, pow2(n)), min(64, pow2(k))
    else:
        bm, bn, bk = (32, 64, 64) if a.dtype != torch.float64 else (16, 32, 32)
    grid = (nl, triton.cdiv(n, bn) * triton.cdiv(k, bk))
    dbb = db if has_bias else dw
    _skip_mlp_dw_kernel[grid](gz3, a3, dw, dbb, m, n, k, gz3.stride(0) if nl > 1 else 0,
                              a3.stride(0) if nl > 1 else 0, dw.stride(0), dbb.stride(0),
                              HAS_BIAS=has_bias, DOT_PRECISION=prec, BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn,
                              BLOCK_SIZE_K=bk, num_warps=4, num_stages=1 if INTERPRET else 3)
    return dw, db
