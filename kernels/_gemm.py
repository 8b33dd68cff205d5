"""Shared ``@triton.jit`` pieces of the conv kernels: the implicit-GEMM core and its epilogues.

Notation (PyTorch's): input X (N, C, H, W), weight Wt (K, C/groups, R, S), output Y (N, K, P, Q);
``CG = C/groups`` and ``KG = K/groups`` are the channels of one group. Every tensor comes in as a
pointer plus its four element strides, so any layout works; the launchers pass operands with the
channels innermost (stride 1: channels_last tensors and their views as they are, NCHW ones as
channels_last copies), so that every tile load along the channels is contiguous, vectorised and
pipelined (16-byte ``cp.async`` on sm_90).

**Vector hints** (the ``_v`` arguments). Triton tells the compiler only whether an integer
argument is a multiple of 16. Where a finer alignment matters, the launcher passes the value
divided by a power of two and the kernel multiplies it back (:func:`times`) with that power as a
constexpr, which the compiler then knows divides the product:

* ``YV`` / ``XV``: runs of output (forward) or dX pixels that are contiguous and aligned (NCHW
  outputs, whose pixels are at stride 1), so the epilogue stores them as vectors;
* ``CV`` / ``KV``: the input- and output-channel counts of a group and the strides of the
  operands loaded along them (24 channels: 16-byte tile loads instead of element-by-element ones
  that cp.async cannot pipeline).

An argument named ``foo_v`` is ``foo`` divided by its hint; the hint is exact for any divisor.

**Index arithmetic**: offsets inside one image stay int32, the batch term ``n * stride_n`` is
int64, so tensors past 2**31 elements are addressed correctly.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.constexpr_function
def acc_type(element_ty):
    """The accumulator dtype of a kernel whose operands are ``element_ty``: fp64 for fp64, fp32
    for everything else (fp32, fp16, bf16)."""
    return tl.float64 if element_ty == tl.float64 else tl.float32


@triton.jit
def tile_ids(pid, M, NCOLS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ("swizzled") order of output tiles: GROUP_M row tiles share their column tiles
    in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(NCOLS, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def mma(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b in the accumulator's dtype (fp32; fp64 for fp64 tiles). DOT_FP32 upcasts the
    tiles first (bf16 under the interpreter, whose tl.dot is wrong for bf16)."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def times(V: tl.constexpr, a, b, c):
    """(a * V, b * V, c * V): three launcher values divided by the vector hint ``V``, multiplied
    back (see the module docstring)."""
    return a * V, b * V, c * V


@triton.constexpr_function
def tensor_core_dot(element_ty, precision):
    """Whether ``tl.dot`` of ``element_ty`` tiles runs on tensor cores reading shared memory
    (wgmma on sm_90: fp16, bf16, fp32 as TF32), not on registers (IEEE fp32 on the FMA units,
    fp64 on mma.sync)."""
    return element_ty != tl.float64 and not (element_ty == tl.float32 and precision == "ieee")


@triton.jit
def _channel_loop(acc, x_base, w_base, ok, mask_n, x_tap, w_tap, CG, sxc, swc,
                  BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc += one filter tap's share of the implicit GEMM: its rows (``ok`` where in bounds) by
    every block of BLOCK_K channels. The tap's offset joins the channel offsets, not the row
    pointers, so that no second set of per-row pointers is live beside the accumulator."""
    offs_k = tl.arange(0, BLOCK_K)
    for cb in range(tl.cdiv(CG, BLOCK_K)):
        c = cb * BLOCK_K + offs_k                                        # (BLOCK_K,)
        mask_c = c < CG
        a = tl.load(x_base[:, None] + (x_tap + c * sxc)[None, :],
                    mask=ok[:, None] & mask_c[None, :], other=0.0)       # (BLOCK_M, BLOCK_K)
        b = tl.load(w_base[None, :] + (w_tap + c * swc)[:, None],
                    mask=mask_c[:, None] & mask_n[None, :], other=0.0)   # (BLOCK_K, BLOCK_N)
        acc = mma(a, b, acc, DOT_FP32, PRECISION)
    return acc


@triton.jit
def conv_mainloop(
    x_ptr, w_ptr,
    x_row, h0, w0, mask_m,      # per GEMM row: image base offset (int64), top-left tap, validity
    w_col, mask_n,              # per GEMM column: output channel base offset, validity
    H, W, CG, R: tl.constexpr, S: tl.constexpr,
    sxc, sxh, sxw, swc, swr, sws,
    dil_h, dil_w,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, UNROLL_TAPS: tl.constexpr,
):
    """fp32 accumulator (BLOCK_M, BLOCK_N) of the implicit GEMM over taps (r, s) and channels c
    (fp64 for fp64 operands, as every accumulator here: :func:`acc_type`).

    The rows are arbitrary output pixels described by (x_row, h0, w0): epilogues that need other
    row groupings (e.g. whole pooling windows) call this core with their own row mapping.

    Taps outside, channel blocks inside (the reduction order (r, s, c)): a tap's bounds test and
    offsets are computed once per tap, never by a div/mod per step. UNROLL_TAPS unrolls the taps
    (``tl.static_range``), each around its own pipelined channel loop: what lets these loops run
    on 8 warps, where Triton miscompiles a flattened (tap, channel block) loop (pytorch issue
    173068). Without it the taps are runtime loops, one copy of the channel loop: for MMAs on
    registers (:func:`tensor_core_dot` false: a 9-fold unrolled FMA loop is ~10 k instructions and
    spills) and for callers that run the core several times (the fused pool's window loop).
    Those keep at most 4 warps (``autotune.spaces``).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type(x_ptr.dtype.element_ty))
    # Per row: the address of its top-left tap, and its (h0, w0) as unsigned offsets from the
    # image's first row and column, so that "0 <= h < H" is one unsigned compare (a negative h
    # wraps to a huge unsigned value).
    x_base = x_ptr + (x_row + h0 * sxh + w0 * sxw)           # (BLOCK_M,) pointers
    w_base = w_ptr + w_col                                   # (BLOCK_N,) pointers
    h0_u = tl.cast(h0, tl.uint32, bitcast=True)
    w0_u = tl.cast(w0, tl.uint32, bitcast=True)
    H_u = tl.cast(H, tl.uint32)                              # (tl.cast: H may be a constexpr 1)
    W_u = tl.cast(W, tl.uint32)
    if UNROLL_TAPS:
        for r in tl.static_range(R):
            ok_h = mask_m & (h0_u + tl.cast(r * dil_h, tl.uint32) < H_u)
            for s in tl.static_range(S):
                acc = _channel_loop(
                    acc, x_base, w_base, ok_h & (w0_u + tl.cast(s * dil_w, tl.uint32) < W_u),
                    mask_n, r * dil_h * sxh + s * dil_w * sxw, r * swr + s * sws, CG, sxc, swc,
                    BLOCK_K, DOT_FP32, PRECISION)
    else:
        for r in range(R):
            ok_h = mask_m & (h0_u + tl.cast(r * dil_h, tl.uint32) < H_u)
            for s in range(S):
                acc = _channel_loop(
                    acc, x_base, w_base, ok_h & (w0_u + tl.cast(s * dil_w, tl.uint32) < W_u),
                    mask_n, r * dil_h * sxh + s * dil_w * sxw, r * swr + s * sws, CG, sxc, swc,
                    BLOCK_K, DOT_FP32, PRECISION)
    return acc


@triton.jit
def bias_relu(acc, b_ptr, chan, mask_n, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Epilogue on the accumulator: + bias[chan] per column, then ReLU."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + chan, mask=mask_n, other=0.0).to(acc.dtype)
        acc = acc + bias[None, :]
    if RELU:
        # not tl.maximum: compiled, it returns 0 for NaN (maxnum); F.relu keeps NaN
        acc = tl.where(acc < 0.0, 0.0, acc)
    return acc


@triton.jit
def pooled_pixel(pm, PP, PQ):
    """(n, ph, pw) of flat pooled-pixel indices over (N, PP, PQ)."""
    return pm // (PP * PQ), (pm // PQ) % PP, pm % PQ


@triton.jit
def window_max(vals, E: tl.constexpr, AXIS: tl.constexpr = 1):
    """(maximum, offset) over axis AXIS (1 or 2) of the 3-D ``vals``, the E elements of each
    window in offset order: the last NaN when the window has one, else the maximum, the first of
    equal ones -- what a running ``x > best or isnan(x)`` scan keeps, as max_pool2d does. Built
    from plain max/min reductions (cheap everywhere, the interpreter included)."""
    if AXIS == 1:
        elem = tl.arange(0, E)[None, :, None]
    else:
        elem = tl.arange(0, E)[None, None, :]
    nan = vals != vals
    best = tl.max(tl.where(nan, float("-inf"), vals), axis=AXIS)
    first = tl.min(tl.where(vals == tl.expand_dims(best, AXIS), elem, E), axis=AXIS)
    last_nan = tl.max(tl.where(nan, elem, -1), axis=AXIS)
    has_nan = last_nan >= 0
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, last_nan, first)


@triton.constexpr_function
def window_lanes(block_m, elems):
    """Windows side by side in one row group of :func:`window_order` (8, or fewer in a tile of
    fewer than 8 windows)."""
    return min(8, block_m // elems)


@triton.constexpr_function
def window_low(elems):
    """Window elements in the low half of :func:`window_order`'s element split (2, or 1)."""
    return min(2, elems)


@triton.jit
def window_order(BLOCK_M: tl.constexpr, E: tl.constexpr):
    """(window, element) of the BLOCK_M rows of a tile of whole windows of E elements.

    Row i = ((e_hi * WG + w_g) * E_LO + e_lo) * T + t holds element e = e_hi * E_LO + e_lo of
    window w = w_g * T + t (T = :func:`window_lanes`, E_LO = :func:`window_low`, E_HI = E / E_LO,
    WG = BLOCK_M / (E * T)). On sm_90 a thread of a 4-warp wgmma accumulator holds rows r, r + 8,
    r + 64 and r + 72 (r = 16 * warp + lane / 4): with T = 8 and E_LO = 2 those are the 4
    elements of one window, so :func:`accumulator_window_max` reduces each window inside one
    thread's registers, where a window in 4 consecutive rows would spread over 4 lanes.
    Correct for any layout (only the speed depends on it)."""
    T: tl.constexpr = window_lanes(BLOCK_M, E)
    E_LO: tl.constexpr = window_low(E)
    WG: tl.constexpr = BLOCK_M // (E * T)
    i = tl.arange(0, BLOCK_M)
    window = ((i // (T * E_LO)) % WG) * T + i % T
    elem = (i // (T * E_LO * WG)) * E_LO + (i // T) % E_LO
    return window, elem


@triton.jit
def accumulator_window_max(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, E: tl.constexpr):
    """(maximum, offset) of every window of the (BLOCK_M, BLOCK_N) accumulator whose rows are in
    :func:`window_order`: two (BLOCK_M / E, BLOCK_N) tiles, windows in order. Ties and NaN as
    :func:`window_max` (the last NaN, else the first of equal maxima), from max/min reductions
    over the accumulator reshaped to (E_HI, WG, E_LO, T, BLOCK_N): no copy of the accumulator in
    another layout."""
    T: tl.constexpr = window_lanes(BLOCK_M, E)
    E_LO: tl.constexpr = window_low(E)
    E_HI: tl.constexpr = E // E_LO
    WG: tl.constexpr = BLOCK_M // (E * T)
    vals = tl.reshape(acc, (E_HI, WG, E_LO, T, BLOCK_N))
    elem = (tl.arange(0, E_HI)[:, None, None, None, None] * E_LO
            + tl.arange(0, E_LO)[None, None, :, None, None])
    nan = vals != vals
    best = tl.max(tl.max(tl.where(nan, float("-inf"), vals), axis=2), axis=0)   # (WG, T, N)
    tie = vals == tl.expand_dims(tl.expand_dims(best, 0), 2)
    # one reduction for the offset: a NaN scores E + its element (the last NaN wins), else a
    # maximum scores E - 1 - its element (the first maximum wins)
    score = tl.where(nan, E + elem, tl.where(tie, E - 1 - elem, -1))
    score = tl.max(tl.max(score, axis=2), axis=0)
    has_nan = score >= E
    best = tl.where(has_nan, float("nan"), best)
    arg = tl.where(has_nan, score - E, E - 1 - score)
    return tl.reshape(best, (BLOCK_M // E, BLOCK_N)), tl.reshape(arg, (BLOCK_M // E, BLOCK_N))
