"""The words and defaults the commands share: ``tritoncnn train`` and ``tritoncnn tune`` read them
here, so that a name means one thing in both and plain ``tritoncnn tune`` tunes what plain
``tritoncnn train`` launches (``tritoncnn bench`` uses the same dtype and layout names).

Precision names (``--dtype``):

* ``fp32``: float32 in IEEE arithmetic (TF32 off for cuDNN, cuBLAS and the kernels);
* ``tf32``: float32 tensors, multiplied on TF32 tensor cores (TF32 on everywhere);
* ``fp16``, ``bf16``: half precision (training runs them under ``torch.autocast``);
* ``fp64``: float64.

Layout names (``--layout``): ``channels_last`` (NHWC in memory) and ``nchw``.
Device (``--device``): ``auto`` picks ``cuda`` when torch sees a GPU, else ``cpu``.
"""

from __future__ import annotations

import contextlib

import torch

# The dtype names of every command, and the tensors' dtype each stands for.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
DTYPE_HELP = ("fp32 (IEEE float32), tf32 (float32 with TF32 tensor cores), fp16, bf16 or fp64")

LAYOUTS = ("channels_last", "nchw")
DEVICE = "auto"

# The default training run, and so the default tuning run: a small CNN on scikit-learn's 8x8
# digits, sized to finish in a few minutes on a 2-core CPU through Triton's interpreter (both
# backends) and to reach well above chance (10%).
SPEC = "CONV3-16-RELU-POOL2-CONV3-32-RELU-POOL2-FC10"
DATA = "digits"
DATA_INPUT_SHAPE = (1, 8, 8)  # one image of DATA, (C, H, W)
BATCH_SIZE = 32
DTYPE = "fp32"


def torch_dtype(name: str) -> torch.dtype:
    """The tensors' dtype of a ``--dtype`` name; a ValueError names the unknown one."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def default_layout(device_type: str) -> str:
    """channels_last on CUDA (the conv kernels' fast path), nchw on the CPU."""
    return "channels_last" if device_type == "cuda" else "nchw"


@contextlib.contextmanager
def precision(name: str):
    """TF32 on (``tf32``) or off (every other name) for cuDNN, cuBLAS and tritoncnn's float32
    kernels (which follow ``torch.backends.cudnn.allow_tf32``) inside the block."""
    torch_dtype(name)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
