"""Tuning problems: for each tunable kernel, a factory that builds one problem of a shape dict
(inputs on the device kernels run on, the launch to time per config, and a float64 reference that
every config must reproduce), registered with ``autotune.register_problem``; and the float64
references of the conv ops.

The conv problems use small-integer inputs (-1, 0, 1): exact in every dtype and, summed in fp32,
in every accumulation order, TF32 included, so the ReLU masks and pooling maxima are exact and a
config that picks another window element is caught. The tuner runs these on a GPU; the tests run
them under the interpreter.
"""

from __future__ import annotations

from typing import Optional

import torch

from tritoncnn import _runtime, autotune

from ._checks import pooled_len
from .conv import conv2d_forward
from .conv_backward import GradSource, conv_grads
from .conv_pool import conv2d_relu_pool_forward
from .geometry import ConvGeometry
from .max_pool import max_pool2d_backward, max_pool2d_forward, offset_dtype


# ----------------------------------------------------------------------------------------------
# Conv
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

    src = GradSource(grad, offsets=offsets, pool=pool) if pool > 1 else GradSource(grad, y)

    def run(cfg, dx=kernel == "conv_dx"):
        grads = conv_grads(src, x, w, geometry, (dx, not dx, not dx),
                           allow_tf32=problem_tf32(shape), configs={kernel: cfg})
        return grads[0] if dx else grads[1:]

    ref = ref_dx if kernel == "conv_dx" else (ref_dw, ref_db)
    return autotune.Problem(run=run, reference=ref)


autotune.register_problem("conv_fwd", _conv_fwd_problem)
autotune.register_problem(
    "conv_dx", lambda shape, dtype, layout: _conv_backward_problem("conv_dx", shape, dtype, layout))
autotune.register_problem(
    "conv_dw", lambda shape, dtype, layout: _conv_backward_problem("conv_dw", shape, dtype, layout))


def _conv_pool_fwd_problem(shape: dict, dtype: torch.dtype, layout: str) -> autotune.Problem:
    """Pooled output and offsets against float64 torch; the integer inputs of
    :func:`problem_inputs` make the maxima exact, so the offsets must match exactly (-1 where the
    pooled output is 0)."""
    pool = shape.get("pool", 2)
    x, w, b, geometry = problem_inputs(shape, dtype, layout)
    z = reference_conv(x, w, b, geometry)
    ref, index = torch.nn.functional.max_pool2d(torch.relu(z), pool, return_indices=True)
    Q = z.shape[3]
    offsets = ((index // Q) % pool * pool + index % Q % pool).to(offset_dtype(pool * pool))
    offsets = torch.where(ref == 0, -1, offsets)
    return autotune.Problem(
        run=lambda cfg: conv2d_relu_pool_forward(x, w, b, geometry, pool,
                                                 problem_tf32(shape), config=cfg),
        reference=(ref, offsets))


autotune.register_problem("conv_pool_fwd", _conv_pool_fwd_problem)


# ----------------------------------------------------------------------------------------------
# Max-pool
# ----------------------------------------------------------------------------------------------


def _pool_problem_inputs(shape: dict, dtype: torch.dtype, layout: str):
    """Random input of a pool shape dict on the device kernels run on (the GPU; the CPU under the
    interpreter, where tests check the problems themselves), the pooling arguments as pairs,
    ceil_mode."""
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape["N"], shape["C"], shape["H"], shape["W"], device=_runtime.device_type(),
                    dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    params = ((shape["KH"], shape["KW"]), (shape["SH"], shape["SW"]), (shape["PH"], shape["PW"]),
              (shape["DH"], shape["DW"]))
    # ceil_mode shows in OH/OW: the floor output is smaller wherever ceil_mode added a window.
    floor = [pooled_len(shape[dim], *(v[i] for v in params), False)
             for i, dim in enumerate("HW")]
    ceil_mode = floor != [shape["OH"], shape["OW"]]
    return x, params, ceil_mode


def _max_pool_fwd_problem(shape: dict, dtype: torch.dtype, layout: str) -> autotune.Problem:
    x, params, ceil_mode = _pool_problem_inputs(shape, dtype, layout)
    ref = torch.nn.functional.max_pool2d(x, *params, ceil_mode=ceil_mode)
    return autotune.Problem(
        run=lambda cfg: max_pool2d_forward(x, *params, ceil_mode, config=cfg)[0], reference=ref)


def _max_pool_bwd_problem(shape: dict, dtype: torch.dtype, layout: str) -> autotune.Problem:
    x, params, ceil_mode = _pool_problem_inputs(shape, dtype, layout)
    out, offsets = max_pool2d_forward(x, *params, ceil_mode)
    grad = torch.randn_like(out)
    # PyTorch's backward op, not autograd: tuning on first use builds its problems inside a
    # custom op or a backward pass, where autograd records nothing
    _, index = torch.nn.functional.max_pool2d(x, *params, ceil_mode=ceil_mode, return_indices=True)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *params, ceil_mode, index)
    return autotune.Problem(
        run=lambda cfg: max_pool2d_backward(grad, offsets, list(x.shape), *params,
                                            channels_last=layout == "nhwc", config=cfg),
        reference=ref)


autotune.register_problem("max_pool_fwd", _max_pool_fwd_problem)
autotune.register_problem("max_pool_bwd", _max_pool_bwd_problem)
