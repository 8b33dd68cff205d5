"""Runtime mode: compiled Triton kernels on a CUDA device, or Triton's interpreter on the CPU.

Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` decorator runs, so the mode is fixed here,
when ``tritoncnn`` is first imported and before any kernel module is. ``TRITONCNN_MODE`` forces it:

* ``auto`` (default): compiled when ``torch.cuda.is_available()``, else interpreted;
* ``compiled``: compiled kernels, CUDA tensors only;
* ``interpret``: Triton's interpreter, CPU tensors only.

An explicit ``TRITON_INTERPRET=1`` in the environment also means interpreted.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings

import torch

MODES = ("auto", "compiled", "interpret")
ENV_VAR = "TRITONCNN_MODE"


def _choose_mode() -> tuple[str, str]:
    """Return (mode, reason)."""
    asked = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if asked not in MODES:
        raise ValueError(f"{ENV_VAR}={asked!r} is not one of {', '.join(MODES)}")
    if asked != "auto":
        return asked, f"{ENV_VAR}={asked}"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "interpret", "TRITON_INTERPRET is set"
    if torch.cuda.is_available():
        return "compiled", "a CUDA device is present"
    return "interpret", "no CUDA device"


MODE, REASON = _choose_mode()
INTERPRET = MODE == "interpret"

os.environ["TRITON_INTERPRET"] = "1" if INTERPRET else "0"


class InterpreterWarning(UserWarning):
    """Kernels run on Triton's interpreter because no CUDA device was found. Silence it with
    ``warnings.filterwarnings("ignore", category=tritoncnn.InterpreterWarning)``, with
    ``python -W "ignore:no CUDA device"`` (or ``PYTHONWARNINGS``), or by choosing the mode:
    ``TRITONCNN_MODE=interpret``."""


_noticed = not (INTERPRET and REASON == "no CUDA device")


def notice() -> None:
    """Say once per process, as an :class:`InterpreterWarning`, that kernels run interpreted
    because there is no CUDA device. Called at the first kernel launch and when a command
    starts work, not at import: ``import tritoncnn`` and ``tritoncnn --help`` stay quiet."""
    global _noticed
    if _noticed:
        return
    _noticed = True
    warnings.warn(
        "no CUDA device, so tritoncnn's Triton kernels run interpreted on the CPU (slowly); "
        f"set {ENV_VAR}=compiled or interpret to choose",
        InterpreterWarning, stacklevel=3,
    )


def device_type() -> str:
    """The device type kernels can serve in this mode: 'cpu' (interpreted) or 'cuda' (compiled)."""
    return "cpu" if INTERPRET else "cuda"


def check_device(name: str, tensor: torch.Tensor, meta_ok: bool = False) -> None:
    """Raise a clear error when ``tensor`` lives where the current mode cannot run kernels.
    ``meta_ok``: meta tensors pass too (the functional API sends them to the custom ops, whose
    fake kernels compute the output shapes and launch nothing)."""
    want = device_type()
    if tensor.device.type != want and not (meta_ok and tensor.is_meta):
        how = "interpreted (CPU tensors only)" if INTERPRET else "compiled (CUDA tensors only)"
        raise RuntimeError(
            f"{name} is on device {tensor.device}, but tritoncnn kernels run {how} in this "
            f"process ({REASON}); move the tensor to {want!r} or set {ENV_VAR}"
        )


# Launches --------------------------------------------------------------------------------------

_COMPILE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("tritoncnn_compile_only",
                                                                     default=False)


@contextlib.contextmanager
def compile_only():
    """Inside this block every tritoncnn kernel launch only compiles its kernel (Triton's
    ``warmup``) and runs nothing: outputs are left unwritten. Under Triton's ``AsyncCompileMode``
    the compilations go to its executor, which is how the tuner compiles all of a problem's configs
    in parallel before it times them."""
    token = _COMPILE_ONLY.set(True)
    try:
        yield
    finally:
        _COMPILE_ONLY.reset(token)


class LaunchCount(dict):
    """Launches counted by kernel name (a dict: name -> count); :attr:`total` sums them."""

    def __init__(self, run: bool) -> None:
        super().__init__()
        self.run = run

    @property
    def total(self) -> int:
        return sum(self.values())

    def add(self, kernel) -> None:
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None),
                                                            "__name__", repr(kernel))
        self[name] = self.get(name, 0) + 1


# A process-wide switch, not a context variable like compile_only's: autograd runs the backward
# of CUDA tensors on its own device threads, which would not see a context variable set here.
_counting: LaunchCount | None = None


@contextlib.contextmanager
def count_launches(run: bool = True):
    """Inside this block every tritoncnn kernel launch is counted, by kernel name, in the
    :class:`LaunchCount` it yields. With ``run=False`` the launches are stubbed: nothing is
    compiled or run and outputs are left as allocated (unwritten), so what remains of an op call
    is its host code alone — what ``tritoncnn bench --host`` times on the CPU, where the
    interpreter would otherwise run the kernels. Blocks nest; the innermost one counts."""
    global _counting
    outer, _counting = _counting, LaunchCount(run)
    try:
        yield _counting
    finally:
        _counting = outer


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, or its compile-only warm-up inside :func:`compile_only`,
    counted (and possibly stubbed) inside :func:`count_launches`.
    Every tritoncnn launch goes through here; its first argument, positional or keyword, is a
    tensor of the op.

    Triton launches on the current CUDA device: when the tensors live on another one (a model on
    ``cuda:1`` with ``cuda:0`` current), their device is made current for the launch, as
    PyTorch's own ops do."""
    if not _noticed:
        notice()
    if _counting is not None:
        _counting.add(kernel)
        if not _counting.run:
            return None
    if _COMPILE_ONLY.get():
        return kernel.warmup(*args, grid=grid, **kwargs)
    first = args[0] if args else next(iter(kwargs.values()), None)
    device = getattr(first, "device", None)
    if device is not None and device.type == "cuda" and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            return kernel[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)
