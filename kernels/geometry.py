"""Conv geometry: the resolved ``F.conv2d`` arguments (stride, padding, dilation, groups), their
checks against the tensors' shapes, output sizes, and the tuning-cache shape of a layer.

One definition for every conv entry point (the functional API, the autograd Functions, the custom
ops, which receive an already resolved geometry and check it again) so that all of them raise the
same errors, naming the argument and the shapes involved.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from tritoncnn import autotune

from ._checks import as_pair, check_device, check_float, conv_len

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


def shape_of(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_tensors(input, weight, bias, *, same_dtype: bool = True, meta_ok: bool = False) -> None:
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
    memo = _plain_args(stride, padding, dilation, groups) and not torch.compiler.is_compiling()
    key = None
    if memo and isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor) and \
            (bias is None or isinstance(bias, torch.Tensor)):
        # a call like an earlier one passes the same checks: types, dtypes, devices and shapes
        key = (input.__class__, input.shape, input.dtype, input.device, weight.__class__,
               weight.shape, weight.dtype, weight.device,
               None if bias is None else (bias.__class__, bias.shape, bias.dtype, bias.device),
               stride, padding, dilation, groups, same_dtype, meta_ok)
        geometry = _CHECKED.get(key)
        if geometry is not None:
            return geometry
    check_tensors(input, weight, bias, same_dtype=same_dtype, meta_ok=meta_ok)
    resolve = _resolve_memo if memo else resolve_geometry  # dynamo traces the plain function
    geometry = resolve(shape_of(input), shape_of(weight), None if bias is None else shape_of(bias),
                       stride, padding, dilation, groups)
    if key is not None:
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED[key] = geometry
    return geometry


#: check_and_resolve's calls that passed, by their arguments' types, dtypes, devices and shapes
_CHECKED: dict = {}


def _plain_args(*args) -> bool:
    """Ints, strings and tuples of ints only: arguments that hash as themselves (a bool or a
    float would share an int's cache entry and skip the error it must raise)."""
    for a in args:
        if type(a) is not int and type(a) is not str and not (
                type(a) is tuple and all(type(v) is int for v in a)):
            return False
    return True


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
    K, CG, R, S = weight_shape
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
    if _provably(K * CG * R * S >= 2**31):  # the kernels index the weight in int32
        raise ValueError(
            f"weight {weight_shape} has {K * CG * R * S} elements, more than the 2**31 - 1 the "
            "kernels index; split the layer's filters over several convolutions")
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


def check_grad_shape(name: str, tensor: Optional[torch.Tensor], want: tuple) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(want):
        raise ValueError(f"{name} has shape {shape_of(tensor)}, expected the output shape {want}")


def tuning_shape(x: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry, pool: int = 1) -> dict:
    """``autotune.conv_shape`` of the layer (P, Q: the conv output, before any pooling), plus
    ``pool`` for the kernels of the fused conv + ReLU + max-pool (a separate cache entry). A fresh
    dict per call, built once per layer shape."""
    return dict(_tuning_shape_items(tuple(x.shape), tuple(w.shape), geometry, pool))


@functools.lru_cache(maxsize=4096)
def _tuning_shape_items(x_shape: tuple, w_shape: tuple, geometry: ConvGeometry,
                        pool: int) -> tuple:
    shape = autotune.conv_shape(x_shape, w_shape, geometry.stride, geometry.padding,
                                geometry.dilation, geometry.groups)
    if pool > 1:
        shape["pool"] = pool
    return tuple(shape.items())
