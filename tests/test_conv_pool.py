"""conv2d_relu_pool (fused conv + bias + ReLU + F x F max-pool) against the float64 unfused
composition F.max_pool2d(F.relu(F.conv2d(...)), F): values, window offsets and all three
gradients with one shared upstream gradient; ties, dead (all <= 0) windows, NaN, odd sizes,
pool 2 and 3, stride/padding/dilation/groups, NCHW and channels_last, fp16/bf16, determinism,
the custom ops, autocast, the memory saved for backward, bad input and the tuning problems."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tritoncnn import autotune
from tritoncnn.kernels import Conv2dReLUPoolFunction, conv2d_relu, conv2d_relu_pool, max_pool2d
from tritoncnn.kernels.conv import ConvGeometry, resolve_geometry
from tritoncnn.kernels.conv_pool import conv2d_relu_pool_backward, conv2d_relu_pool_forward

from conftest import DEVICE, TOL, compare, ieee_fp32 as _ieee_fp32

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, pool): tiny, one property a line.
CASES = {
    "3x3_pad1_pool2": (2, 3, 8, 8, 4, (3, 3), 1, 1, 1, 1, 2),              # 8x8 -> 4x4
    "odd_conv_output_pool2": (2, 3, 9, 7, 5, (3, 3), 1, 1, 1, 1, 2),       # 9x7 -> 4x3
    "pool3_odd": (1, 4, 11, 10, 6, (3, 3), 1, 1, 1, 1, 3),                 # 11x10 -> 3x3
    "stride2_pad1_pool2": (2, 4, 13, 11, 5, (3, 3), 2, 1, 1, 1, 2),        # 7x6 -> 3x3
    "valid_5x5_pool3": (2, 3, 12, 12, 4, (5, 5), 1, 0, 1, 1, 3),           # 8x8 -> 2x2
    "nonsquare_stride_pool3": (1, 3, 14, 9, 4, (3, 2), (2, 1), (1, 0), 1, 1, 3),  # 7x8 -> 2x2
    "dilation2_groups2": (1, 4, 10, 10, 6, (3, 3), 1, 2, 2, 2, 2),         # 10x10 -> 5x5
    "same_even_kernel": (1, 3, 7, 8, 4, (2, 2), 1, "same", 1, 1, 2),       # 7x8 -> 3x4
    "pool1_is_conv_relu": (1, 3, 6, 5, 4, (3, 3), 1, 1, 1, 1, 1),
}


# Small tiles force several row/column tiles, the grouped tile order and a 3-way dW split.
SMALL_TILES = {
    "conv_pool_fwd": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2),
    "conv_dx": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2),
    "conv_dw": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, SPLIT=3),
}


def _make(case, dtype, seed=0, bias=True):
    N, C, H, W, K, (R, S), *_, groups, _ = case
    gen = torch.Generator().manual_seed(seed)
    # Rounded to `dtype` first, so the float64 reference sees exactly what the kernel sees.
    x = torch.randn(N, C, H, W, generator=gen).to(dtype).double()
    w = (torch.randn(K, C // groups, R, S, generator=gen) / math.sqrt(C // groups * R * S))
    b = torch.randn(K, generator=gen).to(dtype).double() if bias else None
    return x, w.to(dtype).double(), b




def _reference(x, w, b, case):
    """float64 F.max_pool2d(F.relu(F.conv2d(...)), pool) and the conv output (N, K, P, Q)."""
    *_, stride, padding, dilation, groups, pool = case
    z = F.conv2d(x, w, b, stride, padding, dilation, groups)
    return F.max_pool2d(F.relu(z), pool), z


def _window_offsets(x, w, b, case):
    """PyTorch's choice of maximum in each window, as the kernel's offset i * pool + j; -1 where
    the pooled output is ReLU's 0 (its backward passes no gradient there; it does at NaN)."""
    pool = case[-1]
    z = _reference(x.detach().cpu().double(), w.detach().cpu().double(),
                   None if b is None else b.detach().cpu().double(), case)[1]
    y, index = F.max_pool2d(F.relu(z), pool, return_indices=True)
    Q = z.shape[3]
    return torch.where(y == 0, -1, (index // Q) % pool * pool + index % Q % pool)


def _check(case, dtype=torch.float32, channels_last=False, bias=True, x=None, w=None, b=None,
           configs=None):
    """Forward and dX, dW, db against the float64 composition with one upstream gradient."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, pool = case
    if x is None:
        x, w, b = _make(case, dtype, bias=bias)
    leaves = [t for t in (x, w, b) if t is not None]
    ref = [t.clone().requires_grad_() for t in leaves]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = [t.to(DEVICE, dtype) for t in leaves]
    ours[0] = ours[0].contiguous(memory_format=fmt)
    ours = [t.requires_grad_() for t in ours]
    ours_b = ours[2] if b is not None else None

    y_ref, z_ref = _reference(ref[0], ref[1], ref[2] if b is not None else None, case)
    if configs is None:
        y = conv2d_relu_pool(ours[0], ours[1], ours_b, stride, padding, dilation, groups, pool,
                             allow_tf32=False)
    else:
        y = Conv2dReLUPoolFunction.apply(ours[0], ours[1], ours_b, stride, padding, dilation,
                                         groups, pool, False, configs)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=fmt)
    base, rtol = TOL[dtype]
    compare("y", y, y_ref, base, rtol, C // groups * R * S)

    grad = torch.randn(y_ref.shape).to(dtype).double()  # representable in dtype, like the inputs
    y_ref.backward(grad)
    y.backward(grad.to(DEVICE, dtype))
    P, Q = z_ref.shape[2:]
    lengths = [K // groups * R * S, N * P * Q, N * P * Q]
    for name, o, r, n in zip(("dx", "dw", "db"), ours, ref, lengths):
        compare(name, o.grad, r.grad, base, rtol, n)
    return y


# ------------------------------------------------------------------------------------------------
# Values and gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", list(CASES))
def test_nchw(name):
    _check(CASES[name])


@pytest.mark.parametrize("name", ["odd_conv_output_pool2", "pool3_odd", "stride2_pad1_pool2",
                                  "dilation2_groups2"])
def test_channels_last(name):
    _check(CASES[name], channels_last=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_other_precisions(dtype, channels_last):
    _check(CASES["odd_conv_output_pool2"], dtype=dtype, channels_last=channels_last)


def test_no_bias():
    _check(CASES["pool3_odd"], bias=False)


def test_small_tiles_through_the_function():
    """Many row/column tiles and a split dW reduction, through the plain autograd Function."""
    _check((2, 20, 7, 9, 18, (3, 3), 1, 1, 1, 2, 2), configs=SMALL_TILES)


@pytest.mark.parametrize("name", ["3x3_pad1_pool2", "pool3_odd", "stride2_pad1_pool2"])
def test_offsets_match_pytorch_indices(name):
    case = CASES[name]
    x, w, b = _make(case, torch.float32)
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, pool = case
    geometry = resolve_geometry(x.shape, w.shape, b.shape, stride, padding, dilation, groups)
    y, offsets = conv2d_relu_pool_forward(x.float().to(DEVICE), w.float().to(DEVICE),
                                          b.float().to(DEVICE), geometry, pool, allow_tf32=False)
    assert offsets.dtype == torch.int8 and offsets.shape == y.shape
    assert offsets.stride() == y.stride()
    assert torch.equal(offsets.cpu().long(), _window_offsets(x, w, b, case))


def test_ties_inside_windows_pick_the_first_like_pytorch():
    """A 1x1 conv of an input constant over each 2x2 window (and, in one row, equal only in two
    of its four elements) makes exact ties; PyTorch's max_pool2d takes the first maximum, and the
    gradient goes there. Inputs and weights are small integers, so every product and partial sum
    is exact in float32 whatever order a BLAS adds them in: the ties hold on any CPU."""
    case = (2, 3, 6, 8, 4, (1, 1), 1, 0, 1, 1, 2)
    gen = torch.Generator().manual_seed(3)
    coarse = torch.randint(-4, 5, (2, 3, 3, 4), generator=gen).double()
    x = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)   # (2, 3, 6, 8)
    x[:, :, 0, 1] -= 1.0                                  # first window row: tie in 2 of 4 places
    w = torch.randint(-2, 3, (4, 3, 1, 1), generator=gen).double()
    b = torch.full((4,), 5.0).double()                    # mostly positive: real maxima tie
    b[1] = -5.0                                           # mostly negative: ties at relu's 0
    _check(case, x=x, w=w, b=b)
    geometry = resolve_geometry(x.shape, w.shape, b.shape)
    _, offsets = conv2d_relu_pool_forward(x.float().to(DEVICE), w.float().to(DEVICE),
                                          b.float().to(DEVICE), geometry, 2, allow_tf32=False)
    want = _window_offsets(x, w, b, case)
    assert torch.equal(offsets.cpu().long(), want)
    assert (want == 0).float().mean() > 0.4               # most live windows: the first element
    assert (want == -1).any()                             # channel 1's dead windows


def test_dead_windows_give_zero_and_no_gradient():
    """Windows whose values are all negative pool to 0, with offset -1 (no pixel), and pass no
    gradient: channel 0's bias kills it everywhere, so its dW and db are exactly zero."""
    case = CASES["odd_conv_output_pool2"]
    x, w, b = _make(case, torch.float32)
    b[0] = -100.0
    y = _check(case, x=x, w=w, b=b)
    assert torch.equal(y[:, 0].detach().cpu(), torch.zeros_like(y[:, 0].cpu()))
    xs, ws, bs = (t.float().to(DEVICE).requires_grad_() for t in (x, w, b))
    conv2d_relu_pool(xs, ws, bs, padding=1, allow_tf32=False).backward(
        torch.randn(y.shape, device=DEVICE))
    assert not ws.grad[0].any() and bs.grad[0] == 0 and ws.grad[1:].any()
    geometry = resolve_geometry(x.shape, w.shape, b.shape, 1, 1)
    _, offsets = conv2d_relu_pool_forward(xs.detach(), ws.detach(), bs.detach(), geometry, 2)
    assert (offsets[:, 0] == -1).all() and (offsets[:, 1:] >= 0).any()


def test_nan_propagates_like_pytorch():
    """A NaN input pixel makes its windows NaN; the offset is PyTorch's (the last NaN), and the
    gradients match torch's, NaN where torch's are (relu's backward passes a NaN output's
    gradient; only ReLU's 0 gets offset -1)."""
    case = (1, 2, 8, 8, 3, (3, 3), 1, 1, 1, 1, 2)
    x, w, b = _make(case, torch.float32)
    x[0, 1, 3, 4] = float("nan")
    y_ref, _ = _reference(x, w, b, case)
    geometry = resolve_geometry(x.shape, w.shape, b.shape, 1, 1)
    y, offsets = conv2d_relu_pool_forward(x.float().to(DEVICE), w.float().to(DEVICE),
                                          b.float().to(DEVICE), geometry, 2, allow_tf32=False)
    torch.testing.assert_close(y.cpu().double(), y_ref, equal_nan=True, atol=1e-5, rtol=1e-5)
    assert torch.isnan(y).any()
    assert torch.equal(offsets.cpu().long(), _window_offsets(x, w, b, case))
    assert (offsets[torch.isnan(y)] >= 0).all()
    xs, ws, bs = (t.float().to(DEVICE).requires_grad_() for t in (x, w, b))
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    grad = torch.randn(y.shape)
    conv2d_relu_pool(xs, ws, bs, padding=1, allow_tf32=False).backward(grad.to(DEVICE))
    _reference(xr, wr, br, case)[0].backward(grad.double())
    for ours, ref in ((xs, xr), (ws, wr), (bs, br)):  # NaN where torch's is (the NaN input's conv)
        torch.testing.assert_close(ours.grad.cpu().double(), ref.grad, equal_nan=True,
                                   atol=1e-4, rtol=1e-4)


def test_unbatched_and_matches_the_unfused_kernels():
    x = torch.randn(3, 9, 8, device=DEVICE)
    w = torch.randn(5, 3, 3, 3, device=DEVICE)
    b = torch.randn(5, device=DEVICE)
    y = conv2d_relu_pool(x, w, b, padding=1, pool=2, allow_tf32=False)
    unfused = max_pool2d(conv2d_relu(x, w, b, padding=1, allow_tf32=False), 2)
    assert y.shape == (5, 4, 4)
    torch.testing.assert_close(y, unfused, rtol=1e-5, atol=1e-5)


def test_backward_launcher_reads_offsets_in_another_layout():
    """Offsets whose strides differ from the pooled gradient's are read through their own; the
    pooled output is not needed."""
    case = CASES["pool3_odd"]
    x, w, b = (t.float().to(DEVICE) for t in _make(case, torch.float32))
    geometry = resolve_geometry(x.shape, w.shape, b.shape, 1, 1)
    y, offsets = conv2d_relu_pool_forward(x, w, b, geometry, 3, allow_tf32=False)
    grad = torch.randn_like(y)
    want = conv2d_relu_pool_backward(grad, x, w, offsets, geometry, 3, allow_tf32=False)
    other = offsets.contiguous(memory_format=torch.channels_last)
    assert other.stride() != y.stride()
    got = conv2d_relu_pool_backward(grad, x, w, other, geometry, 3, allow_tf32=False)
    for g, r in zip(got, want):
        assert torch.equal(g, r)
    with pytest.raises(ValueError, match="pooled shape"):
        conv2d_relu_pool_backward(grad[:, :, :2], x, w, offsets, geometry, 3)


def test_only_needed_gradients():
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE)
    conv2d_relu_pool(x, w, b, padding=1).sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None


def test_backward_is_deterministic():
    x = torch.randn(2, 6, 8, 7, device=DEVICE)
    w = torch.randn(8, 6, 3, 3, device=DEVICE)
    b = torch.randn(8, device=DEVICE)
    grad = torch.randn(2, 8, 4, 3, device=DEVICE)
    for configs in (SMALL_TILES, None):
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            Conv2dReLUPoolFunction.apply(*leaves, 1, 1, 1, 1, 2, None, configs).backward(grad)
            runs.append([t.grad for t in leaves])
        for first, second in zip(*runs):
            assert torch.equal(first, second)


# ------------------------------------------------------------------------------------------------
# Memory saved for backward
# ------------------------------------------------------------------------------------------------


def _saved_bytes(fn, exclude):
    """Bytes of the unique storages autograd saves while ``fn`` runs, leaving out ``exclude``'s."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    return sum(n for ptr, n in storages.items() if ptr not in skip), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool", [2, 3])
def test_saved_bytes_at_most_a_third_of_unfused(dtype, pool):
    """Bytes saved for backward, measured from the tensors autograd saves (unique storages),
    EXCLUDING input and weight, which both versions save alike: the fused op saves only its int8
    offsets (-1 in dead windows carries ReLU's mask), the unfused tritoncnn conv2d_relu ->
    max_pool2d saves the full conv output and the pool's int8 offsets. Per conv-output element,
    fused 1 / F**2, unfused itemsize + 1 / F**2. Measured ratios (fused / unfused) here:
    F = 2: 1/9 (0.111) in bf16, 1/17 (0.059) in fp32; F = 3 (12x12 -> 4x4): 1/19 (0.053) in
    bf16, 1/37 (0.027) in fp32. Saving the pooled output too, as before, gave 1/3 and 5/17."""
    x = torch.randn(2, 3, 12, 12, device=DEVICE, dtype=dtype, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, device=DEVICE, dtype=dtype, requires_grad=True)
    b = torch.randn(8, device=DEVICE, dtype=dtype, requires_grad=True)
    fused, y = _saved_bytes(
        lambda: conv2d_relu_pool(x, w, b, padding=1, pool=pool, allow_tf32=False), (x, w))
    unfused, y_ref = _saved_bytes(
        lambda: max_pool2d(conv2d_relu(x, w, b, padding=1, allow_tf32=False), pool), (x, w))
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    item = x.element_size()
    conv_out = 2 * 8 * 12 * 12
    pooled = 2 * 8 * (12 // pool) ** 2
    assert fused == pooled
    assert unfused == conv_out * item + pooled
    ratio = fused / unfused
    print(f"saved bytes, {dtype} pool={pool}: fused {fused}, unfused {unfused}, ratio {ratio:.4f}")
    assert ratio <= 1 / 3, (fused, unfused)
    assert ratio == pytest.approx(1 / (item * pool * pool + 1))


# ------------------------------------------------------------------------------------------------
# Custom ops, torch.compile, autocast, configs
# ------------------------------------------------------------------------------------------------


def test_opcheck():
    x = torch.randn(1, 3, 7, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    geometry = ConvGeometry((1, 1), (1, 1, 0, 1), (1, 1), 1)
    args = (x, w, b, *geometry.as_op_args(), 2, False)
    torch.library.opcheck(torch.ops.tritoncnn.conv2d_relu_pool.default, args)
    y, offsets = torch.ops.tritoncnn.conv2d_relu_pool(*args)
    grad = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.tritoncnn.conv2d_relu_pool_backward.default,
        (grad, x.detach(), w.detach(), offsets, *geometry.as_op_args(), 2, False,
         [True, True, True]),
    )


# torch.compile and autocast: tests/test_conv.py runs them on both fused ops (FUSED_OPS).


def test_get_config_on_every_launch_with_the_tune_shape(monkeypatch):
    seen = []

    def spy(kernel, shape, dtype, layout, heuristic):
        seen.append((kernel, dict(shape), layout))
        return dict(heuristic)

    monkeypatch.setattr(autotune, "get_config", spy)
    x = torch.randn(1, 3, 7, 6, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    x.requires_grad_()
    conv2d_relu_pool(x, w, stride=1, padding=1, pool=3).sum().backward()
    assert sorted(k for k, _, _ in seen) == ["conv_dw", "conv_dx", "conv_pool_fwd"]
    want = dict(autotune.conv_shape(x.shape, w.shape, 1, 1), pool=3)
    assert all(shape == want and layout == "nhwc" for _, shape, layout in seen)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def _args(**overrides):
    args = dict(input=torch.randn(1, 4, 6, 6, device=DEVICE),
                weight=torch.randn(8, 4, 3, 3, device=DEVICE),
                bias=torch.randn(8, device=DEVICE))
    args.update(overrides)
    return args


BAD = {
    "pool_zero": (_args(), {"pool": 0}, ValueError, "pool must be positive"),
    "pool_negative": (_args(), {"pool": -2}, ValueError, "pool must be positive"),
    "pool_float": (_args(), {"pool": 2.0}, TypeError, "pool must be an int"),
    "pool_bool": (_args(), {"pool": True}, TypeError, "pool must be an int"),
    "pool_larger_than_output": (_args(), {"pool": 5}, ValueError,
                                r"pool=5 is larger than the 4x4 conv output"),
    "pool_larger_in_one_dim": (_args(input=torch.randn(1, 4, 9, 5, device=DEVICE)),
                               {"pool": 4}, ValueError, "larger than the 7x3 conv output"),
    "channel_mismatch": (_args(weight=torch.randn(8, 3, 3, 3, device=DEVICE)), {}, ValueError,
                         "channel mismatch"),
    "bias_length": (_args(bias=torch.randn(7, device=DEVICE)), {}, ValueError,
                    r"bias must have shape \(8,\)"),
    "stride_zero": (_args(), {"stride": 0}, ValueError, "stride must be positive"),
    "integer_input": (_args(input=torch.ones(1, 4, 6, 6, dtype=torch.int32, device=DEVICE)), {},
                      TypeError, "input has dtype torch.int32"),
    "input_2d": (_args(input=torch.randn(4, 6, device=DEVICE)), {}, ValueError,
                 "input must be 3-D"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name):
    tensors, kwargs, error, message = BAD[name]
    with pytest.raises(error, match=message):
        conv2d_relu_pool(**tensors, **kwargs)
    if "pool" in kwargs:
        with pytest.raises(error, match=message):  # the Function checks the same
            Conv2dReLUPoolFunction.apply(tensors["input"], tensors["weight"], tensors["bias"],
                                         1, 0, 1, 1, kwargs["pool"])


# ------------------------------------------------------------------------------------------------
# Tuning problems
# ------------------------------------------------------------------------------------------------


PROBLEM_SHAPES = [
    pytest.param(dict(autotune.conv_shape((2, 5, 9, 8), (6, 5, 3, 3), 1, 1), pool=2), id="pool2"),
    pytest.param(dict(autotune.conv_shape((1, 4, 11, 10), (6, 2, 3, 3), 2, 1, 1, 2), pool=3),
                 id="pool3-stride2-groups2"),
]


@pytest.mark.parametrize("shape", PROBLEM_SHAPES)
@pytest.mark.parametrize("kernel", ["conv_pool_fwd", "conv_dx", "conv_dw"])
def test_tuning_problems_run_here(kernel, shape):
    """The registered problems of the fused op (and of its pooled backward) build on any device
    and pass their own correctness gate; under the interpreter with one large-tile config."""
    cfg = dict(BLOCK_M=256, BLOCK_N=16, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=1)
    if kernel == "conv_dw":
        cfg = dict(cfg, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, SPLIT=2)
    problem = autotune.make_problem(kernel, shape, torch.float32, "nhwc")
    problem.configs = [cfg]
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


# ------------------------------------------------------------------------------------------------
# Compiled kernels only
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gpu_larger_shapes(dtype, channels_last):
    """Thousands of windows: with random data, fp32 accumulation would put some window's top two
    values within rounding of each other and route its gradient elsewhere than the float64
    reference. Small integers keep every conv value exact (ties exact too, and broken alike)."""
    for case in ((4, 64, 21, 18, 96, (3, 3), 1, 1, 1, 1, 2),
                 (2, 48, 17, 17, 80, (3, 3), 1, 1, 1, 2, 3)):
        N, C, H, W, K, (R, S), *_, groups, _ = case
        gen = torch.Generator().manual_seed(1)
        x, w, b = (torch.randint(-2, 3, size, generator=gen).double()
                   for size in ((N, C, H, W), (K, C // groups, R, S), (K,)))
        _check(case, dtype=dtype, channels_last=channels_last, x=x, w=w, b=b)


@pytest.mark.gpu
@pytest.mark.parametrize("pool, dtype, layout, ieee", [(2, torch.bfloat16, "nhwc", False),
                                                       (3, torch.float32, "nchw", False),
                                                       (2, torch.float32, "nhwc", True)])
@pytest.mark.parametrize("kernel", ["conv_pool_fwd", "conv_dx", "conv_dw"])
def test_every_config_passes_the_correctness_gate(kernel, pool, dtype, layout, ieee):
    """Every pruned config of the space, on a shape with edge tiles (odd conv output), is correct
    on the GPU; conv_dx / conv_dw with ``pool`` are the fused op's backward; ``ieee``: the
    IEEE float32 space (TF32 off, capped tiles on the FMA units)."""
    shape = dict(autotune.conv_shape((3, 40, 23, 19), (72, 40, 3, 3), 1, 1), pool=pool)
    if ieee:
        shape["ieee"] = 1
    problem = autotune.make_problem(kernel, shape, dtype, layout)
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert len(table) > 1
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


# ------------------------------------------------------------------------------------------------
# Memory format of sliced channels_last views, and direct custom-op calls
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["channels_sliced", "width_sliced"])
def test_sliced_channels_last_views_keep_channels_last_like_pytorch(view):
    """``cl[:, :3]`` and ``cl[:, :, 1:]`` of a channels_last tensor are not contiguous in
    channels_last, but PyTorch's suggest_memory_format still calls them channels_last, and so do
    F.conv2d and F.max_pool2d: the fused op's output follows."""
    cl = torch.randn(2, 6, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x = cl[:, :3] if view == "channels_sliced" else cl[:, :3, 1:]
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    x.requires_grad_()
    y = conv2d_relu_pool(x, w, b, padding=1, allow_tf32=False)
    xr = x.detach().requires_grad_()
    with _ieee_fp32():  # the reference in IEEE float32 too (no TF32 on a GPU), as the kernels ran
        want = F.max_pool2d(F.relu(F.conv2d(xr, w, b, padding=1)), 2)
    assert want.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, want.detach(), atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    with _ieee_fp32():
        want.backward(grad)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)
    assert x.grad.stride() == xr.grad.stride()  # autograd's layout for the leaf, as torch's


def test_direct_custom_op_calls_check_shapes():
    """torch.ops.tritoncnn.conv2d_relu_pool(_backward) called directly with shapes that disagree
    raise the functional API's errors instead of launching out of bounds."""
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    w = torch.randn(8, 4, 3, 3, device=DEVICE)
    geometry = ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 1)
    op = torch.ops.tritoncnn.conv2d_relu_pool
    with pytest.raises(ValueError, match="channel mismatch"):
        op(x, w[:, :3], None, *geometry.as_op_args(), 2, False)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        op(x, w, torch.randn(5, device=DEVICE), *geometry.as_op_args(), 2, False)
    with pytest.raises(ValueError, match="padding must be 4 non-negative ints"):
        op(x, w, None, [1, 1], [1, 1], [1, 1], 1, 2, False)
    with pytest.raises(ValueError, match="pool=7 is larger"):
        op(x, w, None, *geometry.as_op_args(), 7, False)
    y, offsets = op(x, w, None, *geometry.as_op_args(), 2, False)
    backward = torch.ops.tritoncnn.conv2d_relu_pool_backward
    with pytest.raises(ValueError, match="channel mismatch"):
        backward(torch.randn_like(y), x[:, :3], w, offsets, *geometry.as_op_args(), 2, False,
                 [True, True, True])
    with pytest.raises(ValueError, match="pooled shape"):
        backward(torch.randn_like(y)[:, :, :2], x, w, offsets, *geometry.as_op_args(), 2, False,
                 [True, True, True])
