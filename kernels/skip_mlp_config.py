# Launch configs of the whole-MLP kernels (kernels/skip_mlp.py): (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K,
# num_warps, num_stages).
# - forced ``blocks`` (tests: BN < WIDTH_P takes the chunked path);
# - the interpreter: one chunk per layer and big row blocks (the fewest interpreted programs);
# - the GPU: the timed choice cached per problem shape (kernels/tuning.py; SKIPKERN_TRITON_AUTOTUNE=1 tunes),
#   else the heuristic below. A config that does not fit (shared memory, registers) is retried with half the
#   chunk width, then half the row block.
"""Launch configs of the whole-MLP kernels (see the block comment above)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
import triton

from skipkern.kernels import tuning

log = logging.getLogger("skipkern")

__all__ = ["pow2", "problem_key", "heuristic", "launch"]
_logged: set = set()


def pow2(n: int) -> int:
    """The power of two >= max(n, 16) (tl.dot needs every block dimension >= 16)."""
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def problem_key(m: int, width: int, k0: int, c: int, dtype: torch.dtype, skip: int, hyper: bool) -> tuple:
    # batch bucketed to a power of two: the same config serves B = 500 and B = 512
    return (pow2(m), pow2(width), pow2(k0), pow2(c), str(dtype).replace("torch.", ""), skip, hyper)


def heuristic(m: int, width: int, k0: int, dtype: torch.dtype, interpret: bool) -> tuple:
    """Before any tuning. GPU: BN as large as keeps a [WIDTH_P, BN] W^T chunk within 64 KB (fp32 W <= 128 and
    fp16/bf16 W <= 256 stay on the one-chunk, register-resident path); 16-row blocks, so that B = 500 gives
    32 programs (these nets are latency-bound: more SMs beat bigger tiles)."""
    wp = pow2(width)
    if interpret:
        return min(64, pow2(m)), wp, min(64, pow2(k0)), 4, 1
    size = torch.finfo(dtype).bits // 8
    bn = wp
    while bn > 16 and wp * bn * size > 64 * 1024:
        bn //= 2
    return (16 if m <= 4096 else 32), bn, (32 if size >= 4 else 64), 4, 2


def _candidates(heur: tuple) -> list:
    bm, bn, bk, _, _ = heur
    out = [(16, bn, bk, 4, 3), (32, bn, bk, 4, 2), (64, bn, bk, 4, 2), (16, bn, 2 * bk, 4, 2), (16, bn, bk, 8, 2)]
    if bn > 16:
        out.append((bm, bn // 2, bk, 4, 2))
    return out


def _run_fitting(run: Callable[[tuple], None], cfg: tuple) -> tuple:
    """run(cfg); on OutOfResources retry with half the chunk width, then half the row block."""
    while True:
        try:
            run(cfg)
            return cfg
        except triton.runtime.errors.OutOfResources as exc:
            bm, bn, bk, warps, stages = cfg
            if bn <= 16 and bm <= 16:
                raise
            smaller = (bm, bn // 2, bk, warps, stages) if bn > 16 else (bm // 2, bn, bk, warps, stages)
            log.info("triton skip_mlp: config %s does not fit (%s); trying %s", cfg, exc, smaller)
            cfg = smaller


def launch(kind: str, run: Callable[[tuple], None], key: tuple, dims: tuple, device: torch.device,
           blocks: Optional[tuple], interpret: bool) -> tuple:
    """Choose the config of kernel ``kind`` for problem ``key`` and launch it through ``run(cfg)``.

    Args:
        dims: (B, W, K0, dtype) for the heuristic. blocks: (BM, BN, BK) forcing one config, powers of two >= 16.
    Returns:
        the config that ran.
    """
    if blocks is not None:
        if len(blocks) != 3 or any(int(v) < 16 or int(v) & (int(v) - 1) for v in blocks):
            raise ValueError(f"blocks must be (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K), powers of two >= 16, "
                             f"got {blocks!r}")
        cfg = (*(int(v) for v in blocks), 4, 1 if interpret else 2)
        run(cfg)
        return cfg
    heur = heuristic(*dims, interpret)
    cfg = heur if interpret else tuning.choose("skip_mlp", (kind, *key), _candidates(heur), run, device, heur)
    cfg = _run_fitting(run, tuple(cfg))
    if (kind, key, cfg) not in _logged:
        _logged.add((kind, key, cfg))
        log.info("triton skip_mlp %s: config (BM, BN, BK, warps, stages) = %s for %s", kind, cfg, key)
    return cfg
