"""max_pool2d against torch.nn.functional.max_pool2d (float64 on the CPU as the reference):
values, output shapes and memory formats, indices, gradients, errors, and the custom op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tritoncnn import autotune
from tritoncnn.autotune import cache
from tritoncnn.kernels import MaxPool2dFunction, max_pool2d
from tritoncnn.kernels import max_pool as mp
from tritoncnn.kernels import _pool

from conftest import CHANNELS_LAST_INPUTS, DEVICE, spy_launches

# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = [
    pytest.param((2, 3, 8, 8), 2, None, 0, 1, False, id="2x2-nonoverlap"),
    pytest.param((1, 2, 5, 7), 2, 2, 0, 1, True, id="2x2-nonoverlap-ceil-odd"),
    pytest.param((1, 2, 9, 7), 3, 2, 1, 1, False, id="3x3s2p1-odd"),
    pytest.param((1, 3, 7, 7), 3, 2, 0, 1, True, id="3x3s2-ceil"),
    pytest.param((2, 2, 10, 9), (2, 3), (1, 2), (1, 1), (2, 1), False, id="nonsquare-dilation"),
    pytest.param((2, 1, 6, 7), (3, 2), (2, 3), (1, 0), 1, True, id="nonsquare-ceil"),
    pytest.param((1, 2, 5, 5), 2, 1, 1, 2, False, id="2x2s1p1d2"),
    pytest.param((1, 1, 3, 3), 3, None, 0, 1, False, id="1x1-output"),
    pytest.param((3, 5, 6), 2, 1, 0, 1, False, id="unbatched"),
    pytest.param((1, 1, 9, 9), 9, 1, 4, 1, False, id="81-window-runtime-loop"),
    pytest.param((1, 1, 13, 12), 12, 1, 0, 1, False, id="144-window-int16-offsets"),
    pytest.param((2, 3, 7, 11), (3, 4), None, 0, 1, True, id="3x4-nonoverlap-ceil"),
    pytest.param((1, 2, 6, 5), (2, 1), None, 0, 1, False, id="2x1-nonoverlap"),
]


def _reference(x, *args, ceil_mode=False, return_indices=False):
    """F.max_pool2d in float64 on the CPU."""
    return F.max_pool2d(x.detach().cpu().double(), *args, ceil_mode=ceil_mode,
                        return_indices=return_indices)


def _grads(x, upstream, *args, ceil_mode=False, pool=max_pool2d):
    """(ours, reference) input gradients for one shared upstream gradient."""
    ours_in = x.clone().requires_grad_()
    ref_in = x.detach().cpu().double().requires_grad_()
    pool(ours_in, *args, ceil_mode=ceil_mode).backward(upstream)
    F.max_pool2d(ref_in, *args, ceil_mode=ceil_mode).backward(upstream.cpu().double())
    return ours_in.grad, ref_in.grad


def _assert_same_layout(ours, ref):
    assert ours.shape == ref.shape
    assert ours.stride() == ref.stride(), f"strides {ours.stride()} != PyTorch's {ref.stride()}"


@pytest.mark.parametrize("shape, k, s, p, d, ceil_mode", CASES)
def test_forward_and_indices(shape, k, s, p, d, ceil_mode):
    x = torch.randn(shape, device=DEVICE)
    out, idx = max_pool2d(x, k, s, p, d, ceil_mode=ceil_mode, return_indices=True)
    ref, ref_idx = _reference(x, k, s, p, d, ceil_mode=ceil_mode, return_indices=True)
    _assert_same_layout(out, ref)
    assert out.dtype == x.dtype and idx.dtype == torch.int64
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)


@pytest.mark.parametrize("shape, k, s, p, d, ceil_mode", CASES)
def test_backward(shape, k, s, p, d, ceil_mode):
    x = torch.randn(shape, device=DEVICE)
    upstream = torch.randn(_reference(x, k, s, p, d, ceil_mode=ceil_mode).shape, device=DEVICE)
    grad, ref = _grads(x, upstream, k, s, p, d, ceil_mode=ceil_mode)
    torch.testing.assert_close(grad.cpu().double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, k, s, p, d, ceil_mode", [CASES[0], CASES[2], CASES[8]])
def test_autograd_function(shape, k, s, p, d, ceil_mode):
    x = torch.randn(shape, device=DEVICE)
    out, idx = MaxPool2dFunction.apply(x, k, s, p, d, ceil_mode, True)
    ref, ref_idx = _reference(x, k, s, p, d, ceil_mode=ceil_mode, return_indices=True)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, k, s, p, d, ceil_mode=ceil_mode,
                            pool=lambda t, *a, ceil_mode: MaxPool2dFunction.apply(t, *a, ceil_mode))
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", CHANNELS_LAST_INPUTS)
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_channels_last(make, k, s, p):
    x = make().to(DEVICE)
    out, idx = max_pool2d(x, k, s, p, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.detach().cpu(), k, s, p, return_indices=True)
    assert out.stride(1) == 1 or out.shape[1] == 1
    _assert_same_layout(out, ref)
    _assert_same_layout(idx, ref_idx)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, k, s, p)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: torch.randn(2, 3, 12, 9)[:, :, ::2, 1:], id="strided-slice"),
    pytest.param(lambda: torch.randn(2, 3, 9, 8).transpose(2, 3), id="transposed-hw"),
    pytest.param(lambda: torch.randn(2, 8, 6, 3).permute(0, 3, 1, 2)[:, 1:], id="permuted-sliced"),
    pytest.param(lambda: torch.randn(6, 7, 4).permute(2, 0, 1), id="unbatched-permuted"),
    pytest.param(lambda: torch.randn(1, 2, 1, 1).expand(3, 2, 6, 5), id="expanded"),
])
def test_non_contiguous_input(make):
    x = make().to(DEVICE)
    out = max_pool2d(x, 3, 2, 1)
    ref = _reference(x, 3, 2, 1)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, 3, 2, 1)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


def test_batch_of_zero():
    x = torch.randn(0, 3, 6, 6, device=DEVICE, requires_grad=True)
    out, idx = max_pool2d(x, 2, return_indices=True)
    assert out.shape == idx.shape == (0, 3, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1)])
def test_nan_propagates_like_torch(k, s, p):
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = x[0, 1, 4, 5] = x[0, 1, 0, 0] = float("nan")
    x = x.to(DEVICE)
    out, idx = max_pool2d(x, k, s, p, return_indices=True)
    ref, ref_idx = _reference(x, k, s, p, return_indices=True)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, k, s, p)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k, s, p, d", [(2, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 2)])
def test_ties_pick_torchs_element(k, s, p, d):
    x = torch.randint(-2, 2, (2, 2, 7, 7)).float().to(DEVICE)
    out, idx = max_pool2d(x, k, s, p, d, return_indices=True)
    ref, ref_idx = _reference(x, k, s, p, d, return_indices=True)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, k, s, p, d)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


def test_all_minus_inf_windows():
    x = torch.full((1, 1, 4, 5), float("-inf"), device=DEVICE)
    out, idx = max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = _reference(x, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)


def test_window_entirely_in_padding():
    # A dilated window can miss the input: PyTorch gives -inf and the index of its first
    # element after skipping the top/left padding (outside the plane); so do we.
    x = torch.randn(1, 1, 2, 2, device=DEVICE)
    out, idx = max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    ref, ref_idx = _reference(x, 2, 1, 1, 3, return_indices=True)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_expanded_upstream_gradient(channels_last):
    """out.sum().backward() hands backward a stride-0 gradient; it is read in place."""
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours_in = x.clone().requires_grad_()
    ref_in = x.detach().cpu().double().requires_grad_()
    max_pool2d(ours_in, 3, 2, 1).sum().backward()
    F.max_pool2d(ref_in, 3, 2, 1).sum().backward()
    torch.testing.assert_close(ours_in.grad.cpu().double(), ref_in.grad, rtol=0, atol=0)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1)])
def test_backward_is_deterministic(k, s):
    x = torch.randint(-1, 2, (2, 3, 9, 9)).float().to(DEVICE).requires_grad_()
    out = max_pool2d(x, k, s)
    upstream = torch.randn_like(out)
    first, = torch.autograd.grad(out, x, upstream, retain_graph=True)
    second, = torch.autograd.grad(out, x, upstream)
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_other_precisions(dtype, k, s, p):
    x = torch.randn(2, 3, 9, 8, device=DEVICE, dtype=dtype)
    out, idx = max_pool2d(x, k, s, p, return_indices=True)
    ref, ref_idx = _reference(x, k, s, p, return_indices=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)  # a max is exact
    torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
    upstream = torch.randn(ref.shape, device=DEVICE, dtype=dtype)
    grad, ref_grad = _grads(x, upstream, k, s, p)
    assert grad.dtype == dtype
    # float32 sums of at most four half-precision values, rounded once: within half an ulp
    # (float64: float64 sums)
    tol = {torch.float16: 2e-3, torch.bfloat16: 8e-3, torch.float64: 1e-15}[dtype]
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=tol, atol=tol)


def test_small_tiles_and_config_override(monkeypatch):
    """Many program instances (a 64-element tile), and get_config called on a call signature's
    first launch only, until the autotune cache changes."""
    calls = []

    def recording_get_config(kernel, shape, dtype, layout, heuristic):
        calls.append((kernel, dict(shape), dtype, layout))
        return {"BLOCK": 64, "num_warps": 1}

    monkeypatch.setattr(autotune, "get_config", recording_get_config)
    x = torch.randn(2, 3, 9, 10, device=DEVICE).to(memory_format=torch.channels_last)
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        out, idx = max_pool2d(x, k, s, p, return_indices=True)
        ref, ref_idx = _reference(x, k, s, p, return_indices=True)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
        torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
        upstream = torch.randn(ref.shape, device=DEVICE)
        grad, ref_grad = _grads(x, upstream, k, s, p)
        torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)
    kernels = [c[0] for c in calls]
    assert kernels.count("max_pool_fwd") == 2 and kernels.count("max_pool_bwd") == 2
    assert all(c[2] == torch.float32 and c[3] == "nhwc" for c in calls)
    assert calls[0][1]["KH"] == 2 and calls[0][1]["OH"] == 4
    cache.configs_changed()  # a stored or reloaded config: every signature looks up again
    max_pool2d(x, 3, 2, 1)
    assert [c[0] for c in calls].count("max_pool_fwd") == 3

    # An explicit config wins over get_config.
    out, _ = mp.max_pool2d_forward(x, 3, 2, 1, config={"BLOCK": 32, "num_warps": 1})
    torch.testing.assert_close(out.cpu().double(), _reference(x, 3, 2, 1), rtol=0, atol=0)
    assert len(calls) == 5


# (window, ceil_mode, BLOCK, column tiles of the 37-wide input's output); a tile holds
# 2 * BLOCK // KW outputs (at least one)
@pytest.mark.parametrize("k, ceil_mode, block, col_tiles", [
    ((2, 2), False, 8, 3), ((3, 4), True, 16, 2), ((2, 1), False, 4, 5), ((4, 2), True, 64, 1),
    ((1, 8), True, 2, 5)])
def test_nchw_window_rows_path(monkeypatch, k, ceil_mode, block, col_tiles):
    """NCHW non-overlapping pools whose window width is a power of two run the window-rows kernel:
    tiles of several rows and column blocks (a small BLOCK), partial windows (ceil_mode), ties,
    NaN, -inf and an all -inf window, values and indices as PyTorch's."""
    launched = spy_launches(monkeypatch)
    x = torch.randint(-2, 3, (2, 3, 9, 37)).float()  # many ties
    x[0, 0, 0, :3] = float("nan")
    x[0, 1, 2, 5] = float("nan")
    x[1, 2, :4, :8] = float("-inf")
    x = x.to(DEVICE)
    out, idx = mp.max_pool2d_forward(x, k, None, 0, 1, ceil_mode, config={"BLOCK": block,
                                                                          "num_warps": 1})
    ref, ref_idx = _reference(x, k, ceil_mode=ceil_mode, return_indices=True)
    assert launched[0][0] == mp._max_pool_fwd_rows_kernel.__name__
    assert launched[0][3]["BLOCK_R"] * launched[0][3]["BLOCK_OW"] == max(1, 2 * block // k[1])
    assert launched[0][1][1] == col_tiles
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0, equal_nan=True)
    got = mp.offsets_to_indices(idx, x.shape[-1], k)
    torch.testing.assert_close(got.cpu(), ref_idx, rtol=0, atol=0)


def test_int64_indexing_path(monkeypatch):
    """The int64 offset arithmetic used for tensors past 2**31 elements, forced on a small one."""
    monkeypatch.setattr(_pool, "INT32_LIMIT", 0)
    x = torch.randn(2, 3, 9, 8, device=DEVICE)
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        out, idx = max_pool2d(x, k, s, p, return_indices=True)
        ref, ref_idx = _reference(x, k, s, p, return_indices=True)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)
        torch.testing.assert_close(idx.cpu(), ref_idx, rtol=0, atol=0)
        upstream = torch.randn(ref.shape, device=DEVICE)
        grad, ref_grad = _grads(x, upstream, k, s, p)
        torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.tritoncnn.max_pool2d_fwd.default,
                          (x, [3, 2], [2, 1], [1, 1], [1, 1], False))
    _, offsets = torch.ops.tritoncnn.max_pool2d_fwd(x.detach(), [2, 2], [2, 2], [0, 0], [1, 1],
                                                    True)
    grad_out = torch.randn(offsets.shape, device=DEVICE)
    torch.library.opcheck(torch.ops.tritoncnn.max_pool2d_bwd.default,
                          (grad_out, offsets, list(x.shape), [2, 2], [2, 2], [0, 0], [1, 1],
                           channels_last))


def test_torch_compile_traces_the_custom_op():
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(lambda t: max_pool2d(t, 3, 2, 1).square().sum(), backend="aot_eager",
                             fullgraph=True)
    compiled(x).backward()
    ref_in = x.detach().cpu().double().requires_grad_()
    F.max_pool2d(ref_in, 3, 2, 1).square().sum().backward()
    torch.testing.assert_close(x.grad.cpu().double(), ref_in.grad, rtol=1e-6, atol=1e-6)


# (make input, pooling args, error type, text the message must hold)
BAD = [
    pytest.param(lambda: torch.randn(5, 5), (2,), RuntimeError, "input", id="2d-input"),
    pytest.param(lambda: torch.randn(1, 1, 1, 5, 5), (2,), RuntimeError, "input", id="5d-input"),
    pytest.param(lambda: torch.randn(1, 0, 5, 5), (2,), RuntimeError, "input", id="zero-channels"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (0,), RuntimeError, "kernel_size", id="k0"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), ((2, -1), 1), RuntimeError, "kernel_size",
                 id="k-negative"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 0), RuntimeError, "stride", id="stride0"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, -1), RuntimeError, "stride",
                 id="stride-negative"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, 2), RuntimeError, "padding",
                 id="padding-over-half"),
    pytest.param(lambda: torch.randn(1, 2, 9, 9), (2, 1, 2, 3), RuntimeError, "padding",
                 id="padding-over-half-dilated"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, -1), RuntimeError, "padding",
                 id="padding-negative"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, 0, 0), RuntimeError, "dilation",
                 id="dilation0"),
    pytest.param(lambda: torch.randn(1, 1, 2, 2), (3,), RuntimeError, "kernel_size",
                 id="output-below-1"),
    pytest.param(lambda: torch.randn(1, 1, 4, 4), (2, 1, 0, 4), RuntimeError, "dilation",
                 id="output-below-1-dilated"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), ((1, 2, 3),), RuntimeError, "kernel_size",
                 id="kernel-three-ints"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2.0,), TypeError, "kernel_size",
                 id="kernel-float"),
]


@pytest.mark.parametrize("make, args, error, name", BAD)
def test_bad_arguments_raise_like_torch(make, args, error, name):
    x = make()
    with pytest.raises(error):
        F.max_pool2d(x, *args)
    with pytest.raises(error, match=name):
        max_pool2d(x.to(DEVICE), *args)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.complex64])
def test_unsupported_dtype_raises(dtype):
    x = torch.zeros(1, 2, 4, 4, device=DEVICE, dtype=dtype)
    with pytest.raises(TypeError, match="input"):
        max_pool2d(x, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_compiled_many_programs_against_torch_cuda(dtype, channels_last, k, s, p):
    """Compiled kernels on a shape that spans many programs, against PyTorch on the same GPU."""
    x = torch.randn(4, 64, 57, 56, device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours_in = x.clone().requires_grad_()
    out, idx = max_pool2d(ours_in, k, s, p, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, k, s, p, return_indices=True)
    _assert_same_layout(out, ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(idx, ref_idx, rtol=0, atol=0)
    upstream = torch.randn_like(ref)
    out.backward(upstream)
    # overlapping windows sum up to four gradients per pixel: against the float64 sum (PyTorch
    # in bf16 may round its partial sums, as its CPU kernel does), to the float32 sum's rounding
    # (relative to the terms: they may cancel) and one rounding to the dtype
    x64 = x.double().requires_grad_()
    F.max_pool2d(x64, k, s, p).backward(upstream.double())
    sum_err = 4 * torch.finfo(torch.float32).eps * upstream.abs().max().item()
    torch.testing.assert_close(ours_in.grad.double(), x64.grad, rtol=torch.finfo(dtype).eps,
                               atol=sum_err)


@pytest.mark.parametrize("kernel", ["max_pool_fwd", "max_pool_bwd"])
def test_tuning_problems_run_here(kernel):
    """The registered problems build on any device and pass their own gate with one config,
    also where autograd records nothing, as tuning on first use does inside the custom ops and
    the backward pass; ceil_mode shows in the shape's output size."""
    shape = autotune.pool_shape((2, 3, 8, 8), 3, 2, 0, 1, True)
    assert (shape["OH"], shape["OW"]) == (4, 4)  # 3 and 3 without ceil_mode
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        problem = autotune.make_problem(kernel, shape, torch.float32, "nhwc")
    problem.configs = [{"BLOCK": 64, "num_warps": 2}]
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["max_pool_fwd", "max_pool_bwd"])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_tuning_problems_pass_their_own_correctness_gate(kernel, ceil_mode):
    """The registered tuning problems run every config of the space and all come out right."""
    from tritoncnn import autotune

    shape = autotune.pool_shape((2, 16, 15, 17), 3, 2, 1, 1, ceil_mode)
    heuristic = {"BLOCK": 1024, "num_warps": 4}
    problem = autotune.make_problem(kernel, shape, torch.float32, "nhwc", heuristic)
    table = autotune.tune_problem(problem, timer=lambda fn: (1.0, 1.0, 1.0))
    assert (table["status"] == "ok").all(), table[["config", "status", "error"]]


def test_arguments_are_validated_once_per_call(monkeypatch):
    """The functional API leaves the checks to the op's launcher: one shape check per call."""
    from tritoncnn.kernels import max_pool as max_pool_module

    seen = []
    real = max_pool_module.output_hw
    monkeypatch.setattr(max_pool_module, "output_hw", lambda *a: seen.append(1) or real(*a))
    x = torch.randn(1, 2, 6, 6, device=DEVICE)
    torch.testing.assert_close(max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    assert len(seen) == 1


def test_sliced_channels_last_views_keep_channels_last_like_pytorch():
    cl = torch.randn(2, 6, 7, 7, device=DEVICE).contiguous(memory_format=torch.channels_last)
    for x in (cl[:, :3], cl[:, :, 1:]):
        out = max_pool2d(x, 2)
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        torch.testing.assert_close(out, F.max_pool2d(x, 2))


def test_backward_op_rejects_a_gradient_of_the_wrong_size():
    x = torch.randn(1, 2, 7, 7, device=DEVICE)
    out, offsets = torch.ops.tritoncnn.max_pool2d_fwd(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="not the pooled size"):
        torch.ops.tritoncnn.max_pool2d_bwd(out[..., :2], offsets[..., :2], list(x.shape),
                                           [2, 2], [2, 2], [0, 0], [1, 1], False)



def test_output_format_rule_matches_pytorch_on_every_small_layout():
    """``is_channels_last`` (the output format every op keeps) gives PyTorch's choice for dense
    tensors, transposed, strided and sliced views and size-1 dimensions (compared where the two
    formats' strides differ), both through its C++ fast path and its stride walk."""
    import itertools
    from tritoncnn.kernels._checks import is_channels_last
    for shape in itertools.product((1, 2, 3), repeat=4):
        for fmt in (torch.contiguous_format, torch.channels_last):
            t = torch.empty(shape).contiguous(memory_format=fmt)
            for v in (t, t.transpose(2, 3), t[:, :, ::2], t[:, :2]):
                out = F.max_pool2d(v, 1)
                cl = torch.empty(out.shape).contiguous(memory_format=torch.channels_last).stride()
                if cl != torch.empty(out.shape).stride():
                    assert is_channels_last(v) == (out.stride() == cl), (shape, v.stride())


def test_a_window_wholly_in_the_padding():
    """With dilation, a window can lie wholly in the padding: its output is -inf and its index
    PyTorch's (one past the window's first padded row: outside the input), and its gradient
    reaches no input element (PyTorch's own backward would write outside the input there)."""
    x = torch.randn(2, 3, 1, 5, device=DEVICE, requires_grad=True)
    args = ((2, 1), 1, (1, 0), (2, 1))
    out, index = max_pool2d(x, *args, return_indices=True)
    ref, ref_index = F.max_pool2d(x.detach().cpu(), *args, return_indices=True)
    assert torch.isinf(ref).all() and torch.equal(out.cpu(), ref)
    assert torch.equal(index.cpu(), ref_index)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
