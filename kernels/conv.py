"""Conv2d (+ bias + ReLU) and linear layers on one implicit-GEMM Triton core, forward and backward.

Three layers, as elsewhere in tritoncnn:

* host launchers :func:`conv2d_forward` and :func:`conv2d_backward`: take validated 4-D tensors and a
  :class:`ConvGeometry`, pick the launch config (``tritoncnn.autotune.get_config``, overridable per
  call), allocate and launch the kernels of ``_conv_kernels``;
* :class:`Conv2dFunction` (a ``torch.autograd.Function``) and the custom ops ``tritoncnn::conv2d`` /
  ``tritoncnn::conv2d_backward`` (``torch.library``, with fake, autograd and autocast registrations,
  so ``opcheck``, ``torch.compile`` and ``torch.autocast`` work);
* the functional API :func:`conv2d`, :func:`conv2d_relu` and :func:`linear`: in eager mode
  (autocast included) an autograd Function straight on the launchers, otherwise (torch.compile,
  fake tensors, dispatch modes: see ``_common.eager_ok``) the custom op. ``linear`` is a 1x1
  convolution over a 1x1 map: the same kernels.
"""

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from tritoncnn import _runtime, autotune

from ._common import (
    INTERPRET,
    apply_function,
    as_pair,
    autocast_enabled,
    cdiv,
    channel_strides,
    channel_vector,
    channels_inner,
    check_device,
    check_float,
    conv_len,
    dot_precision,
    eager_ok,
    kernel_strides,
    launch,
    memory_format_of,
    next_pow2,
    pixel_vector,
    traced_checks_quiet,
    vmap_rule,
    with_eager_twin,
)
from ._conv_kernels import (
    _conv_dw_kernel,
    _conv_dx_kernel,
    _conv_fwd_kernel,
    _sum_splits_kernel,
)

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

# Kernels whose reduction is one flattened (tap, channel block) loop: Triton miscompiles that loop
# form at num_warps >= 8 (DESIGN.md section 5), so their configs are capped at this many warps.
_FLAT_LOOP_MAX_WARPS = 4


# ----------------------------------------------------------------------------------------------
# Geometry and validation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved convolution arguments: everything but the tensors.

    ``padding`` is (top, bottom, left, right): padding='same' with an even kernel pads one more on
    the bottom/right, as ``F.conv2d`` does.
    """

    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    groups: int

    def output_size(self, H: int, W: int, R: int, S: int) -> Tuple[int, int]:
        """(P, Q) for an H x W input and an R x S kernel."""
        (sh, sw), (pt, pb, pl, pr), (dh, dw) = self.stride, self.padding, self.dilation
        return conv_len(H, R, sh, pt + pb, dh), conv_len(W, S, sw, pl + pr, dw)

    def as_op_args(self) -> tuple:
        """The geometry as the custom ops' (stride, padding, dilation, groups) arguments."""
        return list(self.stride), list(self.padding), list(self.dilation), self.groups

    @classmethod
    def from_op_args(cls, stride, padding, dilation, groups) -> "ConvGeometry":
        return cls(tuple(stride), tuple(padding), tuple(dilation), int(groups))


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _check_tensors(input, weight, bias, *, same_dtype: bool = True, meta_ok: bool = False) -> None:
    """Types, devices and dtypes of the three tensors (shapes are checked by resolve_geometry);
    ``meta_ok``: meta tensors pass (see ``check_device``)."""
    check_float("input", input)
    check_float("weight", weight)
    if bias is not None:
        check_float("bias", bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise ValueError(
                f"input is on {input.device} but {name} is on {t.device}; they must share a device"
            )
    check_device("input", input, meta_ok)
    if same_dtype:
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.dtype != input.dtype:
                raise TypeError(
                    f"input has dtype {input.dtype} but {name} has dtype {t.dtype}; "
                    "they must match (or run under torch.autocast)"
                )



def check_and_resolve(input, weight, bias, stride, padding, dilation, groups, *,
                      same_dtype: bool = True, meta_ok: bool = False) -> "ConvGeometry":
    """Check the tensors (types, devices, dtypes) and resolve the F.conv2d arguments against their
    shapes: the prologue every conv entry point shares (``meta_ok`` for the functional API, which
    sends meta tensors to the custom op)."""
    _check_tensors(input, weight, bias, same_dtype=same_dtype, meta_ok=meta_ok)
    memo = _plain_args(stride, padding, dilation, groups) and not torch.compiler.is_compiling()
    resolve = _resolve_memo if memo else resolve_geometry  # dynamo traces the plain function
    return resolve(_shape(input), _shape(weight), None if bias is None else _shape(bias),
                   stride, padding, dilation, groups)


def _plain_args(*args) -> bool:
    """Ints, strings and tuples of ints only: arguments that hash as themselves (a bool or a
    float would share an int's cache entry and skip the error it must raise)."""
    for a in args:
        if type(a) is not int and type(a) is not str and not (
                type(a) is tuple and all(type(v) is int for v in a)):
            return False
    return True


def grad_mask(ctx) -> list:
    """[dX, dW, db] wanted by autograd (db only when the forward had a bias)."""
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.needs_input_grad[2] and ctx.has_bias]

def _positive_pair(value, name: str) -> Tuple[int, int]:
    pair = as_pair(value, name)
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _check_shapes(input_shape: tuple, weight_shape: tuple, bias_shape, groups) -> None:
    """4-D input and weight, groups dividing both channel counts, matching channels and bias."""
    if len(input_shape) != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {input_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D (K, C/groups, R, S), got shape {weight_shape}")
    N, C, H, W = input_shape
    K, CG, R, S = weight_shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if C % groups:
        raise ValueError(f"groups={groups} does not divide the C={C} channels of input {input_shape}")
    if K % groups:
        raise ValueError(
            f"groups={groups} does not divide the K={K} output channels of weight {weight_shape}"
        )
    if CG * groups != C:
        raise ValueError(
            f"channel mismatch: input {input_shape} has C={C} channels, but weight {weight_shape} "
            f"with groups={groups} expects C = {CG} * {groups} = {CG * groups}"
        )
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ValueError(
            f"bias must have shape ({K},) to match the K={K} output channels of weight "
            f"{weight_shape}, got shape {tuple(bias_shape)}"
        )


def _provably(condition) -> bool:
    """A shape condition as a bool; a symbolic one (torch.compile, torch.export) is true only where
    it holds for every size, and puts no guard on the sizes."""
    if isinstance(condition, torch.SymBool):
        return statically_known_true(condition)
    return bool(condition)


def _check_fit(geometry: ConvGeometry, input_shape: tuple, weight_shape: tuple) -> None:
    """The dilated kernel fits the padded input; pixel counts stay below 2**31."""
    N, C, H, W = input_shape
    K, _, R, S = weight_shape
    (dh, dw), pads = geometry.dilation, geometry.padding
    extent_h, extent_w = dh * (R - 1) + 1, dw * (S - 1) + 1
    padded_h, padded_w = H + pads[0] + pads[1], W + pads[2] + pads[3]
    if extent_h > padded_h or extent_w > padded_w:
        raise ValueError(
            f"kernel of weight {weight_shape} (dilated extent {extent_h}x{extent_w}) is larger than "
            f"the padded input {padded_h}x{padded_w} of input {input_shape}"
        )
    # Kernels index pixels and offsets inside one image in int32 (the batch term is int64).
    P, Q = geometry.output_size(H, W, R, S)
    # Symbolic sizes (torch.compile, torch.export) pass unless provably too large, with no guard
    # on them (max() would compare them and guard a dynamic batch to its example value, and a
    # bound would need declaring): the custom op checks its concrete sizes before it launches.
    counts = (N * H * W, N * P * Q, C * H * W, K * P * Q)
    if any(_provably(count >= 2**31) for count in counts):
        raise ValueError(
            f"input {input_shape} with weight {weight_shape} has more than 2**31 - 1 pixels in "
            "the batch or elements in one image; split the batch"
        )


def resolve_geometry(input_shape, weight_shape, bias_shape, stride=1, padding=0, dilation=1,
                     groups=1) -> ConvGeometry:
    """Check ``F.conv2d``-style arguments against 4-D shapes and resolve them into a geometry.

    ``input_shape`` is (N, C, H, W), ``weight_shape`` (K, C/groups, R, S), ``bias_shape`` (K,) or
    None. Every error names the argument and the shapes involved.
    """
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    _check_shapes(input_shape, weight_shape, bias_shape, groups)
    R, S = weight_shape[2:]
    sh, sw = _positive_pair(stride, "stride")
    dh, dw = _positive_pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride!r}")
            th, tw = dh * (R - 1), dw * (S - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = as_pair(padding, "padding")
        if min(ph, pw) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        pads = (ph, ph, pw, pw)
    geometry = ConvGeometry((sh, sw), pads, (dh, dw), groups)
    _check_fit(geometry, input_shape, weight_shape)
    return geometry


# A layer resolves the same arguments on every call: once per shape and arguments (errors are
# raised every time: lru_cache keeps results only).
_resolve_memo = functools.lru_cache(maxsize=4096)(resolve_geometry)


def check_geometry(geometry: ConvGeometry, input_shape, weight_shape, bias_shape) -> None:
    """The checks of :func:`resolve_geometry` on an already resolved geometry (what the custom ops
    receive): a direct ``torch.ops.tritoncnn`` call with mismatched shapes gets the same errors
    instead of a launch that reads out of bounds."""
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    _check_shapes(input_shape, weight_shape, bias_shape, geometry.groups)
    if len(geometry.stride) != 2 or min(geometry.stride) <= 0:
        raise ValueError(f"stride must be positive, got {geometry.stride}")
    if len(geometry.dilation) != 2 or min(geometry.dilation) <= 0:
        raise ValueError(f"dilation must be positive, got {geometry.dilation}")
    if len(geometry.padding) != 4 or min(geometry.padding) < 0:
        raise ValueError(
            "padding must be 4 non-negative ints (top, bottom, left, right), "
            f"got {geometry.padding}"
        )
    _check_fit(geometry, input_shape, weight_shape)


def _check_grad_shape(name: str, tensor: Optional[torch.Tensor], want: tuple) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(want):
        raise ValueError(f"{name} has shape {_shape(tensor)}, expected the output shape {want}")


def _parse_activation(activation) -> bool:
    """None -> False, 'relu' -> True (the only activation the epilogue has)."""
    if activation is None:
        return False
    if activation == "relu":
        return True
    raise ValueError(f"activation must be None or 'relu', got {activation!r}")


# ----------------------------------------------------------------------------------------------
# Launch configs
# ----------------------------------------------------------------------------------------------


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two covering n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(max(1, int(n)))))


@functools.lru_cache(maxsize=None)
def _gemm_heuristic_items(rows: int, cols: int, red: int, dtype: torch.dtype,
                          max_k: int) -> tuple:
    if INTERPRET:
        cfg = dict(BLOCK_M=_pow2(rows, 16, 2048), BLOCK_N=_pow2(cols, 16, 64),
                   BLOCK_K=_pow2(red, 16, 64), GROUP_M=8, num_warps=4, num_stages=1)
    else:
        block_k = _pow2(red, 16, 32 if dtype == torch.float32 else max_k)
        # channel counts off multiples of 16: the compiler cannot prove their rows aligned, the
        # tiles load element by element, and the 128-wide tiles spill (sm_90, ptxas -v)
        wide = 64 if cols % 16 or red % 16 else 128
        cfg = dict(BLOCK_M=_pow2(rows, 16, wide), BLOCK_N=_pow2(cols, 16, wide), BLOCK_K=block_k,
                   GROUP_M=8, num_warps=4, num_stages=3 if block_k == 64 else 4)
    return tuple(cfg.items())


def _gemm_heuristic(rows: int, cols: int, red: int, dtype: torch.dtype, max_k: int = 64) -> dict:
    """Tiles for an implicit GEMM of rows x cols with a reduction block over ``red`` channels.

    The interpreter runs programs one after another, so it gets the largest tiles; a GPU gets
    tensor-core tiles (BLOCK_K 32 for fp32, whose tiles take twice the shared memory, and at most
    ``max_k``: the dX kernel spills registers with 64, see ``autotune.spaces.MAX_BLOCK_K``).
    Memoised: a fresh dict per call, built once per argument tuple.
    """
    return dict(_gemm_heuristic_items(int(rows), int(cols), int(red), dtype, int(max_k)))


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device, queried once per device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _dw_heuristic_items(KG: int, RSC: int, CG: int, NPQ: int, groups: int, need_dw: bool,
                        dtype: torch.dtype, device: torch.device) -> tuple:
    if INTERPRET:
        return tuple(dict(BLOCK_M=_pow2(KG, 16, 64), BLOCK_N=_pow2(RSC, 16, 128),
                          BLOCK_K=_pow2(NPQ, 16, 1024), GROUP_M=8, num_warps=4, num_stages=1,
                          SPLIT=1).items())
    wide = 64 if KG % 16 or CG % 16 else 128  # unaligned channels: see _gemm_heuristic_items
    cfg = dict(BLOCK_M=_pow2(KG, 16, wide), BLOCK_N=_pow2(RSC, 16, wide),
               BLOCK_K=32 if dtype == torch.float32 or wide < 128 else 64, GROUP_M=8,
               num_warps=4, num_stages=3)
    if cfg["BLOCK_M"] * cfg["BLOCK_N"] > 128 * 64:  # 128x128 on 4 warps spills (sm_90, ptxas)
        cfg["num_warps"] = 8
    tiles = _dw_tiles(cfg, KG, RSC, need_dw) * groups
    steps = cdiv(NPQ, cfg["BLOCK_K"])
    cfg["SPLIT"] = max(1, min(cdiv(2 * _num_sms(device), tiles), cdiv(steps, 8), 64))
    return tuple(cfg.items())


def _dw_heuristic(KG: int, RSC: int, CG: int, NPQ: int, groups: int, need_dw: bool, dtype,
                  device) -> dict:
    """dW tiles: rows = output channels, columns = (r, s, c) taps of CG channels, reduction over
    N*P*Q pixels, split so that the grid fills the GPU (one split under the interpreter).
    Memoised per argument tuple, like :func:`_gemm_heuristic`."""
    return dict(_dw_heuristic_items(int(KG), int(RSC), int(CG), int(NPQ), int(groups),
                                    bool(need_dw), dtype, torch.device(device)))


def _dw_tiles(cfg: dict, KG: int, RSC: int, need_dw: bool) -> int:
    """Output tiles of one group of the dW grid (db alone: one column tile)."""
    cols = cdiv(RSC, cfg["BLOCK_N"]) if need_dw else 1
    return cdiv(KG, cfg["BLOCK_M"]) * cols


def _config(kernel: str, shape: dict, dtype: torch.dtype, layout: str, heuristic: dict,
            override: Optional[dict], ieee: bool = False) -> dict:
    """The tuned (or heuristic) config from the autotune cache, with ``override`` on top.
    ``ieee`` (float32 without TF32, float64: :func:`_register_tiles`): the launch is its own
    cache entry (``ieee`` in the shape dict), and its tiles are capped by
    ``autotune.spaces.cap_ieee``, the heuristic's too."""
    if ieee:
        shape = {**shape, "ieee": 1}
    cfg = autotune.spaces.cap_ieee(
        kernel, shape, dict(autotune.get_config(kernel, shape, dtype, layout, heuristic)), dtype)
    if override:
        cfg.update(override)
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        block = cfg[key]
        if block < 16 or block & (block - 1):
            raise ValueError(f"{kernel} config {key}={block} must be a power of two >= 16")
    if kernel in ("conv_fwd", "conv_dx", "conv_pool_fwd"):
        cfg["num_warps"] = min(cfg["num_warps"], _FLAT_LOOP_MAX_WARPS)
    return cfg


def _shape_key(x: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry, pool: int = 1) -> dict:
    """``autotune.conv_shape`` of the layer (P, Q: the conv output, before any pooling), plus
    ``pool`` for the kernels of the fused conv + ReLU + max-pool (a separate cache entry). A fresh
    dict per call, built once per layer shape."""
    return dict(_shape_key_items(tuple(x.shape), tuple(w.shape), geometry, pool))


@functools.lru_cache(maxsize=4096)
def _shape_key_items(x_shape: tuple, w_shape: tuple, geometry: ConvGeometry, pool: int) -> tuple:
    shape = autotune.conv_shape(x_shape, w_shape, geometry.stride, geometry.padding,
                                geometry.dilation, geometry.groups)
    if pool > 1:
        shape["pool"] = pool
    return tuple(shape.items())


# The layout key of every conv launch: the launchers hand the kernels each operand with its
# channels at stride 1 (:func:`channels_inner`), whatever the caller's format.
LAYOUT = "nhwc"


def _register_tiles(dtype: torch.dtype, allow_tf32: Optional[bool]) -> bool:
    """Compiled dots whose operand tiles pass through registers: float32 without TF32 (tl.dot on
    the FMA units) and float64 (mma.sync's fp64 shapes). Their tiles are capped by
    ``autotune.spaces.cap_ieee`` (IEEE_CAPS, FP64_CAPS), and their launches have cache entries of
    their own."""
    if INTERPRET:
        return False
    return dtype == torch.float64 or dtype == torch.float32 and \
        dot_precision(dtype, allow_tf32) == "ieee"


def _dot_args(dtype: torch.dtype, allow_tf32: Optional[bool]) -> dict:
    """DOT_FP32 (bf16 tiles upcast under the interpreter) and PRECISION for the kernels."""
    return dict(DOT_FP32=INTERPRET and dtype == torch.bfloat16,
                PRECISION=dot_precision(dtype, allow_tf32))


def _launch_opts(cfg: dict) -> dict:
    return dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------


def conv2d_forward(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   geometry: ConvGeometry, relu: bool = False, allow_tf32: Optional[bool] = None,
                   config: Optional[dict] = None) -> torch.Tensor:
    """Y = relu?(conv2d(input, weight) + bias): (N, C, H, W) -> (N, K, P, Q), in input's format.

    Tensors must already be checked (see :func:`resolve_geometry`); ``config`` overrides keys of
    the "conv_fwd" launch config. The kernel reads input and weight with their channels at stride
    1 (:func:`channels_inner`: an NCHW tensor is copied to channels_last first).
    """
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    KG = K // geometry.groups
    P, Q = geometry.output_size(H, W, R, S)
    y = torch.empty((N, K, P, Q), device=input.device, dtype=input.dtype,
                    memory_format=memory_format_of(input))
    if y.numel() == 0:
        return y
    input, weight = channels_inner(input), channels_inner(weight)
    M = N * P * Q
    cfg = _config("conv_fwd", _shape_key(input, weight, geometry), input.dtype,
                  LAYOUT, _gemm_heuristic(M, KG, CG, input.dtype), config,
                  _register_tiles(input.dtype, allow_tf32))
    grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(KG, cfg["BLOCK_N"]), geometry.groups)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    syn, syk, syp, syq = kernel_strides(y)
    yv = pixel_vector(Q, (syn, syk, syp), syq)
    xs, ws = kernel_strides(input), kernel_strides(weight)
    cv = channel_vector(CG, xs, ws)
    launch(_conv_fwd_kernel, grid,
        input, weight, bias if bias is not None else weight, y,
        N, H, W, P, Q // yv, R, S, CG // cv, KG,
        *channel_strides(xs, cv), *channel_strides(ws, cv),
        syn // yv, syk // yv, syp // yv, syq,
        sh, sw, pt, pl, dh, dw,
        HAS_BIAS=bias is not None, RELU=relu, YV=yv, CV=cv, **_dot_args(input.dtype, allow_tf32),
        **_launch_opts(cfg),
    )
    return y


def conv2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    output: Optional[torch.Tensor],
    geometry: ConvGeometry,
    relu: bool = False,
    needs: Tuple[bool, bool, bool] = (True, True, True),
    allow_tf32: Optional[bool] = None,
    configs: Optional[dict] = None,
    offsets: Optional[torch.Tensor] = None,
    pool: int = 1,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dX, dW, db) of :func:`conv2d_forward`; each is None where ``needs`` says it is not wanted.

    ``output`` is the saved forward output, needed only for ``relu`` (its mask is applied while
    dY is loaded). ``configs`` maps "conv_dx" / "conv_dw" to config overrides. dX keeps input's
    memory format, dW weight's strides.

    ``offsets`` given (required with ``pool > 1``): the backward of the fused conv + ReLU +
    max-pool (``conv_pool``). ``grad_output`` is the pooled gradient and ``offsets`` the
    forward's window offsets, -1 where the pooled output is ReLU's 0 (whose gradient is 0);
    ``output`` is not read. The conv-output gradient is rebuilt inside the kernels as they load
    it (non-zero only at the pixel a window's offset names), never stored. Configs come from
    "conv_dx" / "conv_dw" with ``pool`` in the shape dict, so they are cached apart from the plain
    conv's. The kernels read every operand with its channels at stride 1 (:func:`channels_inner`).
    """
    configs = configs or {}
    need_dx, need_dw, need_db = needs
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    groups = geometry.groups
    KG = K // groups
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    P_conv, Q_conv = geometry.output_size(H, W, R, S)
    if pool > 1 or offsets is not None:
        if not relu or offsets is None:
            raise ValueError(
                "conv2d_backward of the fused max-pool needs relu=True and the window offsets")
        pooled = (N, K, P_conv // pool, Q_conv // pool)
        shapes = [grad_output, offsets] + ([output] if output is not None else [])
        if any(tuple(t.shape) != pooled for t in shapes):
            raise ValueError(
                f"pooled gradient {_shape(grad_output)}, offsets {_shape(offsets)}"
                + ("" if output is None else f" and output {_shape(output)}")
                + f" must all have the pooled shape {pooled}"
            )
        # Only the pixels the windows cover get a gradient: the kernels see that P x Q map.
        P, Q = pooled[2] * pool, pooled[3] * pool
        y = offsets  # the kernels read the offsets with the strides they pass for y
        if input.dtype == torch.float64:
            # Triton 3.6 sizes an fp64 dot's register operand by the narrowest load feeding it,
            # and with int8 offsets picks a layout its fp64 MMA lowering rejects ("fp64 don't
            # support largeK MMA"): int32 offsets (a pooled-size copy) keep it at fp64's own
            y = offsets.to(torch.int32)
    else:
        if relu and output is None:
            raise ValueError("conv2d_backward with relu=True needs the saved forward output")
        P, Q = P_conv, Q_conv
        _check_grad_shape("grad_output", grad_output, (N, K, P, Q))
        _check_grad_shape("output", output, (N, K, P, Q))
        y = output if relu else grad_output  # only read when relu
    from_offsets = offsets is not None
    dx_format, weight_like = memory_format_of(input), weight  # gradients keep these layouts
    # operands with their channels at stride 1 (channels_last copies of NCHW tensors)
    input, weight, grad_output = (channels_inner(t) for t in (input, weight, grad_output))
    y = channels_inner(y) if relu or from_offsets else grad_output  # y is read only then
    off = y  # read only from offsets: then y is the offsets
    shape = _shape_key(input, weight, geometry, pool)
    layout = LAYOUT
    dot = _dot_args(input.dtype, allow_tf32)
    ieee = _register_tiles(input.dtype, allow_tf32)
    relu_mask = relu and not from_offsets  # else the offsets carry the mask
    # channel vector widths: CG with input's and weight's strides, KG with dY's and y's
    ds, ys, xs, ws = (kernel_strides(t) for t in (grad_output, y, input, weight))
    kv = channel_vector(KG, ds, ys)
    cv = channel_vector(CG, xs, ws)

    dx = dw_out = db = None
    if need_dx:
        dx = torch.empty_like(input, memory_format=dx_format)
        HP, WP = cdiv(H, sh), cdiv(W, sw)
        rows = N * HP * WP
        if dx.numel():
            w_dx, cv_dx, ws_dx = weight, cv, ws
            if (input.dtype == torch.float32 and not ieee
                    and 2 * N * P * Q * K * CG * R * S >= K_MAJOR_DX_MIN_FLOP):
                # TF32 tensor cores read a shared-memory operand only K-major: dX reduces over
                # the output channels k, so its weight goes in as a copy with k innermost (16-byte
                # tile loads instead of 4-byte ones; the weight is small, but the copy is one
                # more launch, which only layers with work enough to hide it get)
                w_dx = weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
                ws_dx = kernel_strides(w_dx)
                cv_dx = 1
            cfg = _config("conv_dx", shape, input.dtype, layout,
                          _gemm_heuristic(rows, CG, KG, input.dtype,
                                          autotune.spaces.MAX_BLOCK_K["conv_dx"]),
                          configs.get("conv_dx"), ieee)
            grid = (cdiv(rows, cfg["BLOCK_M"]) * cdiv(CG, cfg["BLOCK_N"]), groups,
                    sh * sw)
            sxn, sxc, sxh, sxw = kernel_strides(dx)
            xv = pixel_vector(W, (sxn, sxc, sxh), sxw) if sw == 1 else 1
            launch(_conv_dx_kernel, grid,
                grad_output, y, off, w_dx, dx,
                N, H, W // xv, P, Q, R, S, CG // cv_dx, KG // kv,
                *channel_strides(ds, kv), *channel_strides(ys, kv), *channel_strides(ws_dx, cv_dx),
                sxn // xv, sxc // xv, sxh // xv, sxw,
                sh, sw, pt, pl, dh, dw,
                sh // math.gcd(sh, dh), sw // math.gcd(sw, dw), HP, WP,
                RELU=relu_mask, POOL=pool, OFFSETS=from_offsets, XV=xv, CV=cv_dx, KV=kv, **dot,
                **_launch_opts(cfg),
            )

    if need_dw or need_db:
        RSC = R * S * CG
        NPQ = N * P * Q
        if need_dw:
            dw_out = torch.empty_like(weight_like)
        if need_db:
            db = torch.empty((K,), device=weight.device, dtype=weight.dtype)
        if NPQ == 0:
            for t in (dw_out, db):
                if t is not None:
                    t.zero_()
            return dx, dw_out, db
        if RSC == 0:  # no input channels: dW is empty, db is all there is to compute
            need_dw = False
            if not need_db:
                return dx, dw_out, db

        heuristic = _dw_heuristic(KG, RSC, CG, NPQ, groups, need_dw, input.dtype, input.device)
        cfg = _config("conv_dw", shape, input.dtype, layout, heuristic, configs.get("conv_dw"),
                      ieee)
        block_k = cfg["BLOCK_K"]
        chunk = cdiv(cdiv(NPQ, max(1, cfg["SPLIT"])), block_k) * block_k
        split = cdiv(NPQ, chunk)
        l_dw = K * RSC if need_dw else 0
        row = l_dw + (K if need_db else 0)  # one split's partials: dW's (K, RSC), then db's (K)
        if split == 1:  # the kernel casts and stores dW / db in place: no partials, no sum pass
            dw_dst, db_dst = dw_out, db
        else:
            part = torch.empty((split, row), device=input.device,
                               dtype=torch.float64 if input.dtype == torch.float64 else torch.float32)
            dw_dst, db_dst = part[:, :l_dw], part[:, l_dw:]
        dummy = dw_dst if need_dw else db_dst
        dw_strides = kernel_strides(dw_out) if need_dw else (0, 0, 0, 0)
        dw_cg, dw_cv = (CG, cv) if need_dw else (max(CG, 1), 1)  # (db alone: taps unused)
        launch(_conv_dw_kernel, (_dw_tiles(cfg, KG, RSC, need_dw), groups, split),
            grad_output, y, off, input,
            dw_dst if need_dw else dummy, db_dst if need_db else dummy,
            N, H, W, P, Q, R, S, dw_cg // dw_cv, KG // kv, K, chunk, row,
            *channel_strides(ds, kv), *channel_strides(ys, kv), *channel_strides(xs, dw_cv),
            *dw_strides,
            sh, sw, pt, pl, dh, dw,
            NEED_DW=need_dw, NEED_DB=need_db, RELU=relu_mask, POOL=pool, OFFSETS=from_offsets,
            DW_STRIDED=need_dw and split == 1 and dw_out.stride() != (RSC, 1, S * CG, CG),
            CV=dw_cv, KV=kv, **dot, **_launch_opts(cfg),
        )
        if split > 1:
            _sum_splits(part, dw_out, db, l_dw, RSC, CG, S)
    return dx, dw_out, db


# dX GEMMs of at least this many FLOPs (a few microseconds of TF32 tensor-core time) read a
# k-innermost copy of the weight; smaller ones are launch-bound and skip the copy's launch
K_MAJOR_DX_MIN_FLOP = 2 ** 32


def _sum_splits(part: torch.Tensor, dw: Optional[torch.Tensor], db: Optional[torch.Tensor],
                l_dw: int, RSC: int, CG: int, S: int) -> None:
    """dW and db from the (split, row) fp32 partials, summed in split order and cast into their
    layouts: one launch for both."""
    split, row = part.shape
    block = _pow2(row, 16, 16384) if INTERPRET else 1024
    launch(_sum_splits_kernel, (cdiv(row, block),),
        part, dw if dw is not None else part, db if db is not None else part,
        split, row, l_dw, max(RSC, 1), max(CG, 1), S,  # (no dW when 0: no division by it)
        *(kernel_strides(dw) if dw is not None else (0, 0, 0, 0)),
        db.stride(0) if db is not None else 0, BLOCK=block,
    )


# ----------------------------------------------------------------------------------------------
# Autograd Function
# ----------------------------------------------------------------------------------------------


def _resolve_tf32(allow_tf32: Optional[bool]) -> bool:
    """Fix the float32 dot precision at forward time, so backward uses the same one."""
    return torch.backends.cudnn.allow_tf32 if allow_tf32 is None else bool(allow_tf32)


def _forward(input, weight, bias, geometry: ConvGeometry, relu: bool, allow_tf32: bool,
             config: Optional[dict] = None) -> torch.Tensor:
    """Checks the tensors and geometry against each other, then launches: the forward of the
    custom op and of Conv2dFunction, so a direct op call gets the functional API's errors."""
    _check_tensors(input, weight, bias)
    check_geometry(geometry, _shape(input), _shape(weight), None if bias is None else _shape(bias))
    return conv2d_forward(input, weight, bias, geometry, relu, allow_tf32, config)


def _save_for_backward(ctx, input, weight, bias, output, geometry: ConvGeometry, relu: bool,
                       allow_tf32: bool, configs: Optional[dict] = None) -> None:
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.geometry, ctx.relu, ctx.allow_tf32 = geometry, relu, allow_tf32
    ctx.configs = configs or None
    ctx.has_bias = bias is not None


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


def _grads(ctx, grad_output) -> list:
    """[dX, dW, db] (None where not needed) through tritoncnn::conv2d_backward, or straight
    through the launcher in plain eager mode (:func:`eager_ok`) and when the caller gave
    launch-config overrides (which the op does not take); when autograd records the backward
    pass (double backward), through :func:`differentiable_conv_grads`."""
    input, weight, output = ctx.saved_tensors
    mask = grad_mask(ctx)
    if not any(mask):
        return [None, None, None]
    if torch.is_grad_enabled():
        grad_z = grad_output * (output > 0) if ctx.relu else grad_output
        return differentiable_conv_grads(grad_z, input, weight, ctx.geometry, mask)
    if ctx.configs or eager_ok(grad_output):
        return list(conv2d_backward(grad_output, input, weight, output, ctx.geometry, ctx.relu,
                                    tuple(mask), ctx.allow_tf32, ctx.configs))
    computed = _conv2d_backward_op(grad_output, input, weight, output,
                                   *ctx.geometry.as_op_args(), ctx.relu, ctx.allow_tf32, mask)
    return [g if want else None for g, want in zip(computed, mask)]


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
                              _parse_activation(activation), _resolve_tf32(allow_tf32), configs)


@with_eager_twin
class _Conv2dChecked(torch.autograd.Function):
    """The functional API's eager path (``torch.func.grad`` too, hence ``setup_context``):
    (input, weight, bias) already checked against the resolved ``geometry``
    (:func:`check_and_resolve`), launched without a second check."""

    @staticmethod
    def forward(input, weight, bias, geometry, relu, allow_tf32, configs=None):
        return conv2d_forward(input, weight, bias, geometry, relu, allow_tf32,
                              (configs or {}).get("conv_fwd"))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, geometry, relu, allow_tf32, *configs = inputs
        _save_for_backward(ctx, input, weight, bias, output, geometry, relu, allow_tf32,
                           *configs)
        ctx.save_for_forward(input, weight, output)

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None, None, None)

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight, output = ctx.saved_tensors
        tangent = conv_tangent(input, weight, input_t, weight_t, bias_t, ctx.geometry)
        return tangent * (output > 0) if ctx.relu else tangent

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_rule(_Conv2dChecked, info, in_dims, *args)



# ----------------------------------------------------------------------------------------------
# Custom ops: tritoncnn::conv2d and tritoncnn::conv2d_backward
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("tritoncnn::conv2d", mutates_args=())
def _conv2d_op(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               stride: List[int], padding: List[int], dilation: List[int], groups: int,
               relu: bool, allow_tf32: bool) -> torch.Tensor:
    """relu?(conv2d(input, weight) + bias) with resolved geometry; padding is (top, bottom,
    left, right). Shapes are checked against the geometry before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    return _forward(input, weight, bias, geometry, relu, allow_tf32)


@_conv2d_op.register_fake
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu, allow_tf32):
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    N, _, H, W = input.shape
    K, _, R, S = weight.shape
    P, Q = geometry.output_size(H, W, R, S)
    return torch.empty((N, K, P, Q), device=input.device, dtype=input.dtype,
                       memory_format=memory_format_of(input))


@torch.library.custom_op("tritoncnn::conv2d_backward", mutates_args=())
def _conv2d_backward_op(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                        output: Optional[torch.Tensor], stride: List[int], padding: List[int],
                        dilation: List[int], groups: int, relu: bool, allow_tf32: bool,
                        output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dX, dW, db) of tritoncnn::conv2d; a gradient left out by ``output_mask`` comes back as an
    empty tensor. Shapes are checked against the geometry (and grad_output / output against the
    output shape) before anything is launched."""
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _check_tensors(input, weight, None)
    check_geometry(geometry, _shape(input), _shape(weight), None)
    grads = conv2d_backward(grad_output, input, weight, output, geometry, relu,
                            tuple(output_mask), allow_tf32)
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


@_conv2d_backward_op.register_fake
def _conv2d_backward_fake(grad_output, input, weight, output, stride, padding, dilation, groups,
                          relu, allow_tf32, output_mask):
    need_dx, need_dw, need_db = output_mask
    return (
        torch.empty_like(input, memory_format=memory_format_of(input)) if need_dx
        else input.new_empty(0),
        torch.empty_like(weight) if need_dw else input.new_empty(0),
        weight.new_empty((weight.shape[0],)) if need_db else input.new_empty(0),
    )


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, allow_tf32 = inputs
    geometry = ConvGeometry.from_op_args(stride, padding, dilation, groups)
    _save_for_backward(ctx, input, weight, bias, output, geometry, relu, allow_tf32)


def _conv2d_op_backward(ctx, grad_output):
    return (*_grads(ctx, grad_output), None, None, None, None, None, None)


_conv2d_op.register_autograd(_conv2d_op_backward, setup_context=_conv2d_setup_context)

_autocast_lib = torch.library.Library("tritoncnn", "FRAGMENT")


def autocast_inputs(device_type: str, *tensors) -> tuple:
    """The tensors cast to torch.autocast's dtype for ``device_type``, as F.conv2d's are (floating
    tensors on that device but float64, which autocast leaves; None and others as they are): what
    the ops' autocast registrations and the functional API's eager path do under autocast."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point()
                 and t.dtype != torch.float64 and t.device.type == device_type else t
                 for t in tensors)


def _register_autocast(name: str, op, device_type: str, dispatch_key: str) -> None:
    """Under torch.autocast(device_type), cast the (input, weight, bias) of custom op
    ``tritoncnn::<name>`` to the autocast dtype, as F.conv2d does, then run it with autocast off."""

    def autocast_op(input, weight, bias, *args):
        cast = autocast_inputs(device_type, input, weight, bias)
        with torch.autocast(device_type, enabled=False):
            return op(*cast, *args)

    _autocast_lib.impl(name, autocast_op, dispatch_key)


def register_conv_autocast(name: str, op) -> None:
    """Autocast registrations (CPU and CUDA) for a custom op taking (input, weight, bias, ...)."""
    _register_autocast(name, op, "cpu", "AutocastCPU")
    _register_autocast(name, op, "cuda", "AutocastCUDA")


register_conv_autocast("conv2d", _conv2d_op)


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
            f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {_shape(input)}"
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
                           _resolve_tf32(allow_tf32))
    else:
        y = _conv2d_op(x, weight, bias, *geometry.as_op_args(), relu, _resolve_tf32(allow_tf32))
    return y.squeeze(0) if unbatched else y


def conv2d_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1, *,
                allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """relu(conv2d(...)): the fused CONV -> RELU layer (see :func:`conv2d`)."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups, "relu",
                  allow_tf32=allow_tf32)


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
            f"weight must be 2-D (out_features, in_features), got shape {_shape(weight)}"
        )
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {_shape(input)} must end in in_features={weight.shape[1]} "
            f"of weight {_shape(weight)}"
        )
    out_features, in_features = weight.shape
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"bias must have shape ({out_features},) to match the out_features={out_features} "
            f"of weight {_shape(weight)}, got shape {_shape(bias)}"
        )
    rows = math.prod(input.shape[:-1])
    x = input.reshape(rows, in_features)[:, :, None, None]            # (B, in, 1, 1)
    y = conv2d(x, weight[:, :, None, None], bias, activation=activation,
               allow_tf32=allow_tf32)                                  # (B, out, 1, 1)
    return y.reshape(*input.shape[:-1], out_features)


# ----------------------------------------------------------------------------------------------
# Tuning problems (``tritoncnn tune`` and tuning on first use; GPU only)
# ----------------------------------------------------------------------------------------------


def problem_inputs(shape: dict, dtype: torch.dtype, layout: str):
    """(x, w, b, geometry) for a conv shape dict (``autotune.conv_shape``), on the device kernels
    run on (the GPU; the CPU under the interpreter, where tests check the problems themselves).

    Values are small integers (-1, 0, 1): exact in every dtype and, summed in fp32, in every
    accumulation order, TF32 included. So the conv values, their ReLU masks and their pooling
    maxima are exact, and every config must reproduce the float64 reference's masks and window
    offsets exactly. The bottom/right padding is whatever gives the shape's P, Q (padding='same'
    with an even kernel pads one more there).
    """
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    N, C, H, W, K, R, S = (shape[k] for k in ("N", "C", "H", "W", "K", "R", "S"))
    groups = shape.get("groups", 1)

    def ints(*size):
        return torch.randint(-1, 2, size, device=_runtime.device_type()).to(dtype)

    x = ints(N, C, H, W).contiguous(memory_format=fmt)
    w = ints(K, C // groups, R, S).contiguous(memory_format=fmt)  # as a converted model's weights
    b = ints(K)
    (sh, sw), (dh, dw) = (shape["stride_h"], shape["stride_w"]), (shape["dil_h"], shape["dil_w"])
    pt, pl = shape["pad_h"], shape["pad_w"]
    pb = max(0, (shape["P"] - 1) * sh + dh * (R - 1) + 1 - H - pt)
    pr = max(0, (shape["Q"] - 1) * sw + dw * (S - 1) + 1 - W - pl)
    return x, w, b, ConvGeometry((sh, sw), (pt, pb, pl, pr), (dh, dw), groups)


def problem_tf32(shape: dict) -> bool:
    """A tuning problem's ``allow_tf32``: float32 tuned with TF32 unless the shape says ``ieee``
    (its launches then look up the same entry as the model's did)."""
    return not shape.get("ieee")


def reference_conv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                   geometry: ConvGeometry) -> torch.Tensor:
    """conv2d(x, w) + b in float64 with torch (autograd-able), any padding of the geometry."""
    pt, pb, pl, pr = geometry.padding
    x = torch.nn.functional.pad(x.double(), (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(x, w.double(), None if b is None else b.double(),
                                      geometry.stride, 0, geometry.dilation, geometry.groups)


def reference_conv_grads(dz: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                         geometry: ConvGeometry) -> tuple:
    """(dX, dW, db) in float64 of :func:`reference_conv` for the conv-output gradient ``dz``, with
    no autograd: tuning on first use builds its problems inside a custom op or a backward pass,
    where autograd records nothing."""
    pt, pb, pl, pr = geometry.padding
    xp = torch.nn.functional.pad(x.double(), (pl, pr, pt, pb))
    dxp, dw, db = torch.ops.aten.convolution_backward(
        dz.double(), xp, w.double(), [w.shape[0]], list(geometry.stride), [0, 0],
        list(geometry.dilation), False, [0, 0], geometry.groups, [True, True, True])
    H, W = x.shape[2:]
    return dxp[:, :, pt:pt + H, pl:pl + W], dw, db


def _conv_fwd_problem(shape: dict, dtype: torch.dtype, layout: str) -> autotune.Problem:
    x, w, b, geometry = problem_inputs(shape, dtype, layout)
    ref = torch.relu(reference_conv(x, w, b, geometry))
    return autotune.Problem(
        run=lambda cfg: conv2d_forward(x, w, b, geometry, relu=True, config=cfg,
                                       allow_tf32=problem_tf32(shape)), reference=ref)


def _conv_backward_problem(kernel: str, shape: dict, dtype: torch.dtype,
                           layout: str) -> autotune.Problem:
    """conv_dx (returns dX) or conv_dw (returns dW, db) of conv + ReLU, or, when the shape dict
    has ``pool`` > 1, of the fused conv + ReLU + max-pool; reference: torch's float64 conv
    backward (:func:`reference_conv_grads`) of the same (pool-routed, ReLU-masked) conv-output
    gradient."""
    pool = shape.get("pool", 1)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x, w, b, geometry = problem_inputs(shape, dtype, layout)
    z = reference_conv(x, w, b, geometry).detach()                     # (N, K, P, Q)
    y = torch.relu(z)
    offsets = None
    if pool > 1:
        y, index = torch.nn.functional.max_pool2d(y, pool, return_indices=True)
        grad = torch.randint(-1, 2, y.shape, device=y.device).double()
        N, K, P, Q = z.shape
        routed = (grad * (y > 0)).reshape(N, K, -1)
        dense = z.new_zeros((N, K, P * Q)).scatter(2, index.reshape(N, K, -1), routed)
        dense = dense.view(z.shape)
        offsets = ((index // Q) % pool * pool + index % Q % pool).to(torch.int8)
        offsets = torch.where(y == 0, -1, offsets).contiguous(memory_format=fmt)
    else:
        grad = torch.randint(-1, 2, y.shape, device=y.device).double()
        dense = grad * (y > 0)
    ref_dx, ref_dw, ref_db = reference_conv_grads(dense, x, w, geometry)
    grad = grad.to(dtype).contiguous(memory_format=fmt)
    y = y.to(dtype).contiguous(memory_format=fmt)

    def run(cfg, dx=kernel == "conv_dx"):
        grads = conv2d_backward(grad, x, w, y, geometry, True, (dx, not dx, not dx),
                                allow_tf32=problem_tf32(shape), configs={kernel: cfg},
                                offsets=offsets, pool=pool)
        return grads[0] if dx else grads[1:]

    ref = ref_dx if kernel == "conv_dx" else (ref_dw, ref_db)
    return autotune.Problem(run=run, reference=ref)


autotune.register_problem("conv_fwd", _conv_fwd_problem)
autotune.register_problem(
    "conv_dx", lambda shape, dtype, layout: _conv_backward_problem("conv_dx", shape, dtype, layout))
autotune.register_problem(
    "conv_dw", lambda shape, dtype, layout: _conv_backward_problem("conv_dw", shape, dtype, layout))
