"""Config spaces, one per kernel, as data; and the per-shape pruning done before anything is timed.

Each space is a list of candidate configs (plain dicts of the launch parameters a launcher accepts).
:func:`candidates` takes a kernel's space and one problem shape and returns the configs worth
timing:

* **no tile larger than the problem needs**: a block size is clamped to the next power of two of the
  GEMM dimension it tiles (never below 16, since ``tl.dot`` needs at least 16 per dimension), and
  configs that become identical are merged;
* **warp cap**: Triton miscompiles a flattened (r, s, c) reduction loop with 8 warps (pytorch
  issue 173068); the conv main loop (``kernels._gemm.conv_mainloop``) has none: on tensor cores
  its taps are unrolled with ``tl.static_range``, each around its own channel loop. Where the
  taps stay runtime loops (MMAs on registers: IEEE float32 and float64, capped to 4 warps by
  :data:`IEEE_CAPS` / :data:`FP64_CAPS`; the fused pool looping over window elements), the
  kernel keeps at most :data:`MAX_WARPS_RUNTIME_TAPS` warps (:func:`max_warps`), as untested
  ground;
* **IEEE float32 and float64** (``ieee`` in the shape): tiles capped by :data:`IEEE_CAPS` and
  :data:`FP64_CAPS`;
* **registers**: at most :data:`MAX_ACC_PER_THREAD` fp32 accumulator values per thread, counting
  every register tile of the epilogue (:func:`acc_tiles`: ``conv_pool_fwd`` with a pool whose
  windows are not whole rows of its tile keeps a running window maximum and its offset beside the
  accumulator, three tiles; with whole windows as rows it reduces the accumulator in place, one);
* **spills** measured with ``ptxas -v`` (:data:`FP32_SPILLS`, :data:`MIN_WARPS_LOOPED_POOL`):
  configs that the register count above lets through but that spill on sm_90;
* **shared memory**: the pipelined operand tiles,
  ``num_stages * (BLOCK_M*BLOCK_K + BLOCK_K*BLOCK_N)`` elements, must fit the device's per-block
  budget (queried from torch.cuda when a device is present, else :data:`DEFAULT_SMEM_BYTES`, the
  H100/H200 opt-in limit);
* **split count** (``conv_dw``): each split keeps at least one BLOCK_K step of the reduction, and
  only the split counts that bring the grid closest to one full wave are kept.

Shape dicts. The launchers and ``tritoncnn tune`` must build the same shape dict for the same layer,
or tuned entries are never found: build them with :func:`conv_shape` and :func:`pool_shape`. Keys:

* conv kernels (``conv_fwd``, ``conv_dx``, ``conv_dw``, ``conv_pool_fwd``): ``N, C, H, W`` (input),
  ``K, R, S`` (filters), ``P, Q`` (conv output, before any fused pooling), ``stride_h, stride_w,
  pad_h, pad_w, dil_h, dil_w, groups``; plus ``pool`` (the window F = S) for ``conv_pool_fwd`` and
  for the ``conv_dx`` / ``conv_dw`` launches of the fused conv + ReLU + max-pool's backward (tuned
  apart from the plain conv's; a shape dict without ``pool`` is the plain conv); and
  ``ieee=1`` for float32 launches with TF32 off and float64 ones (tiles capped by
  :data:`IEEE_CAPS` / :data:`FP64_CAPS`, tuned apart from TF32's; absent for TF32, bf16 and
  fp16);
* pool kernels (``max_pool_fwd``, ``max_pool_bwd``): ``N, C, H, W`` (input), ``OH, OW`` (output;
  ``ceil_mode`` shows only there), ``KH, KW`` (window), ``SH, SW`` (stride), ``PH, PW`` (padding),
  ``DH, DW`` (dilation).

GEMM view of the conv kernels, used for the tile caps (a missing key only disables that cap):

* ``conv_fwd`` / ``conv_pool_fwd``: M = N*P*Q; for ``conv_pool_fwd`` the conv pixels of whole
  windows, N*(P//pool)*(Q//pool)*pool**2, or with a pool whose pool**2 is no power of two the
  pooled pixels N*(P//pool)*(Q//pool); N = K/groups, reduction = C/groups*R*S;
* ``conv_dx``: M = N*H*W, N = C/groups, reduction = K/groups*R*S;
* ``conv_dw``: M = K/groups, N = C/groups (a column tile is one filter tap's channels: R*S
  times as many tiles), reduction = N*P*Q (split ``SPLIT`` ways).
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterable, Mapping

import torch

from tritoncnn._shapes import as_pair, conv_len, next_pow2, pooled_len, window_rows

# Configs -----------------------------------------------------------------------------------------

CONV_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages): Triton's matmul tutorial set for
# CUDA, plus narrow-N tiles for layers with few output channels and 64-deep tiles for Hopper.
_CONV_TILES = [
    (128, 256, 64, 8, 8, 3),
    (128, 256, 32, 8, 8, 4),
    (256, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 4, 3),
    (128, 128, 32, 8, 4, 4),
    (128, 64, 64, 8, 4, 3),
    (128, 64, 32, 8, 4, 4),
    (64, 128, 64, 8, 4, 3),
    (64, 128, 32, 8, 4, 4),
    (64, 256, 32, 8, 4, 4),
    (64, 64, 64, 8, 4, 3),
    (64, 64, 32, 8, 4, 4),
    (128, 32, 32, 8, 4, 4),
    (64, 32, 32, 8, 4, 5),
    (32, 64, 32, 8, 2, 5),
    (32, 32, 32, 8, 2, 5),
    (128, 16, 32, 8, 4, 4),
    (64, 16, 64, 8, 2, 4),
]

# conv_dw: fewer tiles, each tried with several reduction splits.
_CONV_DW_TILES = [
    (128, 128, 64, 8, 4, 3),
    (128, 128, 32, 8, 4, 4),
    (128, 128, 64, 8, 8, 3),
    (128, 64, 64, 8, 4, 3),
    (128, 64, 32, 8, 4, 4),
    (64, 128, 64, 8, 4, 3),
    (64, 128, 32, 8, 4, 4),
    (64, 64, 64, 8, 4, 3),
    (64, 64, 32, 8, 4, 4),
    (32, 64, 64, 8, 2, 4),
    (64, 32, 64, 8, 2, 4),
    (32, 32, 64, 8, 2, 4),
]
SPLITS = (1, 2, 4, 8, 16, 32, 64, 128)

POOL_BLOCKS = (256, 512, 1024, 2048, 4096)
POOL_WARPS = (4, 8)


def _conv_space(tiles) -> list[dict]:
    return [dict(zip(CONV_KEYS, t)) for t in tiles]


def _pool_space() -> list[dict]:
    return [dict(BLOCK=b, num_warps=w) for b, w in itertools.product(POOL_BLOCKS, POOL_WARPS)]


SPACES: dict[str, list[dict]] = {
    "conv_fwd": _conv_space(_CONV_TILES),
    "conv_dx": _conv_space(_CONV_TILES),
    "conv_dw": [dict(c, SPLIT=s) for c in _conv_space(_CONV_DW_TILES) for s in SPLITS],
    "conv_pool_fwd": _conv_space(_CONV_TILES),
    "max_pool_fwd": _pool_space(),
    "max_pool_bwd": _pool_space(),
}

CONV_KERNELS = ("conv_fwd", "conv_dx", "conv_dw", "conv_pool_fwd")
POOL_KERNELS = ("max_pool_fwd", "max_pool_bwd")

# Pruning limits ----------------------------------------------------------------------------------

MAX_WARPS_RUNTIME_TAPS = 4  # see the module docstring and max_warps
MIN_DOT = 16  # tl.dot needs at least 16 along each dimension
MAX_ACC_PER_THREAD = 128  # fp32 accumulator values per thread before registers spill
ACC_TILES = {"conv_pool_fwd": 3}  # register tiles of BLOCK_M x BLOCK_N per kernel (default 1)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) that spill in float32 (TF32) on sm_90, ptxas -v: dW's
# dZ tile is M-major, which TF32's wgmma cannot read from shared memory, so it passes through
# registers (188 B at 128x128x64 on 4 warps); the forward kernels, whose unrolled taps each
# pipeline their own loads, spill 128 accumulator values per thread of TF32 in the epilogue
# (128x128 on 4 warps: 36-200 B; 128x256x32 on 8: 36 B), where the same tiles with 64 per thread
# (8 warps) fit.
_FP32_FWD_SPILLS = {(128, 128, 64, 4), (128, 128, 32, 4), (128, 256, 32, 8)}
FP32_SPILLS = {"conv_dw": {(128, 128, 64, 4)}, "conv_fwd": _FP32_FWD_SPILLS,
               "conv_dx": _FP32_FWD_SPILLS, "conv_pool_fwd": _FP32_FWD_SPILLS}
# conv_pool_fwd looping over window elements (pool 3) spilled in fp32 with 2 warps (36-72 B).
MIN_WARPS_LOOPED_POOL = 4
# IEEE float32 (TF32 off) runs tl.dot on the FMA units, whose operand tiles live in registers:
# the tensor-core tiles of the heuristics and of TF32 tuning spill there (sm_90, ptxas -v: a
# 128x128 forward 208 B, dX 296 B, dW 72 B). (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) caps
# measured not to spill over C = 3 to 512, K = 64 to 512; key: kernel, pooled (a fused pool's
# kernels). Shape dicts of such launches carry ``ieee=1``.
IEEE_CAPS = {
    ("conv_fwd", False): (64, 64, 32, 4),
    ("conv_dx", False): (64, 64, 32, 4),
    ("conv_dx", True): (64, 64, 32, 4),       # (the fused pool's backward: the same kernels)
    ("conv_dw", False): (64, 64, 32, 4),
    ("conv_dw", True): (64, 64, 32, 4),
    ("conv_pool_fwd", False): (64, 64, 32, 4),    # pool 1
    ("conv_pool_fwd", True): (64, 64, 32, 4),     # whole windows as rows (pool 2, 4)
    ("conv_pool_fwd_loop", True): (64, 32, 32, 4),  # a running maximum per window element
}
# float64 runs tl.dot on mma.sync's fp64 shapes with its operand tiles in registers, as IEEE
# float32 does (its launches carry ``ieee=1`` too), and its accumulators take two registers a
# value: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) caps measured not to spill (sm_90, ptxas -v):
# deeper than 16, dX and dW spill (64x64x32: 16-60 B); dW at 128x128 on 8 warps spills 60 B; the
# fused pool's window loop at 64x32, 36 B.
FP64_DEFAULT_CAPS = (64, 64, 16, 4)
FP64_CAPS = {("conv_pool_fwd_loop", True): (32, 32, 16, 4)}
DEFAULT_SMEM_BYTES = 227 * 1024  # H100/H200: 228 KB per SM, 227 KB opt-in per block
DEFAULT_NUM_SMS = 132  # H100 SXM
SPLITS_KEPT = 2  # conv_dw: the split counts nearest a full GPU (plus SPLIT=1)


@functools.lru_cache(maxsize=None)
def device_limits() -> tuple[int, int]:
    """(shared memory bytes per block, SM count) of the current CUDA device, else H100 values."""
    try:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            smem = getattr(props, "shared_memory_per_block_optin", 0) or DEFAULT_SMEM_BYTES
            return int(smem), int(props.multi_processor_count)
    except Exception:  # a broken driver must not stop shape planning
        pass
    return DEFAULT_SMEM_BYTES, DEFAULT_NUM_SMS


# Shape dicts -------------------------------------------------------------------------------------

def conv_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> dict:
    """The shape dict of a conv layer: input (N, C, H, W), weight (K, C/groups, R, S).

    ``padding`` may be an int, a pair, 'valid' or 'same' (as in ``F.conv2d``), or the resolved
    (top, bottom, left, right) of a launcher's ``ConvGeometry``; ``pad_h`` / ``pad_w`` are the
    top / left padding, P and Q the conv output.
    """
    n, c, h, w = map(int, x_shape)
    k, _, r, s = map(int, w_shape)
    sh, sw = map(int, as_pair(stride, "stride"))
    dh, dw = map(int, as_pair(dilation, "dilation"))
    if padding == "valid":
        pads = (0, 0, 0, 0)
    elif padding == "same":  # an even kernel pads one more on the bottom/right, as F.conv2d does
        th, tw = dh * (r - 1), dw * (s - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(map(int, padding))
    else:
        ph, pw = map(int, as_pair(padding, "padding"))
        pads = (ph, ph, pw, pw)
    p = conv_len(h, r, sh, pads[0] + pads[1], dh)
    q = conv_len(w, s, sw, pads[2] + pads[3], dw)
    return dict(N=n, C=c, H=h, W=w, K=k, R=r, S=s, P=p, Q=q, stride_h=sh, stride_w=sw,
                pad_h=pads[0], pad_w=pads[2], dil_h=dh, dil_w=dw, groups=int(groups))

def cap_ieee(kernel: str, shape: Mapping[str, int], config: dict, dtype=None) -> dict:
    """``config`` with its tiles capped when ``shape`` is an IEEE float32 launch (``ieee`` set) by
    :data:`IEEE_CAPS`, or a float64 one (``ieee`` set too) by :data:`FP64_CAPS`; unchanged
    otherwise."""
    if not shape.get("ieee"):
        return config
    pool = int(shape.get("pool", 1) or 1)
    loop = kernel == "conv_pool_fwd" and not window_rows(pool)
    caps = IEEE_CAPS.get((kernel + ("_loop" if loop else ""), pool > 1))
    if dtype == torch.float64:
        caps = FP64_CAPS.get((kernel + ("_loop" if loop else ""), pool > 1), FP64_DEFAULT_CAPS)
    for key, cap in zip(("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"), caps or ()):
        config[key] = min(config[key], cap)
    return config


def pool_shape(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> dict:
    """The shape dict of a max-pool layer on input (N, C, H, W), arguments as ``F.max_pool2d``."""
    n, c, h, w = (int(d) for d in x_shape)
    r, s = (int(v) for v in as_pair(kernel_size, "kernel_size"))
    no_stride = stride is None or isinstance(stride, (tuple, list)) and len(stride) == 0
    sh, sw = (r, s) if no_stride else (int(v) for v in as_pair(stride, "stride"))
    ph, pw = (int(v) for v in as_pair(padding, "padding"))
    dh, dw = (int(v) for v in as_pair(dilation, "dilation"))
    return dict(N=n, C=c, H=h, W=w, OH=pooled_len(h, r, sh, ph, dh, ceil_mode),
                OW=pooled_len(w, s, sw, pw, dw, ceil_mode), KH=r, KW=s,
                SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw)


def gemm_dims(kernel: str, shape: Mapping[str, int]) -> tuple[int | None, int | None, int | None]:
    """(M, N, reduction) of a conv kernel's implicit GEMM; None where the shape lacks a key."""
    g = int(shape.get("groups", 1) or 1)

    def prod(*keys):
        if not all(k in shape for k in keys):
            return None
        out = 1
        for k in keys:
            out *= int(shape[k])
        return out

    rs = prod("R", "S")
    if kernel in ("conv_fwd", "conv_pool_fwd"):
        k, crs = shape.get("K"), prod("C", "R", "S")
        m = prod("N", "P", "Q")
        pool = int(shape.get("pool", 1) or 1)
        if kernel == "conv_pool_fwd" and pool > 1 and m is not None:
            # rows: the conv pixels of whole windows, or pooled pixels (see window_rows)
            m = int(shape["N"]) * (int(shape["P"]) // pool) * (int(shape["Q"]) // pool)
            if window_rows(pool):
                m *= pool * pool
        return m, (k // g if k else None), (crs // g if crs else None)
    if kernel == "conv_dx":
        c = shape.get("C")
        krs = prod("K") * rs if ("K" in shape and rs) else None
        return prod("N", "H", "W"), (c // g if c else None), (krs // g if krs else None)
    if kernel == "conv_dw":  # (a column tile holds one tap: N is a tap's channels)
        k, c = shape.get("K"), shape.get("C")
        return (k // g if k else None), (c // g if c else None), prod("N", "P", "Q")
    raise KeyError(f"{kernel!r} is not a conv kernel ({', '.join(CONV_KERNELS)})")


def pool_elements(kernel: str, shape: Mapping[str, int]) -> int | None:
    """Elements one pool kernel's grid covers: outputs (forward) or inputs (backward, a gather)."""
    keys = ("N", "C", "OH", "OW") if kernel == "max_pool_fwd" else ("N", "C", "H", "W")
    if not all(k in shape for k in keys):
        return None
    out = 1
    for k in keys:
        out *= int(shape[k])
    return out


# Pruning -----------------------------------------------------------------------------------------

def element_size(dtype) -> int:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}[str(dtype)]


def conv_smem_bytes(cfg: Mapping[str, int], dtype, kernel: str | None = None) -> int:
    """Shared memory of the software pipeline: ``num_stages`` copies of the A and B tiles (what
    sm_90 builds of the conv kernels take; tests/compile_sm90.py compares model and compiler)."""
    a = cfg["BLOCK_M"] * cfg["BLOCK_K"]
    b = cfg["BLOCK_K"] * cfg["BLOCK_N"]
    stages = cfg.get("num_stages", 1)
    return stages * (a + b) * element_size(dtype)


def _cap(block: int, dim: int | None, floor: int) -> int:
    if dim is None:
        return block
    return max(floor, min(block, next_pow2(dim)))


def _dedupe(configs: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for c in configs:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def acc_tiles(kernel: str, shape: Mapping[str, int]) -> int:
    """BLOCK_M x BLOCK_N register tiles a conv kernel keeps: :data:`ACC_TILES`, except for the
    fused pool kernel with whole windows as rows (:func:`window_rows`), which reduces its one
    accumulator in place."""
    if kernel == "conv_pool_fwd" and window_rows(int(shape.get("pool", 1) or 1)):
        return 1
    return ACC_TILES.get(kernel, 1)


def max_warps(kernel: str, shape: Mapping[str, int]) -> int | None:
    """The most warps a launch of ``kernel`` on ``shape`` may take, or None: the fused pool
    looping over window elements keeps its taps as runtime loops (see the module docstring)."""
    if kernel == "conv_pool_fwd" and not window_rows(int(shape.get("pool", 1) or 1)):
        return MAX_WARPS_RUNTIME_TAPS
    return None


def _prune_conv(kernel, space, shape, dtype, smem_budget, num_sms) -> list[dict]:
    m, n, red = gemm_dims(kernel, shape)
    cap_warps = max_warps(kernel, shape)
    out = []
    for cfg in space:
        c = cap_ieee(kernel, shape, dict(cfg), dtype)
        c["BLOCK_M"] = _cap(c["BLOCK_M"], m, MIN_DOT)
        c["BLOCK_N"] = _cap(c["BLOCK_N"], n, MIN_DOT)
        red_per_split = None if red is None else -(-red // c.get("SPLIT", 1))
        c["BLOCK_K"] = _cap(c["BLOCK_K"], red_per_split, MIN_DOT)
        if dtype == torch.float32 and tuple(c[k] for k in (
                "BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")) in FP32_SPILLS.get(kernel, ()):
            continue
        if cap_warps is not None:
            c["num_warps"] = min(c["num_warps"], cap_warps)
        # small tiles need few warps: at least one 16x16 dot per warp
        c["num_warps"] = max(1, min(c["num_warps"], c["BLOCK_M"] * c["BLOCK_N"] // 256))
        tiles = acc_tiles(kernel, shape)
        if kernel == "conv_pool_fwd" and tiles == ACC_TILES[kernel] and \
                c["num_warps"] < MIN_WARPS_LOOPED_POOL:
            continue
        if tiles * c["BLOCK_M"] * c["BLOCK_N"] > MAX_ACC_PER_THREAD * 32 * c["num_warps"]:
            continue
        if conv_smem_bytes(c, dtype, kernel) > smem_budget:
            continue
        if "SPLIT" in c and red is not None and c["SPLIT"] > 1 and red < c["SPLIT"] * c["BLOCK_K"]:
            continue  # a split with nothing to reduce
        out.append(c)
    out = _dedupe(out)
    if kernel == "conv_dw" and m is not None and n is not None:
        taps = int(shape.get("R", 1)) * int(shape.get("S", 1))
        out = _prune_splits(out, m, n, taps, num_sms)
    return out


def _prune_splits(configs: list[dict], m: int, n: int, taps: int, num_sms: int) -> list[dict]:
    """Per tile, keep SPLIT=1 and the SPLITS_KEPT split counts whose grid is nearest one wave."""
    by_tile: dict[tuple, list[dict]] = {}
    for c in configs:
        by_tile.setdefault(tuple((k, v) for k, v in c.items() if k != "SPLIT"), []).append(c)
    out = []
    for group in by_tile.values():
        def grid(c):
            return -(-m // c["BLOCK_M"]) * taps * -(-n // c["BLOCK_N"]) * c["SPLIT"]

        keep = sorted((c for c in group if c["SPLIT"] > 1),
                      key=lambda c: (abs(grid(c) / num_sms - 1.0), c["SPLIT"]))[:SPLITS_KEPT]
        out.extend(c for c in group if c["SPLIT"] == 1 or c in keep)
    return out


def _prune_pool(kernel, space, shape) -> list[dict]:
    total = pool_elements(kernel, shape)
    out = []
    for cfg in space:
        c = dict(cfg)
        c["BLOCK"] = _cap(c["BLOCK"], total, MIN_DOT)
        c["num_warps"] = max(1, min(c["num_warps"], c["BLOCK"] // 32))  # one element per thread
        out.append(c)
    return _dedupe(out)


def candidates(kernel: str, shape: Mapping[str, int], dtype=torch.float32, *,
               space: list[dict] | None = None, smem_budget: int | None = None,
               num_sms: int | None = None) -> list[dict]:
    """The configs of ``kernel``'s space worth timing on ``shape`` (pruned as the module says)."""
    if space is None:
        if kernel not in SPACES:
            raise KeyError(f"no config space for kernel {kernel!r}; known: {', '.join(SPACES)}")
        space = SPACES[kernel]
    dev_smem, dev_sms = device_limits()
    smem_budget = dev_smem if smem_budget is None else smem_budget
    num_sms = dev_sms if num_sms is None else num_sms
    if kernel in CONV_KERNELS:
        return _prune_conv(kernel, space, shape, dtype, smem_budget, num_sms)
    if kernel in POOL_KERNELS:
        return _prune_pool(kernel, space, shape)
    return _dedupe(dict(c) for c in space)
