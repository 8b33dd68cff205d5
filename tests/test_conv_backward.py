"""The conv backward (dX, dW, db of conv2d / conv2d_relu) beyond the shared value-and-gradient
checks of test_conv.py: only the gradients asked for, the launchers' paths (a k-innermost weight
for TF32 dX, dW stored in place or summed over splits, no input channels), determinism, and the
dW split heuristic's device query."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tritoncnn.kernels import Conv2dFunction, conv2d, conv2d_relu
from tritoncnn.kernels.conv_backward import conv2d_backward
from tritoncnn.kernels.geometry import resolve_geometry

from conftest import DEVICE, spy_launches
from test_conv import CASES, SMALL_TILES, _check_case, _function_grads, _make


@pytest.mark.parametrize("name", ["stride2", "groups2", "depthwise_x2", "nonsquare",
                                  "stride2_dilation2", "stride3_kernel2", "many_channels"])
def test_dx_runs_on_the_forward_kernel_per_stride_phase(name, monkeypatch):
    """dX is one forward convolution per stride phase (stride_h * stride_w of them, fewer where a
    phase has no pixels), each reading its taps of the weight flipped, transposed and k-innermost
    (K-major for TF32's tensor cores) and writing its pixels of dX in place: every geometry gets
    PyTorch's gradients (TF32 float32)."""
    spied = spy_launches(monkeypatch)
    _check_case(CASES[name], channels_last=name != "many_channels", tf32=True)
    launched = [(kernel, kw) for kernel, _, _, kw in spied]
    weights = [kw["wt_ptr"] for n, kw in launched if n == "_dx_weight_kernel"]
    N, C, H, W, K, (R, S), stride, padding, dilation, groups = CASES[name]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    assert 1 <= len(weights) <= sh * sw
    assert all(wt.stride(1) == 1 and wt.shape[:2] == (C, K // groups) for wt in weights)
    assert sum(wt.shape[2] * wt.shape[3] for wt in weights) <= R * S
    dx_launches = [kw for n, kw in launched
                   if n == "_conv_fwd_kernel" and any(kw["w_ptr"] is wt for wt in weights)]
    assert len(dx_launches) == len(weights)


@pytest.mark.parametrize("stride, dilation, R, H", [(2, 1, 3, 7), (2, 2, 3, 9), (3, 1, 2, 8),
                                                    (2, 1, 1, 6), (3, 2, 3, 10), (1, 1, 3, 5)])
def test_stride_phases_cover_every_input_pixel_once(stride, dilation, R, H):
    """The phases of one axis partition the input rows, their taps partition the filter's, and a
    phase's forward convolution has exactly its row count as output."""
    from tritoncnn.kernels.conv_backward import _phase
    from tritoncnn._shapes import conv_len

    for pad in range(0, dilation * (R - 1) + 2):
        P = conv_len(H, R, stride, 2 * pad, dilation)
        if P <= 0:
            continue
        rows, taps = [], []
        for a in range(stride):
            ph = _phase(a, pad, stride, dilation, H, R, P)
            rows += range(ph.first, H, stride)[:ph.count]
            taps += [ph.r0 + i * ph.step for i in range(ph.taps)]
            if ph.taps:
                assert conv_len(P, ph.taps, 1, ph.before + ph.after, ph.dilation) == ph.count
        assert sorted(rows) == list(range(H)) and sorted(taps) == list(range(R))


def test_only_needed_gradients():
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE)
    conv2d_relu(x, w, b).sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None
    x.requires_grad_()
    w.grad = None
    w.requires_grad_(False)
    conv2d(x, w, b).sum().backward()
    assert x.grad is not None and w.grad is None


@pytest.mark.parametrize("configs", [None, "small"])
def test_backward_launcher_returns_only_needed(configs):
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    w = torch.randn(40, 3, 3, 3, device=DEVICE)
    geometry = resolve_geometry(x.shape, w.shape, (40,), 1, 1)
    grad = torch.randn(2, 40, 6, 6, device=DEVICE)
    dx, dw, db = conv2d_backward(grad, x, w, None, geometry, needs=(False, False, True),
                                 allow_tf32=False, configs=SMALL_TILES if configs else None)
    assert dx is None and dw is None
    torch.testing.assert_close(db, grad.sum((0, 2, 3)), atol=1e-4, rtol=1e-5)


def test_backward_is_deterministic():
    x = torch.randn(2, 6, 5, 7, device=DEVICE)
    w = torch.randn(8, 6, 3, 3, device=DEVICE)
    b = torch.randn(8, device=DEVICE)
    grad = torch.randn(2, 8, 5, 7, device=DEVICE)
    _, first = _function_grads(x, w, b, grad, SMALL_TILES)
    _, second = _function_grads(x, w, b, grad, SMALL_TILES)
    for a, c in zip(first, second):
        assert torch.equal(a, c)
    # and through the public API with the default (tuned or heuristic) configs
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        conv2d_relu(*leaves, padding=1).backward(grad)
        runs.append([t.grad for t in leaves])
    for a, c in zip(*runs):
        assert torch.equal(a, c)


@pytest.mark.parametrize("split", [1, 3])
def test_dw_single_split_stores_in_place(monkeypatch, split):
    """SPLIT = 1 casts dW and db straight into the weight's layout: no fp32 partials and no
    _sum_splits launch; more splits go through one launch for both. Both match the reference."""
    launched = spy_launches(monkeypatch)
    case = (2, 5, 7, 6, 6, (3, 2), 1, 1, 1, 1)
    N, C, H, W, K, (R, S), stride, padding, dilation, groups = case
    x, w, b = _make(case, torch.float16, channels_last=True)
    xs, ws, bs = (t.to(DEVICE, torch.float16).requires_grad_() for t in (x, w, b))
    ws = ws.detach().contiguous(memory_format=torch.channels_last).requires_grad_()  # dW keeps it
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, SPLIT=split)
    y = Conv2dFunction.apply(xs, ws, bs, stride, padding, dilation, groups, "relu", False,
                             {"conv_dw": cfg})
    grad = torch.randn(y.shape).to(torch.float16)
    y.backward(grad.to(DEVICE))
    refs = [t.double().requires_grad_() for t in (x, w, b)]
    F.relu(F.conv2d(*refs, stride, padding, dilation, groups)).backward(grad.double())
    summed = [name for name, *_ in launched if name == "_sum_splits_kernel"]
    assert len(summed) == (0 if split == 1 else 1)
    assert ws.grad.stride() == ws.stride() and ws.grad.dtype == torch.float16
    torch.testing.assert_close(ws.grad.double().cpu(), refs[1].grad, atol=2e-5 * N * H * W,
                               rtol=2e-3)
    torch.testing.assert_close(bs.grad.double().cpu(), refs[2].grad, atol=2e-5 * N * H * W,
                               rtol=2e-3)


@pytest.mark.parametrize("split", [1, 2])
def test_no_input_channels_still_gives_the_bias_gradient(split):
    """C = 0: the output is the bias (through ReLU), dW and dX are empty, and db is the masked
    sum of the upstream gradient, computed although there are no dW tiles."""
    x = torch.randn(2, 0, 5, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.tensor([0.5, -1.0, 2.0, 0.0], device=DEVICE, requires_grad=True)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, SPLIT=split)
    y = Conv2dFunction.apply(x, w, b, 1, 1, 1, 1, "relu", False, {"conv_dw": cfg})
    assert y.shape == (2, 4, 5, 6)
    torch.testing.assert_close(y, F.relu(b.detach()).view(1, 4, 1, 1).expand_as(y))
    g = torch.randn_like(y)
    y.backward(g)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    torch.testing.assert_close(b.grad, (g * (y > 0)).sum((0, 2, 3)))


def test_sm_count_is_read_once_per_device(monkeypatch):
    """The dW split heuristic's SM count is cached per device: get_device_properties runs once."""
    import types

    from tritoncnn.autotune import heuristics

    calls = []

    def props(device):
        calls.append(device)
        return types.SimpleNamespace(multi_processor_count=132)

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    heuristics._num_sms.cache_clear()
    try:
        device = torch.device("cuda", 7)
        assert [heuristics._num_sms(device) for _ in range(3)] == [132] * 3
        assert len(calls) == 1
    finally:
        heuristics._num_sms.cache_clear()
