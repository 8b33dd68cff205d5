"""Fused conv2d + bias + ReLU + max-pool (non-overlapping F x F windows) in one kernel, forward
and backward: the lecture's CONV -> RELU -> POOL block without the full-size activation.

``conv2d_relu_pool(x, w, b, stride, padding, dilation, groups, pool=F)`` equals
``F.max_pool2d(F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups)), F)``, flooring odd
conv output sizes as max_pool2d does.

* Forward (``_conv_pool_fwd_kernel``): every tile covers whole windows. For F = 2 (and 4) its
  GEMM rows are the conv pixels of whole windows, so the conv's own mainloop runs once, with one
  accumulator, and the epilogue reduces each window's rows to their maximum and its offset; for
  other F the rows are pooled pixels and the mainloop runs once per window element, keeping a
  running maximum and offset. The bias and ReLU are applied once, to the maximum
  (max(relu(x_i + b)) = relu(max(x_i) + b)). Only the pooled output and the window offsets (int8
  for windows of up to 128 elements) are written; ties and NaN as max_pool2d over the ReLU output.
* Dead windows: where the pooled output is ReLU's 0, ReLU passes no gradient,
  and the forward writes offset -1 there, a pixel no window has.
* Saved for backward: input, weight and the offsets (1 byte per pooled pixel), never the conv
  output nor the pooled output: about 1/9 of the unfused version's bytes in bf16 with F = 2.
* Backward: the conv backward's (``conv_backward``) with a pool source: its dZ pass rebuilds the
  conv-output gradient from the pooled gradient (non-zero only at the pixel a window's offset
  names, so never in a dead window) into a transient full-size buffer that the dX and dW main
  loops read as the plain conv's. Deterministic, as the conv backward (fixed-order sums, no
  atomics).

Launch configs: "conv_pool_fwd" for the forward; the backward uses "conv_dx" / "conv_dw" with
``pool`` added to the conv's shape dict, so its tuned entries stay apart from the plain conv's.

Layers, top to bottom: :func:`conv2d_relu_pool` (in eager mode an autograd Function straight on the
launchers; otherwise through the custom ops ``tritoncnn::conv2d_relu_pool`` /
``tritoncnn::conv2d_relu_pool_backward``, visible to ``torch.compile`` and ``opcheck``),
:class:`Conv2dReLUPoolFunction` (a plain autograd Function), the launchers
:func:`conv2d_relu_pool_forward` and :func:`conv2d_relu_pool_backward` (the conv backward's
kernels, reading a pool ``GradSource``), and ``_conv_pool_fwd_kernel``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from tritoncnn._shapes import window_rows
from tritoncnn.autotune import heuristics

from ._checks import (KernelLaunch, PlanCache, autocast_enabled, bias_operand, cdiv,
                      channel_strides, channel_vector, channels_inner, check_float, dot_args,
                      kernel_strides, launch_opts, memory_format_of, pixel_vector,
                      register_tiles, resolve_tf32)
from ._gemm import (acc_type, accumulator_window_max, bias_relu, conv_mainloop, pooled_pixel,
                    tensor_core_dot, tile_ids, times, window_order)
from ._op import kernel_op
from ._op import (apply_function, autocast_inputs, eager_ok, fake_conv_grads, grad_mask,
                  grads_or_empty, op_function, register_autocast, register_op_autograd,
                  route_backward, traced_checks_quiet, wanted)
from .conv import LAYOUT, conv_tangent
from .conv_backward import GradSource, conv_grads, differentiable_conv_grads
from .geometry import (ConvGeometry, check_and_resolve, check_geometry, check_tensors, shape_of,
                       tuning_shape)
from .max_pool import offset_dtype, routed_gradient, window_values

__all__ = ["Conv2dReLUPoolFunction", "conv2d_relu_pool", "conv2d_relu_pool_forward",
           "conv2d_relu_pool_backward"]


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _conv_pool_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, off_ptr,
    N, H, W, PP, pq_v, R: tl.constexpr, S: tl.constexpr, cg_v, KG,
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
    tile's BLOCK_M rows are BLOCK_M / POOL**2 whole windows, in ``window_order`` (a window's
    elements in one thread of the accumulator), and the maxima come from a reduction over each
    window's rows (``accumulator_window_max``). Otherwise the BLOCK_M rows
    are pooled pixels and the mainloop runs once per window element.
    Ties and NaN as ``F.max_pool2d(F.relu(...))``: an element replaces the running maximum when
    it is greater or NaN (first maximum wins, last NaN wins), and a window whose maximum is <= 0
    after bias pools to relu's 0. OFF has Y's strides; it is -1 where Y is that 0, where ReLU's
    backward passes no gradient (a NaN window keeps its offset: F.relu's backward passes NaN
    outputs' gradient), so backward needs the offsets alone, not Y.
    Vector hints (``_gemm``): PQ and Y's N, K, P strides come divided by YV, and CG and X's and
    Wt's strides by CV, as in ``_conv_fwd_kernel``.
    """
    PQ = pq_v * YV
    syn, syk, syp = times(YV, syn_v, syk_v, syp_v)
    CG = cg_v * CV
    sxn, sxh, sxw = times(CV, sxn_v, sxh_v, sxw_v)
    swk, swr, sws = times(CV, swk_v, swr_v, sws_v)
    g = tl.program_id(1)
    MP = N * PP * PQ                                       # pooled pixels
    E: tl.constexpr = POOL * POOL
    pid_m, pid_n = tile_ids(tl.program_id(0), MP * E if WINDOW_ROWS else MP, KG,
                             BLOCK_M, BLOCK_N, GROUP_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # output channel within the group
    mask_n = offs_n < KG
    chan = g * KG + offs_n                                 # output channel
    x_col = g * CG * sxc
    if WINDOW_ROWS:
        WIN: tl.constexpr = BLOCK_M // E                   # whole windows per tile
        win, e = window_order(BLOCK_M, E)                  # each row's window and element
        pooled = pid_m * WIN + win                         # pooled pixel (n, ph, pw)
        n, ph, pw = pooled_pixel(pooled, PP, PQ)
        acc = conv_mainloop(
            x_ptr, w_ptr, n.to(tl.int64) * sxn + x_col,
            (ph * POOL + e // POOL) * stride_h - pad_h, (pw * POOL + e % POOL) * stride_w - pad_w,
            pooled < MP, chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws,
            dil_h, dil_w, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION,
            tensor_core_dot(x_ptr.dtype.element_ty, PRECISION),
        )
        best, arg = accumulator_window_max(acc, BLOCK_M, BLOCK_N, E)
        offs_m = pid_m * WIN + tl.arange(0, WIN)           # pooled pixel (n, ph, pw)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # pooled pixel (n, ph, pw)
        n, ph, pw = pooled_pixel(offs_m, PP, PQ)
        x_row = n.to(tl.int64) * sxn + x_col
        h_win = ph * POOL * stride_h - pad_h               # top-left tap of window element (0, 0)
        w_win = pw * POOL * stride_w - pad_w
        best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), acc_type(x_ptr.dtype.element_ty))
        arg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for e in range(E):                                 # window element (i, j), row-major
            acc = conv_mainloop(
                x_ptr, w_ptr, x_row, h_win + (e // POOL) * stride_h,
                w_win + (e % POOL) * stride_w, offs_m < MP,
                chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws, dil_h, dil_w,
                BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION, False,
            )
            take = (acc > best) | (acc != acc)
            best = tl.where(take, acc, best)
            arg = tl.where(take, e, arg)
    # max(relu(x_e + b)) == relu(max(x_e) + b): bias and ReLU once, on the maximum.
    best = bias_relu(best, b_ptr, chan, mask_n, HAS_BIAS, False)
    dead = best <= 0                                       # ReLU's 0 (NaN is kept, as F.relu does)
    best = tl.where(dead, 0.0, best)
    arg = tl.where(dead, -1, arg)                          # dead windows: no pixel gets dY

    n, ph, pw = pooled_pixel(offs_m, PP, PQ)
    y_off = (n.to(tl.int64) * syn + ph * syp + pw * syq)[:, None] + (chan * syk)[None, :]
    mask = (offs_m < MP)[:, None] & mask_n[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(off_ptr + y_off, arg.to(off_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Checks, shapes and host launchers
# ----------------------------------------------------------------------------------------------


def check_pool(pool, P: int, Q: int, input_shape, weight_shape) -> int:
    """``pool`` must be a positive int no larger than the P x Q conv output; returns it."""
    if not isinstance(pool, int) or isinstance(pool, bool):
        raise TypeError(f"pool must be an int (the window size and stride F), got {pool!r}")
    if pool <= 0:
        raise ValueError(f"pool must be positive, got {pool}")
    if pool > P or pool > Q:
        raise ValueError(
            f"pool={pool} is larger than the {P}x{Q} conv output of input {tuple(input_shape)} "
            f"and weight {tuple(weight_shape)}: the pooled output would be empty"
        )
    return pool


def _pooled_size(geometry: ConvGeometry, input_shape, weight_shape, pool: int):
    """(P, Q) of the conv output and (PP, PQ) = (P // pool, Q // pool) of the pooled output."""
    P, Q = geometry.output_size(input_shape[2], input_shape[3], weight_shape[2], weight_shape[3])
    return (P, Q), (P // pool, Q // pool)


#: conv2d_relu_pool_forward's prepared launches, by call signature
_PLANS = PlanCache()


def conv2d_relu_pool_forward(input: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], geometry: ConvGeometry, pool: int,
                             allow_tf32: Optional[bool] = None, config: Optional[dict] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pooled output (N, K, P // pool, Q // pool), window offsets of the maxima) of
    max_pool2d(relu(conv2d(input, weight) + bias), pool), both in input's memory format.

    Tensors and ``pool`` must already be checked (:func:`resolve_geometry`, :func:`check_pool`);
    ``config`` overrides keys of the "conv_pool_fwd" launch config. The offset of element (i, j)
    of a window is ``i * pool + j``; the offsets have the output's strides. Without ``config`` a
    call like an earlier one reuses its prepared launch (:data:`_PLANS`).
    """
    key = None if config is not None else (
        input.shape, input.stride(), weight.shape, weight.stride(), input.dtype, input.device,
        bias is None, geometry, pool,
        torch.backends.cudnn.allow_tf32 if allow_tf32 is None else allow_tf32)
    shape, strides, run = _PLANS.lookup(key, lambda: _forward_plan(
        input, weight, bias is not None, geometry, pool, allow_tf32, config))
    y = torch.empty_strided(shape, strides, device=input.device, dtype=input.dtype)
    offsets = torch.empty_strided(shape, strides, device=input.device,
                                  dtype=offset_dtype(pool * pool))
    if run is not None:
        weight = channels_inner(weight)  # see conv2d_forward
        run(x_ptr=channels_inner(input), w_ptr=weight, b_ptr=bias_operand(bias, weight), y_ptr=y,
            off_ptr=offsets)
    return y, offsets


def _forward_plan(input: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                  geometry: ConvGeometry, pool: int, allow_tf32: Optional[bool],
                  config: Optional[dict]) -> tuple:
    """(output shape, output strides, the prepared launch or None when the output is empty):
    the launch takes x_ptr and w_ptr channels-inner, b_ptr, y_ptr and off_ptr (the outputs'
    strides)."""
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    KG = K // geometry.groups
    (P, Q), (PP, PQ) = _pooled_size(geometry, input.shape, weight.shape, pool)
    y = torch.empty((N, K, PP, PQ), device="meta", dtype=input.dtype,
                    memory_format=memory_format_of(input))  # shape and strides only
    if y.numel() == 0:
        return tuple(y.shape), y.stride(), None
    # the operands' strides as the launch will see them (channels_inner copies NCHW)
    x = torch.empty_strided(input.shape, input.stride(), device="meta", dtype=input.dtype)
    w = torch.empty_strided(weight.shape, weight.stride(), device="meta", dtype=weight.dtype)
    x, w = channels_inner(x), channels_inner(w)
    MP = N * PP * PQ
    cfg = heuristics.conv_config(
        "conv_pool_fwd", tuning_shape(x, w, geometry, pool), x.dtype, LAYOUT,
        heuristics.conv_pool_heuristic(MP, pool, KG, CG, x.dtype), config,
        register_tiles(x.dtype, allow_tf32))
    whole = window_rows(pool) and cfg["BLOCK_M"] >= pool * pool  # rows: whole windows
    rows = MP * pool * pool if whole else MP
    grid = (cdiv(rows, cfg["BLOCK_M"]) * cdiv(KG, cfg["BLOCK_N"]), geometry.groups)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    syn, syk, syp, syq = kernel_strides(y)  # offsets: the same (conv._conv_fwd_kernel: YV)
    yv = pixel_vector(PQ, (syn, syk, syp), syq)
    xs, ws = kernel_strides(x), kernel_strides(w)
    cv = channel_vector(CG, xs, ws)
    sxn, sxc, sxh, sxw = channel_strides(xs, cv)
    swk, swc, swr, sws = channel_strides(ws, cv)
    return tuple(y.shape), y.stride(), KernelLaunch(
        _conv_pool_fwd_kernel, grid, ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "off_ptr"),
        N=N, H=H, W=W, PP=PP, pq_v=PQ // yv, R=R, S=S, cg_v=CG // cv, KG=KG,
        sxn_v=sxn, sxc=sxc, sxh_v=sxh, sxw_v=sxw, swk_v=swk, swc=swc, swr_v=swr, sws_v=sws,
        syn_v=syn // yv, syk_v=syk // yv, syp_v=syp // yv, syq=syq,
        stride_h=sh, stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw,
        POOL=pool, WINDOW_ROWS=whole, HAS_BIAS=has_bias, YV=yv, CV=cv,
        **dot_args(x.dtype, allow_tf32), **launch_opts(cfg))


def conv2d_relu_pool_backward(grad_output: torch.Tensor, input: torch.Tensor,
                              weight: torch.Tensor, offsets: torch.Tensor,
                              geometry: ConvGeometry, pool: int,
                              needs: Tuple[bool, bool, bool] = (True, True, True),
                              allow_tf32: Optional[bool] = None, configs: Optional[dict] = None
                              ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                                         Optional[torch.Tensor]]:
    """(dX, dW, db) of :func:`conv2d_relu_pool_forward` from the pooled gradient and the
    forward's window offsets (-1 where the pooled output is ReLU's 0, whose gradient is 0), on
    the conv backward's kernels: the conv-output gradient is rebuilt inside them as they load it
    (non-zero only at the pixel a window's offset names), never stored. ``configs`` maps
    "conv_dx" / "conv_dw" to overrides; their cache entries carry ``pool``, apart from the plain
    conv's."""
    src = GradSource(grad_output, offsets=offsets, pool=pool)
    return conv_grads(src, input, weight, geometry, needs, allow_tf32, configs)


# ----------------------------------------------------------------------------------------------
# The op: autograd Function, custom ops tritoncnn::conv2d_relu_pool and its backward
# ----------------------------------------------------------------------------------------------


def _check_pool_of(geometry: ConvGeometry, input, weight, pool) -> None:
    (P, Q), _ = _pooled_size(geometry, input.shape, weight.shape, 1)
    check_pool(pool, P, Q, input.shape, weight.shape)


def _checked_forward(input, weight, bias, geometry: ConvGeometry, pool: int,
                     allow_tf32: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Checks the tensors, geometry and pool against each other, then launches: the custom op's
    forward, so a direct op call gets the functional API's errors."""
    check_tensors(input, weight, bias)
    check_geometry(geometry, shape_of(input), shape_of(weight),
                   None if bias is None else shape_of(bias))
    _check_pool_of(geometry, input, weight, pool)
    return conv2d_relu_pool_forward(input, weight, bias, geometry, pool, allow_tf32)


def _save_for_backward(ctx, input, weight, bias, offsets, geometry: ConvGeometry, pool: int,
                       allow_tf32: bool, configs: Optional[dict] = None) -> None:
    """Input, weight and the int8 offsets: the pooled output is not needed (dead windows carry
    offset -1, so the offsets hold ReLU's mask too)."""
    ctx.save_for_backward(input, weight, offsets)
    ctx.geometry, ctx.pool, ctx.allow_tf32 = geometry, pool, allow_tf32
    ctx.configs = configs or None
    ctx.has_bias = bias is not None


def _grads(ctx, grad_output) -> list:
    """[dX, dW, db] (None where not needed), routed by ``_op.route_backward``."""
    input, weight, offsets = ctx.saved_tensors
    mask = grad_mask(ctx)
    if not any(mask):
        return [None, None, None]

    def differentiable():
        N, _, H, W = input.shape
        K, _, R, S = weight.shape
        P, Q = ctx.geometry.output_size(H, W, R, S)
        live = offsets >= 0  # ReLU's mask: -1 where the pooled output is 0
        grad_z = routed_gradient(grad_output * live, offsets.clamp(min=0), (N, K, P, Q),
                                 [ctx.pool] * 2, [ctx.pool] * 2, [0, 0], [1, 1], False)
        return differentiable_conv_grads(grad_z, input, weight, ctx.geometry, mask)

    def launcher():
        return list(conv2d_relu_pool_backward(grad_output, input, weight, offsets, ctx.geometry,
                                              ctx.pool, tuple(mask), ctx.allow_tf32,
                                              ctx.configs))

    def op():
        return wanted(_conv2d_relu_pool_backward_op(
            grad_output, input, weight, offsets, *ctx.geometry.as_op_args(), ctx.pool,
            ctx.allow_tf32, mask), mask)

    return route_backward(ctx, grad_output, differentiable=differentiable, launcher=launcher,
                          op=op)


def _function_forward(input, weight, bias, geometry, pool, allow_tf32, configs=None):
    return conv2d_relu_pool_forward(input, weight, bias, geometry, pool, allow_tf32,
                                    (configs or {}).get("conv_pool_fwd"))


def _function_setup_context(ctx, inputs, output):
    input, weight, bias, geometry, pool, allow_tf32, *configs = inputs
    offsets = output[1]
    ctx.mark_non_differentiable(offsets)
    _save_for_backward(ctx, input, weight, bias, offsets, geometry, pool, allow_tf32, *configs)
    ctx.save_for_forward(input, weight, offsets)


def _function_jvp(ctx, input_t, weight_t, bias_t, *_):
    """The conv's tangent, taken at each window's maximum (0 where ReLU gave 0)."""
    input, weight, offsets = ctx.saved_tensors
    tangent = conv_tangent(input, weight, input_t, weight_t, bias_t, ctx.geometry)
    return window_values(tangent, offsets, ctx.pool), None


_Conv2dReLUPoolChecked = op_function(
    "_Conv2dReLUPoolChecked",
    """The functional API's eager path (``torch.func.grad`` too, hence ``setup_context``):
    tensors, geometry and pool already checked, launched without a second check. Returns the
    pooled output and the window offsets (not differentiable).""",
    forward=_function_forward, setup_context=_function_setup_context,
    backward=lambda ctx, grad_output, _grad_offsets: (*_grads(ctx, grad_output),
                                                      None, None, None, None),
    jvp=_function_jvp)


class Conv2dReLUPoolFunction(torch.autograd.Function):
    """max_pool2d(relu(conv2d + bias), pool) as an autograd Function on 4-D tensors.

    ``Conv2dReLUPoolFunction.apply(input, weight, bias, stride, padding, dilation, groups, pool,
    allow_tf32, configs)`` with ``F.conv2d``'s argument forms; ``configs`` optionally maps
    "conv_pool_fwd" / "conv_dx" / "conv_dw" to launch-config overrides. Saves input, weight and
    the window offsets. It checks the arguments and runs the launchers through the functional
    API's own autograd Function (so double backward, torch.func and forward-mode AD work here
    too); the functional API (:func:`conv2d_relu_pool`) does the same in eager mode and goes
    through the custom op otherwise (torch.compile, fake tensors, dispatch modes, meta tensors).
    """

    @classmethod
    def apply(cls, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, pool=2,
              allow_tf32=None, configs=None):
        if isinstance(input, torch.Tensor) and input.is_meta:  # shapes only: nothing to launch
            return conv2d_relu_pool(input, weight, bias, stride, padding, dilation, groups, pool,
                                    allow_tf32=allow_tf32)
        geometry = check_and_resolve(input, weight, bias, stride, padding, dilation, groups)
        _check_pool_of(geometry, input, weight, pool)
        y, _ = apply_function(_Conv2dReLUPoolChecked, input, weight, bias, geometry, pool,
                              resolve_tf32(allow_tf32), configs)
        return y


@kernel_op("tritoncnn::conv2d_relu_pool")
def _conv2d_relu_pool_op(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         stride: List[int], padding: List[int], dilation: List[int], groups: int,
                         pool: int, allow_tf32: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(max_pool2d(relu(conv2d(input, weight) + bias), pool), window offsets) with resolved
    geometry; padding is (top, bottom, left, right). Offsets are -1 where the output is ReLU's 0.
    Shapes and ``pool`` are checked before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    return _checked_forward(input, weight, bias, geometry, pool, allow_tf32)


@_conv2d_relu_pool_op.register_fake
def _conv2d_relu_pool_fake(input, weight, bias, stride, padding, dilation, groups, pool,
                           allow_tf32):
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _, (PP, PQ) = _pooled_size(geometry, input.shape, weight.shape, pool)
    shape = (input.shape[0], weight.shape[0], PP, PQ)
    fmt = memory_format_of(input)
    return (torch.empty(shape, device=input.device, dtype=input.dtype, memory_format=fmt),
            torch.empty(shape, device=input.device, dtype=offset_dtype(pool * pool),
                        memory_format=fmt))


@kernel_op("tritoncnn::conv2d_relu_pool_backward")
def _conv2d_relu_pool_backward_op(
        grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
        offsets: torch.Tensor, stride: List[int], padding: List[int],
        dilation: List[int], groups: int, pool: int, allow_tf32: bool,
        output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dX, dW, db) of tritoncnn::conv2d_relu_pool from the pooled gradient and the offsets; a
    gradient left out by ``output_mask`` comes back as an empty tensor. Shapes are checked
    before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    check_tensors(input, weight, None)
    check_geometry(geometry, shape_of(input), shape_of(weight), None)
    _check_pool_of(geometry, input, weight, pool)
    grads = conv2d_relu_pool_backward(grad_output, input, weight, offsets, geometry, pool,
                                      tuple(output_mask), allow_tf32)
    return grads_or_empty(grads, input)


@_conv2d_relu_pool_backward_op.register_fake
def _conv2d_relu_pool_backward_fake(grad_output, input, weight, offsets, stride, padding,
                                    dilation, groups, pool, allow_tf32, output_mask):
    return fake_conv_grads(input, weight, output_mask)


def _op_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, pool, allow_tf32 = inputs
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _save_for_backward(ctx, input, weight, bias, output[1], geometry, pool, allow_tf32)


register_op_autograd(_conv2d_relu_pool_op, _grads, _op_setup_context, params=6)
register_autocast("conv2d_relu_pool", _conv2d_relu_pool_op)


# ----------------------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------------------


@traced_checks_quiet
def conv2d_relu_pool(input: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
                     groups: int = 1, pool: int = 2, *,
                     allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """``F.max_pool2d(F.relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups)),
    pool)`` in one fused kernel: CONV -> RELU -> POOL with F = S = ``pool``.

    Conv arguments as in :func:`tritoncnn.kernels.conv2d` (input (N, C, H, W) or unbatched
    (C, H, W); padding an int, a pair, 'same' or 'valid'); ``pool`` is the window size and stride,
    a positive int no larger than the conv output (odd sizes are floored like max_pool2d). The
    output keeps input's memory format. Plain eager calls (autocast included: the inputs are cast
    as F.conv2d's are) run the launchers directly; anything else (torch.compile, fake tensors,
    dispatch modes) goes through the custom op.
    """
    check_float("input", input)
    if input.dim() not in (3, 4):
        raise ValueError(
            f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {shape_of(input)}"
        )
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    autocasting = autocast_enabled(x)
    geometry = check_and_resolve(x, weight, bias, stride, padding, dilation, groups,
                                 same_dtype=not autocasting, meta_ok=True)
    _check_pool_of(geometry, x, weight, pool)  # before autocast casts anything
    if eager_ok(x, weight, bias):
        if autocasting:
            x, weight, bias = autocast_inputs(x.device.type, x, weight, bias)
        y, _ = apply_function(_Conv2dReLUPoolChecked, x, weight, bias, geometry, pool,
                              resolve_tf32(allow_tf32))
    else:
        y, _ = _conv2d_relu_pool_op(x, weight, bias, *geometry.as_op_args(), pool,
                                    resolve_tf32(allow_tf32))
    return y.squeeze(0) if unbatched else y
