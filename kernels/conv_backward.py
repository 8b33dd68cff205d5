"""Conv2d backward: the input gradient dX and the weight and bias gradients dW, db, on the
implicit-GEMM core of ``_gemm``, for the plain conv (+ ReLU) and the fused conv + ReLU + pool.

* input gradient ``_conv_dx_kernel``: the transposed GEMM, rows = input pixels (n, h, w), columns =
  input channels, reduction over (r, s, k). Stride-phase form: each program serves one phase
  ((h + pad) % stride) and visits only the taps that map its pixels onto output pixels (only the
  image borders are masked) -- no zero-inserted dY, no multiply-adds wasted on stride holes.
* weight gradient ``_conv_dw_kernel``: rows = output channels, columns = (r, s, c), reduction over
  (n, p, q) split into SPLIT chunks; each chunk writes an fp32 partial and ``_sum_splits_kernel``
  adds them in a fixed order (deterministic, no atomics); one split stores dW straight into the
  weight (through its strides, ``DW_STRIDED``, unless they are the partials' (r, s, c) order).
  db is the same sum of dZ.

Both read the conv-output gradient dZ from an explicit :class:`GradSource`: dY itself, dY masked by
ReLU (the saved output), or the fused pool's pooled gradient routed through its window offsets;
dZ is rebuilt while the tiles load and never stored.

The dX reduction is one flattened loop over (tap, channel block), so Triton pipelines it across
taps; Triton miscompiles that loop form at num_warps >= 8 (pytorch/pytorch#173068), so its configs
are capped at 4 warps (``autotune.spaces.MAX_WARPS``). dW loops over pixels and is not capped.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from tritoncnn.autotune import heuristics, spaces

from ._checks import (INTERPRET, cdiv, channel_strides, channel_vector, channels_inner, dot_args,
                      kernel_strides, launch, launch_opts, memory_format_of, next_pow2,
                      pixel_vector, register_tiles)
from ._gemm import acc_type, mma, tile_ids, times
from .geometry import ConvGeometry, check_grad_shape, shape_of, tuning_shape

__all__ = ["GradSource", "conv2d_backward", "conv2d_input_grad", "conv2d_weight_grad",
           "differentiable_conv_grads"]

# The layout key of every conv launch (operands go in with their channels at stride 1).
LAYOUT = "nhwc"

# dX GEMMs of at least this many FLOPs (a few microseconds of TF32 tensor-core time) read a
# k-innermost copy of the weight; smaller ones are launch-bound and skip the copy's launch
K_MAJOR_DX_MIN_FLOP = 2 ** 32


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_dz(dy_ptr, dy_off, m_ptr, m_off, elem, mask, DY: tl.constexpr):
    """dZ, the conv-output gradient, at conv-output pixels, from its source ``DY``:

    * "plain": dY itself (dy_off addresses the pixel);
    * "relu": dY where the saved output (``m_ptr``, at ``m_off``: the same pixel) is > 0, else 0,
      as PyTorch's threshold_backward (a NaN output passes its gradient);
    * "pool" (the fused max-pool, any POOL): dy_off / m_off address the pooled gradient and the
      window offsets (``m_ptr``) at the pixel's window (p // POOL, q // POOL), and ``elem`` is the
      pixel's place in that window, (p % POOL) * POOL + q % POOL. The gradient reaches the pixel
      only where the window's saved offset names it; windows whose pooled output is ReLU's 0 carry
      offset -1, which names no pixel: the ReLU mask is in the offsets.
    """
    if DY == "pool":
        # dY loaded under the bounds mask alone, then zeroed where the offset names another
        # pixel: a mask that depends on loaded data would make every load a scalar one
        off = tl.load(m_ptr + m_off, mask=mask, other=-1).to(tl.int32)
        dy = tl.load(dy_ptr + dy_off, mask=mask, other=0.0)
        dy = tl.where(off == elem, dy, tl.zeros_like(dy))
    else:
        dy = tl.load(dy_ptr + dy_off, mask=mask, other=0.0)
        if DY == "relu":
            y = tl.load(m_ptr + m_off, mask=mask, other=0.0)
            dy = tl.where(y <= 0, tl.zeros_like(dy), dy)
    return dy


@triton.jit
def _first_tap(a, stride, dil, STEP, NONE):
    """Smallest tap index r with (a - r*dil) % stride == 0, where the phase a is (h + pad) % stride
    of the input rows: the taps of this phase are r, r + STEP, ... with STEP = stride /
    gcd(stride, dil). Returns NONE when no tap of the phase ever reaches an output pixel."""
    first = a * 0 + STEP                                   # an int32 tensor: loop-carried
    for t in range(STEP):
        hit = ((a - t * dil) % stride == 0) & (first == STEP)
        first = tl.where(hit, t, first)
    return tl.where(first < STEP, first, NONE)


@triton.jit
def _conv_dx_kernel(
    dy_ptr, m_ptr, w_ptr, dx_ptr,
    N, H, w_v, P, Q, R, S, cg_v, kg_v,
    sdn_v, sdk, sdp_v, sdq_v,
    smn_v, smk, smp_v, smq_v,
    swk_v, swc, swr_v, sws_v,
    sxn_v, sxc_v, sxh_v, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    STEP_R, STEP_S, HP, WP,
    DY: tl.constexpr, POOL: tl.constexpr, XV: tl.constexpr,
    CV: tl.constexpr, KV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dX = conv_transpose(dZ, Wt), stride-phase form; dZ is rebuilt from its source ``DY`` while
    it is loaded (``_load_dz``; the mask source ``m_ptr`` has strides smn, smk, smp, smq). For the
    fused pool's source the launcher passes P, Q = the conv pixels the pooling windows cover,
    PP*POOL x PQ*POOL.

    Grid: (row tiles * column tiles, groups, stride_h * stride_w phases). Phase (a_h, a_w) owns the
    input pixels with (h + pad_h) % stride_h == a_h and (w + pad_w) % stride_w == a_w; for them,
    only taps r = r0 + i*STEP_R (and s likewise) land on an output pixel, p = (h + pad_h - r*dil_h)
    / stride_h exactly. HP, WP = ceil(H/stride_h), ceil(W/stride_w) bound the pixels of a phase.
    Pixels that no output touches get zeros, so dX is written once, entirely.

    Vector hints (``_gemm``): W and dX's N, C, H strides come divided by XV (1 unless dX's
    pixels are at stride 1, an NCHW dX, and stride_w is 1), CG and Wt's K, R, S strides by CV,
    KG and dY's and the mask source's N, P, Q strides by KV.
    """
    W = w_v * XV
    sxn, sxc, sxh = times(XV, sxn_v, sxc_v, sxh_v)
    CG = cg_v * CV
    swk, swr, sws = times(CV, swk_v, swr_v, sws_v)
    KG = kg_v * KV
    sdn, sdp, sdq = times(KV, sdn_v, sdp_v, sdq_v)
    smn, smp, smq = times(KV, smn_v, smp_v, smq_v)
    g = tl.program_id(1)
    phase = tl.program_id(2)
    a_h = phase // stride_w
    a_w = phase % stride_w
    h_first = ((a_h - pad_h) % stride_h + stride_h) % stride_h   # first input row of the phase
    h_count = (H - h_first + stride_h - 1) // stride_h           # rows of the phase (maybe 0)
    if XV > 1:  # stride_w 1: one column phase holding every column, w = offs_m % W
        w_first = 0
        w_count = W
        wc = W
    else:
        w_first = ((a_w - pad_w) % stride_w + stride_w) % stride_w
        w_count = (W - w_first + stride_w - 1) // stride_w
        wc = tl.maximum(w_count, 1)
    M = N * h_count * w_count
    pid_m, pid_n = tile_ids(tl.program_id(0), N * HP * WP, CG, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)            # input pixel of this phase
    mask_m = offs_m < M
    hc = tl.maximum(h_count, 1)
    n = offs_m // (hc * wc)  # (a product: keeps W's divisibility by XV, which a maximum loses)
    h = h_first + ((offs_m // wc) % hc) * stride_h
    w = w_first + (offs_m % wc) * stride_w
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)            # input channel within the group
    mask_n = offs_n < CG

    r0 = _first_tap(a_h, stride_h, dil_h, STEP_R, R)
    s0 = _first_tap(a_w, stride_w, dil_w, STEP_S, S)
    n_r = tl.where(r0 < R, (R - r0 + STEP_R - 1) // STEP_R, 0)
    n_s = tl.where(s0 < S, (S - s0 + STEP_S - 1) // STEP_S, 0)

    dy_row = n.to(tl.int64) * sdn
    m_row = n.to(tl.int64) * smn
    # A tap r reaches output row p = (h + pad_h - r*dil_h) / stride_h. In this phase h + pad_h
    # and r*dil_h are both a_h plus a non-negative multiple of stride_h (a_h < stride_h), so
    # p = (h + pad_h) // stride_h - (r*dil_h) // stride_h exactly: a per-row part, divided once
    # here, and a per-tap scalar; no division per row in the loop.
    p_row = (h + pad_h) // stride_h                             # (BLOCK_M,)
    q_row = (w + pad_w) // stride_w
    P_u = tl.cast(P, tl.uint32)
    Q_u = tl.cast(Q, tl.uint32)
    dy_base = dy_row + p_row * sdp + q_row * sdq                # (BLOCK_M,): used when POOL is 1
    m_base = m_row + p_row * smp + q_row * smq
    offs_k = tl.arange(0, BLOCK_K)
    k_blocks = tl.cdiv(KG, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type(dy_ptr.dtype.element_ty))
    for it in range(n_r * n_s * k_blocks):
        kb = it % k_blocks
        rs = it // k_blocks
        r = r0 + (rs // n_s) * STEP_R
        s = s0 + (rs % n_s) * STEP_S
        dr = (r * dil_h) // stride_h                           # the tap's output-row step
        dc = (s * dil_w) // stride_w
        p = p_row - dr
        q = q_row - dc
        # 0 <= p < P as one unsigned compare (a negative p wraps to a huge unsigned value)
        ok = (mask_m & (tl.cast(p, tl.uint32, bitcast=True) < P_u)
              & (tl.cast(q, tl.uint32, bitcast=True) < Q_u))
        k = kb * BLOCK_K + offs_k
        mask_k = k < KG
        chan = g * KG + k                                       # output channel
        mask_a = ok[:, None] & mask_k[None, :]
        if POOL == 1:  # dY's pixel is p itself: the per-row address less a per-tap scalar
            dy_off = dy_base - (dr * sdp + dc * sdq)
            m_off = m_base - (dr * smp + dc * smq)
            elem = 0                                            # (a window of one pixel)
        else:  # dY's pixel is p's window
            pp = p // POOL
            pq = q // POOL
            elem = ((p - pp * POOL) * POOL + (q - pq * POOL))[:, None]
            dy_off = dy_row + pp * sdp + pq * sdq
            m_off = m_row + pp * smp + pq * smq
        a = _load_dz(dy_ptr, dy_off[:, None] + (chan * sdk)[None, :],
                     m_ptr, m_off[:, None] + (chan * smk)[None, :],
                     elem, mask_a, DY)  # (BLOCK_M, BLOCK_K)
        b = tl.load(w_ptr + ((chan * swk)[:, None] + (offs_n * swc)[None, :] + r * swr + s * sws),
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = mma(a, b, acc, DOT_FP32, PRECISION)

    dx_off = (n.to(tl.int64) * sxn + h * sxh + w * sxw)[:, None] + ((g * CG + offs_n) * sxc)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv_dw_kernel(
    dy_ptr, m_ptr, x_ptr, dw_part_ptr, db_part_ptr,
    N, H, W, P, Q, R, S, cg_v, kg_v, K, CHUNK, ROW,
    sdn_v, sdk, sdp_v, sdq_v,
    smn_v, smk, smp_v, smq_v,
    sxn_v, sxc, sxh_v, sxw_v,
    swk, swc, swr, sws,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, DY: tl.constexpr, POOL: tl.constexpr,
    DW_STRIDED: tl.constexpr, CV: tl.constexpr, KV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Partial dW and db over one chunk of the (n, p, q) reduction.

    Grid: (row tiles * column tiles, groups, splits). Rows are output channels of the group,
    columns the flattened (r, s, c) taps (c innermost), the reduction runs over pixels
    [split * CHUNK, (split + 1) * CHUNK). Writes fp32 partials, split after split ROW elements
    apart (one buffer holds both, summed by one ``_sum_splits_kernel``): dw_part (K, R*S*CG)
    contiguous, db_part (K,) from the first column tile.
    With one split (nothing to sum) dw_part / db_part are dW and db themselves, stored cast: db
    (K,) contiguous, dW at the partials' offsets when its strides are (R*S*CG, 1, S*CG, CG) (a
    channels_last weight), else (``DW_STRIDED``) through its strides (swk, swc, swr, sws).
    dZ is rebuilt from its source ``DY`` while it is loaded (``_load_dz``); for the fused
    pool's source the launcher passes P, Q = PP*POOL, PQ*POOL, so only pixels inside a window
    are visited. Vector hints (``_gemm``): CG and X's N, H, W strides come divided by CV, KG and
    dY's and the mask source's N, P, Q strides by KV.
    """
    CG = cg_v * CV
    sxn, sxh, sxw = times(CV, sxn_v, sxh_v, sxw_v)
    KG = kg_v * KV
    sdn, sdp, sdq = times(KV, sdn_v, sdp_v, sdq_v)
    smn, smp, smq = times(KV, smn_v, smp_v, smq_v)
    g = tl.program_id(1)
    split = tl.program_id(2)
    RSC = R * S * CG
    if NEED_DW:
        pid_m, pid_n = tile_ids(tl.program_id(0), KG, RSC, BLOCK_M, BLOCK_N, GROUP_M)
    else:  # db only: one column tile
        pid_m, pid_n = tile_ids(tl.program_id(0), KG, 1, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # output channel within the group
    mask_m = offs_m < KG
    chan = g * KG + offs_m
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # tap (r, s, c)
    mask_n = offs_n < RSC
    c = offs_n % CG
    s = (offs_n // CG) % S
    r = offs_n // (CG * S)
    col_h = r * dil_h - pad_h                              # (BLOCK_N,)
    col_w = s * dil_w - pad_w
    # X's address splits into a pixel part and a column part: h * sxh + w * sxw with h = p *
    # stride_h + col_h, w likewise. The column part is fixed for the whole loop; the bounds test
    # of h (and w) is one unsigned compare (a negative h wraps to a huge unsigned value).
    col_x = (g * CG + c) * sxc + col_h * sxh + col_w * sxw  # (BLOCK_N,)
    col_h_u = tl.cast(col_h, tl.uint32, bitcast=True)
    col_w_u = tl.cast(col_w, tl.uint32, bitcast=True)
    H_u = tl.cast(H, tl.uint32)
    W_u = tl.cast(W, tl.uint32)

    NPQ = N * P * Q
    t_begin = split * CHUNK
    t_end = tl.minimum(t_begin + CHUNK, NPQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type(dy_ptr.dtype.element_ty))
    acc_b = tl.zeros((BLOCK_M,), dtype=acc.dtype)
    # The pixels' (n, p, q) digits: divided out once, then advanced by BLOCK_K pixels a step as
    # a mixed-radix addition of the step's own digits (no division inside the loop)
    t = t_begin + tl.arange(0, BLOCK_K)
    q = t % Q
    p = (t // Q) % P
    n = t // (P * Q)
    step_q = BLOCK_K % Q
    step_p = (BLOCK_K // Q) % P
    step_n = BLOCK_K // (P * Q)
    for t0 in range(t_begin, t_end, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)                     # output pixel (n, p, q)
        mask_t = t < t_end
        mask_a = mask_m[:, None] & mask_t[None, :]
        pp = p // POOL                                     # dY's pixel: p itself, or its window
        pq = q // POOL
        elem = (p - pp * POOL) * POOL + (q - pq * POOL)
        n64 = n.to(tl.int64)
        a = _load_dz(dy_ptr, (chan * sdk)[:, None] + (n64 * sdn + pp * sdp + pq * sdq)[None, :],
                     m_ptr, (chan * smk)[:, None] + (n64 * smn + pp * smp + pq * smq)[None, :],
                     elem[None, :], mask_a, DY)  # dZ^T (BLOCK_M, BLOCK_K)
        if NEED_DB:
            acc_b += tl.sum(a.to(acc.dtype), axis=1)
        if NEED_DW:
            h0 = p * stride_h                              # (BLOCK_K,): the tap (0, 0) pixel
            w0 = q * stride_w
            ok = ((mask_t[:, None] & mask_n[None, :])
                  & (tl.cast(h0, tl.uint32)[:, None] + col_h_u[None, :] < H_u)
                  & (tl.cast(w0, tl.uint32)[:, None] + col_w_u[None, :] < W_u))
            row_x = n64 * sxn + h0 * sxh + w0 * sxw         # (BLOCK_K,) int64
            b = tl.load(x_ptr + (row_x[:, None] + col_x[None, :]),
                        mask=ok, other=0.0)                # X patches (BLOCK_K, BLOCK_N)
            acc = mma(a, b, acc, DOT_FP32, PRECISION)
        q += step_q
        carry = q >= Q
        q = tl.where(carry, q - Q, q)
        p += step_p + carry.to(tl.int32)
        carry = p >= P
        p = tl.where(carry, p - P, p)
        n += step_n + carry.to(tl.int32)

    if NEED_DW:
        if DW_STRIDED:
            part = (chan * swk)[:, None] + (c * swc + r * swr + s * sws)[None, :]
        else:
            # this split's (K, RSC) slab: an int64 step of the base, int32 offsets inside it
            dw_part_ptr += split.to(tl.int64) * ROW
            part = (chan * RSC)[:, None] + offs_n[None, :]
        tl.store(dw_part_ptr + part, acc.to(dw_part_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])
    if NEED_DB:
        tl.store(db_part_ptr + split.to(tl.int64) * ROW + chan,
                 acc_b.to(db_part_ptr.dtype.element_ty), mask=mask_m & (pid_n == 0))


@triton.jit
def _sum_splits_kernel(
    part_ptr, dw_ptr, db_ptr, SPLIT, ROW, L_DW, RSC, CG, S,
    sw_k, sw_c, sw_r, sw_s, sb_k,
    BLOCK: tl.constexpr,
):
    """dW[k, c, r, s] and db[k]: the sums over splits, in split order, of the fp32 partials (fp64
    for fp64 gradients).

    part is (SPLIT, ROW) contiguous, each row this split's dW partial, (K, R*S*CG) in (r, s, c)
    order (its first L_DW = K*RSC elements; none when dW is not needed), then its db partial (K).
    The sums are cast to dW's / db's dtype and stored through their strides.
    """
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < ROW
    acc = tl.zeros((BLOCK,), dtype=part_ptr.dtype.element_ty)  # fp32 (fp64 for fp64 grads)
    ptrs = part_ptr + e
    for _ in range(SPLIT):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += ROW                                        # pointer steps: no int32 overflow
    in_dw = e < L_DW
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
    """Where the backward kernels read dZ, the gradient of the conv output (before ReLU):

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
        """The kernels' ``DY`` constexpr: "plain", "relu" or "pool"."""
        return "pool" if self.offsets is not None else "relu" if self.output is not None else \
            "plain"

    def check(self, P: int, Q: int) -> Tuple[int, int]:
        """Check the tensors against the conv output (P, Q); return the conv pixels the kernels
        visit (for a pool, those its windows cover)."""
        N, K = self.grad.shape[:2]
        if self.offsets is None:
            check_grad_shape("grad_output", self.grad, (N, K, P, Q))
            check_grad_shape("output", self.output, (N, K, P, Q))
            return P, Q
        pooled = (N, K, P // self.pool, Q // self.pool)
        if any(tuple(t.shape) != pooled for t in (self.grad, self.offsets)):
            raise ValueError(
                f"pooled gradient {shape_of(self.grad)} and offsets {shape_of(self.offsets)} "
                f"must both have the pooled shape {pooled}")
        return pooled[2] * self.pool, pooled[3] * self.pool

    def mask_source(self, dtype: torch.dtype) -> torch.Tensor:
        """The tensor the kernels read beside dY (the saved output, or the offsets; dY itself,
        unread, for a plain source), channels at stride 1."""
        if self.offsets is None:
            return channels_inner(self.output if self.output is not None else self.grad)
        if dtype == torch.float64:
            # Triton 3.6 sizes an fp64 dot's register operand by the narrowest load feeding it,
            # and with int8 offsets picks a layout its fp64 MMA lowering rejects ("fp64 don't
            # support largeK MMA"): int32 offsets (a pooled-size copy) keep it at fp64's own
            return channels_inner(self.offsets.to(torch.int32))
        return channels_inner(self.offsets)


class _Operands(NamedTuple):
    """What the dX and dW launches share, computed once per backward: the operands with their
    channels at stride 1 (and their kernel strides), the pixels the kernels visit, the tuning
    shape, the precision, the channel vector widths and the kernels' dZ-source arguments."""

    x: torch.Tensor
    w: torch.Tensor
    xs: tuple                  # kernel_strides of x and w
    ws: tuple
    P: int
    Q: int
    shape: dict
    ieee: bool
    dot: dict
    kv: int                    # vector width of the K channels (dY's, the mask source's)
    cv: int                    # vector width of the C channels (input's, weight's)
    dz: dict                   # dy_ptr, m_ptr and their strides divided by KV, DY, POOL, KV


def _operands(src: GradSource, input, weight, geometry: ConvGeometry, allow_tf32) -> _Operands:
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    P, Q = src.check(*geometry.output_size(H, W, R, S))
    dy, m = channels_inner(src.grad), src.mask_source(input.dtype)
    x, w = channels_inner(input), channels_inner(weight)
    ds, ms, xs, ws = kernel_strides(dy), kernel_strides(m), kernel_strides(x), kernel_strides(w)
    kv = channel_vector(K // geometry.groups, ds, ms)
    sdn, sdk, sdp, sdq = channel_strides(ds, kv)
    smn, smk, smp, smq = channel_strides(ms, kv)
    dz = dict(dy_ptr=dy, m_ptr=m, sdn_v=sdn, sdk=sdk, sdp_v=sdp, sdq_v=sdq,
              smn_v=smn, smk=smk, smp_v=smp, smq_v=smq, DY=src.kind, POOL=src.pool, KV=kv)
    return _Operands(x, w, xs, ws, P, Q, tuning_shape(x, w, geometry, src.pool),
                     register_tiles(input.dtype, allow_tf32), dot_args(input.dtype, allow_tf32),
                     kv, channel_vector(CG, xs, ws), dz)


def conv2d_input_grad(src: GradSource, input: torch.Tensor, weight: torch.Tensor,
                      geometry: ConvGeometry, allow_tf32: Optional[bool] = None,
                      config: Optional[dict] = None, ops: Optional[_Operands] = None
                      ) -> torch.Tensor:
    """dX of the conv whose output gradient ``src`` describes, in input's memory format.
    ``config`` overrides keys of the "conv_dx" launch config."""
    ops = ops or _operands(src, input, weight, geometry, allow_tf32)
    dx = torch.empty_like(input, memory_format=memory_format_of(input))
    if dx.numel() == 0:
        return dx
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    KG, groups = K // geometry.groups, geometry.groups
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    w_dx, ws, cv = ops.w, ops.ws, ops.cv
    if (input.dtype == torch.float32 and not ops.ieee
            and 2 * N * ops.P * ops.Q * K * CG * R * S >= K_MAJOR_DX_MIN_FLOP):
        # TF32 tensor cores read a shared-memory operand only K-major: dX reduces over the
        # output channels k, so its weight goes in as a copy with k innermost (16-byte tile
        # loads instead of 4-byte ones; the copy is one more launch, which only layers with work
        # enough to hide it get)
        w_dx = ops.w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        ws, cv = kernel_strides(w_dx), 1
    HP, WP = cdiv(H, sh), cdiv(W, sw)
    rows = N * HP * WP
    cfg = heuristics.conv_config(
        "conv_dx", ops.shape, input.dtype, LAYOUT,
        heuristics.gemm_heuristic(rows, CG, KG, input.dtype, spaces.MAX_BLOCK_K["conv_dx"]),
        config, ops.ieee)
    sxn, sxc, sxh, sxw = kernel_strides(dx)
    xv = pixel_vector(W, (sxn, sxc, sxh), sxw) if sw == 1 else 1
    swk, swc, swr, sws = channel_strides(ws, cv)
    launch(_conv_dx_kernel, (cdiv(rows, cfg["BLOCK_M"]) * cdiv(CG, cfg["BLOCK_N"]), groups,
                             sh * sw),
           w_ptr=w_dx, dx_ptr=dx, **ops.dz,
           N=N, H=H, w_v=W // xv, P=ops.P, Q=ops.Q, R=R, S=S, cg_v=CG // cv, kg_v=KG // ops.kv,
           swk_v=swk, swc=swc, swr_v=swr, sws_v=sws,
           sxn_v=sxn // xv, sxc_v=sxc // xv, sxh_v=sxh // xv, sxw=sxw,
           stride_h=sh, stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw,
           STEP_R=sh // math.gcd(sh, dh), STEP_S=sw // math.gcd(sw, dw), HP=HP, WP=WP,
           XV=xv, CV=cv, **ops.dot, **launch_opts(cfg))
    return dx


def conv2d_weight_grad(src: GradSource, input: torch.Tensor, weight: torch.Tensor,
                       geometry: ConvGeometry, need_dw: bool = True, need_db: bool = True,
                       allow_tf32: Optional[bool] = None, config: Optional[dict] = None,
                       ops: Optional[_Operands] = None
                       ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dW, db) of the conv whose output gradient ``src`` describes (None where not needed); dW
    keeps weight's strides. ``config`` overrides keys of the "conv_dw" launch config."""
    ops = ops or _operands(src, input, weight, geometry, allow_tf32)
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    KG, RSC, NPQ = K // geometry.groups, R * S * CG, N * ops.P * ops.Q
    dw_out = torch.empty_like(weight) if need_dw else None
    db = torch.empty((K,), device=weight.device, dtype=weight.dtype) if need_db else None
    if NPQ == 0:
        return (dw_out.zero_() if need_dw else None), (db.zero_() if need_db else None)
    need_dw = need_dw and RSC > 0  # no input channels: dW is empty, db is all there is
    if not (need_dw or need_db):
        return dw_out, db
    cfg = heuristics.conv_config(
        "conv_dw", ops.shape, input.dtype, LAYOUT,
        heuristics.dw_heuristic(KG, RSC, CG, NPQ, geometry.groups, need_dw, input.dtype,
                                input.device), config, ops.ieee)
    chunk = cdiv(cdiv(NPQ, max(1, cfg["SPLIT"])), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    split = cdiv(NPQ, chunk)
    l_dw = K * RSC if need_dw else 0
    row = l_dw + (K if need_db else 0)  # one split's partials: dW's (K, RSC), then db's (K)
    if split == 1:  # the kernel casts and stores dW / db in place: no partials, no sum pass
        dw_dst, db_dst = dw_out, db
    else:
        part = torch.empty((split, row), device=input.device, dtype=torch.float64
                           if input.dtype == torch.float64 else torch.float32)
        dw_dst, db_dst = part[:, :l_dw], part[:, l_dw:]
    dummy = dw_dst if need_dw else db_dst
    cg, cv = (CG, ops.cv) if need_dw else (max(CG, 1), 1)  # (db alone: taps unused)
    sxn, sxc, sxh, sxw = channel_strides(ops.xs, cv)
    swk, swc, swr, sws = kernel_strides(dw_out) if need_dw else (0, 0, 0, 0)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    launch(_conv_dw_kernel, (heuristics.dw_tiles(cfg, KG, RSC, need_dw), geometry.groups, split),
           x_ptr=ops.x, dw_part_ptr=dw_dst if need_dw else dummy,
           db_part_ptr=db_dst if need_db else dummy, **ops.dz,
           N=N, H=H, W=W, P=ops.P, Q=ops.Q, R=R, S=S, cg_v=cg // cv, kg_v=KG // ops.kv, K=K,
           CHUNK=chunk, ROW=row, sxn_v=sxn, sxc=sxc, sxh_v=sxh, sxw_v=sxw,
           swk=swk, swc=swc, swr=swr, sws=sws,
           stride_h=sh, stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw,
           NEED_DW=need_dw, NEED_DB=need_db,
           DW_STRIDED=need_dw and split == 1 and dw_out.stride() != (RSC, 1, S * CG, CG),
           CV=cv, **ops.dot, **launch_opts(cfg))
    if split > 1:
        _sum_splits(part, dw_out, db, l_dw, RSC, CG, S)
    return dw_out, db


def _sum_splits(part: torch.Tensor, dw: Optional[torch.Tensor], db: Optional[torch.Tensor],
                l_dw: int, RSC: int, CG: int, S: int) -> None:
    """dW and db from the (split, row) fp32 partials, summed in split order and cast into their
    layouts: one launch for both."""
    split, row = part.shape
    block = max(16, min(16384, next_pow2(row))) if INTERPRET else 1024
    sw_k, sw_c, sw_r, sw_s = kernel_strides(dw) if dw is not None else (0, 0, 0, 0)
    launch(_sum_splits_kernel, (cdiv(row, block),),
           part_ptr=part, dw_ptr=dw if dw is not None else part,
           db_ptr=db if db is not None else part, SPLIT=split, ROW=row, L_DW=l_dw,
           RSC=max(RSC, 1), CG=max(CG, 1), S=S,  # (no dW when 0: no division by it)
           sw_k=sw_k, sw_c=sw_c, sw_r=sw_r, sw_s=sw_s,
           sb_k=db.stride(0) if db is not None else 0, BLOCK=block)


def conv_grads(src: GradSource, input: torch.Tensor, weight: torch.Tensor,
               geometry: ConvGeometry, needs: Tuple[bool, bool, bool] = (True, True, True),
               allow_tf32: Optional[bool] = None, configs: Optional[dict] = None
               ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dX, dW, db) for the conv-output gradient ``src``, None where ``needs`` says not wanted;
    ``configs`` maps "conv_dx" / "conv_dw" to config overrides."""
    configs = configs or {}
    need_dx, need_dw, need_db = needs
    ops = _operands(src, input, weight, geometry, allow_tf32)
    dx = conv2d_input_grad(src, input, weight, geometry, allow_tf32, configs.get("conv_dx"),
                           ops) if need_dx else None
    dw = db = None
    if need_dw or need_db:
        dw, db = conv2d_weight_grad(src, input, weight, geometry, need_dw, need_db, allow_tf32,
                                    configs.get("conv_dw"), ops)
    return dx, dw, db


def conv2d_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                    output: Optional[torch.Tensor], geometry: ConvGeometry, relu: bool = False,
                    needs: Tuple[bool, bool, bool] = (True, True, True),
                    allow_tf32: Optional[bool] = None, configs: Optional[dict] = None
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                               Optional[torch.Tensor]]:
    """(dX, dW, db) of ``conv2d_forward``; each is None where ``needs`` says it is not wanted.

    ``output`` is the saved forward output, needed only for ``relu`` (its mask is applied while
    dY is loaded). ``configs`` maps "conv_dx" / "conv_dw" to config overrides. dX keeps input's
    memory format, dW weight's strides.
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
