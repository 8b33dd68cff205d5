"""tritoncnn layers: drop-in subclasses of the torch.nn layers that run on tritoncnn kernels.

Each class subclasses its torch.nn counterpart, so the constructor signature, the parameter names
(``weight``, ``bias``), the initialisation and the ``state_dict`` are PyTorch's own: a checkpoint
moves between ``nn.Conv2d`` and ``tritoncnn.models.Conv2d`` unchanged. Only ``forward`` differs: it
calls the functional ops of ``tritoncnn.kernels``. An option the kernels cannot serve raises at
construction, not on the first forward.

    Conv2d       nn.Conv2d                    -> kernels.conv2d (padding_mode 'reflect',
                                                 'replicate', 'circular': F.pad first, as
                                                 nn.Conv2d does; 'zeros' in the kernel)
    Conv2dReLU   nn.Conv2d followed by ReLU   -> kernels.conv2d_relu (bias and ReLU in the epilogue)
    Conv2dReLUPool  nn.Conv2d, ReLU, MaxPool2d(F, stride F)
                                              -> kernels.conv2d_relu_pool (one kernel; only the
                                                 pooled output is written)
    MaxPool2d    nn.MaxPool2d                 -> kernels.max_pool2d
    AvgPool2d    nn.AvgPool2d                 -> kernels.avg_pool2d
    AdaptiveAvgPool2d  nn.AdaptiveAvgPool2d   -> kernels.avg_pool2d with window = stride =
                                                 input size / output size, where it divides
                                                 evenly; other sizes run F.adaptive_avg_pool2d
    Linear       nn.Linear                    -> kernels.linear
    LinearReLU   nn.Linear followed by ReLU   -> kernels.linear(..., activation="relu")

Under ``torch.autocast`` the kernels' custom ops cast their input, weight and bias to the
autocast dtype, as autocast does for ``F.conv2d`` and ``F.linear`` (max-pool keeps its input's
dtype), so ``--dtype bf16`` trains both backends at the same precision.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tritoncnn._shapes import FLOAT_DTYPES

__all__ = ["Conv2d", "Conv2dReLU", "Conv2dReLUPool", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Linear", "LinearReLU", "TRITON_LAYERS"]


def _kernels():
    """The functional ops, imported on first use (importing them fixes Triton's runtime mode)."""
    from tritoncnn import kernels

    return kernels


def _op(name: str):
    """The functional op ``tritoncnn.kernels.<name>``."""
    return getattr(_kernels(), name)


class _ConvBase(nn.Conv2d):
    """nn.Conv2d with the options the kernels cannot serve rejected at construction. Every
    padding_mode works: 'zeros' is padded inside the kernel, the others by ``F.pad`` first."""

    _activation: str | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{type(self).__name__}: dtype={dtype} is not supported; tritoncnn kernels "
                "compute in torch.float32, torch.float16, torch.bfloat16 or torch.float64"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )

    def _padded(self, input: torch.Tensor) -> tuple:
        """(input, padding) for the kernel: with padding_mode 'reflect', 'replicate' or
        'circular' the input is padded first by ``F.pad`` and the kernel pads nothing, as
        ``nn.Conv2d`` does it; with 'zeros' the kernel pads (no padded copy)."""
        if self.padding_mode == "zeros":
            return input, self.padding
        return F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, P, Q)
        op = _op("conv2d_relu" if self._activation == "relu" else "conv2d")
        input, padding = self._padded(input)
        return op(input, self.weight, self.bias, self.stride, padding, self.dilation,
                  self.groups)


class Conv2d(_ConvBase):
    """``torch.nn.Conv2d`` on tritoncnn's implicit-GEMM conv kernel (zero padding only)."""


class Conv2dReLU(_ConvBase):
    """``torch.nn.Conv2d`` followed by ReLU, fused: bias and ReLU run in the kernel's epilogue.

    Same constructor, parameters and ``state_dict`` as ``nn.Conv2d``; the output is
    ``relu(conv2d(input))``.
    """

    _activation = "relu"

    def extra_repr(self) -> str:
        return super().extra_repr() + ", activation=relu"


class Conv2dReLUPool(_ConvBase):
    """``torch.nn.Conv2d``, ReLU and ``MaxPool2d(pool)`` (window ``pool`` x ``pool``, stride
    ``pool``) in one kernel: the lecture's CONV -> RELU -> POOL block.

    The constructor is ``nn.Conv2d``'s plus ``pool`` (default 2); parameters and ``state_dict`` are
    ``nn.Conv2d``'s. The output is ``max_pool2d(relu(conv2d(input)), pool)``, odd conv output
    sizes floored as max_pool2d floors them; the full-size conv output is never stored.
    """

    _activation = "relu"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        pool: int = 2,
    ) -> None:
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ValueError(
                f"Conv2dReLUPool: pool must be a positive int (the max-pool window and stride), "
                f"got {pool!r}"
            )
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.pool = pool

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, P/F, Q/F)
        input, padding = self._padded(input)
        return _op("conv2d_relu_pool")(input, self.weight, self.bias, self.stride, padding,
                                       self.dilation, self.groups, self.pool)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation=relu, pool={self.pool}"


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on tritoncnn's max-pool kernel (every option of ``F.max_pool2d``)."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        # PyTorch's own rule (checked only in forward there): padding at most half the window.
        ks = _pair(self.kernel_size)
        pad = _pair(self.padding)
        if any(p * 2 > k for p, k in zip(pad, ks)):
            raise ValueError(
                f"MaxPool2d: padding={self.padding} must be at most half of "
                f"kernel_size={self.kernel_size}"
            )

    def forward(self, input: torch.Tensor):  # (N, C, H, W) -> (N, C, H2, W2)
        return _op("max_pool2d")(
            input, self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
        )


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on tritoncnn's average-pool kernel (every option of
    ``F.avg_pool2d``)."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)
        # PyTorch's own rules (checked only in forward there)
        ks = _pair(self.kernel_size)
        pad = _pair(self.padding)
        if any(p * 2 > k for p, k in zip(pad, ks)):
            raise ValueError(
                f"AvgPool2d: padding={self.padding} must be at most half of "
                f"kernel_size={self.kernel_size}"
            )
        if divisor_override == 0:
            raise ValueError("AvgPool2d: divisor_override must not be zero")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H2, W2)
        return _op("avg_pool2d")(
            input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` on tritoncnn's average-pool kernel where the output size
    divides the input size (global average pooling, 8x8 -> 4x4, ...): then every adaptive window
    is the same non-overlapping input/output window. Other sizes give windows of different
    sizes, which the kernel does not take; they run ``F.adaptive_avg_pool2d``, so a converted
    model works at every input size."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, *out)
        h, w = input.shape[-2:]
        out = _pair(self.output_size)
        oh, ow = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
        if input.dim() not in (3, 4) or not (0 < oh <= h and 0 < ow <= w) or h % oh or w % ow:
            return F.adaptive_avg_pool2d(input, self.output_size)
        window = (h // oh, w // ow)
        return _op("avg_pool2d")(input, window, window)


class _LinearBase(nn.Linear):
    _activation: str | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{type(self).__name__}: dtype={dtype} is not supported; tritoncnn kernels "
                "compute in torch.float32, torch.float16, torch.bfloat16 or torch.float64"
            )
        super().__init__(in_features, out_features, bias, device, dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (*, in) -> (*, out)
        return _op("linear")(input, self.weight, self.bias, activation=self._activation)


class Linear(_LinearBase):
    """``torch.nn.Linear`` on tritoncnn's GEMM kernel."""


class LinearReLU(_LinearBase):
    """``torch.nn.Linear`` followed by ReLU, fused into the kernel's epilogue."""

    _activation = "relu"

    def extra_repr(self) -> str:
        return super().extra_repr() + ", activation=relu"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# Every layer class this module defines; convert() and the fx tracer treat them as leaves.
TRITON_LAYERS = (Conv2d, Conv2dReLU, Conv2dReLUPool, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
                 Linear, LinearReLU)
