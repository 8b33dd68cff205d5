"""Triton kernels of the conv family: one implicit-GEMM core, forward and backward.

Notation (PyTorch's): input X (N, C, H, W), weight Wt (K, C/groups, R, S), output Y (N, K, P, Q);
``CG = C/groups`` and ``KG = K/groups`` are the channels of one group. Every tensor comes in as a
pointer plus its four element strides, so any layout works; the launchers pass operands with the
channels innermost (stride 1: channels_last tensors and their views as they are, NCHW ones as
channels_last copies), so that every tile load along the channels is contiguous, vectorised and
pipelined (16-byte ``cp.async`` on sm_90).

* forward  ``_conv_fwd_kernel``: GEMM rows = output pixels (n, p, q), columns = output channels,
  reduction over (r, s, c) with c innermost; epilogue bias + ReLU + cast, written once.
* input gradient ``_conv_dx_kernel``: the transposed GEMM, rows = input pixels (n, h, w), columns =
  input channels, reduction over (r, s, k). Stride-phase form: each program serves one phase
  ((h + pad) % stride) and visits only the taps that map its pixels onto output pixels (only the
  image borders are masked) -- no zero-inserted dY, no multiply-adds wasted on stride holes.
* weight gradient ``_conv_dw_kernel``: rows = output channels, columns = (r, s, c), reduction over
  (n, p, q) split into SPLIT chunks; each chunk writes an fp32 partial and ``_sum_splits_kernel``
  adds them in a fixed order (deterministic, no atomics); one split stores dW straight into the
  weight (through its strides, ``DW_STRIDED``, unless they are the partials' (r, s, c) order).
  db is the same masked sum of dY.

The ReLU mask (Y <= 0 zeroes dY, from the saved output) is applied while dY is loaded.

* fused conv + ReLU + max-pool ``_conv_pool_fwd_kernel``, two row mappings on the same core:
  ``WINDOW_ROWS`` (POOL*POOL a power of two: POOL = 1, 2, 4): GEMM rows = conv pixels grouped by
  window, row ``m`` is element ``m % POOL**2`` of pooled pixel ``m // POOL**2``, so one mainloop
  (one accumulator, the register budget of the plain conv) computes whole windows and the
  epilogue reduces each group of POOL**2 rows to its maximum and offset. Otherwise (POOL = 3, ...):
  rows = pooled pixels (n, ph, pw), the mainloop runs once per window element (i, j) over the conv
  pixels (ph*POOL + i, pw*POOL + j), folding each accumulator into a running maximum and offset
  (three register tiles: smaller tiles fit). Either way bias and ReLU are applied once, to the
  maximum.
  Dead windows (pooled output 0, ReLU's) get offset -1. Backward reuses the dX/dW kernels with
  ``OFFSETS`` on: their dY load rebuilds the conv-output gradient from the pooled gradient and the
  offsets alone (see ``_load_dy``).

Vector hints: Triton tells the compiler only whether an integer argument is a multiple of 16.
Where a value's finer alignment matters, the launcher passes it divided by a power of two and
the kernel multiplies it back (a constexpr): YV / XV for runs of NCHW output and dX pixels, CV /
KV for the input- and output-channel counts and the strides of the operands loaded along them
(24 channels: 16-byte tile loads instead of element-by-element ones that cp.async cannot
pipeline).

Index arithmetic: offsets inside one image stay int32, the batch term ``n * stride_n`` is int64, so
tensors past 2**31 elements are addressed correctly.

The forward and dX reductions are single flattened loops over (tap, channel block), so Triton
pipelines them across taps; the launcher caps these two kernels at 4 warps (this loop form
miscompiles at num_warps >= 8, see DESIGN.md section 5). dW loops over pixels and is not capped.
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
def _tile_ids(pid, M, NCOLS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ("swizzled") order of output tiles: GROUP_M row tiles share their column tiles in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(NCOLS, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _mma(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b in the accumulator's dtype (fp32; fp64 for fp64 tiles). DOT_FP32 upcasts the
    tiles first (bf16 under the interpreter, whose tl.dot is wrong for bf16)."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _relu_masked(dy, y_ptr, y_off, mask, RELU: tl.constexpr):
    """ReLU backward folded into the load of dY: zero dY where the saved output is <= 0 (as
    PyTorch's threshold_backward; a NaN output passes its gradient)."""
    if RELU:
        y = tl.load(y_ptr + y_off, mask=mask, other=0.0)
        dy = tl.where(y <= 0, tl.zeros_like(dy), dy)
    return dy


@triton.jit
def _load_dy(dy_ptr, dy_off, y_ptr, y_off, off_ptr, elem, mask,
             RELU: tl.constexpr, OFFSETS: tl.constexpr):
    """dY at conv-output pixels, with the masks of the fused epilogue folded into the load.

    Plain conv (OFFSETS off): dy_off / y_off address dY and the saved output at the pixel itself;
    with RELU, dY is zeroed where the saved output is <= 0.
    OFFSETS (the fused max-pool, any POOL): dy_off / y_off address the pooled gradient and the
    window offsets at
    the pixel's window (p // POOL, q // POOL), and ``elem`` is the pixel's place in that window,
    (p % POOL) * POOL + q % POOL. The gradient reaches the pixel only where the window's saved
    offset names it; everywhere else dY is 0. Windows whose pooled output is ReLU's 0 (its
    gradient is 0 there) carry offset -1, which names no pixel: the ReLU mask is in the offsets.
    """
    if OFFSETS:
        # dY loaded under the bounds mask alone, then zeroed where the offset names another
        # pixel: a mask that depends on loaded data would make every load a scalar one
        off = tl.load(off_ptr + y_off, mask=mask, other=-1).to(tl.int32)
        dy = tl.load(dy_ptr + dy_off, mask=mask, other=0.0)
        dy = tl.where(off == elem, dy, tl.zeros_like(dy))
    else:
        dy = tl.load(dy_ptr + dy_off, mask=mask, other=0.0)
        dy = _relu_masked(dy, y_ptr, y_off, mask, RELU)
    return dy


@triton.jit
def _conv_fwd_mainloop(
    x_ptr, w_ptr,
    x_row, h0, w0, mask_m,      # per GEMM row: image base offset (int64), top-left tap, validity
    w_col, mask_n,              # per GEMM column: output channel base offset, validity
    H, W, CG, R, S,
    sxc, sxh, sxw, swc, swr, sws,
    dil_h, dil_w,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """fp32 accumulator (BLOCK_M, BLOCK_N) of the implicit GEMM over taps (r, s) and channels c
    (fp64 for fp64 operands, as every accumulator here: :func:`acc_type`).

    The rows are arbitrary output pixels described by (x_row, h0, w0): epilogues that need other
    row groupings (e.g. whole pooling windows) call this core with their own row mapping.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type(x_ptr.dtype.element_ty))
    offs_k = tl.arange(0, BLOCK_K)
    c_blocks = tl.cdiv(CG, BLOCK_K)
    # Per row, outside the loop: the address of its top-left tap, and its (h0, w0) as unsigned
    # offsets from the image's first row and column, so that inside the loop a tap costs one
    # scalar offset added to every row, and "0 <= h < H" one unsigned compare (a negative h
    # wraps to a huge unsigned value).
    x_base = x_ptr + (x_row + h0 * sxh + w0 * sxw)           # (BLOCK_M,) pointers
    h0_u = tl.cast(h0, tl.uint32, bitcast=True)
    w0_u = tl.cast(w0, tl.uint32, bitcast=True)
    H_u = tl.cast(H, tl.uint32)                              # (tl.cast: H may be a constexpr 1)
    W_u = tl.cast(W, tl.uint32)
    for it in range(R * S * c_blocks):
        cb = it % c_blocks
        rs = it // c_blocks
        r = rs // S
        s = rs % S
        dh = tl.cast(r * dil_h, tl.uint32)                   # the tap's offsets (scalars)
        dw = tl.cast(s * dil_w, tl.uint32)
        ok = mask_m & (h0_u + dh < H_u) & (w0_u + dw < W_u)  # (BLOCK_M,)
        c = cb * BLOCK_K + offs_k                            # (BLOCK_K,)
        mask_c = c < CG
        tap = r * dil_h * sxh + s * dil_w * sxw              # scalar
        a = tl.load((x_base + tap)[:, None] + c[None, :] * sxc,
                    mask=ok[:, None] & mask_c[None, :], other=0.0)   # (BLOCK_M, BLOCK_K)
        b = tl.load(w_ptr + (w_col[None, :] + c[:, None] * swc + r * swr + s * sws),
                    mask=mask_c[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = _mma(a, b, acc, DOT_FP32, PRECISION)
    return acc


@triton.jit
def _bias_relu(acc, b_ptr, chan, mask_n, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Epilogue on the accumulator: + bias[chan] per column, then ReLU."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + chan, mask=mask_n, other=0.0).to(acc.dtype)
        acc = acc + bias[None, :]
    if RELU:
        # not tl.maximum: compiled, it returns 0 for NaN (maxnum); F.relu keeps NaN
        acc = tl.where(acc < 0.0, 0.0, acc)
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, P, q_v, R, S, cg_v, KG,
    sxn_v, sxc, sxh_v, sxw_v,
    swk_v, swc, swr_v, sws_v,
    syn_v, syk_v, syp_v, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, YV: tl.constexpr, CV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Y = act(conv(X, Wt) + b). Grid: (row tiles * column tiles, groups).

    Q and Y's N, K, P strides come divided by YV, a power of two that divides them all (1 unless
    Y's pixels are at stride 1, an NCHW output): multiplied back here, they tell the compiler
    that runs of YV output pixels are contiguous and aligned, so the epilogue stores them as
    vectors (Triton's own argument specialization only sees multiples of 16). CG and the
    non-channel strides of X and Wt come divided by CV the same way (``channel_vector``), so
    that tiles load along the channels as vectors when CG is not a multiple of 16."""
    Q = q_v * YV
    syn = syn_v * YV
    syk = syk_v * YV
    syp = syp_v * YV
    CG = cg_v * CV
    sxn = sxn_v * CV
    sxh = sxh_v * CV
    sxw = sxw_v * CV
    swk = swk_v * CV
    swr = swr_v * CV
    sws = sws_v * CV
    g = tl.program_id(1)
    M = N * P * Q
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # output pixel (n, p, q)
    mask_m = offs_m < M
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = offs_m // (P * Q)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # output channel within the group
    mask_n = offs_n < KG
    chan = g * KG + offs_n                                 # output channel

    x_row = n.to(tl.int64) * sxn + (g * CG) * sxc
    acc = _conv_fwd_mainloop(
        x_ptr, w_ptr, x_row, p * stride_h - pad_h, q * stride_w - pad_w, mask_m,
        chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws, dil_h, dil_w,
        BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION,
    )
    acc = _bias_relu(acc, b_ptr, chan, mask_n, HAS_BIAS, RELU)

    y_off = (n.to(tl.int64) * syn + p * syp + q * syq)[:, None] + (chan * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _pooled_pixel(pm, PP, PQ):
    """(n, ph, pw) of flat pooled-pixel indices over (N, PP, PQ)."""
    return pm // (PP * PQ), (pm // PQ) % PP, pm % PQ


@triton.jit
def _window_max(vals, E: tl.constexpr, AXIS: tl.constexpr = 1):
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


@triton.jit
def _conv_pool_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, off_ptr,
    N, H, W, PP, pq_v, R, S, cg_v, KG,
    sxn_v, sxc, sxh_v, sxw_v,
    swk_v, swc, swr_v, sws_v,
    syn_v, syk_v, syp_v, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    POOL: tl.constexpr, WINDOW_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, YV: tl.constexpr,
    CV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Y = max_pool(relu(conv(X, Wt) + b), POOL) over non-overlapping POOL x POOL windows, and
    OFF = the offset i*POOL + j of each maximum inside its window. Grid: (row tiles * column
    tiles, groups).

    Window element (i, j) of pooled pixel (n, ph, pw) of the (PP, PQ) pooled map is conv pixel
    (ph*POOL + i, pw*POOL + j). WINDOW_ROWS (POOL*POOL a power of two, at most BLOCK_M): the
    tile's BLOCK_M rows are BLOCK_M / POOL**2 whole windows, element by element, and the maxima
    come from a reduction over each window's rows (``_window_max``). Otherwise the BLOCK_M rows
    are pooled pixels and the mainloop runs once per window element.
    Ties and NaN as ``F.max_pool2d(F.relu(...))``: an element replaces the running maximum when
    it is greater or NaN (first maximum wins, last NaN wins), and a window whose maximum is <= 0
    after bias pools to relu's 0. OFF has Y's strides; it is -1 where Y is that 0, where ReLU's
    backward passes no gradient (a NaN window keeps its offset: F.relu's backward passes NaN
    outputs' gradient), so backward needs the offsets alone, not Y.
    PQ and Y's N, K, P strides come divided by YV, and CG and X's and Wt's strides by CV, as in
    ``_conv_fwd_kernel``.
    """
    PQ = pq_v * YV
    syn = syn_v * YV
    syk = syk_v * YV
    syp = syp_v * YV
    CG = cg_v * CV
    sxn = sxn_v * CV
    sxh = sxh_v * CV
    sxw = sxw_v * CV
    swk = swk_v * CV
    swr = swr_v * CV
    sws = sws_v * CV
    g = tl.program_id(1)
    MP = N * PP * PQ                                       # pooled pixels
    E: tl.constexpr = POOL * POOL
    pid_m, pid_n = _tile_ids(tl.program_id(0), MP * E if WINDOW_ROWS else MP, KG,
                             BLOCK_M, BLOCK_N, GROUP_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # output channel within the group
    mask_n = offs_n < KG
    chan = g * KG + offs_n                                 # output channel
    x_col = g * CG * sxc
    if WINDOW_ROWS:
        WIN: tl.constexpr = BLOCK_M // E                   # whole windows per tile
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)     # (pooled pixel, window element)
        e = rows % E
        n, ph, pw = _pooled_pixel(rows // E, PP, PQ)
        acc = _conv_fwd_mainloop(
            x_ptr, w_ptr, n.to(tl.int64) * sxn + x_col,
            (ph * POOL + e // POOL) * stride_h - pad_h, (pw * POOL + e % POOL) * stride_w - pad_w,
            rows // E < MP, chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws,
            dil_h, dil_w, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION,
        )
        best, arg = _window_max(tl.reshape(acc, (WIN, E, BLOCK_N)), E)
        offs_m = pid_m * WIN + tl.arange(0, WIN)           # pooled pixel (n, ph, pw)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # pooled pixel (n, ph, pw)
        n, ph, pw = _pooled_pixel(offs_m, PP, PQ)
        x_row = n.to(tl.int64) * sxn + x_col
        h_win = ph * POOL * stride_h - pad_h               # top-left tap of window element (0, 0)
        w_win = pw * POOL * stride_w - pad_w
        best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), acc_type(x_ptr.dtype.element_ty))
        arg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for e in range(E):                                 # window element (i, j), row-major
            acc = _conv_fwd_mainloop(
                x_ptr, w_ptr, x_row, h_win + (e // POOL) * stride_h,
                w_win + (e % POOL) * stride_w, offs_m < MP,
                chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws, dil_h, dil_w,
                BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION,
            )
            take = (acc > best) | (acc != acc)
            best = tl.where(take, acc, best)
            arg = tl.where(take, e, arg)
    # max(relu(x_e + b)) == relu(max(x_e) + b): bias and ReLU once, on the maximum.
    best = _bias_relu(best, b_ptr, chan, mask_n, HAS_BIAS, False)
    dead = best <= 0                                       # ReLU's 0 (NaN is kept, as F.relu does)
    best = tl.where(dead, 0.0, best)
    arg = tl.where(dead, -1, arg)                          # dead windows: no pixel gets dY

    n, ph, pw = _pooled_pixel(offs_m, PP, PQ)
    y_off = (n.to(tl.int64) * syn + ph * syp + pw * syq)[:, None] + (chan * syk)[None, :]
    mask = (offs_m < MP)[:, None] & mask_n[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(off_ptr + y_off, arg.to(off_ptr.dtype.element_ty), mask=mask)


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
    dy_ptr, y_ptr, off_ptr, w_ptr, dx_ptr,
    N, H, w_v, P, Q, R, S, cg_v, kg_v,
    sdn_v, sdk, sdp_v, sdq_v,
    syn_v, syk, syp_v, syq_v,
    swk_v, swc, swr_v, sws_v,
    sxn_v, sxc_v, sxh_v, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    STEP_R, STEP_S, HP, WP,
    RELU: tl.constexpr, POOL: tl.constexpr, OFFSETS: tl.constexpr, XV: tl.constexpr,
    CV: tl.constexpr, KV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dX = conv_transpose(relu_mask(dY), Wt), stride-phase form.

    With OFFSETS (the fused op's backward), dY is rebuilt from the pooled gradient and the window
    offsets while it is loaded (``_load_dy``); the launcher then passes P, Q = the conv pixels the
    pooling windows cover, PP*POOL x PQ*POOL.

    Grid: (row tiles * column tiles, groups, stride_h * stride_w phases). Phase (a_h, a_w) owns the
    input pixels with (h + pad_h) % stride_h == a_h and (w + pad_w) % stride_w == a_w; for them,
    only taps r = r0 + i*STEP_R (and s likewise) land on an output pixel, p = (h + pad_h - r*dil_h)
    / stride_h exactly. HP, WP = ceil(H/stride_h), ceil(W/stride_w) bound the pixels of a phase.
    Pixels that no output touches get zeros, so dX is written once, entirely.

    W and dX's N, C, H strides come divided by XV, a power of two that divides them all (1 unless
    dX's pixels are at stride 1, an NCHW dX, and stride_w is 1): multiplied back here, they tell
    the compiler that runs of XV pixels of a row are contiguous and aligned, so dX is stored as
    vectors (as ``_conv_fwd_kernel``'s YV does for Y). CG and Wt's K, R, S strides come divided
    by CV, KG and dY's and Y's (or the offsets') N, P, Q strides by KV (``channel_vector``), so
    that the tiles load along the channels as vectors.
    """
    W = w_v * XV
    sxn = sxn_v * XV
    sxc = sxc_v * XV
    sxh = sxh_v * XV
    CG = cg_v * CV
    swk = swk_v * CV
    swr = swr_v * CV
    sws = sws_v * CV
    KG = kg_v * KV
    sdn = sdn_v * KV
    sdp = sdp_v * KV
    sdq = sdq_v * KV
    syn = syn_v * KV
    syp = syp_v * KV
    syq = syq_v * KV
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
    pid_m, pid_n = _tile_ids(tl.program_id(0), N * HP * WP, CG, BLOCK_M, BLOCK_N, GROUP_M)

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
    y_row = n.to(tl.int64) * syn
    # A tap r reaches output row p = (h + pad_h - r*dil_h) / stride_h. In this phase h + pad_h
    # and r*dil_h are both a_h plus a non-negative multiple of stride_h (a_h < stride_h), so
    # p = (h + pad_h) // stride_h - (r*dil_h) // stride_h exactly: a per-row part, divided once
    # here, and a per-tap scalar; no division per row in the loop.
    p_row = (h + pad_h) // stride_h                             # (BLOCK_M,)
    q_row = (w + pad_w) // stride_w
    P_u = tl.cast(P, tl.uint32)
    Q_u = tl.cast(Q, tl.uint32)
    dy_base = dy_row + p_row * sdp + q_row * sdq                # (BLOCK_M,): used when POOL is 1
    y_base = y_row + p_row * syp + q_row * syq
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
            y_off = y_base - (dr * syp + dc * syq)
            elem = 0                                            # (a window of one pixel)
        else:  # dY's pixel is p's window
            pp = p // POOL
            pq = q // POOL
            elem = ((p - pp * POOL) * POOL + (q - pq * POOL))[:, None]
            dy_off = dy_row + pp * sdp + pq * sdq
            y_off = y_row + pp * syp + pq * syq
        a = _load_dy(dy_ptr, dy_off[:, None] + (chan * sdk)[None, :],
                     y_ptr, y_off[:, None] + (chan * syk)[None, :],
                     off_ptr, elem, mask_a, RELU, OFFSETS)  # (BLOCK_M, BLOCK_K)
        b = tl.load(w_ptr + ((chan * swk)[:, None] + (offs_n * swc)[None, :] + r * swr + s * sws),
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = _mma(a, b, acc, DOT_FP32, PRECISION)

    dx_off = (n.to(tl.int64) * sxn + h * sxh + w * sxw)[:, None] + ((g * CG + offs_n) * sxc)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv_dw_kernel(
    dy_ptr, y_ptr, off_ptr, x_ptr, dw_part_ptr, db_part_ptr,
    N, H, W, P, Q, R, S, cg_v, kg_v, K, CHUNK, ROW,
    sdn_v, sdk, sdp_v, sdq_v,
    syn_v, syk, syp_v, syq_v,
    sxn_v, sxc, sxh_v, sxw_v,
    swk, swc, swr, sws,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    OFFSETS: tl.constexpr, DW_STRIDED: tl.constexpr, CV: tl.constexpr, KV: tl.constexpr,
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
    With OFFSETS (the fused op's backward), dY is rebuilt from the pooled gradient and the window
    offsets while it is loaded (``_load_dy``); the launcher then passes P, Q = PP*POOL, PQ*POOL,
    so only pixels inside a window are visited.
    CG and X's N, H, W strides come divided by CV, KG and dY's and Y's N, P, Q strides by KV
    (``channel_vector``), multiplied back here: tiles then load along the channels as vectors.
    """
    CG = cg_v * CV
    sxn = sxn_v * CV
    sxh = sxh_v * CV
    sxw = sxw_v * CV
    KG = kg_v * KV
    sdn = sdn_v * KV
    sdp = sdp_v * KV
    sdq = sdq_v * KV
    syn = syn_v * KV
    syp = syp_v * KV
    syq = syq_v * KV
    g = tl.program_id(1)
    split = tl.program_id(2)
    RSC = R * S * CG
    if NEED_DW:
        pid_m, pid_n = _tile_ids(tl.program_id(0), KG, RSC, BLOCK_M, BLOCK_N, GROUP_M)
    else:  # db only: one column tile
        pid_m, pid_n = _tile_ids(tl.program_id(0), KG, 1, BLOCK_M, BLOCK_N, GROUP_M)

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
        a = _load_dy(dy_ptr, (chan * sdk)[:, None] + (n64 * sdn + pp * sdp + pq * sdq)[None, :],
                     y_ptr, (chan * syk)[:, None] + (n64 * syn + pp * syp + pq * syq)[None, :],
                     off_ptr, elem[None, :], mask_a, RELU, OFFSETS)  # dY^T (BLOCK_M, BLOCK_K)
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
            acc = _mma(a, b, acc, DOT_FP32, PRECISION)
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
