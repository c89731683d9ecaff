# skip_linear in Triton: launch configs and launchers; the kernels, and the block comment saying what each one
# fuses, are in kernels/skip_linear_kernels.py.
# Configs: the interpreter uses one small config; on the GPU a shape/dtype heuristic, or the timed choice
# cached per problem shape by kernels/tuning.py (SKIPKERN_TRITON_AUTOTUNE=1 tunes). fp32 dots: TF32 on the
# GPU unless SKIPKERN_TRITON_TF32=0 or precision="ieee" (kernels/precision.py). Split-K for wide inputs.
"""Launchers of the Triton skip_linear kernels (kernels/skip_linear_kernels.py)."""
from __future__ import annotations

import logging
from typing import Optional

import torch
import triton

from skipkern.backends.tensor_checks import check_tensors, skip_linear_sizes
from skipkern.kernels import tuning
from skipkern.kernels.precision import dot_precision as _dot_precision
from skipkern.kernels.skip_linear_kernels import (_DTYPES, INT32_LIMIT,
                                                  _skip_linear_bwd_dw_kernel, _skip_linear_bwd_dx_kernel,
                                                  _skip_linear_fwd_kernel, _skip_linear_fwd_reduce_kernel)
from skipkern.reference import SKIP_CODES

log = logging.getLogger("skipkern")


# ------------------------------------------------------------------------------------------ configs
INTERPRET = type(_skip_linear_fwd_kernel).__name__ == "InterpretedFunction"  # fixed when this module loads
_INTERPRET_TILE = (64, 64, 64)  # (rows, cols, reduction): one config; 64 measured fastest in the interpreter
# (tile rows, tile cols, reduction block, num_warps, num_stages) timed by kernels/tuning.py
_TUNE = [(16, 32, 32, 2, 3), (32, 32, 32, 4, 3), (32, 64, 32, 4, 3), (64, 64, 32, 4, 3),
         (64, 128, 32, 4, 3), (128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 64, 64, 4, 3)]
_TUNE_FP64 = [(16, 32, 16, 2, 2), (32, 32, 16, 4, 2), (32, 64, 16, 4, 2), (64, 64, 16, 4, 2)]
# names of (tile rows, tile cols, reduction) per kernel
_DIMS = {"fwd": ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"),
         "dx": ("BLOCK_SIZE_M", "BLOCK_SIZE_K", "BLOCK_SIZE_N"),
         "dw": ("BLOCK_SIZE_N", "BLOCK_SIZE_K", "BLOCK_SIZE_M")}
_KERNELS = {"fwd": _skip_linear_fwd_kernel, "dx": _skip_linear_bwd_dx_kernel, "dw": _skip_linear_bwd_dw_kernel}
_logged: set = set()
_sms: dict = {}


def _log_once(key: tuple, msg: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


def _num_sms(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sms:
        _sms[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _sms[idx]


def dot_precision(dtype: torch.dtype, precision: Optional[str] = None) -> str:
    """tl.dot input_precision: "tf32" for fp32 on the GPU unless opted out (SKIPKERN_TRITON_TF32=0 or
    precision="ieee"), else "ieee" (kernels/precision.py)."""
    return _dot_precision(dtype, INTERPRET, precision)


def _heuristic(kind: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device, red_len: int = 0) -> tuple:
    """GPU config for an output tile grid of [rows, cols]: 64x64 tiles (32x32 for fp64); for fwd/dx they
    are halved while there are fewer programs than SMs (these layers are small and latency-bound); dW keeps
    its tile and gets parallelism from the batch split instead (see _dw_split), and so does a forward with a
    wide reduction (``red_len`` >= 1024) from split-K (see _split_k): small tiles would re-read W per row block."""
    if dtype == torch.float64:
        tr, tc, red, stages = 32, 32, 16, 2
    else:
        tr, tc, red, stages = 64, 64, (64 if dtype in (torch.float16, torch.bfloat16) else 32), 3
    sms = _num_sms(device)
    shrink = kind == "dx" or (kind == "fwd" and red_len < 1024)
    while shrink and triton.cdiv(rows, tr) * triton.cdiv(cols, tc) < sms and max(tr, tc) > 16:
        if tr >= tc:
            tr //= 2
        else:
            tc //= 2
    return tr, tc, red, (4 if tr * tc >= 1024 else 2), stages


def _split_k(m: int, n: int, k: int, tile: tuple, device: torch.device) -> int:
    """K ranges for the forward: enough programs for about two per SM when the output tiles are fewer than
    the SMs and K is wide (>= 1024), each range at least 256 long, at most 16; 1 otherwise."""
    if INTERPRET or k < 1024:
        return 1
    tiles = triton.cdiv(m, tile[0]) * triton.cdiv(n, tile[1])
    sms = _num_sms(device)
    if tiles >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, tiles), k // 256, 16))


def _dw_split(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> int:
    """Batch slices for dW/db: about two programs per SM, each slice at least 128 rows; 1 in the interpreter."""
    if INTERPRET:
        return 1
    tr, tc = _heuristic("dw", n, k, dtype, device)[:2]
    tiles = triton.cdiv(n, tr) * triton.cdiv(max(k, 1), tc)
    return max(1, min(2 * _num_sms(device) // tiles, m // 128, 64))


def _configure(kind: str, key: tuple, rows: int, cols: int, dtype: torch.dtype, device: torch.device,
               blocks: Optional[tuple], run) -> None:
    """Pick a config for kernel ``kind`` ((tile rows, tile cols, reduction, warps, stages)) and ``run`` it:
    forced ``blocks`` (tests), the interpreter's tile, or on the GPU the tuned choice cached for ``key``
    (kernels/tuning.py) with the shape heuristic as the default."""
    if blocks is not None:
        cfg, how = (*blocks, 4, 2), "forced"
    elif INTERPRET:
        cfg, how = (*_INTERPRET_TILE, 4, 1), "interpreter"
    else:
        heur = _heuristic(kind, rows, cols, dtype, device, key[2] if kind == "fwd" else 0)
        cands = _TUNE_FP64 if dtype == torch.float64 else _TUNE
        cfg = tuning.choose("skip_linear", (kind, *key, str(dtype).replace("torch.", "")), cands, run, device, heur)
        how = "heuristic" if tuple(cfg) == tuple(heur) else "tuned"
    _log_once((kind, how, dtype, cfg), "triton skip_linear %s: %s config %s, %s", kind, how, cfg, dtype)
    run(cfg)


# ---------------------------------------------------------------------------------------- launchers
def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)


def _check(x: torch.Tensor, weight: torch.Tensor, q: Optional[torch.Tensor], skip: int,
           bias: Optional[torch.Tensor] = None, grad_y: Optional[torch.Tensor] = None,
           z: Optional[torch.Tensor] = None) -> tuple:
    """Shapes, dtype and device through the shared launcher check (any strides), then the Triton limits:
    int32 indexing, CPU tensors only in the interpreter, no bf16 there. Returns (B, K, N)."""
    m, k, n = skip_linear_sizes(x, weight, q, skip)
    specs = (("x", x, (m, k)), ("weight", weight, (n, k)), ("q", q, (n, k)), ("bias", bias, (n,)),
             ("grad_y", grad_y, (m, n)), ("z", z, (m, n)))
    check_tensors("triton", specs, _DTYPES, contiguous=False)
    if INTERPRET and x.dtype == torch.bfloat16:
        raise TypeError("x is bfloat16, but bf16 tl.dot is wrong in the Triton interpreter; use a GPU or float32")
    if x.device.type == "cpu" and not INTERPRET:
        raise ValueError("x is a CPU tensor but TRITON_INTERPRET was not 1 when skipkern.kernels.skip_linear was "
                         "imported; CPU tensors only run through the Triton interpreter")
    for name, t, _ in specs:
        if t is not None and _max_offset(t) > INT32_LIMIT:
            raise ValueError(f"{name} of shape {tuple(t.shape)} spans more than 2**31 elements; the Triton "
                             f"kernels index with int32 (use backend='torch' or 'cuda')")
    if max(m * n, m * k, n * k) > INT32_LIMIT:
        raise ValueError(f"B={m}, N={n}, K={k} gives an output beyond 2**31 elements; the Triton kernels index "
                         f"with int32 (use backend='torch' or 'cuda')")
    return m, k, n


def skip_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], q: Optional[torch.Tensor],
                    skip: int, activation: int, blocks: Optional[tuple] = None, precision: Optional[str] = None,
                    split_k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward: z = x W^T + b, y = act(z) + S(x).

    Args:
        x: [B, K]; weight: [N, K]; bias: [N] or None; q: [N, K] for the dense skip, else None.
            Any strides; float32/float64 (float16/bfloat16 on GPU; float16 also in the interpreter).
        skip, activation: integer codes of skipkern.reference.SKIP_CODES (none, identity with N == K, dense)
            and ACTIVATION_CODES (relu, identity, tanh, gelu).
        blocks: (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K) forcing one config (each >= 16; for tests).
        precision: fp32 dots: "auto" / None (TF32 on the GPU unless SKIPKERN_TRITON_TF32=0), "ieee", "tf32".
        split_k: K ranges summed in a second pass (default: 1, or more for wide K when the output tiles do
            not fill the GPU; see _split_k).

    Returns:
        (y [B, N], z [B, N]), contiguous, dtype of x.
    """
    m, k, n = _check(x, weight, q, skip, bias=bias)
    dtype, dev = x.dtype, x.device
    y = torch.empty((m, n), dtype=dtype, device=dev)
    z = torch.empty((m, n), dtype=dtype, device=dev)
    if m == 0 or n == 0:
        return y, z
    if split_k is not None and (not isinstance(split_k, int) or split_k < 1):
        raise ValueError(f"split_k must be a positive int, got {split_k!r}")
    qq = q if q is not None else weight  # unused pointer unless the skip is dense (pruned at compile time)
    bb = bias if bias is not None else weight
    consts = dict(ACTIVATION=activation, HAS_BIAS=bias is not None, SKIP=skip)
    prec = dot_precision(dtype, precision)
    strides = (x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), bb.stride(0), qq.stride(0), qq.stride(1),
               y.stride(0), y.stride(1), z.stride(0), z.stride(1))

    def run(cfg: tuple) -> None:
        tr, tc, red, warps, stages = cfg
        split = split_k if split_k is not None else _split_k(m, n, k, (tr, tc), dev)
        k_split = max(k, 1) if split == 1 else triton.cdiv(triton.cdiv(k, split), red) * red
        split = triton.cdiv(k, k_split) if k > 0 else 1
        meta = dict(zip(_DIMS["fwd"], (tr, tc, red)), num_warps=warps, num_stages=stages)
        grid = (triton.cdiv(m, tr), triton.cdiv(n, tc), split)
        if split == 1:
            _skip_linear_fwd_kernel[grid](x, weight, bb, qq, y, z, y, m, n, k, k_split, *strides, 0, 0, **consts,
                                          DOT_PRECISION=prec, SPLIT_K=False, **meta)
            return
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        parts = 2 if skip == SKIP_CODES["dense"] else 1
        if split * parts * m * n > INT32_LIMIT:
            raise ValueError(f"split_k={split} makes a workspace beyond 2**31 elements; use a smaller split_k")
        ws = torch.empty((split, parts, m, n), dtype=acc, device=dev)
        _skip_linear_fwd_kernel[grid](x, weight, bb, qq, y, z, ws, m, n, k, k_split, *strides, ws.stride(0),
                                      ws.stride(1), **consts, DOT_PRECISION=prec, SPLIT_K=True, **meta)
        _skip_linear_fwd_reduce_kernel[grid[:2]](ws, x, bb, y, z, m, n, split, ws.stride(0), ws.stride(1), x.stride(0),
                                                 x.stride(1), bb.stride(0), y.stride(0), y.stride(1), z.stride(0),
                                                 z.stride(1), **consts, BLOCK_SIZE_M=tr, BLOCK_SIZE_N=tc,
                                                 num_warps=warps)

    _configure("fwd", (m, n, k, skip, split_k), m, n, dtype, dev, blocks, run)
    return y, z


def skip_linear_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor,
                    q: Optional[torch.Tensor], skip: int, activation: int, has_bias: bool,
                    blocks: Optional[tuple] = None, split: Optional[int] = None, precision: Optional[str] = None,
                    needs_dx: bool = True, needs_dw: bool = True
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Fused backward with gz = grad_y * act'(z): dx = gz W + S^T(grad_y), dW = gz^T x, db = colsum(gz).

    Args:
        grad_y: [B, N]; x: [B, K]; weight: [N, K]; z: [B, N] (the forward's pre-activation);
            q: [N, K] for the dense skip, else None. Any strides, one dtype (as in skip_linear_fwd).
        skip, activation: as in skip_linear_fwd. has_bias: whether to return db.
        blocks: (tile rows, tile cols, reduction block) forcing one config for both kernels (tests).
        split: number of batch slices for the dW/db reduction (default: 1 in the interpreter, else enough
            programs for the GPU); slices > 1 go through an fp32/fp64 workspace summed by torch.
        precision: fp32 dots, as in skip_linear_fwd.
        needs_dx: False launches no dx kernel (the input layer's dx, which nothing uses); dx is None.
        needs_dw: False returns dW as None; the dW kernel still runs for db when has_bias, else not at all.

    Returns:
        (dx [B, K] or None, dW [N, K] or None, db [N] or None), contiguous, dtype of x.
    """
    m, k, n = _check(x, weight, q, skip, grad_y=grad_y, z=z)
    dtype = x.dtype
    dev = x.device
    dx = torch.empty((m, k), dtype=dtype, device=dev) if needs_dx else None
    qq = q if q is not None else weight
    prec = dot_precision(dtype, precision)
    if needs_dx and m > 0 and k > 0:
        if n == 0:
            dx.zero_()
        else:
            args = (grad_y, z, weight, qq, dx, m, n, k, grad_y.stride(0), grad_y.stride(1), z.stride(0), z.stride(1),
                    weight.stride(0), weight.stride(1), qq.stride(0), qq.stride(1), dx.stride(0), dx.stride(1))
            consts = dict(ACTIVATION=activation, SKIP=skip, DOT_PRECISION=prec)
            _configure("dx", (m, n, k, skip), m, k, dtype, dev, blocks, lambda cfg: _launch_2d(
                "dx", (m, k), cfg, args, consts))
    dw = torch.empty((n, k), dtype=dtype, device=dev) if needs_dw or has_bias else None
    db = torch.empty((n,), dtype=dtype, device=dev) if has_bias else None
    if n == 0 or (k == 0 and not has_bias) or dw is None:
        return dx, (dw if needs_dw else None), db
    if split is None:
        split = _dw_split(m, n, k, dtype, dev)
    if not isinstance(split, int) or split < 1:
        raise ValueError(f"split must be a positive int, got {split!r}")
    kk = max(k, 1)  # k == 0 with a bias: the grid keeps one column of fully masked tiles to compute db
    if split == 1:
        dw_out, db_out = dw, (db if has_bias else dw)
    else:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        if split * n * k > INT32_LIMIT:
            raise ValueError(f"split={split} makes a dW workspace beyond 2**31 elements; use a smaller split")
        dw_out = torch.empty((split, n, k), dtype=acc, device=dev)
        db_out = torch.empty((split, n), dtype=acc, device=dev)
    s_dw = dw_out.stride(0) if split > 1 else 0
    s_db = db_out.stride(0) if split > 1 else 0
    args = (grad_y, z, x, dw_out, db_out, m, n, k, split, grad_y.stride(0), grad_y.stride(1), z.stride(0),
            z.stride(1), x.stride(0), x.stride(1), s_dw, dw_out.stride(-2), dw_out.stride(-1), s_db)
    consts = dict(ACTIVATION=activation, HAS_BIAS=has_bias, DOT_PRECISION=prec)
    _configure("dw", (m, n, k, split), n, kk, dtype, dev, blocks, lambda cfg: _launch_2d(
        "dw", (n, kk, split), cfg, args, consts))
    if split > 1:
        if needs_dw:
            dw.copy_(dw_out.sum(0))
        if has_bias:
            db.copy_(db_out.sum(0))
    return dx, (dw if needs_dw else None), db


def _launch_2d(kind: str, grid_dims: tuple, cfg: tuple, args: tuple, consts: dict) -> None:
    """Launch the dx or dW kernel over an output tile grid of ``grid_dims`` = (rows, cols[, splits])."""
    tr, tc, red, warps, stages = cfg
    nr, nc = triton.cdiv(grid_dims[0], tr), triton.cdiv(grid_dims[1], tc)
    grid = (nr * nc, grid_dims[2]) if kind == "dw" else (nr, nc)
    _KERNELS[kind][grid](*args, **consts, **dict(zip(_DIMS[kind], (tr, tc, red))), num_warps=warps,
                         num_stages=stages)
