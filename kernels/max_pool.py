"""2-D max-pooling: Triton kernels, launchers, autograd Function and ``torch.library`` custom op.

Forward writes the maxima and, for backward, the position of each maximum inside its window as a
small integer offset ``kh * KW + kw`` (int8 for windows of up to 128 elements, where PyTorch keeps
an int64 index). PyTorch's flat ``ih * W + iw`` index is built from the offsets only when
``return_indices=True`` asks for it.

Backward is a gather over input elements: each input element looks at the windows that can contain
it and sums the upstream gradient of those whose saved offset points at it. No atomics, so the
result is bit-for-bit deterministic. Non-overlapping windows (kernel_size == stride, no padding, no
dilation: the usual 2x2/2 pool) take a fast path where each input element has at most one window;
in NCHW their forward (window width a power of two) reads whole window rows as vectors and cuts
them into windows (``_max_pool_fwd_rows_kernel``), where the one-output-per-lane kernel would read
each row at the pool's stride.

Ties and NaN follow PyTorch: a window element replaces the running maximum when it is greater or
when it is NaN, so the first maximum wins a tie and the last NaN wins over everything.

Layers, top to bottom: the functional :func:`max_pool2d` (in eager mode through
:class:`MaxPool2dFunction` straight on the launchers, otherwise through the custom op
``tritoncnn::max_pool2d_fwd`` / ``tritoncnn::max_pool2d_bwd``, visible to ``torch.compile``),
:class:`MaxPool2dFunction` (a plain ``torch.autograd.Function``), the launchers
:func:`max_pool2d_forward` / :func:`max_pool2d_backward`, and the ``@triton.jit`` kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from tritoncnn import autotune
from tritoncnn.autotune import heuristics

from ._checks import (KernelLaunch, PlanCache, as_pair, cdiv, check_device, check_float,
                      is_channels_last, next_pow2, pixel_vector, pooled_len)
from ._gemm import acc_type, window_max
from ._op import kernel_op
from ._op import (apply_function, eager_ok, op_function, register_op_autograd, route_backward,
                  traced_checks_quiet)

from ._pool import as_4d, block_indices, empty, needs_int64, output_hw, rows_tile, unflatten

__all__ = [
    "max_pool2d",
    "MaxPool2dFunction",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "offsets_to_indices",
]

Pair = tuple[int, int]

# Windows with more elements than this loop at run time instead of being unrolled: unrolled, a
# 5x5 to 8x8 window's loads are all hoisted and spill on sm_90 (NCHW backward, 8 outputs per
# lane: 1.1 to 1.8 KB); looped they take 72 to 99 registers.
_MAX_UNROLLED_WINDOW = 16


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _window_max_step(x_ptr, base, h0, w0, kh, kw, H, W, sxh, sxw, mask, best, arg,
                     KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr):
    """Fold window element (kh, kw) into the running (max, offset), PyTorch's update rule."""
    ih = h0 + kh * DH
    iw = w0 + kw * DW
    inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    val = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=inside, other=float("-inf"))
    val = val.to(best.dtype)
    take = (val > best) | (val != val)  # padding loads -inf and never takes
    best = tl.where(take, val, best)
    arg = tl.where(take, kh * KW + kw, arg)
    return best, arg


@triton.jit
def _max_pool_fwd_kernel(
    x_ptr, out_ptr, off_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, UNROLL: tl.constexpr, INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program pools BLOCK outputs, taken in the output's memory order (NCHW or NHWC).

    The input is read through its strides; out and off are contiguous in the output's format.
    """
    idx = block_indices(BLOCK, INT64)
    mask = idx < total
    n, c, oh, ow = unflatten(idx, C, OH, OW, CHANNELS_LAST)
    base = n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    # Until something beats -inf the offset names the window's first in-image element, as PyTorch's
    # index does: kh0 = ceil(-h0 / DH) when the window starts in the top padding, else 0.
    kh0 = tl.maximum(DH - 1 - h0, 0) // DH
    kw0 = tl.maximum(DW - 1 - w0, 0) // DW
    arg = kh0 * KW + kw0
    best = tl.full([BLOCK], float("-inf"), acc_type(x_ptr.dtype.element_ty))
    if UNROLL:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                best, arg = _window_max_step(x_ptr, base, h0, w0, kh, kw, H, W, sxh, sxw, mask,
                                             best, arg, KW, DH, DW)
    else:
        for k in range(KH * KW):
            best, arg = _window_max_step(x_ptr, base, h0, w0, k // KW, k % KW, H, W, sxh, sxw,
                                         mask, best, arg, KW, DH, DW)
    tl.store(out_ptr + idx, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(off_ptr + idx, arg.to(off_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _max_pool_fwd_rows_kernel(
    x_ptr, out_ptr, off_ptr,
    rows, C, H, OH, OW, w_in_v,
    sxn_v, sxc_v, sxh_v, sxw,
    KH: tl.constexpr, KW: tl.constexpr, VEC: tl.constexpr, INT64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    """Non-overlapping windows (kernel == stride, no padding or dilation, KW a power of two) into
    an NCHW output: one program pools BLOCK_R output rows (n, c, oh) by BLOCK_OW output columns.
    Grid: (row tiles, column tiles).

    Per window row kh, the tile's input is one contiguous run of BLOCK_OW * KW elements of each
    input row, cut into windows by a reshape; the rows combine in order under the scan's rule, so
    ties and NaN come out as the scan's. The row strides and the read width come divided by VEC,
    which divides them all (up to 16 bytes of elements): multiplied back here, they tell the
    compiler that runs of VEC elements are aligned, so it loads them as one vector (Triton's own
    argument specialization only sees multiples of 16 elements).
    """
    r, oh, ow, j, base, col_ok, sxh = rows_tile(C, OH, w_in_v, sxn_v, sxc_v, sxh_v, KW, VEC,
                                               INT64, BLOCK_R, BLOCK_OW)
    row_ok = r < rows
    best = tl.full([BLOCK_R, BLOCK_OW], float("-inf"), acc_type(x_ptr.dtype.element_ty))
    arg = tl.zeros([BLOCK_R, BLOCK_OW], tl.int32)
    for kh in range(KH):
        ih = oh * KH + kh
        ok = (row_ok & (ih < H))[:, None] & col_ok[None, :]
        vals = tl.load(x_ptr + (base + ih * sxh)[:, None] + j[None, :] * sxw, mask=ok,
                       other=float("-inf"))
        rb, ra = window_max(tl.reshape(vals.to(best.dtype), (BLOCK_R, BLOCK_OW, KW)), KW, 2)
        take = (rb > best) | (rb != rb)  # the scan's rule, a whole window row at a time
        best = tl.where(take, rb, best)
        arg = tl.where(take, kh * KW + ra, arg)
    out = r[:, None] * OW + ow[None, :]
    ok = row_ok[:, None] & (ow < OW)[None, :]
    tl.store(out_ptr + out, best.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(off_ptr + out, arg.to(off_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _window_grad_step(go_ptr, off_ptr, gbase, obase, ih, iw, kh, kw, OH, OW,
                      sgh, sgw, soh, sow, mask, acc,
                      KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                      PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr):
    """Add the gradient of the window (if any) that holds input (ih, iw) at its element (kh, kw)."""
    th = ih + PH - kh * DH
    tw = iw + PW - kw * DW
    oh = th // SH
    ow = tw // SW
    hit = mask & (th >= 0) & (tw >= 0) & (oh * SH == th) & (ow * SW == tw) & (oh < OH) & (ow < OW)
    off = tl.load(off_ptr + obase + oh * soh + ow * sow, mask=hit, other=-1)
    # loaded under the window mask alone (the same for a run of channels in NHWC, so the load is
    # vectorised), then kept where the offset names this element
    g = tl.load(go_ptr + gbase + oh * sgh + ow * sgw, mask=hit, other=0.0)
    return acc + tl.where(off == kh * KW + kw, g.to(acc.dtype), 0.0)


@triton.jit
def _max_pool_bwd_kernel(
    go_ptr, off_ptr, gi_ptr,
    total, C, H, W, OH, OW,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, NON_OVERLAP: tl.constexpr, UNROLL: tl.constexpr,
    INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program computes BLOCK input gradients, taken in grad_input's memory order.

    grad_output and the offsets are read through their strides; grad_input is contiguous in the
    input's format. Windows are visited in a fixed order and summed in float32 (float64 for
    float64).
    """
    idx = block_indices(BLOCK, INT64)
    mask = idx < total
    n, c, ih, iw = unflatten(idx, C, H, W, CHANNELS_LAST)
    gbase = n * sgn + c * sgc
    obase = n * son + c * soc
    if NON_OVERLAP:
        # kernel == stride, no padding or dilation: input (ih, iw) can only be in window
        # (ih // KH, iw // KW), at element (ih % KH, iw % KW); rows/columns past the last window
        # belong to none.
        oh = ih // KH
        ow = iw // KW
        hit = mask & (oh < OH) & (ow < OW)
        off = tl.load(off_ptr + obase + oh * soh + ow * sow, mask=hit, other=-1)
        g = tl.load(go_ptr + gbase + oh * sgh + ow * sgw, mask=hit, other=0.0)  # see above
        g = tl.where(off == (ih - oh * KH) * KW + (iw - ow * KW), g, tl.zeros_like(g))
        tl.store(gi_ptr + idx, g.to(gi_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=acc_type(go_ptr.dtype.element_ty))
        if UNROLL:
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    acc = _window_grad_step(go_ptr, off_ptr, gbase, obase, ih, iw, kh, kw, OH, OW,
                                            sgh, sgw, soh, sow, mask, acc,
                                            KW, SH, SW, PH, PW, DH, DW)
        else:
            for k in range(KH * KW):
                acc = _window_grad_step(go_ptr, off_ptr, gbase, obase, ih, iw, k // KW, k % KW,
                                        OH, OW, sgh, sgw, soh, sow, mask, acc,
                                        KW, SH, SW, PH, PW, DH, DW)
        tl.store(gi_ptr + idx, acc.to(gi_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Arguments, shapes and checks (shared by the launchers and the custom op's fake kernels)
# --------------------------------------------------------------------------------------------


def _plain(value):
    """An int, None, or a tuple of ints for a list or tuple of them; anything else raises
    TypeError (it is not memoised)."""
    if value is None or type(value) is int:
        return value
    if type(value) in (tuple, list) and all(type(v) is int for v in value):
        return tuple(value)
    raise TypeError


_PARAMS: dict = {}  # _pool_params of plain arguments (a model has a few sets)


def _pool_params(kernel_size, stride, padding, dilation) -> tuple[Pair, Pair, Pair, Pair]:
    """Normalise the pooling arguments to pairs; stride None or () means stride = kernel_size.

    A non-int argument is PyTorch's TypeError, a sequence of the wrong length its RuntimeError.
    Plain arguments (ints, lists and tuples of ints) are normalised once: every call of a layer
    asks several times.
    """
    try:
        key = (_plain(kernel_size), _plain(stride), _plain(padding), _plain(dilation))
    except TypeError:
        return _normalised(kernel_size, stride, padding, dilation)
    params = _PARAMS.get(key)
    if params is None:
        params = _normalised(kernel_size, stride, padding, dilation)
        if len(_PARAMS) < 1024:
            _PARAMS[key] = params
    return params


def _normalised(kernel_size, stride, padding, dilation) -> tuple[Pair, Pair, Pair, Pair]:
    def pair(value, name):
        return as_pair(value, name, prefix="max_pool2d: ", errors=(TypeError, RuntimeError))

    k = pair(kernel_size, "kernel_size")
    s = k if stride is None or isinstance(stride, Sequence) and len(stride) == 0 else pair(
        stride, "stride")
    return k, s, pair(padding, "padding"), pair(dilation, "dilation")


def _check_input(input: torch.Tensor) -> None:
    check_float("input", input)
    check_device("input", input)


def offset_dtype(window: int) -> torch.dtype:
    """The narrowest integer dtype that holds offsets 0 .. window - 1."""
    if window <= 2**7:
        return torch.int8
    if window <= 2**15:
        return torch.int16
    return torch.int32


def _window_args(k: Pair, s: Pair, p: Pair, d: Pair) -> dict:
    """The window constexprs both kernels take: size, stride, padding, dilation, and UNROLL."""
    return dict(KH=k[0], KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1],
                UNROLL=k[0] * k[1] <= _MAX_UNROLLED_WINDOW)


def _non_overlapping(k: Pair, s: Pair, p: Pair, d: Pair) -> bool:
    """kernel_size == stride, no padding, no dilation: each input element in at most one window."""
    return k == s and p == (0, 0) and d == (1, 1)


def _rows_path(k: Pair, s: Pair, p: Pair, d: Pair) -> bool:
    """Non-overlapping windows whose width is a power of two: an NCHW forward takes
    ``_max_pool_fwd_rows_kernel`` (whole window rows per load)."""
    return _non_overlapping(k, s, p, d) and k[1] & (k[1] - 1) == 0


def _ceil_mode_of(input_hw: Pair, output_hw: Pair, k: Pair, s: Pair, p: Pair, d: Pair) -> bool:
    """Which ceil_mode gives this pooled size (backward knows only the sizes); a RuntimeError when
    neither does."""
    for ceil_mode in (False, True):
        if tuple(output_hw) == tuple(pooled_len(input_hw[i], k[i], s[i], p[i], d[i], ceil_mode)
                                     for i in range(2)):
            return ceil_mode
    raise RuntimeError(
        f"max_pool2d backward: a {tuple(output_hw)} gradient is not the pooled size of a "
        f"{tuple(input_hw)} input with kernel_size={k}, stride={s}, padding={p}, dilation={d}"
    )


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


#: the launchers' prepared launches, by call signature
_PLANS = PlanCache()


def max_pool2d_forward(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                       ceil_mode: bool = False, config: dict | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool ``input`` (C, H, W) or (N, C, H, W); return (output, window offsets of the maxima).

    Both outputs keep the input's memory format (channels_last stays channels_last). The input is
    read through its strides, never copied. ``config`` ({"BLOCK", "num_warps"}) overrides the
    autotuned/heuristic launch configuration. Without it a call like an earlier one (shape,
    strides, dtype, device, arguments) reuses that call's checked plan (:data:`_PLANS`).
    """
    _check_input(input)
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    key = None if config is not None else (
        "fwd", input.shape, input.stride(), input.dtype, input.device, k, s, p, d,
        bool(ceil_mode))
    shape, strides, offset_dtype_, run = _PLANS.lookup(
        key, lambda: _forward_plan(input, k, s, p, d, ceil_mode, config))
    out = torch.empty_strided(shape, strides, dtype=input.dtype, device=input.device)
    offsets = torch.empty_strided(shape, strides, dtype=offset_dtype_, device=input.device)
    if run is not None:
        run(x_ptr=as_4d(input), out_ptr=out, off_ptr=offsets)
    return out, offsets


def _forward_plan(input: torch.Tensor, k: Pair, s: Pair, p: Pair, d: Pair, ceil_mode: bool,
                  config: dict | None) -> tuple:
    """(output shape, output strides, offsets dtype, prepared launch or None when the output is
    empty) of a forward: the arguments checked, the config looked up."""
    oh, ow = output_hw("max_pool2d", input.shape, k, s, p, d, ceil_mode)
    nhwc = is_channels_last(input)
    out_shape = (*input.shape[:-2], oh, ow)
    out = empty(out_shape, input.dtype, "meta", nhwc)  # shape and strides only
    plan = (out_shape, out.stride(), offset_dtype(k[0] * k[1]))
    if out.numel() == 0:
        return (*plan, None)

    x4 = as_4d(input)
    N, C, H, W = x4.shape
    layout = "nhwc" if nhwc else "nchw"
    cfg = heuristics.pool_config("max_pool_fwd",
                                 autotune.pool_shape(x4.shape, k, s, p, d, ceil_mode),
                                 input.dtype, layout, _non_overlapping(k, s, p, d), config)
    total = out.numel()
    block = cfg["BLOCK"]
    tensors = ("x_ptr", "out_ptr", "off_ptr")
    if not nhwc and _rows_path(k, s, p, d):
        # a (rows x columns) tile of outputs, as wide as the output allows, whose window rows
        # hold 2 * BLOCK input elements (BLOCK outputs of 2-wide windows): wider windows get
        # fewer outputs, so registers stay as they are for 2x2
        outputs = max(1, 2 * block // k[1])
        block_ow = min(next_pow2(ow), outputs)
        block_r = outputs // block_ow
        rows = N * C * oh
        w_in = min(W, ow * k[1])
        sxn, sxc, sxh, sxw = x4.stride()
        # runs of VEC columns aligned: a hint, as for the conv outputs (Triton checks the
        # pointer's own alignment)
        vec = pixel_vector(w_in, (sxn, sxc, sxh), sxw, most=16 // x4.element_size())
        return (*plan, KernelLaunch(
            _max_pool_fwd_rows_kernel, (cdiv(rows, block_r), cdiv(ow, block_ow)), tensors,
            rows=rows, C=C, H=H, OH=oh, OW=ow, w_in_v=w_in // vec,
            sxn_v=sxn // vec, sxc_v=sxc // vec, sxh_v=sxh // vec, sxw=sxw,
            KH=k[0], KW=k[1], VEC=vec, INT64=needs_int64(total, block, x4, out),
            BLOCK_R=block_r, BLOCK_OW=block_ow, num_warps=cfg["num_warps"]))
    sxn, sxc, sxh, sxw = x4.stride()
    return (*plan, KernelLaunch(
        _max_pool_fwd_kernel, (cdiv(total, block),), tensors,
        total=total, C=C, H=H, W=W, OH=oh, OW=ow, sxn=sxn, sxc=sxc, sxh=sxh, sxw=sxw,
        **_window_args(k, s, p, d), CHANNELS_LAST=nhwc,
        INT64=needs_int64(total, block, x4, out), BLOCK=block, num_warps=cfg["num_warps"]))


def max_pool2d_backward(grad_output: torch.Tensor, offsets: torch.Tensor,
                        input_size: Sequence[int], kernel_size, stride=None, padding=0,
                        dilation=1, channels_last: bool = False, config: dict | None = None
                        ) -> torch.Tensor:
    """Gradient of the input from the upstream gradient and the forward's window offsets.

    ``input_size`` is the input's shape, ``channels_last`` its memory format (4-D only). Each input
    element gathers from the windows that can hold it; no atomics, deterministic. Without
    ``config`` a call like an earlier one reuses its checked plan (:data:`_PLANS`).
    """
    check_float("grad_output", grad_output)
    check_device("grad_output", grad_output)
    check_device("offsets", offsets)
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    key = None if config is not None else (
        "bwd", grad_output.shape, grad_output.stride(), grad_output.dtype, grad_output.device,
        offsets.shape, offsets.stride(), offsets.dtype, tuple(input_size), k, s, p, d,
        bool(channels_last))
    strides, run = _PLANS.lookup(key, lambda: _backward_plan(
        grad_output, offsets, input_size, k, s, p, d, channels_last, config))
    grad_input = torch.empty_strided(tuple(input_size), strides, dtype=grad_output.dtype,
                                     device=grad_output.device)
    if run is not None:
        run(go_ptr=as_4d(grad_output), off_ptr=as_4d(offsets), gi_ptr=grad_input)
    return grad_input


def _backward_plan(grad_output: torch.Tensor, offsets: torch.Tensor, input_size, k: Pair,
                   s: Pair, p: Pair, d: Pair, channels_last: bool, config: dict | None
                   ) -> tuple:
    """(dX strides, prepared launch or None when dX is empty) of a backward: the shapes checked,
    the config looked up."""
    if grad_output.shape != offsets.shape or grad_output.shape[:-2] != tuple(input_size[:-2]):
        raise RuntimeError(
            f"max_pool2d backward: grad_output {list(grad_output.shape)}, offsets "
            f"{list(offsets.shape)} and input_size {list(input_size)} do not match"
        )
    nhwc = channels_last and len(input_size) == 4
    grad_input = empty(tuple(input_size), grad_output.dtype, "meta", nhwc)
    if grad_input.numel() == 0:
        return grad_input.stride(), None

    g4 = as_4d(grad_output)
    o4 = as_4d(offsets)
    N, C, H, W = as_4d(grad_input).shape
    oh, ow = g4.shape[-2:]
    layout = "nhwc" if nhwc else "nchw"
    ceil_mode = _ceil_mode_of((H, W), (oh, ow), k, s, p, d)
    non_overlap = _non_overlapping(k, s, p, d)
    cfg = heuristics.pool_config("max_pool_bwd",
                                 autotune.pool_shape((N, C, H, W), k, s, p, d, ceil_mode),
                                 grad_output.dtype, layout, non_overlap, config)
    total = grad_input.numel()
    block = cfg["BLOCK"]
    sgn, sgc, sgh, sgw = g4.stride()
    son, soc, soh, sow = o4.stride()
    return grad_input.stride(), KernelLaunch(
        _max_pool_bwd_kernel, (cdiv(total, block),), ("go_ptr", "off_ptr", "gi_ptr"),
        total=total, C=C, H=H, W=W, OH=oh, OW=ow,
        sgn=sgn, sgc=sgc, sgh=sgh, sgw=sgw, son=son, soc=soc, soh=soh, sow=sow,
        **_window_args(k, s, p, d), CHANNELS_LAST=nhwc, NON_OVERLAP=non_overlap,
        INT64=needs_int64(total, block, g4, o4, grad_input),
        BLOCK=block, num_warps=cfg["num_warps"])


def offsets_to_indices(offsets: torch.Tensor, input_width: int, kernel_size, stride=None,
                       padding=0, dilation=1) -> torch.Tensor:
    """PyTorch's int64 max-pool indices (``ih * W + iw`` within each plane) from window offsets."""
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    oh, ow = offsets.shape[-2:]
    h0 = torch.arange(oh, device=offsets.device).mul_(s[0]).sub_(p[0]).unsqueeze(1)  # (OH, 1)
    w0 = torch.arange(ow, device=offsets.device).mul_(s[1]).sub_(p[1])  # (OW,)
    # In place on a fresh copy, so the indices keep the offsets' strides (and memory format).
    index = offsets.to(torch.int64)  # kh * KW + kw
    kw = index % k[1]
    index.sub_(kw).div_(k[1], rounding_mode="floor")  # kh
    index.mul_(d[0]).add_(h0).mul_(input_width)  # ih * W
    return index.add_(kw.mul_(d[1]).add_(w0))  # + iw


# --------------------------------------------------------------------------------------------
# torch.library custom ops (what the functional API calls outside eager mode; torch.compile
# sees them)
# --------------------------------------------------------------------------------------------


@kernel_op("tritoncnn::max_pool2d_fwd")
def _max_pool2d_fwd_op(input: torch.Tensor, kernel_size: list[int], stride: list[int],
                       padding: list[int], dilation: list[int], ceil_mode: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    return max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode)


@_max_pool2d_fwd_op.register_fake
def _max_pool2d_fwd_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    check_float("input", input)  # fake and meta tensors: the launcher's checks but the device
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    oh, ow = output_hw("max_pool2d", input.shape, k, s, p, d, ceil_mode)
    nhwc = is_channels_last(input)
    out_shape = (*input.shape[:-2], oh, ow)
    return (empty(out_shape, input.dtype, input.device, nhwc),
            empty(out_shape, offset_dtype(k[0] * k[1]), input.device, nhwc))


@kernel_op("tritoncnn::max_pool2d_bwd")
def _max_pool2d_bwd_op(grad_output: torch.Tensor, offsets: torch.Tensor, input_size: list[int],
                       kernel_size: list[int], stride: list[int], padding: list[int],
                       dilation: list[int], channels_last: bool) -> torch.Tensor:
    return max_pool2d_backward(grad_output, offsets, input_size, kernel_size, stride, padding,
                               dilation, channels_last)


@_max_pool2d_bwd_op.register_fake
def _max_pool2d_bwd_fake(grad_output, offsets, input_size, kernel_size, stride, padding, dilation,
                         channels_last):
    return empty(tuple(input_size), grad_output.dtype, grad_output.device,
                  channels_last and len(input_size) == 4)


# Autograd, shared by the custom op's registration and MaxPool2dFunction: one implementation.


def _save_for_backward(ctx, input: torch.Tensor, offsets: torch.Tensor, params,
                       ceil_mode: bool) -> None:
    ctx.save_for_backward(offsets)
    ctx.input_size = list(input.shape)
    ctx.channels_last = is_channels_last(input)
    ctx.params = tuple(list(v) for v in params)  # (kernel_size, stride, padding, dilation)
    ctx.ceil_mode = bool(ceil_mode)


def routed_gradient(grad_output: torch.Tensor, offsets: torch.Tensor, input_size,
                    kernel_size, stride, padding, dilation, ceil_mode: bool) -> torch.Tensor:
    """dX of a max-pool from its window offsets through PyTorch's own max-pool backward, which
    is differentiable in ``grad_output``: what the backward passes return when autograd records
    them (double backward)."""
    empty = torch.empty(input_size, dtype=grad_output.dtype, device=grad_output.device)
    indices = offsets_to_indices(offsets, input_size[-1], kernel_size, stride, padding, dilation)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_output, empty, list(kernel_size), list(stride), list(padding), list(dilation),
        ceil_mode, indices)


def window_values(input: torch.Tensor, offsets: torch.Tensor, kernel_size, stride=None,
                  padding=0, dilation=1) -> torch.Tensor:
    """``input`` at each window's maximum as the offsets name it (0 where an offset is -1, a
    window the fused op's ReLU zeroed): the max-pool's forward-mode derivative applied to the
    tangent ``input``, with PyTorch's own gather."""
    index = offsets_to_indices(offsets.clamp(min=0), input.shape[-1], kernel_size, stride,
                               padding, dilation)
    picked = input.flatten(-2).gather(-1, index.flatten(-2)).view(offsets.shape)
    return picked * (offsets >= 0)


def _grad_input(ctx, grad_output: torch.Tensor) -> torch.Tensor:
    """dX, routed by ``_op.route_backward``: when autograd records the backward pass (double
    backward), :func:`routed_gradient`; else the launcher or the backward op."""
    (offsets,) = ctx.saved_tensors
    args = (grad_output, offsets, ctx.input_size, *ctx.params)
    return route_backward(
        ctx, grad_output,
        differentiable=lambda: routed_gradient(*args, ctx.ceil_mode),
        launcher=lambda: max_pool2d_backward(*args, ctx.channels_last),
        op=lambda: _max_pool2d_bwd_op(*args, ctx.channels_last))


def _fwd_op_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _save_for_backward(ctx, input, output[1], (kernel_size, stride, padding, dilation), ceil_mode)


register_op_autograd(_max_pool2d_fwd_op, lambda ctx, grad_output: (_grad_input(ctx, grad_output),),
                     _fwd_op_setup_context, params=5)


def _forward(input, kernel_size, stride, padding, dilation, ceil_mode):
    """(output, offsets, pair params) through the custom op, or straight through its launcher in
    plain eager mode (``eager_ok``); the launcher validates."""
    params = _pool_params(kernel_size, stride, padding, dilation)
    forward = max_pool2d_forward if eager_ok(input) else _max_pool2d_fwd_op
    out, offsets = forward(input, *(list(v) for v in params), bool(ceil_mode))
    return out, offsets, params


# --------------------------------------------------------------------------------------------
# autograd.Function and the functional API
# --------------------------------------------------------------------------------------------


class MaxPool2dFunction(torch.autograd.Function):
    """``MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode,
    return_indices)``: max-pooling on the Triton kernels as an autograd Function.

    Returns the output, or (output, int64 indices) when ``return_indices`` is true. Saves only the
    int8 window offsets for backward. It runs the functional API's own autograd Function (so
    double backward, torch.func and forward-mode AD work here too): the launchers in plain eager
    mode, the custom ops otherwise.
    """

    @classmethod
    def apply(cls, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              return_indices=False):
        out, offsets = apply_function(_MaxPool2dChecked, input, kernel_size, stride, padding,
                                      dilation, ceil_mode)
        if not return_indices:
            return out
        params = _pool_params(kernel_size, stride, padding, dilation)
        return out, offsets_to_indices(offsets, input.shape[-1], *params)


def _function_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.mark_non_differentiable(output[1])
    _save_for_backward(ctx, input, output[1],
                       _pool_params(kernel_size, stride, padding, dilation), ceil_mode)
    ctx.save_for_forward(output[1])


def _function_jvp(ctx, input_t, *_):
    (offsets,) = ctx.saved_tensors
    return window_values(input_t, offsets, *ctx.params), None


_MaxPool2dChecked = op_function(
    "_MaxPool2dChecked",
    """The functional API's eager path (``torch.func.grad`` too, hence ``setup_context``): the
    output and the window offsets (not differentiable).""",
    forward=lambda *args: _forward(*args)[:2], setup_context=_function_setup_context,
    backward=lambda ctx, grad_output, _grad_offsets: (_grad_input(ctx, grad_output),
                                                      None, None, None, None, None),
    jvp=_function_jvp)


@traced_checks_quiet
def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Drop-in for ``torch.nn.functional.max_pool2d`` on the Triton kernels.

    Same arguments, output shapes, values, indices and gradients as PyTorch, for 3-D (C, H, W)
    and 4-D (N, C, H, W) input in float32, float16, bfloat16 or float64, NCHW or channels_last
    (kept).
    Plain eager calls (and torch.func.grad) run the launchers through an autograd Function, as
    :class:`MaxPool2dFunction` does; anything else goes through the custom op
    ``tritoncnn::max_pool2d_fwd``, so ``torch.compile`` traces it. The input and the arguments
    are checked once, by the launcher (or the op's fake kernel). A window wholly in the padding
    (dilation allows it) gives -inf and PyTorch's index, which lies outside the input; its
    gradient reaches no input element.
    """
    if eager_ok(input):
        return MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode,
                                       return_indices)
    out, offsets, params = _forward(input, kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        return out, offsets_to_indices(offsets, input.shape[-1], *params)
    return out
