"""avg_pool2d against torch.nn.functional.avg_pool2d (float64 on the CPU as the reference):
values, output shapes and memory formats, gradients, precisions, errors, determinism, the custom
ops; and the AvgPool2d / AdaptiveAvgPool2d layers, convert() and AVGPOOL in the spec."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tritoncnn.kernels import AvgPool2dFunction, avg_pool2d
from tritoncnn.kernels import avg_pool as ap
from tritoncnn.kernels import _pool

from conftest import CHANNELS_LAST_INPUTS, DEVICE

# An OpInfo-style sample set: (input shape, kernel_size, stride, padding, ceil_mode,
# count_include_pad, divisor_override)
CASES = [
    pytest.param((2, 3, 8, 8), 2, None, 0, False, True, None, id="2x2-nonoverlap"),
    pytest.param((1, 2, 5, 7), 2, 2, 0, True, True, None, id="2x2-nonoverlap-ceil-odd"),
    pytest.param((1, 2, 5, 7), 2, 2, 0, True, False, None, id="2x2-ceil-odd-exclude-pad"),
    pytest.param((1, 2, 9, 7), 3, 2, 1, False, True, None, id="3x3s2p1-odd"),
    pytest.param((1, 2, 9, 7), 3, 2, 1, False, False, None, id="3x3s2p1-exclude-pad"),
    pytest.param((1, 3, 7, 7), 3, 2, 1, True, True, None, id="3x3s2p1-ceil-include-pad"),
    pytest.param((1, 3, 8, 6), 3, 2, 1, True, False, None, id="3x3s2p1-ceil-exclude-pad"),
    pytest.param((2, 1, 6, 7), (3, 2), (2, 3), (1, 0), True, False, None, id="nonsquare-ceil"),
    pytest.param((2, 2, 10, 9), (2, 3), (1, 2), (1, 1), False, True, None, id="nonsquare-pad"),
    pytest.param((1, 2, 7, 5), 3, 1, 1, False, True, 4, id="divisor-override"),
    pytest.param((1, 2, 7, 5), 3, 2, 1, True, False, -3, id="negative-divisor-ceil"),
    pytest.param((2, 3, 7, 11), (3, 4), None, 0, True, True, 5, id="3x4-nonoverlap-divisor"),
    pytest.param((1, 1, 3, 3), 3, None, 0, False, True, None, id="1x1-output"),
    pytest.param((3, 5, 6), 2, 1, 0, False, True, None, id="unbatched"),
    pytest.param((3, 5, 7), 3, 2, 1, True, False, None, id="unbatched-ceil-pad"),
    pytest.param((1, 1, 9, 9), 9, 1, 4, False, False, None, id="81-window-runtime-loop"),
    pytest.param((1, 2, 13, 11), 5, 3, 2, True, True, None, id="5x5s3p2-ceil-runtime-loop"),
    pytest.param((1, 2, 6, 5), (2, 1), None, 0, False, True, None, id="2x1-nonoverlap"),
]


def _reference(x, *args):
    """F.avg_pool2d in float64 on the CPU."""
    return F.avg_pool2d(x.detach().cpu().double(), *args)


def _grads(x, upstream, *args, pool=avg_pool2d):
    """(ours, reference) input gradients for one shared upstream gradient."""
    ours_in = x.clone().requires_grad_()
    ref_in = x.detach().cpu().double().requires_grad_()
    pool(ours_in, *args).backward(upstream)
    F.avg_pool2d(ref_in, *args).backward(upstream.cpu().double())
    return ours_in.grad, ref_in.grad


def _assert_same_layout(ours, ref):
    assert ours.shape == ref.shape
    assert ours.stride() == ref.stride(), f"strides {ours.stride()} != PyTorch's {ref.stride()}"


@pytest.mark.parametrize("shape, k, s, p, ceil_mode, count_pad, divisor", CASES)
def test_forward(shape, k, s, p, ceil_mode, count_pad, divisor):
    x = torch.randn(shape, device=DEVICE)
    args = (k, s, p, ceil_mode, count_pad, divisor)
    out = avg_pool2d(x, *args)
    ref = _reference(x, *args)
    _assert_same_layout(out, ref)
    assert out.dtype == x.dtype
    # float32 sums of at most 81 terms, one division
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, k, s, p, ceil_mode, count_pad, divisor", CASES)
def test_backward(shape, k, s, p, ceil_mode, count_pad, divisor):
    x = torch.randn(shape, device=DEVICE)
    args = (k, s, p, ceil_mode, count_pad, divisor)
    upstream = torch.randn(_reference(x, *args).shape, device=DEVICE)
    grad, ref = _grads(x, upstream, *args)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    torch.testing.assert_close(grad.cpu().double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, k, s, p, ceil_mode, count_pad, divisor", CASES[::3])
def test_float64_is_exact_to_rounding(shape, k, s, p, ceil_mode, count_pad, divisor):
    """float64 sums in float64: the same values as PyTorch's float64 kernel to a few ulps."""
    x = torch.randn(shape, device=DEVICE, dtype=torch.float64)
    args = (k, s, p, ceil_mode, count_pad, divisor)
    ref = _reference(x, *args)
    torch.testing.assert_close(avg_pool2d(x, *args).cpu(), ref, rtol=1e-13, atol=1e-13)
    upstream = torch.randn(ref.shape, device=DEVICE, dtype=torch.float64)
    grad, ref_grad = _grads(x, upstream, *args)
    torch.testing.assert_close(grad.cpu(), ref_grad, rtol=1e-13, atol=1e-13)


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(1, 2, 6, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    fn = lambda t: avg_pool2d(t, 3, 2, 1, True, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("shape, k, s, p, ceil_mode, count_pad, divisor",
                         [CASES[0], CASES[4], CASES[13]])
def test_autograd_function(shape, k, s, p, ceil_mode, count_pad, divisor):
    x = torch.randn(shape, device=DEVICE)
    args = (k, s, p, ceil_mode, count_pad, divisor)
    ref = _reference(x, *args)
    torch.testing.assert_close(AvgPool2dFunction.apply(x, *args).cpu().double(), ref,
                               rtol=1e-6, atol=1e-6)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, *args, pool=AvgPool2dFunction.apply)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", CHANNELS_LAST_INPUTS)
@pytest.mark.parametrize("k, s, p, ceil_mode, count_pad", [
    (2, 2, 0, False, True), (3, 2, 1, True, False), ((3, 2), (1, 2), (1, 0), False, True)])
def test_channels_last(make, k, s, p, ceil_mode, count_pad):
    x = make().to(DEVICE)
    args = (k, s, p, ceil_mode, count_pad)
    out = avg_pool2d(x, *args)
    ref = F.avg_pool2d(x.detach().cpu(), *args)
    assert out.stride(1) == 1 or out.shape[1] == 1
    _assert_same_layout(out, ref)
    torch.testing.assert_close(out.cpu().double(), _reference(x, *args), rtol=1e-6, atol=1e-6)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, *args)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: torch.randn(2, 3, 12, 9)[:, :, ::2, 1:], id="strided-slice"),
    pytest.param(lambda: torch.randn(2, 3, 9, 8).transpose(2, 3), id="transposed-hw"),
    pytest.param(lambda: torch.randn(6, 7, 4).permute(2, 0, 1), id="unbatched-permuted"),
    pytest.param(lambda: torch.randn(1, 2, 1, 1).expand(3, 2, 6, 5), id="expanded"),
])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_non_contiguous_input(make, k, s, p):
    x = make().to(DEVICE)
    out = avg_pool2d(x, k, s, p)
    ref = _reference(x, k, s, p)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-6, atol=1e-6)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad, ref_grad = _grads(x, upstream, k, s, p)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


def test_expanded_upstream_gradient():
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    out = avg_pool2d(x, 3, 2, 1)
    upstream = torch.randn(1, 3, 1, 1, device=DEVICE).expand_as(out)
    out.backward(upstream)
    ref_in = x.detach().cpu().double().requires_grad_()
    F.avg_pool2d(ref_in, 3, 2, 1).backward(upstream.cpu().double())
    torch.testing.assert_close(x.grad.cpu().double(), ref_in.grad, rtol=1e-6, atol=1e-6)


def test_batch_of_zero():
    x = torch.randn(0, 3, 6, 6, device=DEVICE, requires_grad=True)
    out = avg_pool2d(x, 2)
    assert out.shape == (0, 3, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k, s, p, count_pad", [(2, 2, 0, True), (3, 2, 1, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precisions(dtype, k, s, p, count_pad, channels_last):
    x = torch.randn(2, 3, 9, 8, device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = avg_pool2d(x, k, s, p, False, count_pad)
    ref = _reference(x, k, s, p, False, count_pad)
    assert out.dtype == dtype
    _assert_same_layout(out, F.avg_pool2d(x.cpu(), k, s, p, False, count_pad))
    # float32 sums, one rounding to the dtype: half an ulp of the result
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    upstream = torch.randn(ref.shape, device=DEVICE, dtype=dtype)
    grad, ref_grad = _grads(x, upstream, k, s, p, False, count_pad)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1)])
def test_backward_is_deterministic(k, s, p):
    x = torch.randn(2, 3, 9, 9, device=DEVICE, requires_grad=True)
    out = avg_pool2d(x, k, s, p)
    upstream = torch.randn_like(out)
    first, = torch.autograd.grad(out, x, upstream, retain_graph=True)
    second, = torch.autograd.grad(out, x, upstream)
    assert torch.equal(first, second)


@pytest.mark.parametrize("k, ceil_mode", [(2, False), (4, True), ((2, 4), True)])
def test_nchw_window_rows_path_on_small_tiles(k, ceil_mode):
    """The rows kernel over many programs, with partial row and column tiles."""
    x = torch.randn(2, 3, 11, 19, device=DEVICE)
    out = ap.avg_pool2d_forward(x, k, None, 0, ceil_mode, config={"BLOCK": 8})
    torch.testing.assert_close(out.cpu().double(), _reference(x, k, None, 0, ceil_mode),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_general_kernels_on_small_tiles(channels_last):
    x = torch.randn(2, 3, 7, 9, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    args = ([3, 3], [2, 2], [1, 1], True, False, None)
    out = ap.avg_pool2d_forward(x, *args, config={"BLOCK": 32})
    ref = _reference(x, *args)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-6, atol=1e-6)
    upstream = torch.randn(ref.shape, device=DEVICE)
    grad = ap.avg_pool2d_backward(upstream, list(x.shape), *args, channels_last=channels_last,
                                  config={"BLOCK": 32})
    _, ref_grad = _grads(x, upstream, *args)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


def test_int64_indexing_path(monkeypatch):
    """The int64 index arithmetic, forced on a small input."""
    monkeypatch.setattr(_pool, "INT32_LIMIT", 16)
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        x = torch.randn(1, 2, 7, 6, device=DEVICE)
        out = avg_pool2d(x, k, s, p)
        torch.testing.assert_close(out.cpu().double(), _reference(x, k, s, p), rtol=1e-6,
                                   atol=1e-6)
        upstream = torch.randn(out.shape, device=DEVICE)
        grad, ref_grad = _grads(x, upstream, k, s, p)
        torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.tritoncnn.avg_pool2d.default,
                          (x, [3, 2], [2, 1], [1, 1], True, False, None))
    torch.library.opcheck(torch.ops.tritoncnn.avg_pool2d.default,
                          (x, [2, 2], [2, 2], [0, 0], False, True, 3))
    grad_out = torch.randn(2, 3, 4, 7, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.tritoncnn.avg_pool2d_backward.default,
                          (grad_out, list(x.shape), [3, 2], [2, 1], [1, 1], True, False, None,
                           channels_last))


def test_backward_op_gradient_is_the_forward():
    """The backward op is linear; its own registered gradient must be its adjoint."""
    go = torch.randn(1, 2, 4, 3, device=DEVICE, dtype=torch.float64, requires_grad=True)
    args = ([3, 3], [2, 2], [1, 1], False, True, None, False)
    assert torch.autograd.gradcheck(
        lambda g: torch.ops.tritoncnn.avg_pool2d_backward(g, [1, 2, 7, 6], *args), (go,))


def test_torch_compile_traces_the_custom_op():
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(lambda t: avg_pool2d(t, 3, 2, 1).square().sum(), backend="aot_eager",
                             fullgraph=True)
    compiled(x).backward()
    ref_in = x.detach().cpu().double().requires_grad_()
    F.avg_pool2d(ref_in, 3, 2, 1).square().sum().backward()
    torch.testing.assert_close(x.grad.cpu().double(), ref_in.grad, rtol=1e-6, atol=1e-6)


def test_meta_tensors_take_the_fake_kernel():
    x = torch.empty(2, 3, 9, 7, device="meta").to(memory_format=torch.channels_last)
    out = avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    ref = F.avg_pool2d(torch.empty(2, 3, 9, 7).to(memory_format=torch.channels_last), 3, 2, 1,
                       ceil_mode=True)
    assert out.device.type == "meta"
    _assert_same_layout(out, ref)


def test_torch_func_grad_and_vmap():
    x = torch.randn(3, 2, 6, 6, device=DEVICE, dtype=torch.float64)
    ours = torch.func.vmap(torch.func.grad(lambda t: avg_pool2d(t, 3, 2, 1).square().sum()))(x)
    ref = torch.func.vmap(torch.func.grad(
        lambda t: F.avg_pool2d(t, 3, 2, 1).square().sum()))(x.cpu())
    torch.testing.assert_close(ours.cpu(), ref, rtol=1e-12, atol=1e-12)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda t: avg_pool2d(t, 2), (x,), (tangent,))
    torch.testing.assert_close(jvp.cpu(), F.avg_pool2d(tangent.cpu(), 2), rtol=1e-12,
                               atol=1e-12)


# (make input, pooling args, error type, text the message must hold)
BAD = [
    pytest.param(lambda: torch.randn(5, 5), (2,), (IndexError, RuntimeError), "input",
                 id="2d-input"),
    pytest.param(lambda: torch.randn(1, 1, 1, 5, 5), (2,), RuntimeError, "input", id="5d-input"),
    pytest.param(lambda: torch.randn(1, 0, 5, 5), (2,), RuntimeError, "input", id="zero-channels"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (0,), RuntimeError, "kernel_size", id="k0"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 0), RuntimeError, "stride", id="s0"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, -1), RuntimeError, "padding",
                 id="negative-pad"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, 2), RuntimeError, "padding",
                 id="pad-over-half"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (6,), RuntimeError, "too small",
                 id="window-bigger-than-input"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), ((2, 2, 2),), RuntimeError, "kernel_size",
                 id="k-three-ints"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2.0,), TypeError, "kernel_size", id="k-float"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, 0, False, True, 0), RuntimeError,
                 "divisor_override", id="divisor-zero"),
    pytest.param(lambda: torch.randn(1, 2, 5, 5), (2, 2, 0, False, True, 2.5), TypeError,
                 "divisor_override", id="divisor-float"),
]


@pytest.mark.parametrize("make, args, error, name", BAD)
def test_bad_arguments_raise_like_torch(make, args, error, name):
    x = make()
    with pytest.raises(error):
        F.avg_pool2d(x, *args)
    with pytest.raises(error, match=name):
        avg_pool2d(x.to(DEVICE), *args)


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_unsupported_dtype_raises(dtype):
    x = torch.zeros(1, 2, 4, 4, device=DEVICE, dtype=dtype)
    with pytest.raises(TypeError, match="input"):
        avg_pool2d(x, 2)


def test_backward_op_rejects_a_gradient_of_the_wrong_size():
    x = torch.randn(1, 2, 6, 6, device=DEVICE)
    with pytest.raises(RuntimeError, match="grad_output"):
        torch.ops.tritoncnn.avg_pool2d_backward(torch.randn(1, 2, 2, 3, device=DEVICE),
                                                list(x.shape), [2, 2], [2, 2], [0, 0], False,
                                                True, None, False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_compiled_many_programs_against_torch_cuda(dtype, channels_last, k, s, p):
    """Compiled kernels on a shape that spans many programs, against float64 on the same GPU."""
    x = torch.randn(4, 64, 57, 56, device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours_in = x.clone().requires_grad_()
    out = avg_pool2d(ours_in, k, s, p)
    x64 = x.double().requires_grad_()
    ref = F.avg_pool2d(x64, k, s, p)
    _assert_same_layout(out, F.avg_pool2d(x, k, s, p))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), ref, rtol=eps, atol=eps)
    upstream = torch.randn(out.shape, device=DEVICE, dtype=dtype)
    out.backward(upstream)
    ref.backward(upstream.double())
    torch.testing.assert_close(ours_in.grad.double(), x64.grad, rtol=eps, atol=eps)


# --------------------------------------------------------------------------------------------
# the layers, convert() and the spec


def test_layers_match_torch_nn():
    from tritoncnn.models import AdaptiveAvgPool2d, AvgPool2d

    x = torch.randn(2, 3, 8, 6, device=DEVICE)
    for ours, theirs in [(AvgPool2d(3, 2, 1, True, False), nn.AvgPool2d(3, 2, 1, True, False)),
                         (AvgPool2d(2, divisor_override=3), nn.AvgPool2d(2, divisor_override=3)),
                         (AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d(1)),
                         (AdaptiveAvgPool2d((4, None)), nn.AdaptiveAvgPool2d((4, None))),
                         (AdaptiveAvgPool2d((3, 4)), nn.AdaptiveAvgPool2d((3, 4)))]:
        torch.testing.assert_close(ours(x).cpu().double(), theirs(x.cpu().double()), rtol=1e-6,
                                   atol=1e-6, msg=repr(ours))


def test_adaptive_layer_uses_the_kernel_where_sizes_divide(monkeypatch):
    from tritoncnn import kernels
    from tritoncnn.models import AdaptiveAvgPool2d

    calls = []
    real = kernels.avg_pool2d
    monkeypatch.setattr(kernels, "avg_pool2d", lambda *a: calls.append(a[1:]) or real(*a))
    x = torch.randn(1, 2, 8, 6, device=DEVICE)
    AdaptiveAvgPool2d((2, 3))(x)
    assert calls == [((4, 2), (4, 2))]
    AdaptiveAvgPool2d((3, 4))(x)  # 8 / 3: windows of different sizes, PyTorch's op
    assert len(calls) == 1


def test_layer_rejects_bad_arguments_at_construction():
    from tritoncnn.models import AvgPool2d

    with pytest.raises(ValueError, match="padding"):
        AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match="divisor_override"):
        AvgPool2d(2, divisor_override=0)


class _AvgNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                                      nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                   count_include_pad=False))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):  # (N, 3, 9, 9)
        return self.fc(torch.flatten(self.gap(self.features(x)), 1))


def test_convert_replaces_average_pools_and_keeps_outputs():
    from tritoncnn.models import AdaptiveAvgPool2d, AvgPool2d, convert

    model = _AvgNet().to(DEVICE)
    x = torch.randn(2, 3, 9, 9, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left behind
        conv = convert(model)
    assert type(conv.features[2]) is AvgPool2d and type(conv.features[5]) is AvgPool2d
    assert conv.features[5].ceil_mode and not conv.features[5].count_include_pad
    assert type(conv.gap) is AdaptiveAvgPool2d
    assert not conv.convert_report.kept
    ref = model.double().cpu()(x.cpu().double())
    torch.testing.assert_close(conv(x).cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_spec_avgpool():
    from tritoncnn.models import AvgPool2d, SpecError, build, parse

    layers = parse("CONV3-4-RELU-AVGPOOL2-avgpool3S2-FC10")
    assert [(l.kind, l.size, l.stride) for l in layers if "pool" in l.kind] == [
        ("avgpool", 2, 2), ("avgpool", 3, 2)]
    torch.manual_seed(0)
    ref = build("CONV3-4-RELU-AVGPOOL2-FC10", backend="torch", in_channels=1, input_size=8)
    torch.manual_seed(0)
    net = build("CONV3-4-RELU-AVGPOOL2-FC10", backend="triton", in_channels=1, input_size=8)
    assert type(ref[2]) is nn.AvgPool2d and type(net[2]) is AvgPool2d  # never fused
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(net.to(DEVICE)(x.to(DEVICE)).cpu(), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(SpecError, match="AVGPOOL4 does not fit a 2x2 input"):
        build("AVGPOOL4-FC10", in_channels=1, input_size=2)
