"""Argument checks, memory-format rules and vector-width hints shared by the host launchers."""

from __future__ import annotations

import math
from typing import Optional

import torch

from tritoncnn import _runtime, autotune
from tritoncnn._shapes import (  # noqa: F401 (re-exported)
    FLOAT_DTYPES, as_pair, cdiv, conv_len, next_pow2, pooled_len,
)

INTERPRET = _runtime.INTERPRET
launch = _runtime.launch  # every kernel launch: kernel[grid](...) or its compile-only warm-up
KernelLaunch = _runtime.KernelLaunch  # a launch prepared once per shape, made many times


class PlanCache:
    """A launcher's work prepared per call signature (the key: shapes, strides, dtype, device
    and arguments of a call): configs looked up, strides and vector hints derived, launches
    prepared (:class:`KernelLaunch`), so that a layer's later calls with the same signature
    re-derive nothing. Emptied whenever a launch config may have changed
    (``autotune.plan_epoch``); inside ``autotune.record_calls`` nothing is kept, so that every
    lookup is seen."""

    LIMIT = 4096  # signatures kept before starting over (a model has a few dozen)

    def __init__(self) -> None:
        self.plans: dict = {}
        self.epoch = None

    def get(self, key):
        """The plan prepared for ``key``, or None."""
        epoch = autotune.plan_epoch()
        if epoch != self.epoch:
            self.plans.clear()
            self.epoch = epoch
        return self.plans.get(key) if epoch is not None else None

    def lookup(self, key, build):
        """The plan kept for ``key``, else ``build()``'s, kept for it unless ``key`` is None (a
        call with launch-config overrides) or the plan is (nothing to launch again)."""
        plan = None if key is None else self.get(key)
        if plan is None:
            plan = build()
            if key is not None and plan is not None:
                self.put(key, plan)
        return plan

    def put(self, key, plan) -> None:
        """Keep ``plan`` for ``key`` (unless inside ``autotune.record_calls``)."""
        if self.epoch is None:
            return
        if len(self.plans) >= self.LIMIT:
            self.plans.clear()
        self.plans[key] = plan


def check_float(name: str, tensor: torch.Tensor) -> None:
    """Kernels compute in float32, float16, bfloat16 or float64 only."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; tritoncnn kernels support "
            "torch.float32, torch.float16, torch.bfloat16 and torch.float64"
        )


def check_device(name: str, tensor: torch.Tensor, meta_ok: bool = False) -> None:
    """The tensor must live where this process runs kernels (CPU: interpreted, CUDA: compiled),
    or, with ``meta_ok``, on the meta device (shapes only, through the custom ops)."""
    _runtime.check_device(name, tensor, meta_ok)


def autocast_enabled(tensor: torch.Tensor) -> bool:
    """Whether ``torch.autocast`` is on for the tensor's device type (never for meta tensors,
    whose device type autocast does not know)."""
    kind = tensor.device.type
    return kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind)


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Whether an op's output for this input is channels_last: PyTorch's ``suggest_memory_format()``
    rule (``is_channels_last_strides_2d``), which F.conv2d and F.max_pool2d follow.

    4-D strides must run N, H, W, C from largest to smallest; size-1 dimensions are ambiguous and
    resolve to NCHW. So sliced channels_last views (``x[:, :3]``, ``x[:, :, 1:]``) stay
    channels_last; 3-D input never is.
    """
    shape = tensor.shape
    if len(shape) != 4 or tensor.stride(1) == 0:
        return False
    if 1 not in shape and 0 not in shape:  # unambiguous dense tensors: PyTorch answers in C++
        if tensor.is_contiguous(memory_format=torch.channels_last):
            return True
        if tensor.is_contiguous():
            return False
    smallest = 0
    for d in (1, 3, 2, 0):
        size, stride = shape[d], tensor.stride(d)
        if size == 0 or stride < smallest or d == 0 and smallest == tensor.stride(1):
            return False
        smallest = stride * size if size > 1 else stride
    return True


def channels_inner(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (4-D) with its dimension 1 (channels) at stride 1, as the conv kernels read
    their operands fast (contiguous, vectorised, pipelined tile loads along the channels): itself
    when it already is (channels_last tensors and their views, a single channel), else a
    channels_last copy. Outputs keep the format of the caller's tensors, not of these copies."""
    if tensor.stride(1) == 1 or tensor.shape[1] == 1:
        return tensor
    return tensor.contiguous(memory_format=torch.channels_last)


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format an op's output keeps for this input (see :func:`is_channels_last`)."""
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



def pixel_vector(width: int, strides, unit_stride: int, most: int = 16) -> int:
    """The largest power of two, at most ``most``, dividing ``width`` (a row's pixels) and
    ``strides`` (the tensor's other strides), when the pixels are at ``unit_stride`` 1; else 1.
    Launchers pass those values divided by it and the kernel multiplies them back, which tells
    the compiler that runs of that many pixels are contiguous and aligned (a hint: exact for any
    divisor)."""
    if unit_stride != 1:
        return 1
    vec = most
    while vec > 1 and any(v % vec for v in (width, *strides)):
        vec //= 2
    return vec


def channel_vector(channels: int, *operands: tuple) -> int:
    """The largest power of two, at most 16, dividing ``channels`` (a group's channel count) and
    the strides of ``operands`` (``kernel_strides`` of channels-inner tensors, NCHW order) other
    than their channel stride (1, or 0 for one channel).

    The conv kernels load tiles along the channels. Triton marks an integer argument as a multiple
    of 16 or as nothing, so with 24 channels (or 40, 120, ...) it knows no alignment of a pixel's
    channels nor where a channel mask changes, and loads element by element: scalar 2-byte
    loads in bf16, which cp.async cannot pipeline. Launchers pass the channel count and those
    strides divided by this factor (:func:`channel_strides`) and the kernels multiply them back
    (``CV``, ``KV``): a hint, exact for any divisor. Where all of them are multiples of 16,
    Triton's own specialization says so: the factor is then 1 (multiplying back would only add
    instructions and registers)."""
    g = math.gcd(channels, *(s for st in operands for s in (st[0], st[2], st[3])))
    vec = g & -g  # the largest power of two dividing g (0 when g is 0: everything is 0)
    return vec if 0 < vec < 16 else 1


def channel_strides(strides: tuple, vec: int) -> tuple:
    """``strides`` (N, C, H, W order) with all but the channel stride divided by ``vec``."""
    n, c, h, w = strides
    return n // vec, c, h // vec, w // vec


def kernel_strides(tensor: torch.Tensor) -> tuple:
    """``tensor``'s strides as the kernels take them: 0 for a dimension of size 1, whose index is
    always 0 (any stride addresses it; PyTorch gives such dimensions arbitrary ones, often 1).
    A stride of 1 there would tell the compiler nothing about alignment: a linear layer's input
    (B, C, 1, 1) has H and W strides 1, and its loads were scalar; 0 keeps them vectorised."""
    shape, strides = tensor.shape, tensor.stride()
    if 1 not in shape:  # the common case, without a Python loop (host time on every launch)
        return strides
    return tuple(0 if size == 1 else stride for size, stride in zip(shape, strides))


def register_tiles(dtype: torch.dtype, allow_tf32: Optional[bool]) -> bool:
    """Compiled dots whose operand tiles pass through registers: float32 without TF32 (tl.dot on
    the FMA units) and float64 (mma.sync's fp64 shapes). Their tiles are capped by
    ``autotune.spaces.cap_ieee`` (IEEE_CAPS, FP64_CAPS), and their launches have cache entries of
    their own."""
    if INTERPRET:
        return False
    return dtype == torch.float64 or dtype == torch.float32 and \
        dot_precision(dtype, allow_tf32) == "ieee"


def dot_args(dtype: torch.dtype, allow_tf32: Optional[bool]) -> dict:
    """DOT_FP32 (bf16 tiles upcast under the interpreter) and PRECISION for the kernels."""
    return dict(DOT_FP32=INTERPRET and dtype == torch.bfloat16,
                PRECISION=dot_precision(dtype, allow_tf32))


def launch_opts(cfg: dict) -> dict:
    return dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def resolve_tf32(allow_tf32: Optional[bool]) -> bool:
    """Fix the float32 dot precision at forward time, so backward uses the same one."""
    return torch.backends.cudnn.allow_tf32 if allow_tf32 is None else bool(allow_tf32)


def bias_operand(bias, weight: torch.Tensor) -> torch.Tensor:
    """The bias as the kernels read it, one value per output channel at stride 1: a strided or
    expanded view (``b[::2]``, ``b.expand(K)``, a vmapped ensemble's slice) becomes a contiguous
    copy; with no bias, any tensor of the op stands in (``HAS_BIAS`` off: never read)."""
    if bias is None:
        return weight
    return bias if bias.stride(0) == 1 or bias.shape[0] <= 1 else bias.contiguous()
