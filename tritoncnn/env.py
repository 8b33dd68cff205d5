"""``tritoncnn env``: the versions and devices a bug report needs first."""

from __future__ import annotations

import os
import platform

HELP = "print Python, torch, triton, numpy, CUDA and GPU versions, and the kernel runtime mode"


def add_arguments(parser) -> None:
    pass


def device_name(device) -> str:
    """The name results are filed under: the GPU's, or the CPU's architecture and core count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({os.cpu_count()} cores)"


def report() -> dict[str, str]:
    import numpy
    import torch
    import triton

    from tritoncnn import __version__, _runtime

    cuda = torch.cuda.is_available()
    return {
        "tritoncnn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "numpy": numpy.__version__,
        "cuda (torch build)": str(torch.version.cuda),
        "cuda available": str(cuda),
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
        "gpu count": str(torch.cuda.device_count() if cuda else 0),
        "kernels run": (
            "interpreted on the CPU (TRITON_INTERPRET=1)" if _runtime.INTERPRET else "compiled"
        ) + f" [{_runtime.REASON}]",
        "cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32),
    }


def main(args) -> int:
    info = report()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
