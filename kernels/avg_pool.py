"""2-D average pooling: Triton kernels, launchers, autograd Function and custom ops.

The lecture's other pooling: each output is the mean of its window instead of the maximum. The
arguments and results are ``F.avg_pool2d``'s: kernel_size, stride, padding, ceil_mode,
count_include_pad (whether the zero padding counts in a window's divisor) and divisor_override (a
fixed divisor). A window that ceil_mode lets run past the padded input is cut there, and divides
by what is left of it, as PyTorch does.

Forward sums each window in float32 (float64 for float64) and divides once. Backward is a gather
over input elements: each input element adds up ``grad_output / divisor`` of the windows that
contain it, in a fixed order: no atomics, so the result is bit-for-bit deterministic. Nothing is
saved for backward but the input's shape and memory format. Non-overlapping windows (kernel_size
== stride, no padding: the usual 2x2/2) take fast paths: backward reads one window per input
element, and an NCHW forward with a power-of-two window width reads whole window rows as vectors
and sums them by a reshape (``_avg_pool_fwd_rows_kernel``).

Backward is the adjoint of the (linear) forward, so the backward op's own gradient is the forward
op. A backward pass that autograd records (double backward, torch.func) runs PyTorch's own
differentiable ``avg_pool2d_backward`` instead, as max-pool's does.

Layers, top to bottom: the functional :func:`avg_pool2d` (in eager mode through
:class:`AvgPool2dFunction` straight on the launchers, otherwise through the custom op
``tritoncnn::avg_pool2d`` / ``tritoncnn::avg_pool2d_backward``, visible to ``torch.compile``),
the launchers :func:`avg_pool2d_forward` / :func:`avg_pool2d_backward`, and the ``@triton.jit``
kernels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl


from tritoncnn.autotune import heuristics

from ._checks import (as_pair, cdiv, check_device, check_float, is_channels_last, launch,
                      next_pow2, pixel_vector)
from ._gemm import acc_type
from ._op import kernel_op
from ._op import (apply_function, eager_ok, register_op_autograd, route_backward,
                  traced_checks_quiet, vmap_rule, with_eager_twin)

from ._pool import as_4d, block_indices, empty, needs_int64, output_hw, rows_tile, unflatten

__all__ = [
    "avg_pool2d",
    "AvgPool2dFunction",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
]

Pair = tuple[int, int]

# Windows with more elements than this loop at run time instead of being unrolled (max-pool's
# bound: unrolled, larger windows hoist all their loads and spill).
_MAX_UNROLLED_WINDOW = 16


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _window_divisor(h0, w0, H, W, divisor,
                    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    COUNT_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr):
    """The divisor of the windows starting at (h0, w0) (padded coordinates, so h0 may be < 0):
    ``divisor`` when overridden; else the window cut at the padded input's edge (count_include_pad)
    or at the input's own edge. PyTorch's ``divide_factor``."""
    h1 = tl.minimum(h0 + KH, H + PH)
    w1 = tl.minimum(w0 + KW, W + PW)
    if COUNT_PAD:
        count = (h1 - h0) * (w1 - w0)
    else:
        count = (tl.minimum(h1, H) - tl.maximum(h0, 0)) * (tl.minimum(w1, W) - tl.maximum(w0, 0))
    if HAS_DIVISOR:
        count = tl.zeros_like(count) + divisor
    return count


@triton.jit
def _avg_pool_fwd_kernel(
    x_ptr, out_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, divisor,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, COUNT_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, UNROLL: tl.constexpr, INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program averages BLOCK windows, taken in the output's memory order (NCHW or NHWC).

    The input is read through its strides; out is contiguous in the output's format.
    """
    idx = block_indices(BLOCK, INT64)
    mask = idx < total
    n, c, oh, ow = unflatten(idx, C, OH, OW, CHANNELS_LAST)
    base = n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    acc = tl.zeros([BLOCK], acc_type(x_ptr.dtype.element_ty))
    if UNROLL:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                ih = h0 + kh
                iw = w0 + kw
                inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                acc += tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=inside,
                               other=0.0).to(acc.dtype)
    else:
        for k in range(KH * KW):
            ih = h0 + k // KW
            iw = w0 + k % KW
            inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            acc += tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=inside,
                           other=0.0).to(acc.dtype)
    count = _window_divisor(h0, w0, H, W, divisor, KH, KW, PH, PW, COUNT_PAD, HAS_DIVISOR)
    count = tl.where(mask, count, 1)  # lanes past the end divide by something harmless
    tl.store(out_ptr + idx, (acc / count.to(acc.dtype)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _avg_pool_fwd_rows_kernel(
    x_ptr, out_ptr,
    rows, C, H, W, OH, OW, w_in_v,
    sxn_v, sxc_v, sxh_v, sxw, divisor,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DIVISOR: tl.constexpr, VEC: tl.constexpr,
    INT64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    """Non-overlapping windows (kernel == stride, no padding, KW a power of two) into an NCHW
    output: one program averages BLOCK_R output rows (n, c, oh) by BLOCK_OW output columns.
    Grid: (row tiles, column tiles).

    Per window row kh, the tile's input is one contiguous run of BLOCK_OW * KW elements of each
    input row, cut into windows by a reshape and summed along them. The row strides and the
    read width come divided by VEC, which divides them all: multiplied back here, they tell the
    compiler that runs of VEC elements are aligned, so it loads them as vectors.
    """
    r, oh, ow, j, base, col_ok, sxh = rows_tile(C, OH, w_in_v, sxn_v, sxc_v, sxh_v, KW, VEC,
                                               INT64, BLOCK_R, BLOCK_OW)
    row_ok = r < rows
    acc = tl.zeros([BLOCK_R, BLOCK_OW], acc_type(x_ptr.dtype.element_ty))
    for kh in range(KH):
        ih = oh * KH + kh
        ok = (row_ok & (ih < H))[:, None] & col_ok[None, :]
        vals = tl.load(x_ptr + (base + ih * sxh)[:, None] + j[None, :] * sxw, mask=ok, other=0.0)
        acc += tl.sum(tl.reshape(vals.to(acc.dtype), (BLOCK_R, BLOCK_OW, KW)), axis=2)
    # no padding: the window cut at the input's edge (both count_include_pad modes agree)
    count = _window_divisor((oh * KH)[:, None], (ow * KW)[None, :], H, W, divisor,
                            KH, KW, 0, 0, True, HAS_DIVISOR)
    out = r[:, None] * OW + ow[None, :]
    ok = row_ok[:, None] & (ow < OW)[None, :]
    count = tl.where(ok, count, 1)
    tl.store(out_ptr + out, (acc / count.to(acc.dtype)).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _window_grad_step(go_ptr, gbase, ih, iw, kh, kw, H, W, OH, OW, sgh, sgw, divisor, mask, acc,
                      KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                      PH: tl.constexpr, PW: tl.constexpr, COUNT_PAD: tl.constexpr,
                      HAS_DIVISOR: tl.constexpr):
    """Add the share of the window (if any) that holds input (ih, iw) at its element (kh, kw)."""
    th = ih + PH - kh
    tw = iw + PW - kw
    oh = th // SH
    ow = tw // SW
    hit = mask & (th >= 0) & (tw >= 0) & (oh * SH == th) & (ow * SW == tw) & (oh < OH) & (ow < OW)
    g = tl.load(go_ptr + gbase + oh * sgh + ow * sgw, mask=hit, other=0.0)
    count = _window_divisor(oh * SH - PH, ow * SW - PW, H, W, divisor, KH, KW, PH, PW, COUNT_PAD,
                            HAS_DIVISOR)
    return acc + g.to(acc.dtype) / tl.where(hit, count, 1).to(acc.dtype)


@triton.jit
def _avg_pool_bwd_kernel(
    go_ptr, gi_ptr,
    total, C, H, W, OH, OW,
    sgn, sgc, sgh, sgw, divisor,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, COUNT_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, NON_OVERLAP: tl.constexpr, UNROLL: tl.constexpr,
    INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program computes BLOCK input gradients, taken in grad_input's memory order.

    grad_output is read through its strides; grad_input is contiguous in the input's format.
    Windows are visited in a fixed order and summed in float32 (float64 for float64).
    """
    idx = block_indices(BLOCK, INT64)
    mask = idx < total
    n, c, ih, iw = unflatten(idx, C, H, W, CHANNELS_LAST)
    gbase = n * sgn + c * sgc
    acc = tl.zeros([BLOCK], acc_type(go_ptr.dtype.element_ty))
    if NON_OVERLAP:
        # kernel == stride, no padding: input (ih, iw) can only be in window (ih // KH,
        # iw // KW); rows and columns past the last window belong to none
        oh = ih // KH
        ow = iw // KW
        hit = mask & (oh < OH) & (ow < OW)
        g = tl.load(go_ptr + gbase + oh * sgh + ow * sgw, mask=hit, other=0.0).to(acc.dtype)
        count = _window_divisor(oh * KH, ow * KW, H, W, divisor, KH, KW, 0, 0, True,
                                HAS_DIVISOR)
        acc = g / tl.where(hit, count, 1).to(acc.dtype)
    else:
        if UNROLL:
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    acc = _window_grad_step(go_ptr, gbase, ih, iw, kh, kw, H, W, OH, OW, sgh,
                                            sgw, divisor, mask, acc, KH, KW, SH, SW, PH, PW,
                                            COUNT_PAD, HAS_DIVISOR)
        else:
            for k in range(KH * KW):
                acc = _window_grad_step(go_ptr, gbase, ih, iw, k // KW, k % KW, H, W, OH, OW,
                                        sgh, sgw, divisor, mask, acc, KH, KW, SH, SW, PH, PW,
                                        COUNT_PAD, HAS_DIVISOR)
    tl.store(gi_ptr + idx, acc.to(gi_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Arguments, shapes and checks (shared by the launchers and the custom ops' fake kernels)
# --------------------------------------------------------------------------------------------


def _pool_params(kernel_size, stride, padding) -> tuple[Pair, Pair, Pair]:
    """Normalise the pooling arguments to pairs; stride None or () means stride = kernel_size.

    A non-int argument is PyTorch's TypeError, a sequence of the wrong length its RuntimeError.
    """
    def pair(value, name):
        return as_pair(value, name, prefix="avg_pool2d: ", errors=(TypeError, RuntimeError))

    k = pair(kernel_size, "kernel_size")
    s = k if stride is None or isinstance(stride, Sequence) and len(stride) == 0 else pair(
        stride, "stride")
    return k, s, pair(padding, "padding")


def _check_divisor(divisor_override) -> None:
    if divisor_override is None:
        return
    if not isinstance(divisor_override, int) or isinstance(divisor_override, bool):
        raise TypeError(f"avg_pool2d: divisor_override must be an int or None, got "
                        f"{type(divisor_override).__name__} {divisor_override!r}")
    if divisor_override == 0:
        raise RuntimeError("avg_pool2d: divisor_override must not be zero")


def _check_backward_args(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                         divisor_override) -> tuple[Pair, Pair, Pair]:
    """The backward's checks (launcher and fake kernel): the arguments, and a grad_output of the
    pooled input's output shape. Returns the arguments as pairs."""
    _check_divisor(divisor_override)
    k, s, p = _pool_params(kernel_size, stride, padding)
    oh, ow = output_hw("avg_pool2d", tuple(input_size), k, s, p, None, ceil_mode)
    expected = (*input_size[:-2], oh, ow)
    if tuple(grad_output.shape) != tuple(expected):
        raise RuntimeError(
            f"avg_pool2d backward: grad_output has shape {list(grad_output.shape)}, but the "
            f"pooled input {list(input_size)} has output shape {list(expected)}"
        )
    return k, s, p


def _non_overlapping(k: Pair, s: Pair, p: Pair) -> bool:
    """kernel_size == stride, no padding: each input element in at most one window."""
    return k == s and p == (0, 0)


def _window_args(k: Pair, s: Pair, p: Pair, count_include_pad: bool, divisor_override) -> dict:
    """The window constexprs the general kernels take."""
    return dict(KH=k[0], KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1],
                COUNT_PAD=bool(count_include_pad), HAS_DIVISOR=divisor_override is not None,
                UNROLL=k[0] * k[1] <= _MAX_UNROLLED_WINDOW)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def avg_pool2d_forward(input: torch.Tensor, kernel_size, stride=None, padding=0,
                       ceil_mode: bool = False, count_include_pad: bool = True,
                       divisor_override: int | None = None,
                       config: dict | None = None) -> torch.Tensor:
    """Average-pool ``input`` (C, H, W) or (N, C, H, W).

    The output keeps the input's memory format (channels_last stays channels_last). The input is
    read through its strides, never copied. ``config`` ({"BLOCK", "num_warps"}) overrides the
    heuristic launch configuration.
    """
    check_float("input", input)
    check_device("input", input)
    _check_divisor(divisor_override)
    k, s, p = _pool_params(kernel_size, stride, padding)
    oh, ow = output_hw("avg_pool2d", input.shape, k, s, p, None, ceil_mode)
    nhwc = is_channels_last(input)
    out = empty((*input.shape[:-2], oh, ow), input.dtype, input.device, nhwc)
    if out.numel() == 0:
        return out

    x4 = as_4d(input)
    N, C, H, W = x4.shape
    non_overlap = _non_overlapping(k, s, p)
    cfg = heuristics.avg_pool_config("nhwc" if nhwc else "nchw", non_overlap, input.dtype,
                                     config)
    total = out.numel()
    block = cfg["BLOCK"]
    divisor = 1 if divisor_override is None else int(divisor_override)
    if not nhwc and non_overlap and k[1] & (k[1] - 1) == 0:
        # a (rows x columns) tile of outputs whose window rows hold 2 * BLOCK input elements
        outputs = max(1, 2 * block // k[1])
        block_ow = min(next_pow2(ow), outputs)
        block_r = outputs // block_ow
        rows = N * C * oh
        w_in = min(W, ow * k[1])
        sxn, sxc, sxh, sxw = x4.stride()
        vec = pixel_vector(w_in, (sxn, sxc, sxh), sxw, most=16 // x4.element_size())
        launch(_avg_pool_fwd_rows_kernel, (cdiv(rows, block_r), cdiv(ow, block_ow)),
            x4, out,
            rows, C, H, W, oh, ow, w_in // vec,
            sxn // vec, sxc // vec, sxh // vec, sxw, divisor,
            KH=k[0], KW=k[1], HAS_DIVISOR=divisor_override is not None, VEC=vec,
            INT64=needs_int64(total, block, x4, out),
            BLOCK_R=block_r, BLOCK_OW=block_ow, num_warps=cfg["num_warps"],
        )
        return out
    launch(_avg_pool_fwd_kernel, (cdiv(total, block),),
        x4, out,
        total, C, H, W, oh, ow,
        *x4.stride(), divisor,
        **_window_args(k, s, p, count_include_pad, divisor_override), CHANNELS_LAST=nhwc,
        INT64=needs_int64(total, block, x4, out),
        BLOCK=block, num_warps=cfg["num_warps"],
    )
    return out


def avg_pool2d_backward(grad_output: torch.Tensor, input_size: Sequence[int], kernel_size,
                        stride=None, padding=0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: int | None = None,
                        channels_last: bool = False, config: dict | None = None
                        ) -> torch.Tensor:
    """Gradient of the input of an average pool from the upstream gradient.

    ``input_size`` is the input's shape, ``channels_last`` its memory format (4-D only). Each input
    element gathers from the windows that hold it; no atomics, deterministic.
    """
    check_float("grad_output", grad_output)
    check_device("grad_output", grad_output)
    k, s, p = _check_backward_args(grad_output, input_size, kernel_size, stride, padding,
                                   ceil_mode, divisor_override)
    oh, ow = grad_output.shape[-2:]
    nhwc = channels_last and len(input_size) == 4
    grad_input = empty(tuple(input_size), grad_output.dtype, grad_output.device, nhwc)
    if grad_input.numel() == 0:
        return grad_input

    g4 = as_4d(grad_output)
    N, C, H, W = as_4d(grad_input).shape
    non_overlap = _non_overlapping(k, s, p)
    cfg = heuristics.avg_pool_config("nhwc" if nhwc else "nchw", non_overlap,
                                     grad_output.dtype, config)
    total = grad_input.numel()
    block = cfg["BLOCK"]
    launch(_avg_pool_bwd_kernel, (cdiv(total, block),),
        g4, grad_input,
        total, C, H, W, oh, ow,
        *g4.stride(), 1 if divisor_override is None else int(divisor_override),
        **_window_args(k, s, p, count_include_pad, divisor_override), CHANNELS_LAST=nhwc,
        NON_OVERLAP=non_overlap, INT64=needs_int64(total, block, g4, grad_input),
        BLOCK=block, num_warps=cfg["num_warps"],
    )
    return grad_input


# --------------------------------------------------------------------------------------------
# torch.library custom ops (what the functional API calls outside eager mode; torch.compile
# sees them)
# --------------------------------------------------------------------------------------------


@kernel_op("tritoncnn::avg_pool2d")
def _avg_pool2d_op(input: torch.Tensor, kernel_size: list[int], stride: list[int],
                   padding: list[int], ceil_mode: bool, count_include_pad: bool,
                   divisor_override: Optional[int]) -> torch.Tensor:
    return avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override)


@_avg_pool2d_op.register_fake
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
    check_float("input", input)  # fake and meta tensors: the launcher's checks but the device
    _check_divisor(divisor_override)
    k, s, p = _pool_params(kernel_size, stride, padding)
    oh, ow = output_hw("avg_pool2d", input.shape, k, s, p, None, ceil_mode)
    return empty((*input.shape[:-2], oh, ow), input.dtype, input.device,
                  is_channels_last(input))


@kernel_op("tritoncnn::avg_pool2d_backward")
def _avg_pool2d_bwd_op(grad_output: torch.Tensor, input_size: list[int], kernel_size: list[int],
                       stride: list[int], padding: list[int], ceil_mode: bool,
                       count_include_pad: bool, divisor_override: Optional[int],
                       channels_last: bool) -> torch.Tensor:
    return avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                               count_include_pad, divisor_override, channels_last)


@_avg_pool2d_bwd_op.register_fake
def _avg_pool2d_bwd_fake(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                         count_include_pad, divisor_override, channels_last):
    _check_backward_args(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                         divisor_override)
    return empty(tuple(input_size), grad_output.dtype, grad_output.device,
                  channels_last and len(input_size) == 4)


# Autograd, shared by the custom ops' registrations and AvgPool2dFunction: one implementation.


def _save(ctx, input: torch.Tensor, params, ceil_mode, count_include_pad,
          divisor_override) -> None:
    """Backward needs only the input's shape and memory format, and the arguments."""
    ctx.input_size = list(input.shape)
    ctx.channels_last = is_channels_last(input)
    ctx.args = (*(list(v) for v in params), bool(ceil_mode), bool(count_include_pad),
                divisor_override)  # (kernel_size, stride, padding, ceil_mode, ...)


def pytorch_gradient(grad_output: torch.Tensor, input_size, channels_last: bool, kernel_size,
                     stride, padding, ceil_mode, count_include_pad, divisor_override
                     ) -> torch.Tensor:
    """dX of an average pool through PyTorch's own backward op, which is differentiable in
    ``grad_output`` under every transform: what the backward passes return when autograd records
    them (double backward, torch.func)."""
    like = empty(tuple(input_size), grad_output.dtype, grad_output.device,
                   channels_last and len(input_size) == 4)
    return torch.ops.aten.avg_pool2d_backward(grad_output, like, list(kernel_size), list(stride),
                                              list(padding), ceil_mode, count_include_pad,
                                              divisor_override)


def _grad_input(ctx, grad_output: torch.Tensor) -> torch.Tensor:
    """dX, routed by ``_op.route_backward``: when autograd records the backward pass (double
    backward), :func:`pytorch_gradient`; else the launcher or the backward op."""
    args = (grad_output, ctx.input_size, *ctx.args)
    return route_backward(
        ctx, grad_output,
        differentiable=lambda: pytorch_gradient(grad_output, ctx.input_size, ctx.channels_last,
                                                *ctx.args),
        launcher=lambda: avg_pool2d_backward(*args, ctx.channels_last),
        op=lambda: _avg_pool2d_bwd_op(*args, ctx.channels_last))


def _fwd_op_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = inputs
    _save(ctx, input, (kernel_size, stride, padding), ceil_mode, count_include_pad,
          divisor_override)


register_op_autograd(_avg_pool2d_op, lambda ctx, grad_output: (_grad_input(ctx, grad_output),),
                     _fwd_op_setup_context, params=6)


def _bwd_op_setup_context(ctx, inputs, output):
    (_, _, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
     _) = inputs
    ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _bwd_op_backward(ctx, grad_grad_input):
    # backward is linear in grad_output and the forward's adjoint, so its adjoint is the forward
    return (_avg_pool2d_op(grad_grad_input, *ctx.args),) + (None,) * 8


_avg_pool2d_bwd_op.register_autograd(_bwd_op_backward, setup_context=_bwd_op_setup_context)


# --------------------------------------------------------------------------------------------
# autograd.Function and the functional API
# --------------------------------------------------------------------------------------------


@with_eager_twin
class AvgPool2dFunction(torch.autograd.Function):
    """``AvgPool2dFunction.apply(input, kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override)``: average pooling on the Triton kernels as an autograd
    Function (the functional API's eager path; torch.func's grad, vjp, vmap and jvp take it).

    Saves no tensor for backward, only the input's shape and memory format.
    """

    @staticmethod
    def forward(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True, divisor_override=None):
        params = _pool_params(kernel_size, stride, padding)
        return avg_pool2d_forward(input, *params, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = \
            inputs
        _save(ctx, input, _pool_params(kernel_size, stride, padding), ceil_mode,
              count_include_pad, divisor_override)

    @staticmethod
    def backward(ctx, grad_output):
        return _grad_input(ctx, grad_output), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        # linear: the output's tangent is the pool of the input's, taken with PyTorch's op
        # (the tangent is a torch.func wrapper, which a kernel launch cannot read)
        return torch.nn.functional.avg_pool2d(input_t, *ctx.args)

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_rule(AvgPool2dFunction, info, in_dims, *args)


@traced_checks_quiet
def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None
               ) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.avg_pool2d`` on the Triton kernels.

    Same arguments, output shapes, values and gradients as PyTorch, for 3-D (C, H, W) and 4-D
    (N, C, H, W) input in float32, float16, bfloat16 or float64, NCHW or channels_last (kept).
    Plain eager calls (and torch.func transforms) run the launchers through
    :class:`AvgPool2dFunction`; anything else goes through the custom op
    ``tritoncnn::avg_pool2d``, so ``torch.compile`` traces it. The input and the arguments are
    checked once, by the launcher (or the op's fake kernel).
    """
    if eager_ok(input):
        return apply_function(AvgPool2dFunction, input, kernel_size, stride, padding,
                              bool(ceil_mode), bool(count_include_pad), divisor_override)
    params = _pool_params(kernel_size, stride, padding)
    _check_divisor(divisor_override)
    return _avg_pool2d_op(input, *(list(v) for v in params), bool(ceil_mode),
                          bool(count_include_pad), divisor_override)
