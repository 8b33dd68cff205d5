"""conv2d / conv2d_relu / linear against a float64 PyTorch reference: values and all three
gradients with one shared upstream gradient, determinism, the custom op, autocast, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tritoncnn.kernels import Conv2dFunction, conv2d, conv2d_relu, linear
from tritoncnn.kernels.conv import ConvGeometry, resolve_geometry

from conftest import DEVICE, TOL, compare, ieee_fp32 as _ieee_fp32, spy_launches, tf32_exact

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups): each line one property, tiny sizes.
CASES = {
    "lecture_32x32x3_six_5x5": (2, 3, 32, 32, 6, (5, 5), 1, 0, 1, 1),     # -> 28x28x6
    "stem_c3_3x3_pad1": (2, 3, 9, 9, 8, (3, 3), 1, 1, 1, 1),
    "1x1": (2, 8, 5, 5, 4, (1, 1), 1, 0, 1, 1),
    "stride2": (2, 4, 9, 9, 6, (3, 3), 2, 1, 1, 1),
    "same_even_kernel": (1, 4, 7, 6, 5, (4, 3), 1, "same", 1, 1),
    "valid": (2, 3, 6, 7, 4, (3, 2), 1, "valid", 1, 1),
    "dilation2": (2, 4, 9, 8, 4, (3, 3), 1, 2, 2, 1),
    "groups2": (2, 4, 6, 6, 6, (3, 3), 1, 1, 1, 2),
    "depthwise_x2": (2, 4, 6, 6, 8, (3, 3), 1, 1, 1, 4),
    "nonsquare": (1, 3, 7, 10, 5, (3, 2), (2, 1), (1, 0), 1, 1),
    "n1_odd": (1, 5, 11, 13, 7, (3, 3), 1, 1, 1, 1),
    "single_output_channel": (2, 3, 5, 6, 1, (3, 3), 1, 1, 1, 1),
    "1x1_stride2_untouched_pixels": (2, 4, 7, 7, 4, (1, 1), 2, 0, 1, 1),
    "stride2_dilation2": (1, 3, 11, 11, 4, (3, 3), 2, 2, 2, 1),
    "stride3_kernel2": (1, 2, 10, 8, 3, (2, 2), 3, 1, 1, 1),
    "many_channels": (1, 70, 4, 5, 70, (3, 3), 1, 1, 1, 1),           # several channel tiles
}



def _make(case, dtype, channels_last, bias=True, seed=0):
    N, C, H, W, K, (R, S), *_, groups = case
    gen = torch.Generator().manual_seed(seed)
    # Inputs rounded to `dtype` first, so the float64 reference sees exactly what the kernel sees.
    x = torch.randn(N, C, H, W, generator=gen).to(dtype).double()
    w = (torch.randn(K, C // groups, R, S, generator=gen) / math.sqrt(C // groups * R * S))
    w = w.to(dtype).double()
    b = torch.randn(K, generator=gen).to(dtype).double() if bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, w, b




def _relu_backward(grad, y, relu=True):
    """The reference's ReLU backward, masked by the output the kernels saved (y > 0): an output
    within rounding of zero may take either sign, and the backward kernels follow the saved one."""
    return grad * (y.detach().double().cpu() > 0).to(grad.device) if relu else grad


def _check_case(case, dtype=torch.float32, channels_last=False, bias=True, relu=True,
                tf32=False):
    """Forward and dX, dW, db of conv2d against float64 F.conv2d with one upstream gradient
    (float32: IEEE, or with ``tf32`` TF32 where the GPU has it, at float16's tolerance)."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups = case
    x, w, b = _make(case, dtype, channels_last, bias)
    if tf32:  # inputs TF32 reads exactly: the products match the reference's, the sums float32
        x, w, b = (None if t is None else tf32_exact(t).double() for t in (x, w, b))
    leaves = [t for t in (x, w, b) if t is not None]
    ref = [t.clone().requires_grad_() for t in leaves]
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in leaves]
    if channels_last:
        ours[0] = x.to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
        ours[0].requires_grad_()

    z_ref = F.conv2d(ref[0], ref[1], ref[2] if bias else None, stride, padding, dilation, groups)
    y_ref = F.relu(z_ref) if relu else z_ref
    y = conv2d(ours[0], ours[1], ours[2] if bias else None, stride, padding, dilation, groups,
               activation="relu" if relu else None, allow_tf32=tf32)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)

    base, rtol = TOL[torch.float16 if tf32 and DEVICE == "cuda" else dtype]
    compare("y", y, y_ref, base, rtol, C // groups * R * S)
    grad = torch.randn_like(y_ref).to(dtype).double()  # representable in dtype, like the inputs
    if tf32:
        grad = tf32_exact(grad).double()
    z_ref.backward(_relu_backward(grad, y, relu))
    y.backward(grad.to(DEVICE, dtype))
    P, Q = y_ref.shape[2:]
    lengths = [K // groups * R * S, N * P * Q, N * P * Q]
    for name, ours_t, ref_t, n in zip(("dx", "dw", "db"), ours, ref, lengths):
        compare(name, ours_t.grad, ref_t.grad, base, rtol, n)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", list(CASES))
def test_conv_nchw(name):
    _check_case(CASES[name], channels_last=False, relu=name != "1x1")


@pytest.mark.parametrize("name", ["lecture_32x32x3_six_5x5", "stem_c3_3x3_pad1", "stride2",
                                  "same_even_kernel", "groups2", "depthwise_x2", "nonsquare",
                                  "stride2_dilation2"])
def test_conv_channels_last(name):
    _check_case(CASES[name], channels_last=True)


def test_lecture_output_shape():
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    w = torch.randn(6, 3, 5, 5, device=DEVICE)
    assert conv2d(x, w).shape == (1, 6, 28, 28)


@pytest.mark.parametrize("name", ["stem_c3_3x3_pad1", "stride2", "groups2"])
def test_conv_no_bias(name):
    _check_case(CASES[name], bias=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_other_precisions(dtype, channels_last):
    _check_case(CASES["stem_c3_3x3_pad1"], dtype=dtype, channels_last=channels_last)


def test_conv2d_relu_and_unbatched():
    x = torch.randn(3, 7, 6, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    y = conv2d_relu(x, w, b, padding=1, allow_tf32=False)
    want = F.relu(F.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), padding=1))
    assert y.shape == (4, 7, 6)
    compare("y", y, want, *TOL[torch.float32], 27)


def test_relu_keeps_nan_like_torch():
    """F.relu passes NaN through (compiled, tl.maximum would turn it into 0), and its backward
    passes the gradient at NaN outputs (threshold_backward zeroes only outputs <= 0): with one NaN
    input pixel, dX and db stay finite and must match PyTorch's."""
    x = torch.randn(1, 2, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    w = torch.randn(3, 2, 3, 3)
    b = torch.randn(3)
    g = torch.randn(1, 3, 5, 5)
    xs, ws, bs = (t.to(DEVICE).requires_grad_() for t in (x, w, b))
    y = conv2d_relu(xs, ws, bs, padding=1, allow_tf32=False)
    y.backward(g.to(DEVICE))
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = F.relu(F.conv2d(xd, wd, bd, padding=1))
    want.backward(g.double())
    assert torch.isnan(want).any()
    assert torch.equal(torch.isnan(y.detach().cpu()), torch.isnan(want))
    compare("y", torch.nan_to_num(y.detach()), torch.nan_to_num(want.detach()),
             *TOL[torch.float32], 18)
    assert torch.isfinite(xd.grad).all() and torch.isfinite(bd.grad).all()
    compare("dX", xs.grad, xd.grad, *TOL[torch.float32], 27)
    compare("db", bs.grad, bd.grad, *TOL[torch.float32], 25)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_linear(relu, lead):
    x = torch.randn(*lead, 20, dtype=torch.float64)
    w = torch.randn(7, 20, dtype=torch.float64) / math.sqrt(20)
    b = torch.randn(7, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = [t.to(DEVICE, torch.float32).requires_grad_() for t in (x, w, b)]
    y_ref = F.linear(*ref)
    if relu:
        y_ref = F.relu(y_ref)
    y = linear(*ours, activation="relu" if relu else None, allow_tf32=False)
    assert y.shape == y_ref.shape
    base, rtol = TOL[torch.float32]
    compare("y", y, y_ref, base, rtol, 20)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y.backward(grad.to(DEVICE, torch.float32))
    batch = max(1, math.prod(lead))
    for name, o, r, n in zip(("dx", "dw", "db"), ours, ref, (7, batch, batch)):
        compare(name, o.grad, r.grad, base, rtol, n)


def test_linear_without_bias():
    x = torch.randn(4, 9, device=DEVICE)
    w = torch.randn(3, 9, device=DEVICE)
    y = linear(x, w, allow_tf32=False)
    compare("y", y, F.linear(x.double(), w.double()), *TOL[torch.float32], 9)


# Small tiles force several row/column tiles, the grouped tile order and a 3-way dW split.
SMALL_TILES = {
    "conv_fwd": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2),
    "conv_dx": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2),
    "conv_dw": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, SPLIT=3),
}


def _function_grads(x, w, b, grad, configs, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = Conv2dFunction.apply(*leaves, kw.get("stride", 1), kw.get("padding", 1), 1,
                             kw.get("groups", 1), "relu", False, configs)
    y.backward(grad)
    return y, [t.grad for t in leaves]


def test_function_with_config_overrides_matches_reference():
    x = torch.randn(2, 20, 7, 6, device=DEVICE)
    w = torch.randn(18, 10, 3, 3, device=DEVICE) / math.sqrt(90)
    b = torch.randn(18, device=DEVICE)
    grad = torch.randn(2, 18, 4, 3, device=DEVICE)
    y, grads = _function_grads(x, w, b, grad, SMALL_TILES, stride=2, groups=2)
    ref = [t.double().cpu().requires_grad_() for t in (x, w, b)]
    y_ref = F.relu(F.conv2d(*ref, stride=2, padding=1, groups=2))
    y_ref.backward(grad.double().cpu())
    base, rtol = TOL[torch.float32]
    compare("y", y, y_ref, base, rtol, 90)
    for name, g, r, n in zip(("dx", "dw", "db"), grads, ref, (81, 24, 24)):
        compare(name, g, r.grad, base, rtol, n)


def test_get_config_called_per_launch(monkeypatch):
    from tritoncnn import autotune

    seen = []

    def spy(kernel, shape, dtype, layout, heuristic):
        seen.append((kernel, layout, dtype))
        return dict(heuristic)

    monkeypatch.setattr(autotune, "get_config", spy)
    x = torch.randn(1, 3, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    x.requires_grad_()
    conv2d(x, w).sum().backward()
    assert sorted(k for k, _, _ in seen) == ["conv_dw", "conv_dx", "conv_fwd"]
    assert {layout for _, layout, _ in seen} == {"nhwc"}


def test_opcheck():
    x = torch.randn(1, 3, 5, 4, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    geometry = ConvGeometry((1, 2), (1, 1, 0, 1), (1, 1), 1)
    args = (x, w, b, *geometry.as_op_args(), True, False)
    torch.library.opcheck(torch.ops.tritoncnn.conv2d.default, args)
    y = torch.ops.tritoncnn.conv2d(*args).detach()
    grad = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.tritoncnn.conv2d_backward.default,
        (grad, x.detach(), w.detach(), y, *geometry.as_op_args(), True, False,
         [True, True, False]),
    )


def _conv_relu_pool(x, w, b, padding):
    from tritoncnn.kernels import conv2d_relu_pool

    return conv2d_relu_pool(x, w, b, padding=padding)


# (ours, PyTorch's): the plain conv and the fused conv + ReLU + max-pool share these two tests
FUSED_OPS = {
    "conv2d_relu": (lambda x, w, b, padding: conv2d_relu(x, w, b, padding=padding),
                    lambda x, w, b, padding: F.relu(F.conv2d(x, w, b, padding=padding))),
    "conv2d_relu_pool": (_conv_relu_pool, lambda x, w, b, padding: F.max_pool2d(
        F.relu(F.conv2d(x, w, b, padding=padding)), 2)),
}


@pytest.mark.parametrize("op", list(FUSED_OPS))
def test_torch_compile_traces_the_custom_op(op):
    """fullgraph tracing through the fake and autograd registrations (aot_eager: no codegen)."""
    ours, _ = FUSED_OPS[op]
    x = torch.randn(2, 3, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    step = torch.compile(lambda x, w, b: ours(x, w, b, 1).square().sum(),
                         backend="aot_eager", fullgraph=True)
    step(x, w, b).backward()
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ours(*leaves, 1).square().sum().backward()
    for got, want in zip((x, w, b), leaves):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.parametrize("op", list(FUSED_OPS))
def test_autocast_casts_like_f_conv2d(op):
    ours, reference = FUSED_OPS[op]
    x = torch.randn(2, 3, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = ours(x, w, b, 1)
        assert y.dtype == reference(x, w, b, 1).dtype == torch.bfloat16
    # against float64 of what autocast hands the kernels (bf16 copies), not cuDNN's own rounding
    want = reference(*(t.detach().bfloat16().double() for t in (x, w, b)), 1)
    compare("y", y, want, *TOL[torch.bfloat16], 27)
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32


def _bad(**overrides):
    args = dict(input=torch.randn(1, 4, 6, 6, device=DEVICE),
                weight=torch.randn(8, 4, 3, 3, device=DEVICE),
                bias=torch.randn(8, device=DEVICE))
    args.update(overrides)
    return args


BAD = {
    "channel_mismatch": (_bad(weight=torch.randn(8, 3, 3, 3)), {}, ValueError,
                         "channel mismatch"),
    "weight_not_4d": (_bad(weight=torch.randn(8, 4, 3)), {}, ValueError, "weight must be 4-D"),
    "groups_not_dividing": (_bad(weight=torch.randn(8, 2, 3, 3)), {"groups": 3}, ValueError,
                            "does not divide the C=4"),
    "groups_not_dividing_k": (_bad(weight=torch.randn(6, 1, 3, 3)), {"groups": 4}, ValueError,
                              "does not divide the K=6"),
    "bias_length": (_bad(bias=torch.randn(7)), {}, ValueError, r"bias must have shape \(8,\)"),
    "different_devices": (_bad(weight=torch.randn(8, 4, 3, 3, device="meta")), {}, ValueError,
                          "share a device"),
    "different_dtypes": (_bad(weight=torch.randn(8, 4, 3, 3, dtype=torch.float16)), {},
                         TypeError, "dtype"),
    "integer_input": (_bad(input=torch.ones(1, 4, 6, 6, dtype=torch.int32)), {}, TypeError,
                      "input has dtype torch.int32"),
    "integer_weight": (_bad(weight=torch.ones(8, 4, 3, 3, dtype=torch.int64)), {}, TypeError,
                       "weight has dtype torch.int64"),
    "kernel_too_large": (_bad(weight=torch.randn(8, 4, 7, 3)), {}, ValueError,
                         "larger than the padded input"),
    "stride_zero": (_bad(), {"stride": 0}, ValueError, "stride must be positive"),
    "dilation_negative": (_bad(), {"dilation": (1, -1)}, ValueError,
                          "dilation must be positive"),
    "padding_negative": (_bad(), {"padding": -1}, ValueError, "padding must be non-negative"),
    "padding_word": (_bad(), {"padding": "full"}, ValueError, "'same' or 'valid'"),
    "same_with_stride": (_bad(), {"padding": "same", "stride": 2}, ValueError,
                         "needs stride 1"),
    "input_2d": (_bad(input=torch.randn(4, 6)), {}, ValueError, "input must be 3-D"),
    "bad_activation": (_bad(), {"activation": "tanh"}, ValueError, "activation"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name):
    tensors, kwargs, error, message = BAD[name]
    tensors = {k: v.to(DEVICE) if v.device.type != "meta" else v for k, v in tensors.items()}
    with pytest.raises(error, match=message):
        conv2d(**tensors, **kwargs)


def test_bad_input_error_names_shapes():
    with pytest.raises(ValueError) as info:
        conv2d(torch.randn(1, 4, 6, 6, device=DEVICE), torch.randn(8, 3, 3, 3, device=DEVICE))
    assert "(1, 4, 6, 6)" in str(info.value) and "(8, 3, 3, 3)" in str(info.value)


def test_too_many_pixels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"2\*\*31"):
        resolve_geometry((2**16, 8, 256, 256), (8, 8, 3, 3), None, 1, 1)
    with pytest.raises(ValueError, match=r"2\*\*31"):  # the functional API, on meta tensors
        conv2d(torch.empty(2**16, 8, 256, 256, device="meta"),
               torch.empty(8, 8, 3, 3, device="meta"), padding=1)


def test_linear_bad_input():
    with pytest.raises(ValueError, match="in_features=5"):
        linear(torch.randn(2, 4, device=DEVICE), torch.randn(3, 5, device=DEVICE))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        linear(torch.randn(2, 4, device=DEVICE), torch.randn(3, 4, 1, device=DEVICE))
    # the user's weight (3, 4) in the message, not the 1x1 conv weight it becomes
    with pytest.raises(ValueError, match=r"out_features=3 of weight \(3, 4\), got shape \(4,\)"):
        linear(torch.randn(2, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE),
               torch.randn(4, device=DEVICE))


def test_bad_config():
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="BLOCK_K=8"):
        Conv2dFunction.apply(x, w, None, 1, 0, 1, 1, None, None, {"conv_fwd": {"BLOCK_K": 8}})


# ------------------------------------------------------------------------------------------------
# Compiled kernels only: TF32, bf16 tensor cores, GPU-sized tiles, 8-warp configs.
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gpu_larger_shapes(dtype, channels_last):
    _check_case((4, 64, 20, 18, 96, (3, 3), 1, 1, 1, 1), dtype=dtype, channels_last=channels_last)
    _check_case((2, 48, 17, 17, 80, (3, 3), 2, 1, 1, 2), dtype=dtype, channels_last=channels_last)
    # rows of 32 pixels: NCHW outputs and dX stored in runs of 16 (the YV / XV hints)
    _check_case((2, 32, 12, 32, 48, (3, 3), 1, 1, 1, 1), dtype=dtype, channels_last=channels_last)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_second_device_while_the_first_is_current():
    """Tensors on cuda:1 with cuda:0 current run on cuda:1, forward and backward."""
    x = torch.randn(2, 16, 9, 9, device="cuda:1", requires_grad=True)
    w = torch.randn(8, 16, 3, 3, device="cuda:1", requires_grad=True)
    with torch.cuda.device(0):
        y = conv2d(x, w, padding=1, activation="relu", allow_tf32=False)
        y.sum().backward()
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    F.relu(F.conv2d(xr, wr, padding=1)).sum().backward()
    assert y.device == x.grad.device == torch.device("cuda", 1)
    torch.testing.assert_close(y.double(), F.relu(F.conv2d(xr, wr, padding=1)).detach(),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_tf32_follows_cudnn_flag():
    x = torch.randn(4, 64, 16, 16, device=DEVICE)
    w = torch.randn(64, 64, 3, 3, device=DEVICE) / 24
    want = F.conv2d(x.double(), w.double(), padding=1)
    exact = conv2d(x, w, padding=1, allow_tf32=False)
    tf32 = conv2d(x, w, padding=1, allow_tf32=True)
    err_exact = (exact.double() - want).abs().max().item()
    err_tf32 = (tf32.double() - want).abs().max().item()
    assert err_exact < 1e-4 < err_tf32 < 5e-2
    old = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert torch.equal(conv2d(x, w, padding=1), exact)
    finally:
        torch.backends.cudnn.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize("rows, depth", [(128, 64), (256, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_eight_warp_configs(dtype, rows, depth):
    """Tiles on 8 warps, as large 16-bit layers get them by default (256 x 128): the main loop
    with its taps unrolled must be correct there (Triton miscompiled the flattened (tap, channel)
    loop it replaced at 8 warps)."""
    big = dict(BLOCK_M=rows, BLOCK_N=128, BLOCK_K=depth, GROUP_M=8, num_warps=8, num_stages=2)
    configs = {"conv_fwd": big, "conv_dx": big,
               "conv_dw": dict(big, BLOCK_M=128, BLOCK_K=64, SPLIT=4)}
    x = torch.randn(4, 128, 16, 16, device=DEVICE, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(128, 128, 3, 3, device=DEVICE) / 34).to(dtype)
    b = torch.randn(128, device=DEVICE, dtype=dtype)
    grad = torch.randn(4, 128, 16, 16, device=DEVICE, dtype=dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = Conv2dFunction.apply(*leaves, 1, 1, 1, 1, "relu", False, configs)
    y.backward(grad)
    ref = [t.double().requires_grad_() for t in (x, w, b)]
    z_ref = F.conv2d(*ref, padding=1)
    y_ref = F.relu(z_ref)
    z_ref.backward(_relu_backward(grad.double(), y))
    base, rtol = TOL[dtype]
    compare("y", y, y_ref, base, rtol, 128 * 9)
    for name, o, r, n in zip(("dx", "dw", "db"), leaves, ref, (128 * 9, 1024, 1024)):
        compare(name, o.grad, r.grad, base, rtol, n)


# ------------------------------------------------------------------------------------------------
# Tuning problems (autotune.register_problem): any config must pass the tuner's correctness gate.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["conv_fwd", "conv_dx", "conv_dw"])
def test_tuning_problems_run_here(kernel):
    """The registered problems build on any device and pass their own gate; under the
    interpreter with one large-tile config (asymmetric 'same' padding of an even kernel). They
    build where autograd records nothing too, as tuning on first use does inside the custom ops
    and the backward pass."""
    from tritoncnn import autotune

    shape = autotune.conv_shape((2, 5, 7, 6), (6, 5, 2, 3), 1, "same")
    cfg = dict(BLOCK_M=128, BLOCK_N=16, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=1)
    if kernel == "conv_dw":
        cfg = dict(cfg, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT=2)
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        problem = autotune.make_problem(kernel, shape, torch.float32, "nchw")
    problem.configs = [cfg]
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


# (layout, input shape, weight shape, stride, padding, dilation, groups): edge tiles everywhere
GATE_SHAPES = {
    "nhwc": ((3, 40, 23, 19), (72, 40, 3, 3), 1, 1, 1, 1),
    "nchw_stride2_groups2": ((2, 48, 17, 17), (80, 24, 3, 3), 2, 1, 1, 2),
}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(GATE_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["conv_fwd", "conv_dx", "conv_dw"])
def test_every_config_passes_the_correctness_gate(kernel, dtype, layout):
    """Every pruned config of the space, on shapes with edge tiles, is correct on the GPU (one
    shape per test: each config compiles, so the tests spread over the workers)."""
    from tritoncnn import autotune

    shape = autotune.conv_shape(*GATE_SHAPES[layout])
    problem = autotune.make_problem(kernel, shape, dtype, layout[:4])
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert len(table) > 1
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


# ------------------------------------------------------------------------------------------------
# Memory format of sliced channels_last views, direct custom-op calls, the dW epilogue
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["channels_sliced", "width_sliced"])
def test_sliced_channels_last_views_keep_channels_last_like_pytorch(view):
    """``cl[:, :3]`` and ``cl[:, :, 1:]`` of a channels_last tensor are not contiguous in
    channels_last, but PyTorch's suggest_memory_format calls them channels_last and F.conv2d keeps
    that: so do the output, the backward op's dX and the layout the autotune cache is asked
    for."""
    from tritoncnn import autotune

    cl = torch.randn(2, 6, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x = cl[:, :3] if view == "channels_sliced" else cl[:, :, 1:]
    w = torch.randn(4, x.shape[1], 3, 3, device=DEVICE)
    with autotune.record_calls() as calls:
        y = conv2d(x, w, padding=1, activation="relu", allow_tf32=False)
        grad = torch.randn_like(y)
        geometry = ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 1)
        dx, _, _ = torch.ops.tritoncnn.conv2d_backward(grad, x, w, y, *geometry.as_op_args(),
                                                       True, False, [True, False, False])
    xr = x.detach().requires_grad_()
    with _ieee_fp32():  # the reference in IEEE float32 too (no TF32 on a GPU), as the kernels ran
        want = F.relu(F.conv2d(xr, w, padding=1))
        want.backward(grad)
    assert want.is_contiguous(memory_format=torch.channels_last) and not want.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, want.detach(), atol=1e-5, rtol=1e-5)
    assert {c.layout for c in calls} == {"nhwc"}
    assert dx.is_contiguous(memory_format=torch.channels_last) and not dx.is_contiguous()
    torch.testing.assert_close(dx, xr.grad, atol=1e-5, rtol=1e-5)


def test_direct_custom_op_calls_check_shapes():
    """torch.ops.tritoncnn.conv2d(_backward) called directly with shapes that disagree raise the
    functional API's errors instead of launching out of bounds."""
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    w = torch.randn(8, 4, 3, 3, device=DEVICE)
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1, False, False)
    with pytest.raises(ValueError, match="channel mismatch"):
        torch.ops.tritoncnn.conv2d(x, w[:, :3], None, *args)
    with pytest.raises(ValueError, match="does not divide the C=4"):
        torch.ops.tritoncnn.conv2d(x, w[:, :1], None, [1, 1], [0, 0, 0, 0], [1, 1], 3, False,
                                   False)
    with pytest.raises(ValueError, match="larger than the padded input"):
        torch.ops.tritoncnn.conv2d(x[:, :, :2], w, None, *args)
    with pytest.raises(ValueError, match="stride must be positive"):
        torch.ops.tritoncnn.conv2d(x, w, None, [0, 1], [0, 0, 0, 0], [1, 1], 1, False, False)
    y = torch.ops.tritoncnn.conv2d(x, w, None, *args)
    backward = torch.ops.tritoncnn.conv2d_backward
    with pytest.raises(ValueError, match="channel mismatch"):
        backward(y, x, w[:, :3], None, *args, [True, True, True])
    with pytest.raises(ValueError, match="grad_output has shape"):
        backward(y[:, :, 1:], x, w, None, *args, [True, True, True])
    with pytest.raises(ValueError, match="output has shape"):
        backward(y, x, w, y[:, :4], [1, 1], [0, 0, 0, 0], [1, 1], 1, True, False,
                 [True, True, True])


def test_pixel_vector_hint():
    """The power of two an NCHW output's row of pixels and its other strides share (16 at most),
    for the kernels' store hint; 1 where the pixels are not at stride 1 (channels_last)."""
    from tritoncnn.kernels._checks import pixel_vector

    assert pixel_vector(56, (64 * 56 * 56, 56 * 56, 56), 1) == 8
    assert pixel_vector(28, (64 * 28 * 28, 28 * 28, 28), 1) == 4
    assert pixel_vector(224, (64 * 224 * 224, 224 * 224, 224), 1) == 16
    assert pixel_vector(7, (64 * 49, 49, 7), 1) == 1
    assert pixel_vector(56, (64 * 56 * 56, 1, 56 * 64), 64) == 1  # channels_last
    assert pixel_vector(56, (56 * 56 * 3, 56 * 56, 28), 1) == 4  # a strided view: its strides


def _nhwc(n, c, h, w):
    return (h * w * c, 1, w * c, c)


def test_channel_vector_hint():
    """The power of two below 16 that a group's channel count and the other strides of
    channels-inner operands share, for the kernels' load hint; 1 where all are multiples of 16
    (Triton's own specialization says so then) or where they share nothing."""
    from tritoncnn.kernels._checks import channel_strides, channel_vector

    weight24 = (24 * 9, 1, 3 * 24, 24)  # (24, 24, 3, 3) channels_last
    assert channel_vector(24, _nhwc(8, 24, 31, 31), weight24) == 8
    assert channel_vector(12, _nhwc(8, 12, 5, 5)) == 4
    assert channel_vector(6, _nhwc(8, 6, 14, 14), (6 * 25, 1, 30, 6)) == 2
    assert channel_vector(64, _nhwc(8, 64, 56, 56), (576, 1, 192, 64)) == 1
    assert channel_vector(3, _nhwc(8, 3, 32, 32)) == 1
    assert channel_vector(24, _nhwc(8, 32, 16, 16)) == 8  # 24 channels of a 32-channel view
    assert channel_vector(24, _nhwc(8, 24, 16, 16), (0, 1, 0, 0)) == 8  # size-1 dims: stride 0
    assert channel_vector(40, (40 * 7 * 7, 1, 7 * 40, 40), (40 * 7 * 7 + 4, 1, 280, 40)) == 4
    assert channel_strides(_nhwc(8, 24, 31, 31), 8) == (31 * 31 * 3, 1, 31 * 3, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launches_pass_channel_vectors(monkeypatch, dtype):
    """24 input and 40 output channels: every conv launch gets the channel count and strides
    divided by its vector width (CV = 8 for the input side, KV = 8 for the output side: dZ's),
    and the results stay PyTorch's. dX runs on the forward kernel, reducing over the 40 output
    channels (CV = 8 there too) of the flipped weight, whose k is innermost (K-major for TF32)."""
    from tritoncnn.kernels import conv2d_relu_pool

    launched = spy_launches(monkeypatch)
    torch.manual_seed(0)
    # float32 inputs that TF32 reads exactly (allow_tf32=True): only the float32 sums differ
    exact = tf32_exact if dtype == torch.float32 else (lambda t: t)
    x = exact(torch.randn(2, 24, 6, 6, device=DEVICE)).to(dtype, memory_format=torch.channels_last)
    w = exact(torch.randn(40, 24, 3, 3, device=DEVICE)).to(dtype, memory_format=torch.channels_last)
    b = torch.randn(40, device=DEVICE).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for op, ref, stride in (
            (conv2d_relu, lambda *t: F.relu(F.conv2d(*t, padding=1)), 1),
            (conv2d_relu, lambda *t: F.relu(F.conv2d(*t, stride=2, padding=1)), 2),
            (conv2d_relu_pool, lambda *t: F.max_pool2d(F.relu(F.conv2d(*t, padding=1)), 2), 1)):
        ins = [t.double().requires_grad_() for t in (x, w, b)]
        ours = [t.clone().requires_grad_() for t in (x, w, b)]
        y = op(*ours, stride=stride, padding=1, allow_tf32=True)
        z = ref(*ins)
        torch.testing.assert_close(y.double(), z, atol=tol * z.abs().max().item(), rtol=tol)
        g = exact(torch.randn_like(z).to(dtype)).double()
        y.backward(g.to(dtype))
        z.backward(g)
        for a, e in zip(ours, ins):
            torch.testing.assert_close(a.grad.double(), e.grad, atol=tol * e.grad.abs().max().item(),
                                       rtol=tol)
    vectors = {(name, kw.get("CV"), kw.get("KV")) for name, _, _, kw in launched if "CV" in kw}
    assert vectors == {("_conv_fwd_kernel", 8, None), ("_conv_pool_fwd_kernel", 8, None),
                       ("_conv_dw_kernel", 8, 8)}
    flipped = [kw["wt_ptr"] for name, _, _, kw in launched if name == "_dx_weight_kernel"]
    assert flipped and all(wt.stride(1) == 1 for wt in flipped)


def test_grids_hold_one_group_of_tiles_per_group(monkeypatch):
    """Every conv launch's grid is (one group's output tiles, groups, ...): a program id past the
    tiles would make tile_ids divide by zero on the GPU (the interpreter masks it out)."""
    launched = spy_launches(monkeypatch)
    N, C, H, W, K, (R, S), stride, padding, dilation, groups = CASES["depthwise_x2"]
    x, w, b = (t.float().to(DEVICE).requires_grad_() for t in _make(CASES["depthwise_x2"],
                                                                   torch.float32, False))
    tile = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2)
    configs = {"conv_fwd": tile, "conv_dx": tile, "conv_dw": dict(tile, SPLIT=2)}
    y = Conv2dFunction.apply(x, w, b, stride, padding, dilation, groups, "relu", False, configs)
    y.backward(torch.ones_like(y))
    grids = [(name, grid) for name, grid, *_ in launched if name != "_grad_z_kernel"]
    KG, CG, P, Q = K // groups, C // groups, y.shape[2], y.shape[3]
    assert grids[0] == ("_conv_fwd_kernel", (-(-N * P * Q // 16) * -(-KG // 16), groups))
    # dX: the forward kernel on dZ and the flipped weight (_dx_weight_kernel)
    assert [name for name, _ in grids[1:]] == ["_dx_weight_kernel", "_conv_fwd_kernel",
                                               "_conv_dw_kernel", "_sum_splits_kernel"]
    assert grids[2][1] == (-(-N * H * W // 16) * -(-CG // 16), groups)
    assert grids[3][1][:2] == (-(-KG // 16) * R * S * -(-CG // 16), groups)
    # and a stride-2 dX: one forward launch per phase (5 x 5 input, padding 1: the odd rows (2)
    # are phase 0, the even ones (3) phase 1; columns likewise)
    launched.clear()
    x2 = x.detach()[:, :, :5, :5].requires_grad_()
    y = Conv2dFunction.apply(x2, w, b, 2, padding, dilation, groups, "relu", False, configs)
    y.backward(torch.ones_like(y))
    grids = [grid for name, grid, *_ in launched if name == "_conv_fwd_kernel"][1:]
    assert grids == [(-(-N * h * v // 16) * -(-CG // 16), groups)
                     for h in (2, 3) for v in (2, 3)]


def test_plain_eager_calls_skip_the_dispatcher_and_modes_see_the_custom_ops():
    """Plain eager calls run the launchers through the autograd Functions (eager_ok); under a
    dispatch mode (what fake tensors and the flop counter use) the same calls go through the
    tritoncnn custom ops, forward and backward, with the same results."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tritoncnn.kernels import conv2d_relu_pool, max_pool2d
    from tritoncnn.kernels._op import eager_ok

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    assert eager_ok(x, w, None) and eager_ok(torch.nn.Parameter(w))
    assert not eager_ok(x.as_subclass(type("Sub", (torch.Tensor,), {})))

    def run():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = conv2d_relu(xs, ws, bs, padding=1)
        z = conv2d_relu_pool(xs, ws, bs, padding=1, pool=2)
        p = max_pool2d(y, 2)
        (y.sum() + z.sum() + p.sum()).backward()
        return [t.detach().clone() for t in (y, z, p, xs.grad, ws.grad, bs.grad)]

    ops = ("tritoncnn.conv2d.default", "tritoncnn.conv2d_backward.default",
           "tritoncnn.conv2d_relu_pool.default", "tritoncnn.conv2d_relu_pool_backward.default",
           "tritoncnn.max_pool2d_fwd.default", "tritoncnn.max_pool2d_bwd.default")
    plain = run()
    with Log() as log:
        assert not eager_ok(x)
        moded = run()
    names = " ".join(log.ops)
    for op in ops:
        assert op in names, op
    for a, m in zip(plain, moded):
        assert torch.equal(a, m)
    # under autocast: the eager path casts as the ops' autocast registration does
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        plain = run()
        with Log() as log:
            moded = run()
    assert "tritoncnn.conv2d.default" in " ".join(log.ops)
    assert plain[0].dtype == plain[1].dtype == torch.bfloat16  # outputs in the autocast dtype
    assert plain[3].dtype == torch.float32  # gradients of the float32 leaves
    for a, m in zip(plain, moded):
        assert torch.equal(a, m)


def test_resolved_geometry_is_memoised_but_bad_arguments_still_raise():
    """check_and_resolve keeps a layer's resolved geometry; a bool or float that hashes like a
    cached int still gets its error, and so does a shape mismatch after a cached call."""
    from tritoncnn.kernels.conv import check_and_resolve

    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    w = torch.randn(5, 4, 3, 3, device=DEVICE)
    first = check_and_resolve(x, w, None, 1, 1, 1, 1)
    assert check_and_resolve(x, w, None, 1, 1, 1, 1) is first
    assert check_and_resolve(x, w, None, (1, 1), [1, 1], 1, 1) == first  # lists: not memoised
    with pytest.raises((TypeError, ValueError), match="stride"):
        check_and_resolve(x, w, None, 1.0, 1, 1, 1)
    with pytest.raises((TypeError, ValueError), match="groups"):
        check_and_resolve(x, w, None, 1, 1, 1, True)
    with pytest.raises(ValueError):
        check_and_resolve(x, torch.randn(5, 3, 3, 3, device=DEVICE), None, 1, 1, 1, 1)


def test_linear_with_no_in_features():
    """in_features = 0 (an empty feature vector): the output is the bias, as F.linear's is."""
    x, w, b = torch.randn(3, 0), torch.randn(4, 0), torch.randn(4)
    y = linear(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE))
    torch.testing.assert_close(y.cpu(), F.linear(x, w, b))


# Biases that are views with other strides, made from a base tensor: (base size, view of it).
BIAS_VIEWS = {"expanded": (lambda K: 1, lambda base, K: base.expand(K)),          # stride 0
              "strided": (lambda K: 2 * K, lambda base, K: base[::2])}           # stride 2


@pytest.mark.parametrize("view", list(BIAS_VIEWS))
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu", "conv2d_relu_pool", "linear"])
def test_strided_and_expanded_views_match_pytorch(op, view):
    """A bias, input or weight that is a view with other strides (expanded, every other
    element, a channel slice) gives PyTorch's values and gradients: the kernels read each
    tensor through its strides or a contiguous copy, never past its storage."""
    from tritoncnn.kernels import conv2d_relu_pool

    gen = torch.Generator().manual_seed(1)
    K = 6
    size, make_view = BIAS_VIEWS[view]
    if op == "linear":
        bases = (torch.randn(5, 14, generator=gen), torch.randn(K, 7, generator=gen))
        views = (lambda t: t[:, ::2], lambda t: t)                      # input (5, 7), strided
        ours, ref, reduce_len = linear, F.linear, 7
    else:
        bases = (torch.randn(2, 8, 7, 6, generator=gen), torch.randn(2 * K, 3, 3, 3, generator=gen))
        views = (lambda t: t[:, 1:4], lambda t: t[::2])     # a channel slice, every other filter
        reduce_len = 27
        ops = {"conv2d": (conv2d, lambda *t: F.conv2d(*t, padding=1)),
               "conv2d_relu": (conv2d_relu, lambda *t: F.relu(F.conv2d(*t, padding=1))),
               "conv2d_relu_pool": (conv2d_relu_pool,
                                    lambda *t: F.max_pool2d(F.relu(F.conv2d(*t, padding=1)), 2))}
        kernel, ref = ops[op]
        ours = lambda *t: kernel(*t, padding=1, allow_tf32=False)  # noqa: E731
    bases = (*bases, torch.randn(size(K), generator=gen))
    theirs = [t.double().requires_grad_() for t in bases]
    mine = [t.to(DEVICE).requires_grad_() for t in bases]
    y = ours(views[0](mine[0]), views[1](mine[1]), make_view(mine[2], K))
    want = ref(views[0](theirs[0]), views[1](theirs[1]), make_view(theirs[2], K))
    compare("y", y, want, *TOL[torch.float32], reduce_len)
    grad = torch.randn(want.shape, generator=gen).double()
    want.backward(grad)
    y.backward(grad.float().to(DEVICE))
    lengths = (K * reduce_len, grad.numel(), grad.numel())
    for name, got, expect, n in zip(("dx", "dw", "db"), mine, theirs, lengths):
        compare(name, got.grad, expect.grad, *TOL[torch.float32], n)


def test_vmap_over_an_ensemble_with_its_bias_on_dim_1():
    """torch.func.vmap over an ensemble whose biases are stacked along dimension 1 (each member's
    bias a strided view) gives each member's F.conv2d."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    ws = torch.randn(4, 5, 3, 3, 3, generator=gen)     # 4 members of 5 filters
    bs = torch.randn(5, 4, generator=gen)              # biases along dim 1
    got = torch.func.vmap(lambda w, b: conv2d_relu(x.to(DEVICE), w, b, padding=1,
                                                   allow_tf32=False),
                          in_dims=(0, 1))(ws.to(DEVICE), bs.to(DEVICE))
    for i in range(4):
        want = F.relu(F.conv2d(x.double(), ws[i].double(), bs[:, i].double(), padding=1))
        compare(f"member {i}", got[i], want, *TOL[torch.float32], 27)


def test_weight_past_int32_indexing_is_a_clear_error():
    """A weight of 2**32 elements (meta tensors: nothing allocated) is refused with an error that
    names it, not indexed past int32."""
    x = torch.empty(1, 2**16, 4, 4, device="meta")
    w = torch.empty(2**16, 2**16, 1, 1, device="meta")
    with pytest.raises(ValueError, match=r"weight \(65536, 65536, 1, 1\) has 4294967296 elements"):
        conv2d(x, w)


def test_launches_run_on_their_tensors_device(monkeypatch):
    """A launch whose tensors live on another CUDA device than the current one makes theirs
    current, as PyTorch's ops do, whether the kernel takes them by position or by keyword."""
    import contextlib
    import types

    from tritoncnn import _runtime

    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    ran = []
    kernel = type("K", (), {"__getitem__": lambda self, grid: lambda *a, **kw: ran.append(grid)})()
    on_1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    _runtime.launch(kernel, (1,), on_1, 3)
    _runtime.launch(kernel, (2,), x_ptr=on_1, N=3)
    assert ran == [(1,), (2,)] and entered == [torch.device("cuda", 1)] * 2
