"""Helpers shared by the host launchers: argument parsing, input checks, precision choice."""

from __future__ import annotations

from typing import Sequence

import torch

from tritoncnn import _runtime

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

INTERPRET = _runtime.INTERPRET


def as_pair(value, name: str) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``(2, 3)`` -> ``(2, 3)``; anything else is a ValueError naming ``name``."""
    if isinstance(value, torch.SymInt) or isinstance(value, int) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 1:
            return as_pair(value[0], name)
        if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_float(name: str, tensor: torch.Tensor) -> None:
    """Kernels compute in float32, float16 or bfloat16 only."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; tritoncnn kernels support "
            "torch.float32, torch.float16 and torch.bfloat16"
        )


def check_device(name: str, tensor: torch.Tensor) -> None:
    """The tensor must live where this process runs kernels (CPU: interpreted, CUDA: compiled)."""
    _runtime.check_device(name, tensor)


def is_channels_last(tensor: torch.Tensor) -> bool:
    """True when a 4-D tensor is laid out NHWC (and is not also plainly NCHW-contiguous)."""
    return (
        tensor.dim() == 4
        and tensor.is_contiguous(memory_format=torch.channels_last)
        and not tensor.is_contiguous()
    )


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format an op's output should keep for this input."""
    return torch.channels_last if is_channels_last(tensor) else torch.contiguous_format


def dot_precision(dtype: torch.dtype, allow_tf32: bool | None = None) -> str:
    """``input_precision`` for ``tl.dot``; float32 follows ``torch.backends.cudnn.allow_tf32``.

    Never left to Triton's default, which changed between releases. The interpreter has no TF32
    and always computes in IEEE float32.
    """
    if dtype != torch.float32:
        return "ieee"  # fp16/bf16 operands: the tensor cores' native precision
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    return "tf32" if (allow_tf32 and not INTERPRET) else "ieee"
