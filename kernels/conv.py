"""Conv2d (+ bias + ReLU) and linear layers, forward, on the implicit-GEMM core of ``_gemm``.

* kernel ``_conv_fwd_kernel``: GEMM rows = output pixels (n, p, q), columns = output channels,
  reduction over (r, s, c) with c innermost; epilogue bias + ReLU + cast, written once;
* host launcher :func:`conv2d_forward`: takes checked 4-D tensors and a :class:`ConvGeometry`,
  picks the launch config (``autotune.heuristics.conv_config``, overridable per call), allocates
  and launches; the backward's launchers are in :mod:`.conv_backward`;
* the op: :class:`Conv2dFunction` and the custom ops ``tritoncnn::conv2d`` /
  ``tritoncnn::conv2d_backward``, declared with the shared scaffolding of :mod:`._op`;
* the functional API :func:`conv2d`, :func:`conv2d_relu` and :func:`linear` (a 1x1 convolution
  over a 1x1 map: the same kernels).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from tritoncnn.autotune import heuristics

from ._checks import (KernelLaunch, PlanCache, autocast_enabled, bias_operand, cdiv,
                      channel_strides, channel_vector, channels_inner, check_float, dot_args,
                      kernel_strides, launch_opts, memory_format_of, pixel_vector,
                      register_tiles, resolve_tf32)
from ._gemm import bias_relu, conv_mainloop, tensor_core_dot, tile_ids, times
from ._op import kernel_op
from ._op import (apply_function, autocast_inputs, eager_ok, fake_conv_grads,
                  grad_mask, grads_or_empty, op_function, register_autocast,
                  register_op_autograd, route_backward, traced_checks_quiet, wanted)
from .conv_backward import conv2d_backward, differentiable_conv_grads
from .geometry import (ConvGeometry, check_and_resolve, check_geometry, check_tensors,
                       resolve_geometry, shape_of, tuning_shape)

__all__ = [
    "ConvGeometry",
    "Conv2dFunction",
    "conv2d",
    "conv2d_relu",
    "linear",
    "conv2d_forward",
    "conv2d_backward",
    "resolve_geometry",
]

# The layout key of every conv launch: the launchers hand the kernels each operand with its
# channels at stride 1 (:func:`channels_inner`), whatever the caller's format.
LAYOUT = "nhwc"


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, P, q_v, R: tl.constexpr, S: tl.constexpr, cg_v, KG,
    sxn_v, sxc, sxh_v, sxw_v,
    swk_v, swc, swr_v, sws_v,
    syn_v, syk_v, syp_v, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, YV: tl.constexpr, CV: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Y = act(conv(X, Wt) + b). Grid: (row tiles * column tiles, groups).

    Vector hints (``_gemm``): Q and Y's N, K, P strides come divided by YV (1 unless Y's pixels
    are at stride 1, an NCHW output), CG and the non-channel strides of X and Wt by CV."""
    Q = q_v * YV
    syn, syk, syp = times(YV, syn_v, syk_v, syp_v)
    CG = cg_v * CV
    sxn, sxh, sxw = times(CV, sxn_v, sxh_v, sxw_v)
    swk, swr, sws = times(CV, swk_v, swr_v, sws_v)
    g = tl.program_id(1)
    M = N * P * Q
    pid_m, pid_n = tile_ids(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # output pixel (n, p, q)
    mask_m = offs_m < M
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = offs_m // (P * Q)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # output channel within the group
    mask_n = offs_n < KG
    chan = g * KG + offs_n                                 # output channel

    x_row = n.to(tl.int64) * sxn + (g * CG) * sxc
    acc = conv_mainloop(
        x_ptr, w_ptr, x_row, p * stride_h - pad_h, q * stride_w - pad_w, mask_m,
        chan * swk, mask_n, H, W, CG, R, S, sxc, sxh, sxw, swc, swr, sws, dil_h, dil_w,
        BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION,
        tensor_core_dot(x_ptr.dtype.element_ty, PRECISION),
    )
    acc = bias_relu(acc, b_ptr, chan, mask_n, HAS_BIAS, RELU)

    y_off = (n.to(tl.int64) * syn + p * syp + q * syq)[:, None] + (chan * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------------------
# Host launcher
# ----------------------------------------------------------------------------------------------


def conv2d_forward(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   geometry: ConvGeometry, relu: bool = False, allow_tf32: Optional[bool] = None,
                   config: Optional[dict] = None, tuning: Optional[tuple] = None,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Y = relu?(conv2d(input, weight) + bias): (N, C, H, W) -> (N, K, P, Q), in input's format.

    Tensors must already be checked (see :func:`resolve_geometry`); ``config`` overrides keys of
    the "conv_fwd" launch config. The kernel reads input and weight with their channels at stride
    1 (:func:`channels_inner`: an NCHW tensor is copied to channels_last first). ``tuning`` =
    (kernel, shape dict) looks the config up under another key, and ``out`` is written (through
    its strides) instead of a new tensor: the backward's dX, which runs on this kernel, as
    ("conv_dx", the conv's own shape), into each stride phase of dX (the backward prepares
    those launches itself: :func:`forward_launch`).

    A call without ``config`` or ``tuning`` looks its launch up by its signature (:data:`_PLANS`,
    ``out``'s strides included): the config, strides and vector hints of a layer are derived on
    its first call only.
    """
    key = None
    if config is None and tuning is None:
        key = (input.shape, input.stride(), weight.shape, weight.stride(), input.dtype,
               input.device, bias is None, geometry, relu,
               torch.backends.cudnn.allow_tf32 if allow_tf32 is None else allow_tf32,
               None if out is None else out.stride())
    x, w = channels_inner(input), channels_inner(weight)

    def build():
        N, C, H, W = input.shape
        K, _, R, S = weight.shape
        y = out if out is not None else torch.empty(  # (meta: shape and strides only)
            (N, K, *geometry.output_size(H, W, R, S)), device="meta", dtype=input.dtype,
            memory_format=memory_format_of(input))
        return (tuple(y.shape), y.stride(),
                forward_launch(x, w, bias is not None, y, geometry, relu, allow_tf32, config,
                               tuning))

    shape, strides, run = _PLANS.lookup(key, build)
    y = out if out is not None else torch.empty_strided(shape, strides, device=input.device,
                                                         dtype=input.dtype)
    if run is not None:
        run(x_ptr=x, w_ptr=w, b_ptr=bias_operand(bias, w), y_ptr=y)
    return y


#: conv2d_forward's prepared launches, by call signature
_PLANS = PlanCache()


def forward_launch(x: torch.Tensor, w: torch.Tensor, has_bias: bool, y: torch.Tensor,
                   geometry: ConvGeometry, relu: bool, allow_tf32: Optional[bool],
                   config: Optional[dict] = None, tuning: Optional[tuple] = None
                   ) -> Optional[KernelLaunch]:
    """The forward kernel's launch for channels-inner ``x`` and ``w`` into ``y`` (any strides),
    prepared (:class:`KernelLaunch`: called with x_ptr, w_ptr, b_ptr and y_ptr); None when ``y``
    is empty. ``config`` and ``tuning`` as in :func:`conv2d_forward`."""
    if y.numel() == 0:
        return None
    N, C, H, W = x.shape
    K, CG, R, S = w.shape
    KG = K // geometry.groups
    P, Q = y.shape[2:]
    M = N * P * Q
    kernel, shape = tuning or ("conv_fwd", tuning_shape(x, w, geometry))
    cfg = heuristics.conv_config(
        kernel, shape, x.dtype, LAYOUT, heuristics.gemm_heuristic(M, KG, CG, x.dtype), config,
        register_tiles(x.dtype, allow_tf32))
    grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(KG, cfg["BLOCK_N"]), geometry.groups)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    syn, syk, syp, syq = kernel_strides(y)
    yv = pixel_vector(Q, (syn, syk, syp), syq)
    xs, ws = kernel_strides(x), kernel_strides(w)
    cv = channel_vector(CG, xs, ws)
    sxn, sxc, sxh, sxw = channel_strides(xs, cv)
    swk, swc, swr, sws = channel_strides(ws, cv)
    return KernelLaunch(
        _conv_fwd_kernel, grid, ("x_ptr", "w_ptr", "b_ptr", "y_ptr"),
        N=N, H=H, W=W, P=P, q_v=Q // yv, R=R, S=S, cg_v=CG // cv, KG=KG,
        sxn_v=sxn, sxc=sxc, sxh_v=sxh, sxw_v=sxw, swk_v=swk, swc=swc, swr_v=swr, sws_v=sws,
        syn_v=syn // yv, syk_v=syk // yv, syp_v=syp // yv, syq=syq,
        stride_h=sh, stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw,
        HAS_BIAS=has_bias, RELU=relu, YV=yv, CV=cv,
        **dot_args(x.dtype, allow_tf32), **launch_opts(cfg))


def _parse_activation(activation) -> bool:
    """None -> False, 'relu' -> True (the only activation the epilogue has)."""
    if activation is None:
        return False
    if activation == "relu":
        return True
    raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def conv_tangent(input: torch.Tensor, weight: torch.Tensor, input_t, weight_t, bias_t,
                 geometry: ConvGeometry) -> torch.Tensor:
    """The forward-mode derivative of conv2d(input, weight) + bias along the tangents
    ``input_t``, ``weight_t``, ``bias_t`` (any may be None), with PyTorch's own convolution: the
    ops' ``jvp`` (torch.func.jvp, jacfwd, hessian; forward-mode AD)."""
    pt, pb, pl, pr = geometry.padding

    def conv(x, w):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pl, pr, pt, pb)), w, None,
                                          geometry.stride, 0, geometry.dilation, geometry.groups)

    N, _, H, W = input.shape
    K, _, R, S = weight.shape
    tangent = input.new_zeros((N, K, *geometry.output_size(H, W, R, S)))
    with torch.autocast(input.device.type, enabled=False):
        if input_t is not None:
            tangent = tangent + conv(input_t, weight)
        if weight_t is not None:
            tangent = tangent + conv(input, weight_t)
    if bias_t is not None:
        tangent = tangent + bias_t[None, :, None, None]
    return tangent


# ----------------------------------------------------------------------------------------------
# The op: autograd Function, custom ops tritoncnn::conv2d and tritoncnn::conv2d_backward
# ----------------------------------------------------------------------------------------------


def _checked_forward(input, weight, bias, geometry: ConvGeometry, relu: bool, allow_tf32: bool,
                     config: Optional[dict] = None) -> torch.Tensor:
    """Checks the tensors and geometry against each other, then launches: the custom op's
    forward, so a direct op call gets the functional API's errors."""
    check_tensors(input, weight, bias)
    check_geometry(geometry, shape_of(input), shape_of(weight),
                   None if bias is None else shape_of(bias))
    return conv2d_forward(input, weight, bias, geometry, relu, allow_tf32, config)


def _save_for_backward(ctx, input, weight, bias, output, geometry: ConvGeometry, relu: bool,
                       allow_tf32: bool, configs: Optional[dict] = None) -> None:
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.geometry, ctx.relu, ctx.allow_tf32 = geometry, relu, allow_tf32
    ctx.configs = configs or None
    ctx.has_bias = bias is not None


def _grads(ctx, grad_output) -> list:
    """[dX, dW, db] (None where not needed), routed by ``_op.route_backward``."""
    input, weight, output = ctx.saved_tensors
    mask = grad_mask(ctx)
    if not any(mask):
        return [None, None, None]

    def differentiable():
        grad_z = grad_output * (output > 0) if ctx.relu else grad_output
        return differentiable_conv_grads(grad_z, input, weight, ctx.geometry, mask)

    def launcher():
        return list(conv2d_backward(grad_output, input, weight, output, ctx.geometry, ctx.relu,
                                    tuple(mask), ctx.allow_tf32, ctx.configs))

    def op():
        return wanted(_conv2d_backward_op(grad_output, input, weight, output,
                                          *ctx.geometry.as_op_args(), ctx.relu, ctx.allow_tf32,
                                          mask), mask)

    return route_backward(ctx, grad_output, differentiable=differentiable, launcher=launcher,
                          op=op)


def _function_forward(input, weight, bias, geometry, relu, allow_tf32, configs=None):
    return conv2d_forward(input, weight, bias, geometry, relu, allow_tf32,
                          (configs or {}).get("conv_fwd"))


def _function_setup_context(ctx, inputs, output):
    input, weight, bias, geometry, relu, allow_tf32, *configs = inputs
    _save_for_backward(ctx, input, weight, bias, output, geometry, relu, allow_tf32, *configs)
    ctx.save_for_forward(input, weight, output)


def _function_jvp(ctx, input_t, weight_t, bias_t, *_):
    input, weight, output = ctx.saved_tensors
    tangent = conv_tangent(input, weight, input_t, weight_t, bias_t, ctx.geometry)
    return tangent * (output > 0) if ctx.relu else tangent


_Conv2dChecked = op_function(
    "_Conv2dChecked",
    """The functional API's eager path (``torch.func.grad`` too, hence ``setup_context``):
    (input, weight, bias) already checked against the resolved ``geometry``
    (:func:`check_and_resolve`), launched without a second check.""",
    forward=_function_forward, setup_context=_function_setup_context,
    backward=lambda ctx, grad_output: (*_grads(ctx, grad_output), None, None, None, None),
    jvp=_function_jvp)


class Conv2dFunction(torch.autograd.Function):
    """conv2d + bias + optional ReLU as an autograd Function on 4-D tensors.

    ``Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups, activation,
    allow_tf32, configs)`` with ``F.conv2d``'s argument forms; ``configs`` optionally maps
    "conv_fwd" / "conv_dx" / "conv_dw" to launch-config overrides. It checks the arguments and
    runs the launchers through the functional API's own autograd Function (so double backward,
    torch.func and forward-mode AD work here too); the functional API (:func:`conv2d`) does the
    same in eager mode and goes through the custom op otherwise (torch.compile, fake tensors,
    dispatch modes, meta tensors).
    """

    @classmethod
    def apply(cls, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
              activation=None, allow_tf32=None, configs=None):
        if isinstance(input, torch.Tensor) and input.is_meta:  # shapes only: nothing to launch
            return conv2d(input, weight, bias, stride, padding, dilation, groups, activation,
                          allow_tf32=allow_tf32)
        geometry = check_and_resolve(input, weight, bias, stride, padding, dilation, groups)
        return apply_function(_Conv2dChecked, input, weight, bias, geometry,
                              _parse_activation(activation), resolve_tf32(allow_tf32), configs)


@kernel_op("tritoncnn::conv2d")
def _conv2d_op(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               stride: List[int], padding: List[int], dilation: List[int], groups: int,
               relu: bool, allow_tf32: bool) -> torch.Tensor:
    """relu?(conv2d(input, weight) + bias) with resolved geometry; padding is (top, bottom,
    left, right). Shapes are checked against the geometry before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    return _checked_forward(input, weight, bias, geometry, relu, allow_tf32)


@_conv2d_op.register_fake
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu, allow_tf32):
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    N, _, H, W = input.shape
    K, _, R, S = weight.shape
    P, Q = geometry.output_size(H, W, R, S)
    return torch.empty((N, K, P, Q), device=input.device, dtype=input.dtype,
                       memory_format=memory_format_of(input))


@kernel_op("tritoncnn::conv2d_backward")
def _conv2d_backward_op(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                        output: Optional[torch.Tensor], stride: List[int], padding: List[int],
                        dilation: List[int], groups: int, relu: bool, allow_tf32: bool,
                        output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dX, dW, db) of tritoncnn::conv2d; a gradient left out by ``output_mask`` comes back as an
    empty tensor. Shapes are checked against the geometry (and grad_output / output against the
    output shape) before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    check_tensors(input, weight, None)
    check_geometry(geometry, shape_of(input), shape_of(weight), None)
    grads = conv2d_backward(grad_output, input, weight, output, geometry, relu,
                            tuple(output_mask), allow_tf32)
    return grads_or_empty(grads, input)


@_conv2d_backward_op.register_fake
def _conv2d_backward_fake(grad_output, input, weight, output, stride, padding, dilation, groups,
                          relu, allow_tf32, output_mask):
    return fake_conv_grads(input, weight, output_mask)


def _op_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, allow_tf32 = inputs
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _save_for_backward(ctx, input, weight, bias, output, geometry, relu, allow_tf32)


register_op_autograd(_conv2d_op, _grads, _op_setup_context, params=6)
register_autocast("conv2d", _conv2d_op)


# ----------------------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------------------


@traced_checks_quiet
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride=1, padding=0, dilation=1, groups: int = 1, activation: Optional[str] = None,
           *, allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """``F.conv2d`` (+ ReLU when ``activation="relu"``) on tritoncnn's implicit-GEMM kernels.

    Arguments as in ``torch.nn.functional.conv2d``: input (N, C, H, W) or unbatched (C, H, W),
    weight (K, C/groups, R, S), bias (K,) or None; stride, dilation an int or pair; padding an
    int, a pair, 'same' or 'valid'. The output keeps input's memory format. float32 dots use TF32
    when ``allow_tf32`` says so, by default when ``torch.backends.cudnn.allow_tf32`` does.
    """
    relu = _parse_activation(activation)
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
    if eager_ok(x, weight, bias):
        if autocasting:
            x, weight, bias = autocast_inputs(x.device.type, x, weight, bias)
        y = apply_function(_Conv2dChecked, x, weight, bias, geometry, relu,
                           resolve_tf32(allow_tf32))
    else:
        y = _conv2d_op(x, weight, bias, *geometry.as_op_args(), relu, resolve_tf32(allow_tf32))
    return y.squeeze(0) if unbatched else y


def conv2d_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1, *,
                allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """relu(conv2d(...)): the fused CONV -> RELU layer (see :func:`conv2d`)."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups, "relu",
                  allow_tf32=allow_tf32)


#: a linear layer's geometry: a 1x1 convolution over a 1x1 map
_LINEAR = ConvGeometry((1, 1), (0, 0, 0, 0), (1, 1), 1)


def _as_map(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(rows, features) -> (rows, features, 1, 1), a view."""
    return None if t is None else t.view(*t.shape, 1, 1)


def _linear_forward(input, weight, bias, relu, allow_tf32):
    # written through a view, returned whole: an autograd Function's output that views a tensor
    # made inside it could not be modified in place
    y = input.new_empty((input.shape[0], weight.shape[0]))
    conv2d_forward(_as_map(input), _as_map(weight), bias, _LINEAR, relu, allow_tf32,
                   out=_as_map(y))
    return y


def _linear_setup_context(ctx, inputs, output):
    input, weight, bias, relu, allow_tf32 = inputs
    _save_for_backward(ctx, input, weight, bias, output, _LINEAR, relu, allow_tf32)
    ctx.save_for_forward(input, weight, output)


class _MapContext:
    """A linear layer's backward context seen as its 1x1 convolution's: the saved 2-D tensors
    as (rows, features, 1, 1) views (made in the backward, so autograd records them when it
    records the backward: double backward)."""

    def __init__(self, ctx):
        self.saved_tensors = tuple(_as_map(t) for t in ctx.saved_tensors)
        self.needs_input_grad = ctx.needs_input_grad
        self.geometry, self.relu, self.allow_tf32 = ctx.geometry, ctx.relu, ctx.allow_tf32
        self.configs, self.has_bias = None, ctx.has_bias


def _linear_backward(ctx, grad_output):
    dx, dw, db = _grads(_MapContext(ctx), _as_map(grad_output))
    return (None if dx is None else dx.flatten(1), None if dw is None else dw.flatten(1), db,
            None, None)


def _linear_jvp(ctx, input_t, weight_t, bias_t, *_):
    input, weight, output = ctx.saved_tensors
    tangent = conv_tangent(_as_map(input), _as_map(weight), _as_map(input_t), _as_map(weight_t),
                           bias_t, _LINEAR).flatten(1)
    return tangent * (output > 0) if ctx.relu else tangent


_LinearChecked = op_function(
    "_LinearChecked",
    """:func:`linear`'s eager path on (rows, in_features) input: one autograd node, where the
    1x1 convolution's views would add four.""",
    forward=_linear_forward, setup_context=_linear_setup_context, backward=_linear_backward,
    jvp=_linear_jvp)


@traced_checks_quiet
def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[str] = None, *, allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """``F.linear`` (+ ReLU) as a 1x1 convolution over a 1x1 map: the conv kernels, unchanged.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) or None.
    """
    check_float("input", input)
    check_float("weight", weight)
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (out_features, in_features), got shape {shape_of(weight)}"
        )
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {shape_of(input)} must end in in_features={weight.shape[1]} "
            f"of weight {shape_of(weight)}"
        )
    out_features, in_features = weight.shape
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"bias must have shape ({out_features},) to match the out_features={out_features} "
            f"of weight {shape_of(weight)}, got shape {shape_of(bias)}"
        )
    flat = input.dim() == 2
    x = input if flat else input.reshape(math.prod(input.shape[:-1]), in_features)
    if eager_ok(x, weight, bias) and not autocast_enabled(x):
        check_tensors(x, weight, bias)
        y = apply_function(_LinearChecked, x, weight, bias, _parse_activation(activation),
                           resolve_tf32(allow_tf32))
    else:
        y = conv2d(_as_map(x), _as_map(weight), bias, activation=activation,
                   allow_tf32=allow_tf32)                           # (rows, out_features, 1, 1)
        if torch.compiler.is_compiling():
            # a compiled graph whose output views the (rows, out, 1, 1) output that the ReLU's
            # backward keeps trips AOTAutograd's tangent handling (it expects the view's size
            # for the tangent of the 1x1 map): the output is a copy there
            y = y.clone()
        y = y.flatten(1)
    return y if flat else y.reshape(*input.shape[:-1], out_features)
