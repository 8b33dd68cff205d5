"""Conv2d backward: the input gradient dX and the weight and bias gradients dW, db, for the plain
conv (+ ReLU) and the fused conv + ReLU + pool, in three steps:

* **dZ**, the gradient of the conv output before ReLU, is formed once by a memory-bound pass,
  ``_grad_z_kernel``, from its :class:`GradSource` (dY itself, dY masked by ReLU's saved output, or
  the fused pool's pooled gradient routed through its window offsets). The same pass sums db, in a
  fixed order (per-chunk partials, then ``_sum_splits_kernel``): deterministic, no atomics. A
  plain source with no bias to differentiate skips the pass (dZ is dY).
* **dX** is a forward convolution of dZ with the flipped, transposed weight: it runs on the forward
  kernel (:func:`conv.conv2d_forward`), its main loop and its tiles. A stride-1 conv is one such
  convolution (padding ``dil*(R-1) - pad``); a strided one is one per stride phase (the input
  pixels with equal (h + pad) % stride, reached only by every stride-th tap: a smaller filter and
  no zero-inserted dZ), each written into its rows and columns of dX. ``_dx_weight_kernel``
  writes each phase's weight, per group (C, K/groups, taps) channels_last.
* **dW** (``_conv_dw_kernel``): rows = output channels, columns = one filter tap (r, s) by a block
  of input channels per column tile, so that a tile's X rows are whole pixels (one bounds test per
  pixel, contiguous channel loads); reduction over (n, p, q), split SPLIT ways into fp32 partials
  that ``_sum_splits_kernel`` adds in split order (the same launch sums db's partials).

The main loops read dZ straight from memory: no masks built from data, no row sums inside them.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from tritoncnn.autotune import heuristics

from ._checks import (KernelLaunch, PlanCache, cdiv, channel_strides, channel_vector,
                      channels_inner, dot_args, kernel_strides, launch_opts, memory_format_of,
                      register_tiles)
from ._gemm import acc_type, mma, tile_ids, times
from .geometry import ConvGeometry, check_grad_shape, shape_of, tuning_shape

__all__ = ["GradSource", "conv2d_backward", "conv_grads", "differentiable_conv_grads"]

# The layout key of every conv launch (operands go in with their channels at stride 1).
LAYOUT = "nhwc"



# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _grad_z_kernel(
    dy_ptr, m_ptr, dz_ptr, db_ptr,
    P, Q, PP, PQ, K, ROWS, CHUNK, DB_ROW,
    sdn, sdk, sdp, sdq,
    smn, smk, smp, smq,
    szn, szp, szq,
    DY: tl.constexpr, POOL: tl.constexpr, STORE: tl.constexpr, NEED_DB: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dZ (N, K, P, Q), channels at stride 1, from its source ``DY``, and db's partial sums.

    Grid: (chunks, channel blocks). Program (chunk, cb) visits the conv pixels (n, p, q) of rows
    [chunk * CHUNK, (chunk + 1) * CHUNK) for channels of block cb:

    * "plain": dZ is dY (not stored: the caller reads dY itself; the pass sums db only);
    * "relu": dZ = dY where the saved output (``m_ptr``) is > 0, else 0, as PyTorch's
      threshold_backward (a NaN output passes its gradient);
    * "pool": dY and ``m_ptr`` (the window offsets) are pooled (N, K, PP, PQ); a conv pixel gets
      its window's gradient where the window's offset names it ((p % POOL) * POOL + q % POOL),
      else 0; dead windows carry offset -1, which names no pixel, and pixels outside every
      window (an odd conv output floored by the pool) get 0.

    db's partial of the chunk goes to db_ptr + chunk * DB_ROW (fp32; fp64 for fp64), or, with one
    chunk, straight into db (cast)."""
    chunk = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    db = tl.zeros((BLOCK_C,), dtype=acc_type(dy_ptr.dtype.element_ty))
    begin = chunk * CHUNK
    end = tl.minimum(begin + CHUNK, ROWS)
    for t0 in range(begin, end, BLOCK_R):
        t = t0 + tl.arange(0, BLOCK_R)
        mask = (t < end)[:, None] & mask_c[None, :]
        q = t % Q
        p = (t // Q) % P
        n = (t // (P * Q)).to(tl.int64)
        if DY == "pool":
            pp = p // POOL
            pq = q // POOL
            mask = mask & ((pp < PP) & (pq < PQ))[:, None]
            elem = (p - pp * POOL) * POOL + (q - pq * POOL)
            off = tl.load(m_ptr + (n * smn + pp * smp + pq * smq)[:, None]
                          + (offs_c * smk)[None, :], mask=mask, other=-1).to(tl.int32)
            dy = tl.load(dy_ptr + (n * sdn + pp * sdp + pq * sdq)[:, None]
                         + (offs_c * sdk)[None, :], mask=mask, other=0.0)
            dz = tl.where(off == elem[:, None], dy, tl.zeros_like(dy))
        else:
            dz = tl.load(dy_ptr + (n * sdn + p * sdp + q * sdq)[:, None] + (offs_c * sdk)[None, :],
                         mask=mask, other=0.0)
            if DY == "relu":
                y = tl.load(m_ptr + (n * smn + p * smp + q * smq)[:, None]
                            + (offs_c * smk)[None, :], mask=mask, other=0.0)
                dz = tl.where(y <= 0, tl.zeros_like(dz), dz)
        if STORE:
            tl.store(dz_ptr + (n * szn + p * szp + q * szq)[:, None] + offs_c[None, :], dz,
                     mask=(t < ROWS)[:, None] & mask_c[None, :])
        if NEED_DB:
            db += tl.sum(dz.to(db.dtype), axis=0)
    if NEED_DB:
        tl.store(db_ptr + chunk.to(tl.int64) * DB_ROW + offs_c, db.to(db_ptr.dtype.element_ty),
                 mask=mask_c)


@triton.jit
def _dx_weight_kernel(w_ptr, wt_ptr, TOTAL, KG, CG, R0, NR, STEP_R, S0, NS, STEP_S,
                      swk, swc, swr, sws, BLOCK: tl.constexpr):
    """The weight of one stride phase of dX as a forward convolution: the phase's taps r = R0 +
    i*STEP_R (i < NR; s likewise), each group's filters transposed and turned 180 degrees,
    wt[g*CG + c, k, i, j] = w[g*KG + k, c, R0 + (NR-1-i)*STEP_R, S0 + (NS-1-j)*STEP_S], with wt
    (C, KG, NR, NS) channels_last (k innermost) and contiguous, TOTAL elements."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < TOTAL
    k = e % KG
    j = (e // KG) % NS
    i = (e // (KG * NS)) % NR
    co = e // (KG * NS * NR)               # input channel, all groups
    g = co // CG
    src = ((g * KG + k) * swk + (co - g * CG) * swc + (R0 + (NR - 1 - i) * STEP_R) * swr
           + (S0 + (NS - 1 - j) * STEP_S) * sws)
    tl.store(wt_ptr + e, tl.load(w_ptr + src, mask=mask), mask=mask)


@triton.jit
def _conv_dw_kernel(
    dz_ptr, x_ptr, dw_ptr,
    N, H, W, P, Q, R, S, cg_v, kg_v, CHUNK, ROW,
    szn_v, szk, szp_v, szq_v,
    sxn_v, sxc, sxh_v, sxw_v,
    swk, swc, swr, sws,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    LINEAR: tl.constexpr, CV: tl.constexpr, KV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dW, or its partial over one chunk of the (n, p, q) reduction.

    Grid: (row tiles * column tiles, groups, splits). Rows are the output channels of the group;
    a column tile is one filter tap (r, s) by BLOCK_N input channels (R*S*cdiv(CG, BLOCK_N)
    column tiles), so the X tile of a step is BLOCK_K whole pixels shifted by the tap: one bounds
    test per pixel, loads contiguous along the channels. The reduction runs over the pixels
    [split * CHUNK, (split + 1) * CHUNK). The result goes through the strides (swk, swc, swr, sws)
    at dw_ptr + split * ROW: dW's own (one split, cast) or the fp32 partials' (a buffer of
    splits ROW elements apart, summed by ``_sum_splits_kernel``).

    Vector hints (``_gemm``): CG and X's N, H, W strides come divided by CV, KG and dZ's N, P, Q
    strides by KV."""
    CG = cg_v * CV
    sxn, sxh, sxw = times(CV, sxn_v, sxh_v, sxw_v)
    KG = kg_v * KV
    szn, szp, szq = times(KV, szn_v, szp_v, szq_v)
    g = tl.program_id(1)
    split = tl.program_id(2)
    c_blocks = tl.cdiv(CG, BLOCK_N)
    pid_m, pid_n = tile_ids(tl.program_id(0), KG, R * S * c_blocks * BLOCK_N,
                            BLOCK_M, BLOCK_N, GROUP_M)
    tap = pid_n // c_blocks
    r = tap // S
    s = tap % S
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # output channel within the group
    mask_m = offs_m < KG
    chan = g * KG + offs_m
    offs_n = (pid_n - tap * c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel
    mask_n = offs_n < CG
    # The tap's pixel offset, and X's channel columns: fixed for the whole loop. A pixel's X row
    # is h = p * stride_h + r * dil_h - pad_h (w likewise); "0 <= h < H" is one unsigned compare
    # (a negative h wraps to a huge unsigned value).
    tap_h = r * dil_h - pad_h
    tap_w = s * dil_w - pad_w
    x_cols = ((g * CG + offs_n) * sxc)[None, :] + (tap_h * sxh + tap_w * sxw)  # (1, BLOCK_N)
    H_u = tl.cast(H, tl.uint32)
    W_u = tl.cast(W, tl.uint32)

    NPQ = N * P * Q
    t_begin = split * CHUNK
    t_end = tl.minimum(t_begin + CHUNK, NPQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type(dz_ptr.dtype.element_ty))
    # The pixels' (n, p, q) digits: divided out once, then advanced by BLOCK_K pixels a step as
    # a mixed-radix addition of the step's own digits (no division inside the loop)
    offs_t = tl.arange(0, BLOCK_K)
    t = t_begin + offs_t
    q = t % Q
    p = (t // Q) % P
    n = t // (P * Q)
    step_q = BLOCK_K % Q
    step_p = (BLOCK_K // Q) % P
    step_n = BLOCK_K // (P * Q)
    # LINEAR: pixel t of dZ is at t * szq and of X (stride 1, P = H, Q = W) at t * sxw + the
    # tap's offset: a step's addresses are one scalar base plus offsets fixed for the loop
    a_off = (chan * szk)[:, None] + (offs_t * szq)[None, :]         # (BLOCK_M, BLOCK_K)
    b_off = (offs_t * sxw)[:, None] + x_cols                        # (BLOCK_K, BLOCK_N)
    t64 = t_begin.to(tl.int64)                                      # the step's first pixel
    for t0 in range(t_begin, t_end, BLOCK_K):
        mask_t = (t0 + offs_t) < t_end
        if LINEAR:
            a_ptrs = dz_ptr + t64 * szq + a_off
            h = p
            w = q
            b_ptrs = x_ptr + t64 * sxw + b_off
            t64 += BLOCK_K
        else:
            n64 = n.to(tl.int64)
            a_ptrs = dz_ptr + ((chan * szk)[:, None] + (n64 * szn + p * szp + q * szq)[None, :])
            h = p * stride_h
            w = q * stride_w
            b_ptrs = x_ptr + (x_cols + (n64 * sxn + h * sxh + w * sxw)[:, None])
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_t[None, :], other=0.0)  # dZ^T
        ok = (mask_t & (tl.cast(h + tap_h, tl.uint32, bitcast=True) < H_u)
              & (tl.cast(w + tap_w, tl.uint32, bitcast=True) < W_u))
        b = tl.load(b_ptrs, mask=ok[:, None] & mask_n[None, :], other=0.0)  # X (BLOCK_K, BLOCK_N)
        acc = mma(a, b, acc, DOT_FP32, PRECISION)
        q += step_q
        carry = q >= Q
        q = tl.where(carry, q - Q, q)
        p += step_p + carry.to(tl.int32)
        carry = p >= P
        p = tl.where(carry, p - P, p)
        if not LINEAR:
            n += step_n + carry.to(tl.int32)

    dw_off = (chan * swk)[:, None] + (offs_n * swc)[None, :] + (r * swr + s * sws)
    tl.store(dw_ptr + split.to(tl.int64) * ROW + dw_off, acc.to(dw_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_splits_kernel(
    part_ptr, dw_ptr, db_ptr, ROW, L_DW, SPLIT, DB_SPLIT, RSC, CG, S,
    sw_k, sw_c, sw_r, sw_s, sb_k,
    BLOCK: tl.constexpr, SB: tl.constexpr,
):
    """dW[k, c, r, s] and db[k] from fp32 partials (fp64 for fp64 gradients), summed in a fixed
    order, cast to their dtypes and stored through their strides.

    part is (max(SPLIT, DB_SPLIT), ROW) contiguous: each row's first L_DW elements are one split's
    dW partial, (K, R*S*CG) in (r, s, c) order (SPLIT rows of them), the K after them one chunk's
    db partial (DB_SPLIT rows). SB rows are loaded at a time (their loads in flight together)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < ROW
    in_dw = e < L_DW
    rows = tl.where(in_dw, SPLIT, DB_SPLIT)
    acc = tl.zeros((BLOCK,), dtype=part_ptr.dtype.element_ty)
    for i0 in range(0, tl.maximum(SPLIT, DB_SPLIT), SB):
        i = i0 + tl.arange(0, SB)
        tile = tl.load(part_ptr + (i.to(tl.int64) * ROW)[:, None] + e[None, :],
                       mask=(i[:, None] < rows[None, :]) & mask[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    k = e // RSC
    j = e % RSC
    c = j % CG
    s = (j // CG) % S
    r = j // (CG * S)
    tl.store(dw_ptr + (k * sw_k + c * sw_c + r * sw_r + s * sw_s),
             acc.to(dw_ptr.dtype.element_ty), mask=mask & in_dw)
    tl.store(db_ptr + (e - L_DW) * sb_k, acc.to(db_ptr.dtype.element_ty), mask=mask & ~in_dw)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------


class GradSource(NamedTuple):
    """Where the backward reads dZ, the gradient of the conv output (before ReLU):

    * ``GradSource(dy)``: dZ is ``dy`` (N, K, P, Q) itself (a conv without ReLU);
    * ``GradSource(dy, output=y)``: dZ = dY where the saved output ``y`` > 0 (conv + ReLU);
    * ``GradSource(dy, offsets=off, pool=F)``: the fused conv + ReLU + F x F max-pool; ``dy`` is
      the pooled gradient (N, K, P // F, Q // F) and ``off`` the forward's window offsets, -1
      where the pooled output is ReLU's 0: dZ is dY at the pixel a window's offset names, 0
      elsewhere.
    """

    grad: torch.Tensor
    output: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    pool: int = 1

    @property
    def kind(self) -> str:
        """The dZ pass's ``DY`` constexpr: "plain", "relu" or "pool"."""
        return "pool" if self.offsets is not None else "relu" if self.output is not None else \
            "plain"

    def check(self, P: int, Q: int) -> None:
        """Check the tensors against the conv output (P, Q)."""
        N, K = self.grad.shape[:2]
        if self.offsets is None:
            check_grad_shape("grad_output", self.grad, (N, K, P, Q))
            check_grad_shape("output", self.output, (N, K, P, Q))
            return
        pooled = (N, K, P // self.pool, Q // self.pool)
        if any(tuple(t.shape) != pooled for t in (self.grad, self.offsets)):
            raise ValueError(
                f"pooled gradient {shape_of(self.grad)} and offsets {shape_of(self.offsets)} "
                f"must both have the pooled shape {pooled}")


class _Phase(NamedTuple):
    """One axis of a stride phase of dX: the input rows h = first + j*stride (j < count) with
    (h + pad) % stride == a, which only the taps r = r0 + i*step reach (i < taps), each at output
    row p = (h + pad - r*dil) / stride = j + base - i*dilation. As a forward convolution of dZ
    (stride 1, ``dilation``, the taps reversed): padding ``before`` = (taps-1)*dilation - base,
    and ``after`` whatever makes its output ``count`` rows."""

    first: int
    count: int
    r0: int
    taps: int
    step: int
    dilation: int
    before: int
    after: int


def _phase(a: int, pad: int, stride: int, dil: int, size: int, taps: int, out: int) -> _Phase:
    """Phase ``a`` of an axis of ``size`` input rows, ``taps`` filter taps and ``out`` output
    rows (see :class:`_Phase`); step = stride / gcd(stride, dil), dilation = step*dil/stride."""
    first = (a - pad) % stride
    count = max(0, -(-(size - first) // stride))
    step = stride // math.gcd(stride, dil)
    r0 = next((r for r in range(step) if (r * dil - a) % stride == 0), None)
    n = 0 if r0 is None else max(0, -(-(taps - r0) // step))
    dil2 = step * dil // stride
    if n == 0:
        return _Phase(first, count, 0, 0, step, dil2, 0, 0)
    before = (n - 1) * dil2 - (first + pad - r0 * dil) // stride
    return _Phase(first, count, r0, n, step, dil2, before, count - out - before + dil2 * (n - 1))


class _DxPhase(NamedTuple):
    """One stride phase of dX, prepared: where it sits in dX (the index of its view: every
    stride-th row and column from its first; None for a stride-1 conv: all of dX), and its two
    launches (None for pixels no tap reaches: zeros)."""

    index: Optional[tuple]
    weight: tuple                               # (shape, strides): (C, K/groups, taps, taps),
                                                # channels_last
    flip: Optional[KernelLaunch]                # _dx_weight_kernel: w_ptr, wt_ptr
    conv: Optional[KernelLaunch]                # the forward kernel: x_ptr (dZ), w_ptr, y_ptr


class _Plan(NamedTuple):
    """Everything a backward call derives from its signature (shapes, strides, dtype, device,
    geometry, wanted gradients), prepared once (see :func:`_prepare`) and run by :func:`_run`."""

    need: Tuple[bool, bool, bool]   # dX, dW, db returned
    run_dx: bool                    # (an empty dX or dW needs no launch)
    run_dw: bool
    part: Optional[tuple]           # (rows, row, dtype) of the fp32 partials of dW and db
    l_dw: int                       # dW's partials in each row of ``part`` (0: dW stored direct)
    l_db: int                       # db's partials after them (0: db stored direct)
    dz: Optional[tuple]             # (shape, strides) of dZ when formed (None: dZ is dY)
    grad_z: Optional[KernelLaunch]  # dy_ptr, m_ptr, dz_ptr, db_ptr
    dx: Tuple[_DxPhase, ...]
    dw: Optional[KernelLaunch]      # dz_ptr, x_ptr, dw_ptr
    sum: Optional[KernelLaunch]     # part_ptr, dw_ptr, db_ptr


#: conv_grads' prepared plans, by call signature
_PLANS = PlanCache()


def _grad_z_launch(kind: str, pool: int, dy: torch.Tensor, m: torch.Tensor, dz: torch.Tensor,
                   P: int, Q: int, need_db: bool, db_row: int, zc: dict) -> KernelLaunch:
    """The dZ pass (dY, its mask source ``m`` and dZ channels-inner), summing db's partials
    (chunks ``db_row`` elements apart; db itself for one chunk) when ``need_db``."""
    N, K = dz.shape[:2]
    szn, _, szp, szq = kernel_strides(dz)  # (channels at stride 1)
    return KernelLaunch(
        _grad_z_kernel, (zc["chunks"], cdiv(K, zc["BLOCK_C"])),
        ("dy_ptr", "m_ptr", "dz_ptr", "db_ptr"),
        P=P, Q=Q, PP=dy.shape[2], PQ=dy.shape[3], K=K, ROWS=N * P * Q, CHUNK=zc["chunk"],
        DB_ROW=db_row, **dict(zip(("sdn", "sdk", "sdp", "sdq"), kernel_strides(dy))),
        **dict(zip(("smn", "smk", "smp", "smq"), kernel_strides(m))),
        szn=szn, szp=szp, szq=szq, DY=kind, POOL=pool, STORE=dz is not dy, NEED_DB=need_db,
        BLOCK_R=zc["BLOCK_R"], BLOCK_C=zc["BLOCK_C"], num_warps=zc["num_warps"])


def _dx_phases(dz: torch.Tensor, input: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry,
               shape: dict, allow_tf32: Optional[bool], config: Optional[dict]
               ) -> Tuple[_DxPhase, ...]:
    """dX's stride phases (one for stride 1) from dZ (channels at stride 1) and the
    channels-inner weight ``w``: each a forward convolution of dZ with that phase's taps of the
    weight, flipped and transposed (``_dx_weight_kernel``), written into the phase's rows and
    columns of dX by the forward kernel (:func:`.conv.forward_launch`; its config is the
    "conv_dx" cache entry of the conv's shape). Pixels no tap reaches get 0."""
    from .conv import forward_launch  # (conv imports this module)

    N, C, H, W = input.shape
    K, CG, R, S = w.shape
    KG, groups = K // geometry.groups, geometry.groups
    P, Q = dz.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    dx = torch.empty_like(input, memory_format=memory_format_of(input), device="meta")
    ws = kernel_strides(w)
    phases = []
    for a_h in range(sh):
        rows = _phase(a_h, pt, sh, dh, H, R, P)
        for a_w in range(sw):
            cols = _phase(a_w, pl, sw, dw, W, S, Q)
            index = None if (sh, sw) == (1, 1) else (
                slice(None), slice(None), slice(rows.first, None, sh), slice(cols.first, None, sw))
            view = dx if index is None else dx[index]
            if view.numel() == 0:
                continue
            wt = torch.empty((C, KG, rows.taps, cols.taps), device="meta", dtype=w.dtype,
                             memory_format=torch.channels_last)
            if rows.taps == 0 or cols.taps == 0:  # no tap reaches these pixels
                phases.append(_DxPhase(index, (wt.shape, wt.stride()), None, None))
                continue
            block = 1024
            flip = KernelLaunch(
                _dx_weight_kernel, (cdiv(wt.numel(), block),), ("w_ptr", "wt_ptr"),
                TOTAL=wt.numel(), KG=KG, CG=CG, R0=rows.r0, NR=rows.taps, STEP_R=rows.step,
                S0=cols.r0, NS=cols.taps, STEP_S=cols.step,
                **dict(zip(("swk", "swc", "swr", "sws"), ws)), BLOCK=block)
            phase = ConvGeometry((1, 1), (rows.before, rows.after, cols.before, cols.after),
                                 (rows.dilation, cols.dilation), groups)
            conv = forward_launch(dz, wt, False, view, phase, False, allow_tf32, config,
                                  ("conv_dx", shape))
            phases.append(_DxPhase(index, (wt.shape, wt.stride()), flip, conv))
    return tuple(phases)


def _dw_launch(dz: torch.Tensor, x: torch.Tensor, dst_strides: tuple, row: int, cfg: dict,
               chunk: int, split: int, geometry: ConvGeometry, K: int, R: int, S: int,
               allow_tf32: Optional[bool]) -> KernelLaunch:
    """dW (one split: into dW, through its strides ``dst_strides``) or its fp32 partials
    (splits ``row`` elements apart, (K, R*S*CG) each)."""
    N, C, H, W = x.shape
    CG = C // geometry.groups
    KG = K // geometry.groups
    P, Q = dz.shape[2:]
    zs, xs = kernel_strides(dz), kernel_strides(x)
    kv, cv = channel_vector(KG, zs), channel_vector(CG, xs)
    szn, szk, szp, szq = channel_strides(zs, kv)
    sxn, sxc, sxh, sxw = channel_strides(xs, cv)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    tiles = cdiv(KG, cfg["BLOCK_M"]) * R * S * cdiv(CG, cfg["BLOCK_N"])
    linear = (sh, sw) == (1, 1) and (H, W) == (P, Q) and zs[2] == Q * zs[3] and \
        zs[0] == P * zs[2] and xs[2] == W * xs[3] and xs[0] == H * xs[2]
    return KernelLaunch(
        _conv_dw_kernel, (tiles, geometry.groups, split), ("dz_ptr", "x_ptr", "dw_ptr"),
        N=N, H=H, W=W, P=P, Q=Q, R=R, S=S, cg_v=CG // cv, kg_v=KG // kv, CHUNK=chunk, ROW=row,
        szn_v=szn, szk=szk, szp_v=szp, szq_v=szq, sxn_v=sxn, sxc=sxc, sxh_v=sxh, sxw_v=sxw,
        **dict(zip(("swk", "swc", "swr", "sws"), dst_strides)),
        stride_h=sh, stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw,
        LINEAR=linear, CV=cv, KV=kv, **dot_args(x.dtype, allow_tf32), **launch_opts(cfg))


def _sum_launch(row: int, dw_strides: Optional[tuple], l_dw: int, split: int, db_split: int,
                CG: int, R: int, S: int) -> KernelLaunch:
    """dW and db from their partials (see ``_sum_splits_kernel``): one launch for both."""
    block = max(16, min(16384, triton.next_power_of_2(row))) if heuristics.INTERPRET else 1024
    return KernelLaunch(
        _sum_splits_kernel, (cdiv(row, block),), ("part_ptr", "dw_ptr", "db_ptr"),
        ROW=row, L_DW=l_dw, SPLIT=split, DB_SPLIT=db_split, RSC=max(R * S * CG, 1),
        CG=max(CG, 1), S=S, **dict(zip(("sw_k", "sw_c", "sw_r", "sw_s"), dw_strides or (0,) * 4)),
        sb_k=1, BLOCK=block, SB=8)


def _prepare(src: GradSource, input: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry,
             needs: Tuple[bool, bool, bool], allow_tf32: Optional[bool], configs: dict
             ) -> Optional[_Plan]:
    """The plan of a backward call (None when no gradient flows: every wanted one is zeros).
    Temporaries are meta tensors here: only their shapes and strides are read."""
    need_dx, need_dw, need_db = needs
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    P, Q = geometry.output_size(H, W, R, S)
    NPQ, RSC = N * P * Q, R * S * CG
    run_dx = need_dx and input.numel() > 0
    run_dw = need_dw and RSC > 0
    if NPQ == 0 or K == 0 or not (run_dx or run_dw or need_db):
        return None
    x, w = channels_inner(input), channels_inner(weight)
    shape = tuning_shape(x, w, geometry, src.pool)
    KG = K // geometry.groups
    split = chunk = 1
    if run_dw:
        cfg = heuristics.conv_config(
            "conv_dw", shape, input.dtype, LAYOUT,
            heuristics.dw_heuristic(KG, CG, R * S, NPQ, geometry.groups, input.dtype,
                                    input.device), configs.get("conv_dw"),
            register_tiles(input.dtype, allow_tf32))
        chunk = cdiv(cdiv(NPQ, max(1, cfg["SPLIT"])), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
        split = cdiv(NPQ, chunk)
    zc = heuristics.grad_z_config(NPQ, K, input.device)
    db_split = zc["chunks"] if need_db else 0
    # fp32 partials (fp64 for fp64) of dW's splits, then of db's chunks, one row per split
    l_dw = K * RSC if split > 1 else 0
    l_db = K if db_split > 1 else 0
    part = None
    if l_dw or l_db:
        part = (max(split if l_dw else 0, db_split if l_db else 0), l_dw + l_db,
                torch.float64 if input.dtype == torch.float64 else torch.float32)
    row = part[1] if part is not None else 0
    kind = src.kind
    dy = channels_inner(src.grad)
    store = (run_dx or run_dw) and kind != "plain"
    grad_z = dz_shape = None
    dz = dy
    if need_db or store:
        if store:
            dz = torch.empty((N, K, P, Q), device="meta", dtype=dy.dtype,
                             memory_format=torch.channels_last)
            dz_shape = (dz.shape, dz.stride())
        m = dy if kind == "plain" else \
            channels_inner(src.output if kind == "relu" else src.offsets)
        grad_z = _grad_z_launch(kind, src.pool, dy, m, dz, P, Q, need_db, row, zc)
    dx = _dx_phases(dz, input, w, geometry, shape, allow_tf32, configs.get("conv_dx")) \
        if run_dx else ()
    dw = None
    dw_strides = kernel_strides(torch.empty_like(weight, device="meta"))  # (as _run allocates)
    if run_dw:
        dst_strides = (RSC, 1, S * CG, CG) if l_dw else dw_strides
        dw = _dw_launch(dz, x, dst_strides, row, cfg, chunk, split, geometry, K, R, S,
                        allow_tf32)
    total = None
    if part is not None:
        total = _sum_launch(row, dw_strides if l_dw else None, l_dw,
                            split if l_dw else 0, db_split if l_db else 0, CG, R, S)
    return _Plan(needs, run_dx, run_dw, part, l_dw, l_db, dz_shape, grad_z, dx, dw, total)


def _run(plan: _Plan, src: GradSource, input: torch.Tensor, weight: torch.Tensor
         ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dX, dW, db) by the prepared ``plan``."""
    need_dx, need_dw, need_db = plan.need
    dw = torch.empty_like(weight) if need_dw else None
    db = torch.empty((weight.shape[0],), device=weight.device, dtype=weight.dtype) \
        if need_db else None
    part = None
    if plan.part is not None:
        rows, row, dtype = plan.part
        part = torch.empty((rows, row), device=weight.device, dtype=dtype)
    dy = channels_inner(src.grad)
    dz = dy
    if plan.grad_z is not None:
        if plan.dz is not None:
            dz = torch.empty_strided(*plan.dz, device=dy.device, dtype=dy.dtype)
        kind = src.kind
        m = dy if kind == "plain" else \
            channels_inner(src.output if kind == "relu" else src.offsets)
        # without db, a tensor the pass only reads stands in for it: never one it writes (dz),
        # as a traced launch (torch.compile) copies each argument it may write on its own
        db_dst = (part[:, plan.l_dw:] if plan.l_db else db) if need_db else dy
        plan.grad_z(dy_ptr=dy, m_ptr=m, dz_ptr=dz, db_ptr=db_dst)
    dx = None
    if need_dx:
        dx = torch.empty_like(input, memory_format=memory_format_of(input))
        if plan.dx:
            w = channels_inner(weight)
            for phase in plan.dx:
                view = dx if phase.index is None else dx[phase.index]
                if phase.conv is None:
                    view.zero_()
                    continue
                wt = torch.empty_strided(*phase.weight, device=w.device, dtype=w.dtype)
                phase.flip(w_ptr=w, wt_ptr=wt)
                phase.conv(x_ptr=dz, w_ptr=wt, b_ptr=wt, y_ptr=view)
    if plan.dw is not None:
        plan.dw(dz_ptr=dz, x_ptr=channels_inner(input), dw_ptr=part if plan.l_dw else dw)
    if plan.sum is not None:
        plan.sum(part_ptr=part, dw_ptr=dw if plan.l_dw else part,
                 db_ptr=db if plan.l_db else part)
    return dx, dw, db


def conv_grads(src: GradSource, input: torch.Tensor, weight: torch.Tensor,
               geometry: ConvGeometry, needs: Tuple[bool, bool, bool] = (True, True, True),
               allow_tf32: Optional[bool] = None, configs: Optional[dict] = None
               ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dX, dW, db) for the conv-output gradient ``src``, None where ``needs`` says not wanted.
    dX keeps input's memory format, dW weight's strides. ``configs`` maps "conv_dx" /
    "conv_dw" to launch-config overrides.

    The work is planned once per call signature (:class:`_Plan`, kept in :data:`_PLANS` unless
    ``configs`` overrides a config): configs, strides, vector hints and launches."""
    key = None
    needs = tuple(needs)
    if not configs:
        m = src.output if src.offsets is None else src.offsets
        key = (src.grad.shape, src.grad.stride(), None if m is None else (m.shape, m.stride()),
               src.pool,
               src.offsets is not None, input.shape, input.stride(), weight.shape,
               weight.stride(), input.dtype, input.device, geometry, needs,
               torch.backends.cudnn.allow_tf32 if allow_tf32 is None else allow_tf32)

    def build():
        N, C, H, W = input.shape
        src.check(*geometry.output_size(H, W, *weight.shape[2:]))
        return _prepare(src, input, weight, geometry, needs, allow_tf32, configs or {})

    plan = _PLANS.lookup(key, build)
    if plan is None:  # no gradient flows
        need_dx, need_dw, need_db = needs
        return (torch.zeros_like(input, memory_format=memory_format_of(input))
                if need_dx else None,
                torch.zeros_like(weight) if need_dw else None,
                weight.new_zeros((weight.shape[0],)) if need_db else None)
    return _run(plan, src, input, weight)


def conv2d_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                    output: Optional[torch.Tensor], geometry: ConvGeometry, relu: bool = False,
                    needs: Tuple[bool, bool, bool] = (True, True, True),
                    allow_tf32: Optional[bool] = None, configs: Optional[dict] = None
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                               Optional[torch.Tensor]]:
    """(dX, dW, db) of ``conv2d_forward``; each is None where ``needs`` says it is not wanted.

    ``output`` is the saved forward output, needed only for ``relu`` (its mask forms dZ).
    ``configs`` maps "conv_dx" / "conv_dw" to config overrides. dX keeps input's memory format,
    dW weight's strides.
    """
    if relu and output is None:
        raise ValueError("conv2d_backward with relu=True needs the saved forward output")
    src = GradSource(grad_output, output if relu else None)
    return conv_grads(src, input, weight, geometry, needs, allow_tf32, configs)


def differentiable_conv_grads(grad_z: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                              geometry: ConvGeometry, mask) -> list:
    """[dX, dW, db] (None where ``mask`` says not needed) of conv2d(input, weight) + b for the
    conv-output gradient ``grad_z``, through PyTorch's own convolution backward, which is
    differentiable (and has torch.func rules).

    What the backward passes return when autograd records them (``create_graph=True``, and
    torch.func's grad, vjp and jacrev): the gradients are then functions of input, weight and
    the incoming gradient that can be differentiated again (gradient penalties, Hessian-vector
    products), which the kernels' results are not. Their values are PyTorch's (its TF32 setting
    included), to rounding."""
    need_dx, need_dw, need_db = mask
    dx = dw = None
    if need_dx or need_dw:
        pt, pb, pl, pr = geometry.padding
        H, W = input.shape[2:]
        with torch.autocast(input.device.type, enabled=False):
            dxp, dw, _ = torch.ops.aten.convolution_backward(
                grad_z, torch.nn.functional.pad(input, (pl, pr, pt, pb)), weight, None,
                list(geometry.stride), [0, 0], list(geometry.dilation), False, [0, 0],
                geometry.groups, [need_dx, need_dw, False])
        dx = dxp[:, :, pt:pt + H, pl:pl + W] if need_dx else None
    return [dx, dw, grad_z.sum((0, 2, 3)) if need_db else None]
