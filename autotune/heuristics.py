"""Every kernel's default launch config (the heuristic a shape gets when the tuning cache has no
entry for it), and the lookup that puts the cache's answer and the caps of :mod:`.spaces` on top.

A launcher asks :func:`conv_config` / :func:`pool_config` once per launch: the tuned winner for its
shape when there is one, else the heuristic here, capped as the tuning spaces are
(:func:`.spaces.max_warps`, :func:`.spaces.cap_ieee`), so that a default and a tuned config obey the
same limits. The interpreter runs program instances one after another, so it always gets the
largest tiles; a GPU gets tensor-core tiles.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from tritoncnn import _runtime
from tritoncnn._shapes import cdiv, next_pow2, window_rows

from . import spaces

INTERPRET = _runtime.INTERPRET


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two covering n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(max(1, int(n)))))


#: Tiles of 256 x 128 on 8 warps: for layers with at least this many of them (two waves of an
#: H100's 132 SMs), so that the larger tile does not leave SMs idle.
WIDE_TILES_MIN = 264


@functools.lru_cache(maxsize=None)
def _gemm_heuristic_items(rows: int, cols: int, red: int, dtype: torch.dtype,
                          max_k: int) -> tuple:
    if INTERPRET:
        cfg = dict(BLOCK_M=_pow2(rows, 16, 2048), BLOCK_N=_pow2(cols, 16, 64),
                   BLOCK_K=_pow2(red, 16, 64), GROUP_M=8, num_warps=4, num_stages=1)
    else:
        block_k = _pow2(red, 16, 32 if dtype == torch.float32 else max_k)
        # channel counts off multiples of 16: the compiler cannot prove their rows aligned, the
        # tiles load element by element, and the 128-wide tiles spill (sm_90, ptxas -v)
        wide = 64 if cols % 16 or red % 16 else 128
        cfg = dict(BLOCK_M=_pow2(rows, 16, wide), BLOCK_N=_pow2(cols, 16, wide), BLOCK_K=block_k,
                   GROUP_M=8, num_warps=4, num_stages=3 if block_k == 64 else 4)
        if wide == 128 and dtype in (torch.float16, torch.bfloat16) and cols >= 128 and \
                cdiv(rows, 256) * cdiv(cols, 128) >= WIDE_TILES_MIN:
            # large layers: 256 x 128 on two warpgroups, fewer operand loads per MMA FLOP than
            # 128 x 128 on one, at the same 128 accumulator values per thread. Not 128 x 256:
            # with a 1x1 filter ptxas serializes its wgmma (C7515, sm_90), and the fused pool
            # would spread each window over both warpgroups (see conv_pool_heuristic)
            cfg.update(BLOCK_M=256, num_warps=8)
        elif dtype == torch.float32 and cfg["BLOCK_M"] * cfg["BLOCK_N"] >= 128 * 128:
            # TF32 128 x 128 on 4 warps spills in its epilogue (sm_90, ptxas -v): 8 warps
            cfg["num_warps"] = 8
    return tuple(cfg.items())


def gemm_heuristic(rows: int, cols: int, red: int, dtype: torch.dtype, max_k: int = 64) -> dict:
    """Tiles for an implicit GEMM of rows x cols with a reduction block over ``red`` channels.

    The interpreter runs programs one after another, so it gets the largest tiles; a GPU gets
    tensor-core tiles (BLOCK_K 32 for fp32, whose tiles take twice the shared memory, and at most
    ``max_k``).
    Memoised: a fresh dict per call, built once per argument tuple.
    """
    return dict(_gemm_heuristic_items(int(rows), int(cols), int(red), dtype, int(max_k)))


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device, queried once per device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _dw_heuristic_items(KG: int, CG: int, RS: int, NPQ: int, groups: int, dtype: torch.dtype,
                        device: torch.device) -> tuple:
    if INTERPRET:
        return tuple(dict(BLOCK_M=_pow2(KG, 16, 64), BLOCK_N=_pow2(CG, 16, 128),
                          BLOCK_K=_pow2(NPQ, 16, 1024), GROUP_M=8, num_warps=4, num_stages=1,
                          SPLIT=1).items())
    wide = 64 if KG % 16 or CG % 16 else 128  # unaligned channels: see _gemm_heuristic_items
    cfg = dict(BLOCK_M=_pow2(KG, 16, wide), BLOCK_N=_pow2(CG, 16, wide),
               BLOCK_K=32 if dtype == torch.float32 or wide < 128 else 64, GROUP_M=8,
               num_warps=4, num_stages=3)
    # (4 warps: on 8, ptxas serializes this kernel's wgmma at 128x128, C7515)
    tiles = cdiv(KG, cfg["BLOCK_M"]) * RS * cdiv(CG, cfg["BLOCK_N"]) * groups
    steps = cdiv(NPQ, cfg["BLOCK_K"])
    cfg["SPLIT"] = max(1, min(cdiv(2 * _num_sms(device), tiles), cdiv(steps, 8), 64))
    return tuple(cfg.items())


def dw_heuristic(KG: int, CG: int, RS: int, NPQ: int, groups: int, dtype, device) -> dict:
    """dW tiles: rows = output channels, a column tile = one filter tap by a block of the CG
    input channels, reduction over N*P*Q pixels, split so that the grid fills the GPU (one split
    under the interpreter). Memoised per argument tuple, like :func:`gemm_heuristic`."""
    return dict(_dw_heuristic_items(int(KG), int(CG), int(RS), int(NPQ), int(groups), dtype,
                                    torch.device(device)))


@functools.lru_cache(maxsize=None)
def _grad_z_items(rows: int, K: int, device: torch.device) -> tuple:
    if INTERPRET:
        block_c = _pow2(K, 16, 256)
        block_r = _pow2(rows, 16, max(16, 16384 // block_c))
        chunks = 1
    else:
        block_c = _pow2(K, 16, 64)
        # channel counts off multiples of 16 load element by element, each with its own 64-bit
        # address: a quarter of the tile keeps them in registers (K = 6: 255 registers and
        # 92-328 B spilled at 4096 elements, sm_90 ptxas -v)
        block_r = (4096 if K % 16 == 0 else 1024) // block_c
        chunks = min(cdiv(rows, block_r), cdiv(4 * _num_sms(device), cdiv(K, block_c)))
    chunk = cdiv(cdiv(rows, chunks), block_r) * block_r
    return tuple(dict(BLOCK_R=block_r, BLOCK_C=block_c, chunk=chunk, chunks=cdiv(rows, chunk),
                      num_warps=4).items())


def grad_z_config(rows: int, K: int, device) -> dict:
    """The dZ pass's launch: BLOCK_R conv pixels by BLOCK_C channels a step, the pixels split
    into ``chunks`` of ``chunk`` (db's partial sums: one per chunk), enough programs to keep a
    memory-bound pass at the GPU's bandwidth (one chunk under the interpreter)."""
    return dict(_grad_z_items(int(rows), int(K), torch.device(device)))



def conv_pool_heuristic(pooled: int, pool: int, cols: int, red: int, dtype: torch.dtype) -> dict:
    """The fused conv + ReLU + pool forward's tiles. With whole windows as rows
    (:func:`window_rows`): the conv's tiles over the conv pixels of ``pooled`` windows. In them
    a window's rows lie in one thread of the wgmma accumulator and its maximum is a reduction in
    registers (``kernels._gemm.window_order``): 128 rows on 4 warps and 256 on 8 hold a window
    in a thread (rows r, r + 8 and the same two half a tile down); 128 x 256 on 8 warps would
    spread each over two warpgroups (shuffles and shared memory, sm_90 SASS). Otherwise the
    pooled pixels, at most 64 x 64: a running maximum and offset beside the accumulator make
    three register tiles where the conv keeps one."""
    if window_rows(pool):
        return gemm_heuristic(pooled * pool * pool, cols, red, dtype)
    cfg = gemm_heuristic(pooled, cols, red, dtype)
    if not INTERPRET:
        cfg.update(BLOCK_M=min(cfg["BLOCK_M"], 64), BLOCK_N=min(cfg["BLOCK_N"], 64), num_warps=4)
    return cfg


def conv_config(kernel: str, shape: dict, dtype: torch.dtype, layout: str, heuristic: dict,
                override: Optional[dict], ieee: bool = False) -> dict:
    """The tuned (or heuristic) config from the autotune cache, with ``override`` on top.
    ``ieee`` (float32 without TF32, float64: ``kernels._checks.register_tiles``): the launch is
    its own cache entry (``ieee`` in the shape dict), and its tiles are capped by
    ``autotune.spaces.cap_ieee``, the heuristic's too."""
    if ieee:
        shape = {**shape, "ieee": 1}
    from . import get_config  # (the package imports this module)

    cfg = spaces.cap_ieee(
        kernel, shape, dict(get_config(kernel, shape, dtype, layout, heuristic)), dtype)
    if override:
        cfg.update(override)
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        block = cfg[key]
        if block < 16 or block & (block - 1):
            raise ValueError(f"{kernel} config {key}={block} must be a power of two >= 16")
    cap = spaces.max_warps(kernel, shape)
    if cap is not None:
        cfg["num_warps"] = min(cfg["num_warps"], cap)
    return cfg


def pool_heuristic(layout: str, non_overlap: bool) -> dict:
    """The max-pool kernels' default: 1024 elements per program on 4 warps, 8 per lane, one
    16-byte vector of bf16 channels in NHWC. NCHW overlapping windows read scalars, each lane
    its own window, and 8 per lane there exhausts the registers: 512. The interpreter pays per
    program instance, so it gets the largest tile."""
    if INTERPRET:
        return {"BLOCK": 4096, "num_warps": 4}
    return {"BLOCK": 1024 if layout == "nhwc" or non_overlap else 512, "num_warps": 4}


def pool_config(kernel: str, shape: dict, dtype: torch.dtype, layout: str, non_overlap: bool,
                config: Optional[dict]) -> dict:
    """A max-pool launch's config: ``config`` when given, else the cache's or the heuristic."""
    from . import get_config

    heuristic = pool_heuristic(layout, non_overlap)
    chosen = config if config is not None else get_config(
        kernel, shape, dtype, layout, heuristic)
    return {**heuristic, **chosen}


def avg_pool_config(layout: str, non_overlap: bool, dtype: torch.dtype,
                    config: Optional[dict]) -> dict:
    """The average pool's launch configuration: max-pool's heuristic (:func:`pool_heuristic`),
    half of it in float64, whose per-window divisions take twice the registers; overridden by
    ``config``."""
    heuristic = pool_heuristic(layout, non_overlap)
    if dtype == torch.float64 and not INTERPRET:
        heuristic["BLOCK"] //= 2
    return {**heuristic, **(config or {})}
