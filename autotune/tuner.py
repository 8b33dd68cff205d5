"""The tuner: time every candidate config of one problem, keep the whole table, pick a winner.

A :class:`Problem` is one kernel on one shape: ``run(config)`` launches the kernel with that config
on inputs it owns and returns the output (a tensor or a tuple of tensors), ``reference`` is the
right answer (or a callable returning it), ``configs`` the candidates. :func:`tune_problem` runs
each config once and compares its output with the reference (a config whose output is wrong is
marked ``wrong`` and never wins, however fast), times the correct ones with
``triton.testing.do_bench`` (median, 20th and 80th percentiles), records configs that fail to
compile or run out of resources as ``failed`` and goes on, and returns every row as a pandas
DataFrame. Compiling dominates tuning (about half a second per config and kernel, against tens of
milliseconds of timing), so :func:`precompile` first compiles every config on all CPU cores, in
threads (Triton's ``AsyncCompileMode``; its compiler releases the GIL), with launches turned into
compile-only warm-ups; the timed pass then finds each kernel compiled.

Kernel modules make their kernels tunable by registering a problem factory per kernel name::

    from tritoncnn import autotune

    def _conv_fwd_problem(shape, dtype, layout):
        x, w, b = ...                       # random inputs of this shape, dtype and layout,
                                            # allocated once here, on the GPU
        geometry = ...
        return autotune.Problem(
            run=lambda cfg: conv2d_forward(x, w, b, geometry, relu=True, config=cfg),
            reference=lambda: F.relu(F.conv2d(x, w, b, ...)),   # or a tensor
            atol=None, rtol=None,           # optional; defaults follow the dtype (TOLERANCES)
        )

    autotune.register_problem("conv_fwd", _conv_fwd_problem)

The contract:

* ``factory(shape, dtype, layout) -> Problem``: ``shape`` is the dict the launcher passes to
  ``get_config`` (keys in :mod:`.spaces`), ``dtype`` a torch dtype, ``layout`` "nchw" or "nhwc".
  It is called on a CUDA machine only (never under the interpreter).
* ``Problem.run(config)`` launches the kernel once with exactly ``config`` (a dict with the keys of
  the kernel's space) on the factory's inputs and returns the output tensor, or a tuple of tensors
  (e.g. values and pool offsets), to be compared with ``reference``. Floating outputs pass within
  ``atol + rtol * max|reference|``; integer outputs must match exactly; NaNs must sit in the same
  places. A backward problem returns the gradient its kernel computes (dX for ``conv_dx``, dW for
  ``conv_dw``, dX for ``max_pool_bwd``).
* ``configs`` may be left out (the pruned space of :func:`spaces.candidates` is used) or set to any
  list; ``kernel``, ``shape``, ``dtype``, ``layout`` and ``heuristic`` are filled in by the tuner.
* Entries are shared by every shape of a bucket (see :mod:`.cache`), so a launcher must accept any
  config of its space on any shape (masking the edges), not only the shape it was tuned on.

A kernel without a factory is listed by ``tritoncnn tune`` as not tuned, and tuning on first use
(``TRITONCNN_AUTOTUNE=1``) falls back to its heuristic with one warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from tritoncnn import _runtime

from . import spaces

Timer = Callable[[Callable[[], Any]], Sequence[float]]

# Default tolerances of the correctness gate, relative to the reference's largest magnitude.
TOLERANCES = {
    torch.float32: (1e-2, 1e-2),  # TF32 tensor cores keep ~10 mantissa bits
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float64: (1e-9, 1e-9),
}


@dataclasses.dataclass
class Problem:
    """One kernel on one shape, ready to time."""

    run: Callable[[Mapping[str, int]], Any]
    reference: Any
    configs: list[dict] | None = None
    kernel: str = ""
    shape: dict = dataclasses.field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    layout: str = "nchw"
    heuristic: dict | None = None  # timed too, so the table shows the tuned speed-up over it
    atol: float | None = None
    rtol: float | None = None


# Registry ----------------------------------------------------------------------------------------

ProblemFactory = Callable[[dict, torch.dtype, str], Problem]
_FACTORIES: dict[str, ProblemFactory] = {}


def register_problem(kernel: str, factory: ProblemFactory | None = None):
    """Register ``factory(shape, dtype, layout) -> Problem`` for ``kernel`` (also a decorator)."""
    def add(f: ProblemFactory) -> ProblemFactory:
        _FACTORIES[kernel] = f
        return f

    return add if factory is None else add(factory)


def registered() -> dict[str, ProblemFactory]:
    return dict(_FACTORIES)


def _ensure_kernels_imported() -> None:
    """Kernel modules register their factories when imported."""
    try:
        import tritoncnn.kernels  # noqa: F401
    except Exception as err:  # a broken kernel module must not break tuning of the others
        warnings.warn(f"importing tritoncnn.kernels failed ({err}); its kernels cannot be tuned")


def make_problem(kernel: str, shape: Mapping[str, int], dtype: torch.dtype, layout: str,
                 heuristic: Mapping[str, int] | None = None) -> Problem | None:
    """The registered factory's problem for this launch, or None when ``kernel`` has none."""
    if kernel not in _FACTORIES:
        _ensure_kernels_imported()
    factory = _FACTORIES.get(kernel)
    if factory is None:
        return None
    problem = factory(dict(shape), dtype, layout)
    problem.kernel = problem.kernel or kernel
    problem.shape = problem.shape or dict(shape)
    problem.dtype = dtype
    problem.layout = layout
    if heuristic is not None and problem.heuristic is None:
        problem.heuristic = dict(heuristic)
    return problem


# Timing and checking -----------------------------------------------------------------------------

def do_bench_timer(warmup: int = 10, rep: int = 40) -> Timer:
    """A timer on ``triton.testing.do_bench``: (median, p20, p80) milliseconds."""
    def timer(fn):
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])

    return timer


def default_timer() -> Timer:
    """The timer :func:`tune_problem` uses when given none."""
    return do_bench_timer()


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if out is None:
        return []
    raise TypeError(f"a problem's run must return tensors, got {type(out).__name__}")


def max_error(out, ref, atol: float, rtol: float) -> tuple[float, bool]:
    """(largest error over all output tensors, whether every tensor is within tolerance).

    Floating tensors pass when ``max|out - ref| <= atol + rtol * max|ref|`` and NaNs sit in the same
    places; integer tensors (pool offsets) must match exactly."""
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        return math.inf, False
    worst, ok = 0.0, True
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return math.inf, False
        if not (o.is_floating_point() or r.is_floating_point()):
            bad = int((o != r).sum())
            worst = max(worst, float(bad))
            ok &= bad == 0
            continue
        o, r = o.detach().double(), r.detach().double().to(o.device)
        nan_o, nan_r = torch.isnan(o), torch.isnan(r)
        if not torch.equal(nan_o, nan_r):
            return math.inf, False
        if o.numel() == 0:
            continue
        keep = ~nan_r
        diff = (o - r).abs()[keep]
        err = float(diff.max()) if diff.numel() else 0.0
        scale = float(r[keep].abs().max()) if diff.numel() else 0.0
        worst = max(worst, err)
        ok &= err <= atol + rtol * scale
    return worst, ok


def _is_failure(err: BaseException) -> bool:
    return not isinstance(err, (KeyboardInterrupt, SystemExit, MemoryError))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# The tuner ---------------------------------------------------------------------------------------

def tune_problem(problem: Problem, *, timer: Timer | None = None, progress=None):
    """Run, check and time every config of ``problem``; return the table (a pandas DataFrame).

    Columns: kernel, dtype, layout, shape (its JSON), config (its JSON), one column per config key,
    status ("ok", "wrong", "failed"), ms / p20_ms / p80_ms (NaN unless ok), max_error, error,
    heuristic (this row is the heuristic config), best (the fastest correct config), compile_s
    (seconds :func:`precompile` took for the whole problem).
    ``timer(fn) -> (median, p20, p80)`` defaults to :func:`default_timer`; ``progress`` (a tqdm bar
    or anything with ``update``) advances once per config.
    """
    import pandas as pd

    timer = timer or default_timer()
    configs = problem.configs
    if configs is None:
        configs = spaces.candidates(problem.kernel, problem.shape, problem.dtype)
    configs = [dict(c) for c in configs]
    if problem.heuristic is not None:
        h = dict(problem.heuristic)
        if h not in configs:
            configs.append(h)
    atol_d, rtol_d = TOLERANCES.get(problem.dtype, (1e-2, 1e-2))
    atol = atol_d if problem.atol is None else problem.atol
    rtol = rtol_d if problem.rtol is None else problem.rtol
    with torch.no_grad():
        compile_s = precompile(problem, configs)
        rows = _run_all(problem, configs, timer, atol, rtol, progress)
    table = pd.DataFrame(rows)
    if table.empty:
        return table.assign(best=pd.Series(dtype=bool))
    table["compile_s"] = compile_s
    ok = table["status"].eq("ok") & table["ms"].notna()
    table["best"] = False
    if ok.any():
        table.loc[table.loc[ok, "ms"].idxmin(), "best"] = True
    return table


MAX_COMPILE_WORKERS = 8  # the compiler's Python front end holds the GIL; each thread holds an LLVM


def compile_workers() -> int:
    """Threads that compile configs at once: one per CPU this process may use, at most
    :data:`MAX_COMPILE_WORKERS` (several processes may tune at once, e.g. parallel test workers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_COMPILE_WORKERS))


def precompile(problem: Problem, configs: list[dict], workers: int | None = None) -> float:
    """Compile the kernels of every config of ``problem`` at once, on ``workers`` threads (default
    :func:`compile_workers`); returns the seconds it took (0 when nothing was done).

    Each ``problem.run(cfg)`` runs inside :func:`tritoncnn._runtime.compile_only` and Triton's
    ``AsyncCompileMode``, so its launches queue compilations and return at once; leaving the block
    waits for all of them. Errors are dropped here: the timed pass compiles a failing config again,
    meets the same error and records it. Nothing is done under the interpreter, for fewer than two
    configs or workers, or on a Triton without ``AsyncCompileMode``.
    """
    workers = compile_workers() if workers is None else workers
    if _runtime.INTERPRET or workers < 2 or len(configs) < 2:
        return 0.0
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return 0.0
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(min(workers, len(configs))) as pool:
        with AsyncCompileMode(pool, ignore_errors=True), _runtime.compile_only():
            for cfg in configs:
                try:
                    problem.run(cfg)
                except Exception:  # recorded by the timed pass
                    pass
    return time.perf_counter() - start


def _run_all(problem: Problem, configs: list[dict], timer: Timer, atol: float, rtol: float,
             progress) -> list[dict]:
    reference = problem.reference() if callable(problem.reference) else problem.reference
    rows = []
    for cfg in configs:
        row = dict(status="ok", ms=math.nan, p20_ms=math.nan, p80_ms=math.nan,
                   max_error=math.nan, error="")
        try:
            out = problem.run(cfg)
            _sync()
            row["max_error"], ok = max_error(out, reference, atol, rtol)
            del out
            if not ok:
                row["status"] = "wrong"
            else:
                times = list(timer(lambda: problem.run(cfg)))
                row["ms"], row["p20_ms"], row["p80_ms"] = (times + [math.nan] * 3)[:3]
        except BaseException as err:  # compile errors, OutOfResources, launch failures
            if not _is_failure(err):
                raise
            row["status"] = "failed"
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        rows.append(dict(kernel=problem.kernel, dtype=str(problem.dtype).removeprefix("torch."),
                         layout=problem.layout, shape=json.dumps(problem.shape, sort_keys=True),
                         config=json.dumps(cfg, sort_keys=True),
                         heuristic=problem.heuristic is not None and cfg == problem.heuristic,
                         **{f"cfg_{k}": v for k, v in cfg.items()}, **row))
        if progress is not None:
            progress.update(1)
    return rows


def best_config(table) -> dict | None:
    """The winning config of a :func:`tune_problem` table, or None when no config was correct."""
    if table is None or table.empty or not table["best"].any():
        return None
    return json.loads(table.loc[table["best"]].iloc[0]["config"])


def summary(table) -> dict:
    """Timings kept beside a cached winner: its median, the heuristic's, the count tried."""
    best = table.loc[table["best"]].iloc[0]
    heur = table.loc[table["heuristic"] & table["status"].eq("ok"), "ms"]
    return dict(ms=float(best["ms"]), heuristic_ms=float(heur.iloc[0]) if len(heur) else None,
                tried=int(len(table)), failed=int(table["status"].eq("failed").sum()),
                wrong=int(table["status"].eq("wrong").sum()))


def tune_and_store(problem: Problem, cache=None, *, timer: Timer | None = None, progress=None):
    """:func:`tune_problem`, then store the winner (if any) in ``cache`` (default: the process-wide
    one).

    Returns (table, winner or None)."""
    from . import cache as _cache

    start = time.perf_counter()
    table = tune_problem(problem, timer=timer, progress=progress)
    table["tune_s"] = time.perf_counter() - start
    winner = best_config(table)
    if winner is not None:
        cache = cache or _cache.default_cache()
        cache.put(problem.kernel, problem.shape, problem.dtype, problem.layout, winner,
                  **summary(table))
    return table, winner


# Tuning on first use (TRITONCNN_AUTOTUNE=1) ------------------------------------------------------

_tuning = threading.local()
_warned_missing: set[str] = set()


def tuning_now() -> bool:
    """True while this thread is inside :func:`tune_on_first_use` (a problem's own launches)."""
    return getattr(_tuning, "active", False)


def cannot_time_now() -> bool:
    """True while nothing may be timed: while torch.compile traces, while a CUDA graph captures,
    or under a dispatch mode (fake tensors, make_fx, functionalization: the ops' bodies traced
    outside torch.compile), whose tensors hold no data to time. A lookup then takes the
    heuristic and leaves the entry to the next call that may tune it."""
    if torch._C._len_torch_dispatch_stack():
        return True
    try:
        return torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing()
    except Exception:
        return False


def tune_on_first_use(kernel: str, shape: Mapping[str, int], dtype: torch.dtype, layout: str,
                      heuristic: Mapping[str, int], cache) -> dict | None:
    """Tune one missing entry in place; the winner, or None (use the heuristic)."""
    if tuning_now():
        return None  # the problem's own launches come back through get_config
    if cannot_time_now():
        return None
    _tuning.active = True
    try:
        problem = make_problem(kernel, shape, dtype, layout, heuristic)
        if problem is None:
            if kernel not in _warned_missing:
                _warned_missing.add(kernel)
                warnings.warn(f"autotuning is on but kernel {kernel!r} registered no problem "
                              "factory (autotune.register_problem); using its heuristic config")
            return None
        _, winner = tune_and_store(problem, cache)
        return winner
    except Exception as err:  # tuning must never break the training step that asked for it
        warnings.warn(f"autotuning {kernel} on {dict(shape)} failed ({type(err).__name__}: {err}); "
                      "using its heuristic config")
        return None
    finally:
        _tuning.active = False
