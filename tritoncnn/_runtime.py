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
import inspect
import logging
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
        name = _names.get(kernel)
        if name is None:
            name = _names[kernel] = getattr(kernel, "__name__", None) or getattr(
                getattr(kernel, "fn", None), "__name__", repr(kernel))
        self[name] = self.get(name, 0) + 1


_names: dict = {}  # kernel -> its name, as LaunchCount counts it


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
    if first.__class__ not in _PLAIN and tracing(first):
        return traceable(kernel)[grid](*args, **kwargs)
    device = getattr(first, "device", None)
    if device is not None and device.type == "cuda" and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            return kernel[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)


# Tracing -----------------------------------------------------------------------------------------

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def tracing(tensor) -> bool:
    """Whether a launch on ``tensor`` is being traced rather than run: a fake tensor (or a
    functional wrapper of one), as torch.compile's AOT tracing, ``make_fx`` and the fake kernels
    pass the ops' bodies. Such a launch must become a ``triton_kernel_wrapper`` node of the graph
    (:func:`traceable`), which Inductor compiles into a launch of the same kernel; it cannot
    run, as there is no data."""
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(tensor, torch.Tensor) and is_fake(tensor)


def traceable(kernel):
    """``torch.library.wrap_triton(kernel)``: the kernel as a traced launch records it. Triton's
    interpreter makes ``@triton.jit`` return an ``InterpretedFunction``, which ``wrap_triton``
    hands back unwrapped (it would then be called on fake tensors); the graph takes a
    :class:`_InterpretedJIT` of it instead, so that tracing records the same nodes on the CPU as
    on a GPU, and running the graph runs the interpreter."""
    from torch._library.triton import is_wrap_triton_enabled

    if not INTERPRET or not is_wrap_triton_enabled():
        return torch.library.wrap_triton(kernel)
    from torch._higher_order_ops.triton_kernel_wrap import TraceableTritonKernelWrapper

    twin = _twins.get(kernel)
    if twin is None:
        twin = _twins[kernel] = _interpreted_jit()(kernel)
    return TraceableTritonKernelWrapper(twin, None, None)


_twins: dict = {}  # interpreted kernel -> its _InterpretedJIT


def _interpreted_jit():
    """The class :class:`_InterpretedJIT` (made on first use: it subclasses Triton's
    ``JITFunction``, which the CPU-only import path never needs)."""
    global _InterpretedJIT
    if _InterpretedJIT is None:
        from triton.runtime.jit import JITFunction

        class InterpretedJIT(JITFunction):
            """A ``JITFunction`` over an interpreted kernel's Python function, for tracing
            (which reads a JITFunction's parameters and source); launching it, as a traced
            graph does when it runs, runs the interpreted kernel."""

            def __init__(self, interpreted) -> None:
                super().__init__(interpreted.fn)
                self.interpreted = interpreted

            def __getitem__(self, grid):
                return self.interpreted[grid]

            def run(self, *args, **kwargs):
                return self.interpreted.run(*args, **kwargs)

            @property
            def cache_key(self) -> str:
                # (JITFunction's hashes the source of every jitted function the kernel calls,
                # which it refuses when they are interpreted ones)
                return f"interpreted {self.fn.__module__}.{self.fn.__qualname__}"

        _InterpretedJIT = InterpretedJIT
        # Tracing reads which arguments a kernel writes from its TTIR, which needs a GPU target:
        # on the interpreter the analysis always fails, and warns (with a traceback) that every
        # argument counts as written, which only costs copies. That warning says nothing here.
        logging.getLogger("torch._dynamo").addFilter(
            lambda record: "assuming every input is mutated" not in str(record.msg))
    return _InterpretedJIT


_InterpretedJIT = None


class KernelLaunch:
    """One kernel launch prepared once and made many times: its grid and every argument but its
    tensors fixed (scalars, strides, constexprs, ``num_warps``...), the tensors given per call
    by name. What a layer's launcher keeps per shape, so that a call re-derives nothing.

    A call goes through :func:`launch` (so counting, stubbing, compile-only and the device switch
    behave as for any launch) until a launch has returned the compiled kernel; from then on,
    compiled, a call hands the arguments straight to that kernel (what ``JITFunction.run`` does
    after binding, specializing and looking the kernel up, about 30 us a launch): with the
    arguments in the kernel's order, on the current stream, with Triton's launch hooks. The
    compiled kernel is only valid for the specialization it was compiled for: every integer
    argument is fixed here, and tensors must be as aligned as they were (16-byte aligned, all of
    them, or the call takes :func:`launch`'s route), on the device it ran on."""

    __slots__ = ("kernel", "grid", "fixed", "slots", "compiled", "device")

    def __init__(self, kernel, grid: tuple, tensors: tuple, **fixed) -> None:
        self.kernel, self.grid, self.fixed = kernel, grid, fixed
        if any(isinstance(v, torch.Tensor) for v in fixed.values()):
            raise TypeError("a prepared launch takes its tensors per call, not fixed")
        params = _parameters(kernel)
        unknown = [n for n in (*tensors, *fixed) if n not in params and n not in _OPTIONS]
        left = [n for n, p in params.items()
                if n not in tensors and n not in fixed and p.default is inspect.Parameter.empty]
        if unknown or left:
            raise TypeError(f"prepared launch of {kernel.fn.__name__}: unknown arguments "
                            f"{unknown}, missing {left}")
        # every argument of the kernel in its order (as Triton's binder passes them to the
        # compiled kernel): a tensor's name, or (its fixed or default value,)
        self.slots = tuple(n if n in tensors else (fixed[n] if n in fixed else p.default,)
                           for n, p in params.items())
        self.compiled = None
        self.device = None

    def __call__(self, **tensors):
        compiled = self.compiled
        if compiled is not None and _counting is None and not _COMPILE_ONLY.get() and \
                _fast_device(tensors) == self.device:
            from triton import knobs

            args = self.arguments(tensors)
            stream = _stream(self.device)
            grid = self.grid
            compiled.run(grid[0], grid[1] if len(grid) > 1 else 1,
                         grid[2] if len(grid) > 2 else 1, stream, compiled.function,
                         compiled.packed_metadata, compiled.launch_metadata(grid, stream, *args),
                         knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args)
            return compiled
        if _counting is not None and not _counting.run:  # stubbed: counted, nothing built
            _counting.add(self.kernel)
            return None
        result = launch(self.kernel, self.grid, **tensors, **self.fixed)  # a tensor first
        if compiled is None and hasattr(result, "packed_metadata") and not _COMPILE_ONLY.get():
            self.device = _fast_device(tensors)
            if self.device is not None:
                self.compiled = result
        return result

    def arguments(self, tensors: dict) -> list:
        """Every argument of the kernel, in its order, for these tensors."""
        return [tensors[s] if s.__class__ is str else s[0] for s in self.slots]


def _fast_device(tensors: dict):
    """The CUDA device index a prepared launch's compiled kernel (see :class:`KernelLaunch`) may
    serve these tensors on, or None: plain tensors (not the fake ones of a traced call), all
    16-byte aligned (as when it was compiled), on the current CUDA device."""
    first = next(iter(tensors.values()))
    if first.__class__ not in _PLAIN or first.device.type != "cuda" or \
            any(t.data_ptr() % 16 for t in tensors.values()):
        return None
    index = torch.cuda.current_device()
    return index if first.device.index == index else None


def _stream(device: int):
    """The current stream of ``device``, as Triton's launch takes it."""
    from triton.runtime.driver import driver

    return driver.active.get_current_stream(device)


_PARAMETERS: dict = {}


def _parameters(kernel):
    """The kernel's parameters (name -> inspect.Parameter), once per kernel."""
    params = _PARAMETERS.get(kernel)
    if params is None:
        params = _PARAMETERS[kernel] = inspect.signature(kernel.fn).parameters
    return params


#: launch options a prepared launch may fix beside the kernel's arguments
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
