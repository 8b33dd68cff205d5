"""Tests run on the CPU through Triton's interpreter, and compiled on a GPU when one is present:
the same files, with ``DEVICE`` chosen by tritoncnn's runtime mode."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from tritoncnn import _runtime

DEVICE = _runtime.device_type()
INTERPRET = _runtime.INTERPRET


@pytest.fixture
def device() -> str:
    return DEVICE


def pytest_collection_modifyitems(config, items):
    if INTERPRET:
        skip = pytest.mark.skip(reason="needs compiled kernels on a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Every test starts with no launches prepared from an earlier one (a test that patches a
    heuristic must see its launches look their configs up again)."""
    from tritoncnn.autotune import cache

    cache.configs_changed()


def spy_launches(monkeypatch) -> list:
    """Record every tritoncnn kernel launch as (kernel name, grid, args, kwargs), and make it:
    prepared launches (``KernelLaunch``) and direct ones alike."""
    real = _runtime.launch
    launched = []

    def spy(kernel, grid, *args, **kwargs):
        launched.append((kernel.__name__, grid, args, kwargs))
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_runtime, "launch", spy)
    for name, module in list(sys.modules.items()):
        if name.startswith("tritoncnn.") and getattr(module, "launch", None) is real:
            monkeypatch.setattr(module, "launch", spy)
    return launched


@contextlib.contextmanager
def ieee_fp32():
    """PyTorch's float32 convolutions and matmuls without TF32 (a GPU's default for cuDNN) inside
    the block, so that a float32 PyTorch reference is IEEE like the kernels' allow_tf32=False."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 with the mantissa cut to TF32's 10 bits, layout kept: values a TF32 tensor
    core multiplies exactly, so that a float64 reference of TF32 kernels sees the same products
    and only the float32 sums differ."""
    return (t.float().view(torch.int32) & ~0x1FFF).view(torch.float32)


# Tolerance per element of the conv tests: base * reduction length (float64 reference), and rtol.
TOL = {torch.float32: (1e-6, 1e-5), torch.float16: (2e-5, 2e-3), torch.bfloat16: (1e-4, 1.6e-2),
       torch.float64: (1e-15, 1e-12)}


def compare(name, got, want, base, rtol, reduce_len):
    """``got`` against the float64 ``want`` within ``base * reduce_len + rtol * |want|``; a
    failure says how many elements are off, by how much, and where the first one is."""
    atol = base * reduce_len
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{got.numel()} elements off, max error {err.max():.3g} "
            f"(atol {atol:.3g}, rtol {rtol}); first at {where}: got {got[where]:.6g}, "
            f"want {want[where]:.6g}"
        )


# The pool tests' channels_last inputs: plain, one channel (ambiguous strides), a sliced view.
CHANNELS_LAST_INPUTS = [
    pytest.param(lambda: torch.randn(2, 5, 7, 8).to(memory_format=torch.channels_last),
                 id="nhwc"),
    pytest.param(lambda: torch.randn(2, 1, 7, 8).to(memory_format=torch.channels_last),
                 id="nhwc-one-channel"),
    pytest.param(lambda: torch.randn(2, 9, 8, 10).to(memory_format=torch.channels_last)[
        :, 1::2, 1:, :9], id="nhwc-sliced"),
]
