"""Pieces shared by the pool kernels (max-pool, average pool): flat element indices, their
(n, c, h, w) digits, output allocation in the input's format and the int64 switch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn._shapes import pooled_len

INT32_LIMIT = 2**31


@triton.jit
def block_indices(BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's BLOCK flat element indices (int64 when offsets can pass 2**31)."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def unflatten(idx, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of flat positions in a contiguous (N, C, H, W) tensor, NCHW or NHWC order."""
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = idx % W
        t = idx // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C
    return n, c, h, w


def empty(shape, dtype, device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


def as_4d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.unsqueeze(0)


def max_address(t: torch.Tensor) -> int:
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def needs_int64(total: int, block: int, *tensors: torch.Tensor) -> bool:
    """Whether flat indices or element offsets of the tensors can reach 2**31."""
    return total + block >= INT32_LIMIT or any(
        max_address(t) >= INT32_LIMIT for t in tensors)


@triton.jit
def rows_tile(C, OH, w_in_v, sxn_v, sxc_v, sxh_v, KW: tl.constexpr, VEC: tl.constexpr,
              INT64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr):
    """The tile of the non-overlapping NCHW forwards ("rows" kernels): BLOCK_R output rows
    (n, c, oh) by BLOCK_OW output columns, and the BLOCK_OW * KW input columns their windows
    read. Returns (output rows, oh, ow, input columns, each row's (n, c) base offset, column mask,
    the input's row stride). The row strides and the read width ``w_in_v`` (min(W, OW * KW), the
    columns some window reads) come divided by VEC, which divides them all: multiplied back
    here, they tell the compiler that runs of VEC elements are aligned, so it loads them as
    vectors; one comparison against the width keeps the column mask constant over such runs."""
    sxn = sxn_v * VEC
    sxc = sxc_v * VEC
    sxh = sxh_v * VEC
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        r = r.to(tl.int64)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    j = tl.program_id(1) * (BLOCK_OW * KW) + tl.arange(0, BLOCK_OW * KW)  # input columns
    oh = r % OH
    t = r // OH
    base = (t // C) * sxn + (t % C) * sxc
    return r, oh, ow, j, base, j < w_in_v * VEC, sxh


def output_hw(op: str, shape, k, s, p, d, ceil_mode: bool) -> tuple[int, int]:
    """Check a (C, H, W) or (N, C, H, W) input shape and the pooling arguments of ``op``
    ("max_pool2d", or "avg_pool2d", which has no dilation: ``d`` None); return (OH, OW).

    Errors are RuntimeErrors, as PyTorch raises them, and name the offending argument.
    """
    if len(shape) not in (3, 4) or any(x == 0 for x in shape[-3:]):
        raise RuntimeError(
            f"{op}: input must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor with non-zero "
            f"C, H and W (only N may be 0), got shape {list(shape)}"
        )
    if min(k) <= 0:
        raise RuntimeError(f"{op}: kernel_size must be greater than zero, got {k}")
    if min(s) <= 0:
        raise RuntimeError(f"{op}: stride must be greater than zero, got {s}")
    if min(p) < 0:
        raise RuntimeError(f"{op}: padding must be non-negative, got {p}")
    if d is not None and min(d) <= 0:
        raise RuntimeError(f"{op}: dilation must be greater than zero, got {d}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise RuntimeError(
            f"{op}: padding must be at most half of kernel_size, got padding={p} and "
            f"kernel_size={k}"
        )
    H, W = shape[-2], shape[-1]
    dh, dw = d if d is not None else (1, 1)
    oh = pooled_len(H, k[0], s[0], p[0], dh, ceil_mode)
    ow = pooled_len(W, k[1], s[1], p[1], dw, ceil_mode)
    if oh < 1 or ow < 1:
        dilation = "" if d is None else f", dilation={d}"
        raise RuntimeError(
            f"{op}: input of spatial size {H}x{W} is too small for kernel_size={k}, "
            f"stride={s}, padding={p}{dilation}: output size {oh}x{ow} is below 1"
        )
    return oh, ow
