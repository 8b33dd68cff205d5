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
* Backward: the conv's dX and dW/db kernels with ``POOL = F``; while they load dY they rebuild the
  conv-output gradient from the pooled gradient (non-zero only at the pixel a window's offset
  names, so never in a dead window), so no full-size gradient is ever stored. Deterministic, as
  the conv backward (fixed-order split sums, no atomics).

Launch configs: "conv_pool_fwd" for the forward; the backward uses "conv_dx" / "conv_dw" with
``pool`` added to the conv's shape dict, so its tuned entries stay apart from the plain conv's.

Layers, top to bottom: :func:`conv2d_relu_pool` (in eager mode an autograd Function straight on the
launchers; otherwise through the custom ops ``tritoncnn::conv2d_relu_pool`` /
``tritoncnn::conv2d_relu_pool_backward``, visible to ``torch.compile`` and ``opcheck``),
:class:`Conv2dReLUPoolFunction` (a plain autograd Function), the launcher
:func:`conv2d_relu_pool_forward` (backward: ``conv.conv2d_backward(..., pool=F)``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from tritoncnn import autotune
from tritoncnn._shapes import window_rows

from ._common import (INTERPRET, apply_function, autocast_enabled, cdiv, channel_strides,
                      channel_vector, channels_inner, check_float, eager_ok, kernel_strides,
                      launch, memory_format_of, pixel_vector, traced_checks_quiet, vmap_rule,
                      with_eager_twin)
from ._conv_kernels import _conv_pool_fwd_kernel
from .conv import (
    LAYOUT,
    ConvGeometry,
    _check_tensors,
    _config,
    _dot_args,
    _gemm_heuristic,
    _register_tiles,
    _launch_opts,
    _resolve_tf32,
    _shape,
    _shape_key,
    autocast_inputs,
    check_and_resolve,
    check_geometry,
    conv_tangent,
    differentiable_conv_grads,
    conv2d_backward,
    grad_mask,
    problem_inputs,
    problem_tf32,
    reference_conv,
    register_conv_autocast,
)
from .max_pool import _offset_dtype, routed_gradient, window_values

__all__ = ["Conv2dReLUPoolFunction", "conv2d_relu_pool", "conv2d_relu_pool_forward"]


# ----------------------------------------------------------------------------------------------
# Checks, shapes, configs
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


def _heuristic(pooled: int, pool: int, cols: int, red: int, dtype: torch.dtype) -> dict:
    """The conv's tiles over the kernel's GEMM rows: with whole windows as rows
    (:func:`window_rows`), the conv pixels of ``pooled`` windows, at most 64 rows by the conv's
    columns (up to 128) on a GPU: 128 x 128 spills in the window reduction (it holds two register
    tiles), and of the tiles that do not, 64 x 128 (64 x 64 for 64 filters) ran fastest on an H100
    on every layer tuned (VGG-16 conv1_2 and conv4_3, ResNet-9 layer1: 1.1x-1.4x over 128 x 64;
    reports/results/*/tune.csv); otherwise the pooled pixels, at most 64 x 64 (a running maximum
    and offset beside the accumulator: three register tiles where the conv keeps one). Register
    sizes measured with ``ptxas -v`` for sm_90 (tests/compile_sm90.py)."""
    if window_rows(pool):
        cfg = _gemm_heuristic(pooled * pool * pool, cols, red, dtype)
        if not INTERPRET:
            cfg["BLOCK_M"] = min(cfg["BLOCK_M"], 64)
        return cfg
    cfg = _gemm_heuristic(pooled, cols, red, dtype)
    if not INTERPRET:
        cfg["BLOCK_M"] = min(cfg["BLOCK_M"], 64)
        cfg["BLOCK_N"] = min(cfg["BLOCK_N"], 64)
    return cfg


# ----------------------------------------------------------------------------------------------
# Host launcher
# ----------------------------------------------------------------------------------------------


def conv2d_relu_pool_forward(input: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], geometry: ConvGeometry, pool: int,
                             allow_tf32: Optional[bool] = None, config: Optional[dict] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pooled output (N, K, P // pool, Q // pool), window offsets of the maxima) of
    max_pool2d(relu(conv2d(input, weight) + bias), pool), both in input's memory format.

    Tensors and ``pool`` must already be checked (:func:`resolve_geometry`, :func:`check_pool`);
    ``config`` overrides keys of the "conv_pool_fwd" launch config. The offset of element (i, j)
    of a window is ``i * pool + j``; the offsets have the output's strides.
    """
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    KG = K // geometry.groups
    (P, Q), (PP, PQ) = _pooled_size(geometry, input.shape, weight.shape, pool)
    fmt = memory_format_of(input)
    y = torch.empty((N, K, PP, PQ), device=input.device, dtype=input.dtype, memory_format=fmt)
    offsets = torch.empty((N, K, PP, PQ), device=input.device, dtype=_offset_dtype(pool * pool),
                          memory_format=fmt)
    if y.numel() == 0:
        return y, offsets
    input, weight = channels_inner(input), channels_inner(weight)  # see conv2d_forward
    MP = N * PP * PQ
    cfg = _config("conv_pool_fwd", _shape_key(input, weight, geometry, pool), input.dtype,
                  LAYOUT, _heuristic(MP, pool, KG, CG, input.dtype), config,
                  _register_tiles(input.dtype, allow_tf32))
    whole = window_rows(pool) and cfg["BLOCK_M"] >= pool * pool  # rows: whole windows
    rows = MP * pool * pool if whole else MP
    grid = (cdiv(rows, cfg["BLOCK_M"]) * cdiv(KG, cfg["BLOCK_N"]), geometry.groups)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    syn, syk, syp, syq = kernel_strides(y)  # offsets: the same (conv._conv_fwd_kernel: YV)
    yv = pixel_vector(PQ, (syn, syk, syp), syq)
    xs, ws = kernel_strides(input), kernel_strides(weight)
    cv = channel_vector(CG, xs, ws)
    launch(_conv_pool_fwd_kernel, grid,
        input, weight, bias if bias is not None else weight, y, offsets,
        N, H, W, PP, PQ // yv, R, S, CG // cv, KG,
        *channel_strides(xs, cv), *channel_strides(ws, cv),
        syn // yv, syk // yv, syp // yv, syq,
        sh, sw, pt, pl, dh, dw,
        POOL=pool, WINDOW_ROWS=whole, HAS_BIAS=bias is not None, YV=yv, CV=cv,
        **_dot_args(input.dtype, allow_tf32),
        **_launch_opts(cfg),
    )
    return y, offsets


# ----------------------------------------------------------------------------------------------
# Autograd Function
# ----------------------------------------------------------------------------------------------


def _forward(input, weight, bias, geometry: ConvGeometry, pool: int, allow_tf32: bool,
             config: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Checks the tensors, geometry and pool against each other, then launches: the forward of
    the custom op and of the Function, so a direct op call gets the functional API's errors."""
    _check_tensors(input, weight, bias)
    check_geometry(geometry, _shape(input), _shape(weight), None if bias is None else _shape(bias))
    (P, Q), _ = _pooled_size(geometry, input.shape, weight.shape, 1)
    check_pool(pool, P, Q, input.shape, weight.shape)
    return conv2d_relu_pool_forward(input, weight, bias, geometry, pool, allow_tf32, config)


def _save_for_backward(ctx, input, weight, bias, offsets, geometry: ConvGeometry, pool: int,
                       allow_tf32: bool, configs: Optional[dict] = None) -> None:
    """Input, weight and the int8 offsets: the pooled output is not needed (dead windows carry
    offset -1, so the offsets hold ReLU's mask too)."""
    ctx.save_for_backward(input, weight, offsets)
    ctx.geometry, ctx.pool, ctx.allow_tf32 = geometry, pool, allow_tf32
    ctx.configs = configs or None
    ctx.has_bias = bias is not None


def _grads(ctx, grad_output) -> list:
    """[dX, dW, db] (None where not needed) through tritoncnn::conv2d_relu_pool_backward, or
    straight through the launcher in plain eager mode (``eager_ok``) and when the caller gave
    launch-config overrides."""
    input, weight, offsets = ctx.saved_tensors
    mask = grad_mask(ctx)
    if not any(mask):
        return [None, None, None]
    if torch.is_grad_enabled():  # double backward: PyTorch's differentiable ops
        N, _, H, W = input.shape
        K, _, R, S = weight.shape
        P, Q = ctx.geometry.output_size(H, W, R, S)
        live = offsets >= 0  # ReLU's mask: -1 where the pooled output is 0
        grad_z = routed_gradient(grad_output * live, offsets.clamp(min=0), (N, K, P, Q),
                                 [ctx.pool] * 2, [ctx.pool] * 2, [0, 0], [1, 1], False)
        return differentiable_conv_grads(grad_z, input, weight, ctx.geometry, mask)
    if ctx.configs or eager_ok(grad_output):
        return list(conv2d_backward(grad_output, input, weight, None, ctx.geometry, True,
                                    tuple(mask), ctx.allow_tf32, ctx.configs, offsets=offsets,
                                    pool=ctx.pool))
    computed = _conv2d_relu_pool_backward_op(grad_output, input, weight, offsets,
                                             *ctx.geometry.as_op_args(), ctx.pool,
                                             ctx.allow_tf32, mask)
    return [g if want else None for g, want in zip(computed, mask)]


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
        (P, Q), _ = _pooled_size(geometry, input.shape, weight.shape, 1)
        check_pool(pool, P, Q, input.shape, weight.shape)
        y, _ = apply_function(_Conv2dReLUPoolChecked, input, weight, bias, geometry, pool,
                              _resolve_tf32(allow_tf32), configs)
        return y


@with_eager_twin
class _Conv2dReLUPoolChecked(torch.autograd.Function):
    """The functional API's eager path (``torch.func.grad`` too, hence ``setup_context``):
    tensors, geometry and pool already checked, launched without a second check. Returns the
    pooled output and the window offsets (not differentiable)."""

    @staticmethod
    def forward(input, weight, bias, geometry, pool, allow_tf32, configs=None):
        return conv2d_relu_pool_forward(input, weight, bias, geometry, pool, allow_tf32,
                                        (configs or {}).get("conv_pool_fwd"))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, geometry, pool, allow_tf32, *configs = inputs
        offsets = output[1]
        ctx.mark_non_differentiable(offsets)
        _save_for_backward(ctx, input, weight, bias, offsets, geometry, pool, allow_tf32,
                           *configs)
        ctx.save_for_forward(input, weight, offsets)

    @staticmethod
    def backward(ctx, grad_output, _grad_offsets):
        return (*_grads(ctx, grad_output), None, None, None, None)

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        """The conv's tangent, taken at each window's maximum (0 where ReLU gave 0)."""
        input, weight, offsets = ctx.saved_tensors
        tangent = conv_tangent(input, weight, input_t, weight_t, bias_t, ctx.geometry)
        return window_values(tangent, offsets, ctx.pool), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_rule(_Conv2dReLUPoolChecked, info, in_dims, *args)



# ----------------------------------------------------------------------------------------------
# Custom ops: tritoncnn::conv2d_relu_pool and tritoncnn::conv2d_relu_pool_backward
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("tritoncnn::conv2d_relu_pool", mutates_args=())
def _conv2d_relu_pool_op(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         stride: List[int], padding: List[int], dilation: List[int], groups: int,
                         pool: int, allow_tf32: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(max_pool2d(relu(conv2d(input, weight) + bias), pool), window offsets) with resolved
    geometry; padding is (top, bottom, left, right). Offsets are -1 where the output is ReLU's 0.
    Shapes and ``pool`` are checked before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    return _forward(input, weight, bias, geometry, pool, allow_tf32)


@_conv2d_relu_pool_op.register_fake
def _conv2d_relu_pool_fake(input, weight, bias, stride, padding, dilation, groups, pool,
                           allow_tf32):
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _, (PP, PQ) = _pooled_size(geometry, input.shape, weight.shape, pool)
    shape = (input.shape[0], weight.shape[0], PP, PQ)
    fmt = memory_format_of(input)
    return (torch.empty(shape, device=input.device, dtype=input.dtype, memory_format=fmt),
            torch.empty(shape, device=input.device, dtype=_offset_dtype(pool * pool),
                        memory_format=fmt))


@torch.library.custom_op("tritoncnn::conv2d_relu_pool_backward", mutates_args=())
def _conv2d_relu_pool_backward_op(
        grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
        offsets: torch.Tensor, stride: List[int], padding: List[int],
        dilation: List[int], groups: int, pool: int, allow_tf32: bool,
        output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dX, dW, db) of tritoncnn::conv2d_relu_pool from the pooled gradient and the offsets; a
    gradient left out by ``output_mask`` comes back as an empty tensor. Shapes are checked
    before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _check_tensors(input, weight, None)
    check_geometry(geometry, _shape(input), _shape(weight), None)
    (P, Q), _ = _pooled_size(geometry, input.shape, weight.shape, 1)
    check_pool(pool, P, Q, input.shape, weight.shape)
    grads = conv2d_backward(grad_output, input, weight, None, geometry, True,
                            tuple(output_mask), allow_tf32, offsets=offsets, pool=pool)
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


@_conv2d_relu_pool_backward_op.register_fake
def _conv2d_relu_pool_backward_fake(grad_output, input, weight, offsets, stride, padding,
                                    dilation, groups, pool, allow_tf32, output_mask):
    need_dx, need_dw, need_db = output_mask
    return (
        torch.empty_like(input, memory_format=memory_format_of(input)) if need_dx
        else input.new_empty(0),
        torch.empty_like(weight) if need_dw else input.new_empty(0),
        weight.new_empty((weight.shape[0],)) if need_db else input.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, pool, allow_tf32 = inputs
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _save_for_backward(ctx, input, weight, bias, output[1], geometry, pool, allow_tf32)


def _op_backward(ctx, grad_output, _grad_offsets):
    return (*_grads(ctx, grad_output), None, None, None, None, None, None)


_conv2d_relu_pool_op.register_autograd(_op_backward, setup_context=_setup_context)
register_conv_autocast("conv2d_relu_pool", _conv2d_relu_pool_op)


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
            f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {_shape(input)}"
        )
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    autocasting = autocast_enabled(x)
    geometry = check_and_resolve(x, weight, bias, stride, padding, dilation, groups,
                                 same_dtype=not autocasting, meta_ok=True)
    (P, Q), _ = _pooled_size(geometry, x.shape, weight.shape, 1)
    check_pool(pool, P, Q, x.shape, weight.shape)  # before autocast casts anything
    if eager_ok(x, weight, bias):
        if autocasting:
            x, weight, bias = autocast_inputs(x.device.type, x, weight, bias)
        y, _ = apply_function(_Conv2dReLUPoolChecked, x, weight, bias, geometry, pool,
                              _resolve_tf32(allow_tf32))
    else:
        y, _ = _conv2d_relu_pool_op(x, weight, bias, *geometry.as_op_args(), pool,
                                    _resolve_tf32(allow_tf32))
    return y.squeeze(0) if unbatched else y


# ----------------------------------------------------------------------------------------------
# Tuning problem (``tritoncnn tune`` and tuning on first use; GPU only)
# ----------------------------------------------------------------------------------------------


def _conv_pool_fwd_problem(shape: dict, dtype: torch.dtype, layout: str) -> autotune.Problem:
    """Pooled output and offsets against float64 torch; the integer inputs of
    ``conv.problem_inputs`` make the maxima exact, so the offsets must match exactly (-1 where the
    pooled output is 0)."""
    pool = shape.get("pool", 2)
    x, w, b, geometry = problem_inputs(shape, dtype, layout)
    z = reference_conv(x, w, b, geometry)
    ref, index = torch.nn.functional.max_pool2d(torch.relu(z), pool, return_indices=True)
    Q = z.shape[3]
    offsets = ((index // Q) % pool * pool + index % Q % pool).to(_offset_dtype(pool * pool))
    offsets = torch.where(ref == 0, -1, offsets)
    return autotune.Problem(
        run=lambda cfg: conv2d_relu_pool_forward(x, w, b, geometry, pool,
                                                 problem_tf32(shape), config=cfg),
        reference=(ref, offsets))


autotune.register_problem("conv_pool_fwd", _conv_pool_fwd_problem)
