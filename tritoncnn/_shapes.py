"""Argument and size helpers shared by the kernels' launchers and the autotuner's shape dicts.

One definition each, so that a launcher and ``tritoncnn tune`` can never disagree on what a layer's
arguments mean. Imports nothing from the subpackages (both of them import this).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


#: the dtypes the kernels compute in (float32 with TF32 or without, float16, bfloat16, float64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def as_pair(value, name: str, *, prefix: str = "",
            errors: tuple[type, type] = (ValueError, ValueError)) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``(2, 3)`` or ``[2, 3]`` -> ``(2, 3)``; ``(3,)`` -> ``(3, 3)``.

    Anything else raises, naming ``name`` after ``prefix``: ``errors[0]`` for a value that is not
    an int or a sequence of ints, ``errors[1]`` for a sequence of the wrong length (conv raises
    ValueError for both; max-pool raises PyTorch's TypeError and RuntimeError).
    """
    if type(value) is int:  # the common cases first: launchers call this on every launch
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int is type(value[1]):
        return value
    if type(value) is list and len(value) == 2 and type(value[0]) is int is type(value[1]):
        return value[0], value[1]  # (the custom ops' list arguments)
    type_error, length_error = errors
    if _is_int(value):
        return value, value
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not all(_is_int(v) for v in value):
            raise type_error(f"{prefix}{name} must be an int or a pair of ints, got {value!r}")
        if len(value) == 1:
            return value[0], value[0]
        if len(value) == 2:
            return value[0], value[1]
        raise length_error(f"{prefix}{name} must either be a single int, or a pair of ints, "
                           f"got {value!r}")
    raise type_error(f"{prefix}{name} must be an int or a pair of ints, "
                     f"got {type(value).__name__} {value!r}")


def pooled_len(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Max-pool output length along one dimension, exactly as PyTorch's ``pooling_output_shape``."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def conv_len(size: int, k: int, s: int, pad_total: int, d: int) -> int:
    """Conv output length along one dimension with ``pad_total`` padding on both sides together."""
    return (size + pad_total - d * (k - 1) - 1) // s + 1


def window_rows(pool: int) -> bool:
    """Whether the fused conv + ReLU + max-pool kernel tiles whole windows as GEMM rows (one
    accumulator, the window maximum taken by a reduction over rows): when a window's pool*pool
    elements are a power of two (Triton tiles are). Otherwise its rows are pooled pixels and its
    mainloop runs once per window element, with a running maximum and offset beside the
    accumulator (three register tiles)."""
    e = pool * pool
    return e & (e - 1) == 0


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code (``triton.cdiv`` unwraps constexprs on every call: ~7 us)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for host code."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
