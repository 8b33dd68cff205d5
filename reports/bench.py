"""``tritoncnn bench``: time tritoncnn against cuDNN and torch.compile, one long-format CSV row per case.

A case is one layer shape x op x dtype x layout x direction x implementation:

* ops: ``conv_relu`` (conv2d + bias + ReLU) for every conv layer; ``conv_relu_pool`` (the same
  followed by a max-pool) for the layers bench_suite.csv marks; ``pool`` (max_pool2d) for the
  pool-only shapes;
* implementations: ``tritoncnn`` (the fused kernels of ``tritoncnn.kernels``),
  ``tritoncnn-unfused`` (for ``conv_relu_pool`` only: conv2d_relu then max_pool2d), ``cudnn``
  (``F.conv2d`` + ``F.relu`` (+ ``F.max_pool2d``) with ``torch.backends.cudnn.benchmark = True``;
  recorded as ``torch`` when it runs on the CPU), ``compile`` (``torch.compile(mode=
  "max-autotune")`` of the same, recorded as ``torch.compile``) and ``compile-default``
  (``torch.compile`` in its default mode, recorded as ``torch.compile (default)``);
* dtypes ``bf16``, ``fp16``, ``tf32`` (float32 with TF32 allowed, on both sides), ``fp32``
  (float32, IEEE) and ``fp64``; the ``precision`` column says which;
* directions ``forward`` (under ``torch.no_grad``), ``backward`` (dX, dW, db from a kept graph),
  ``backward-dx`` (dX alone: only the input requires grad), ``backward-dw`` (dW alone: only the
  weight requires grad) and ``forward+backward``; a max-pool, which has no weight, has forward,
  backward and forward+backward.

A case that raises gives an ``error`` row that says why, and the run goes on. Every case is
called once before timing (Triton compilation, autotuning, cuDNN's algorithm search and
torch.compile all happen there; that time goes in ``setup_s``), then timed with
``triton.testing.do_bench`` (median, p20, p80) on a GPU, or a ``time.perf_counter`` loop on the
CPU. A case whose roofline time (its FLOPs at :data:`ROOF_TFLOPS`, its bytes at
:data:`ROOF_GBPS`) is under ``--graph-below-ms`` is timed from a CUDA graph instead
(``triton.testing.do_bench_cudagraph``), for every implementation of it alike (torch.compile
excepted: max-autotune makes its own graphs): the GPU's time, not the host's launches. Graph
replays do not flush the L2 cache between calls (``do_bench`` does); the ``timing`` column says
which way each row was timed. The same run measures the device's own ceilings (matmul TFLOP/s per precision, device-to-device copy GB/s) as rows of suite
``Ceiling``, and, for suite ``Train``, a training step of zoo models from ``tritoncnn.models`` on
both backends. Rows are appended to the CSV as they are measured, so a run that is stopped keeps
what it finished.

A tritoncnn row says in ``configs`` where its kernels' launch configs came from: ``tuned`` (every
launch found a winner that the autotune cache holds for that launch's own shape), ``heuristic``
(none did) or ``k/n tuned``; an entry tuned for another shape of the same cache bucket serves the
launch but does not make it tuned. ``--tune`` tunes, before timing, every launch of a tritoncnn
case whose own shape the cache lacks (the tuner of ``tritoncnn.autotune``, winners stored in the
cache); the tuning time is the row's ``tune_s`` (part of ``setup_s``) and the tuning tables are
added to ``tune.csv`` beside the benchmark CSV.

``tritoncnn bench --host`` runs the host-overhead suite of :mod:`.host` instead: microseconds of
host time per op call, rows to ``host.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

from tritoncnn import env
from tritoncnn.reports import host
from tritoncnn.reports import suites as S

HELP = "benchmark tritoncnn against cuDNN and torch.compile on the suites; write long-format CSV"

COLUMNS = [
    "suite", "layer", "op", "shape", "dtype", "precision", "layout", "direction",
    "implementation", "status", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps", "flop",
    "bytes", "setup_s", "tune_s", "configs", "timing", "rel_err", "images_per_s", "peak_mem_mb",
    "batch", "gpu", "device", "torch", "triton", "git_sha", "timestamp", "note",
]

IMPLEMENTATIONS = ("tritoncnn", "tritoncnn-unfused", "cudnn", "compile", "compile-default")
DTYPES = ("bf16", "fp16", "tf32", "fp32", "fp64")
LAYOUTS = ("channels_last", "nchw")
OPS = ("conv_relu", "conv_relu_pool", "pool", "avg_pool")
POOL_OPS = ("pool", "avg_pool")  # max-pool, average pool: the pool shapes' ops
TRAIN_MODELS = ("lenet5", "vgg11")
QUICK_TRAIN_MODELS = ("vgg11",)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suites = ", ".join([*S.suite_names(), "Train"])
    parser.add_argument("--suite", action="append", default=None, metavar="NAMES",
                        help=f"comma-separated suites (repeatable); default all but Tiny: {suites}")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: a few layers per suite, bf16, channels_last, "
                             "forward and forward+backward, tritoncnn and cudnn")
    parser.add_argument("--layers", type=_csv_list, default=None, help="only these layer names")
    parser.add_argument("--ops", type=_csv_list, default=None, help=f"subset of {', '.join(OPS)}")
    parser.add_argument("--direction", type=_csv_list, default=None,
                        help=f"subset of {', '.join(S.DIRECTIONS)} (default all; a max-pool "
                             "has no backward-dx or backward-dw)")
    parser.add_argument("--impl", type=_csv_list, default=None,
                        help=f"subset of {', '.join(IMPLEMENTATIONS)} (default all; "
                             "tritoncnn-unfused runs for conv_relu_pool only)")
    parser.add_argument("--dtype", type=_csv_list, default=None,
                        help="subset of bf16, fp16, tf32 (float32, TF32 allowed), fp32 (float32, "
                             "IEEE), fp64; default bf16,tf32 on a GPU, fp32 on the CPU")
    parser.add_argument("--layout", type=_csv_list, default=None,
                        help="subset of channels_last, nchw (default both)")
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda when there is a GPU, else cpu, where the "
                             "suite defaults to Tiny), cuda or cpu; with --host, the device "
                             "kernels run on")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", default=None,
                        help="output folder (default reports/results/<gpu-name>/)")
    parser.add_argument("--csv", default=None,
                        help="CSV file name inside --out; rows are appended (default bench.csv, "
                             "host.csv with --host)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new case after this many seconds")
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (ms)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="do_bench repetition (ms)")
    parser.add_argument("--graph-below-ms", type=float, default=0.1,
                        help="cases whose roofline time is under this are timed from CUDA graphs "
                             "(every implementation alike; 0: never)")
    parser.add_argument("--cpu-reps", type=int, default=5, help="timed calls per case on the CPU")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip the matmul and copy ceiling measurements")
    parser.add_argument("--no-train", action="store_true",
                        help="skip the training-step benchmark (suite Train)")
    parser.add_argument("--train-models", type=_csv_list, default=None,
                        help=f"zoo models for suite Train (default {','.join(TRAIN_MODELS)})")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--train-batch", type=int, default=256, help="training batch size")
    parser.add_argument("--train-modes", type=_csv_list, default=None,
                        help="how the training steps run, comma-separated, each on both backends "
                             f"and as its own suite: {', '.join(TRAIN_MODES)} (default eager; "
                             "cuda-graphs and compile on a GPU only: a CPU run leaves them out)")
    parser.add_argument("--train-graphs", action="store_true",
                        help="also time each training step captured in a CUDA graph and replayed "
                             f"(suite '{TRAIN_GRAPH_SUITE}', both backends): the GPU's time "
                             "without the host's launch overhead; the same as adding cuda-graphs "
                             "to --train-modes")
    parser.add_argument("--tune", action="store_true",
                        help="tune the kernel launches of each tritoncnn case that the autotune "
                             "cache lacks before timing it (tables to tune.csv beside the CSV)")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    host.add_arguments(parser)


# ---------------------------------------------------------------------------------------------
# Run information


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def git_sha() -> str:
    """``TRITONCNN_GIT_SHA`` if set, else the checkout's short commit (+ ``-dirty``), else unknown."""
    if os.environ.get("TRITONCNN_GIT_SHA"):
        return os.environ["TRITONCNN_GIT_SHA"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def run_info(device) -> dict[str, str]:
    import torch
    import triton

    return {
        "gpu": env.device_name(device),
        "device": device.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_sha": git_sha(),
    }


# ---------------------------------------------------------------------------------------------
# Cases


class Case:
    """One row to measure. ``dtype`` is a token of :data:`DTYPES`."""

    def __init__(self, shape, op: str, dtype: str, layout: str, direction: str, impl: str):
        self.shape, self.op, self.dtype, self.layout = shape, op, dtype, layout
        self.direction, self.impl = direction, impl

    def label(self) -> str:
        return (f"{self.shape.suite}/{self.shape.layer} {self.op} {self.dtype} {self.layout} "
                f"{self.direction} {self.impl}")


def ops_for(shape) -> list[str]:
    if isinstance(shape, S.PoolShape):
        return list(POOL_OPS)
    return ["conv_relu", "conv_relu_pool"] if shape.fused_pool else ["conv_relu"]


def impls_for(op: str, impls: list[str]) -> list[str]:
    """The implementations that exist for ``op``: the unfused composition only for the fused op."""
    return [i for i in impls if i != "tritoncnn-unfused" or op == "conv_relu_pool"]


def build_cases(shapes, ops, dtypes, layouts, directions, impls) -> list[Case]:
    """Cases in the order they run: dtype, layout, direction outermost, so that a run stopped by
    its budget has covered every layer for the first settings."""
    cases = []
    for dtype in dtypes:
        for layout in layouts:
            for direction in directions:
                for shape in shapes:
                    if direction not in S.directions_for(shape):
                        continue
                    for op in ops_for(shape):
                        if op not in ops:
                            continue
                        for impl in impls_for(op, impls):
                            cases.append(Case(shape, op, dtype, layout, direction, impl))
    return cases


def torch_dtype(token: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32,
            "fp32": torch.float32, "fp64": torch.float64}[token]


def dtype_name(token: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16", "tf32": "fp32", "fp32": "fp32", "fp64": "fp64"}[token]


class _Precision:
    """Sets the float32 matmul/conv precision for a case and restores it after."""

    def __init__(self, token: str, device):
        self.tf32 = token == "tf32" and device.type == "cuda"
        self.name = {"bf16": "bf16", "fp16": "fp16", "fp64": "fp64"}.get(
            token, "tf32" if self.tf32 else "ieee")

    def __enter__(self):
        import torch

        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


# ---------------------------------------------------------------------------------------------
# Implementations


def op_function(op: str, impl: str, shape) -> Callable:
    """``f(*inputs) -> output`` for one op and implementation, the shape's settings bound."""
    import torch
    import torch.nn.functional as F

    import tritoncnn.kernels as kernels

    if op in POOL_OPS:
        k, s, p = shape.kernel, shape.stride, shape.pad
        ours, theirs = ((kernels.max_pool2d, F.max_pool2d) if op == "pool"
                        else (kernels.avg_pool2d, F.avg_pool2d))
        if impl == "tritoncnn":
            return lambda x: ours(x, k, s, p)
        fn = lambda x: theirs(x, k, s, p)  # noqa: E731
    else:
        args = (shape.stride, shape.pad, shape.dilation, shape.groups)
        if impl == "tritoncnn" and op == "conv_relu":
            return lambda x, w, b: kernels.conv2d_relu(x, w, b, *args)
        if impl == "tritoncnn":
            return lambda x, w, b: kernels.conv2d_relu_pool(x, w, b, *args, pool=shape.pool)
        if impl == "tritoncnn-unfused":
            return lambda x, w, b: kernels.max_pool2d(kernels.conv2d_relu(x, w, b, *args),
                                                      shape.pool)
        if op == "conv_relu":
            def fn(x, w, b):
                return F.relu(F.conv2d(x, w, b, *args))
        else:
            def fn(x, w, b):
                return F.max_pool2d(F.relu(F.conv2d(x, w, b, *args)), shape.pool)
    if impl in COMPILE_MODES:
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no stale graphs
        return torch.compile(fn, mode=COMPILE_MODES[impl], dynamic=False)
    return fn


#: torch.compile's mode per implementation token (None: its default mode)
COMPILE_MODES = {"compile": "max-autotune", "compile-default": None}


def impl_name(impl: str, device) -> str:
    if impl == "cudnn":
        return "cudnn" if device.type == "cuda" else "torch"
    return {"compile": "torch.compile", "compile-default": "torch.compile (default)"}.get(impl,
                                                                                          impl)


#: the inputs (by position: x, w, b) whose gradients a direction computes
GRAD_INPUTS = {"forward": (), "backward": (0, 1, 2), "backward-dx": (0,), "backward-dw": (1,),
               "forward+backward": (0, 1, 2)}


def make_inputs(case: Case, device):
    """The case's inputs, those whose gradient its direction computes requiring grad."""
    import torch

    dtype = torch_dtype(case.dtype)
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    s = case.shape
    x = torch.randn(s.N, s.C, s.H, s.W, device=device, dtype=dtype).to(memory_format=fmt)
    wanted = GRAD_INPUTS[case.direction]
    if case.op in POOL_OPS:
        return [x.requires_grad_(bool(wanted))]
    fan_in = (s.C // s.groups) * s.R * s.S
    w = torch.randn(s.K, s.C // s.groups, s.R, s.S, device=device, dtype=dtype) / math.sqrt(fan_in)
    w = w.to(memory_format=fmt)
    b = 0.1 * torch.randn(s.K, device=device, dtype=dtype)
    return [t.requires_grad_(i in wanted) for i, t in enumerate((x, w, b))]


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Nominal H100 rates for the roofline time that decides graph timing (dense bf16 tensor cores,
# HBM3): a fixed rule of the shape, so every implementation of a case is timed the same way.
ROOF_TFLOPS = 800.0
ROOF_GBPS = 3000.0


def roofline_ms(flop: float, nbytes: float) -> float:
    """The case's time at :data:`ROOF_TFLOPS` and :data:`ROOF_GBPS`, whichever bounds it."""
    return max(flop / (ROOF_TFLOPS * 1e12), nbytes / (ROOF_GBPS * 1e9)) * 1e3


def time_fn(fn: Callable[[], object], device, grads=(), warmup_ms=25.0, rep_ms=100.0,
            graph: bool = False, cpu_reps=5) -> tuple[float, float, float, str]:
    """(median, p20, p80) in ms of ``fn`` (already warmed up) and how it was timed: from a CUDA
    graph when ``graph`` (do_bench's event timing when the capture fails)."""
    grads = list(grads) or None
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        how = "do_bench"
        if graph:
            try:
                # one graph of rep / estimate unrolled calls: 20 ms keeps it to a few thousand
                q = do_bench_cudagraph(fn, rep=min(rep_ms, 20.0), grad_to_none=grads,
                                       quantiles=[0.5, 0.2, 0.8])
                return float(q[0]), float(q[1]), float(q[2]), "do_bench_cudagraph"
            except Exception as err:  # event timing instead
                how = f"do_bench (graph capture failed: {type(err).__name__})"
        q = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads,
                     quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2]), how
    import numpy as np

    times = []
    for _ in range(max(1, cpu_reps)):
        for g in grads or ():
            g.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = np.quantile(times, [0.5, 0.2, 0.8])
    return float(q[0]), float(q[1]), float(q[2]), f"perf_counter x{len(times)}"


def run_case(case: Case, device, opts, graph: bool = False) -> dict:
    """Measure one case (from a CUDA graph when ``graph``); returns the row's measured fields.
    Raises whatever the case raises."""
    import torch

    fn = op_function(case.op, case.impl, case.shape)
    grad = case.direction != "forward"
    inputs = make_inputs(case, device)
    ours = case.impl.startswith("tritoncnn")
    recording = contextlib.nullcontext([])
    if ours:
        from tritoncnn import autotune

        recording = autotune.record_calls()
    t0 = time.perf_counter()
    with recording as launches:  # the probe's and the first step's launches (backward included)
        with torch.no_grad():
            probe = fn(*inputs)  # the first call: compilation, autotuning, algorithm search
        rel_err = relative_error(case, probe, inputs) if case.impl != "cudnn" else None
        dy = torch.randn_like(probe)
        del probe
        if case.direction == "forward":
            def step():
                with torch.no_grad():
                    return fn(*inputs)
        elif case.direction == "forward+backward":
            def step():
                fn(*inputs).backward(dy)
        else:
            y = fn(*inputs)

            def step():
                y.backward(dy, retain_graph=True)
        step()
    tuned = {}
    if ours:
        tuned["tune_s"] = tune_launches(launches, case, opts) if opts.tune else None
        tuned["configs"] = config_source(launches)
        if tuned["tune_s"]:
            step()  # the tuned configs, compiled before timing
    for t in inputs:
        t.grad = None
    _sync(device)
    setup_s = time.perf_counter() - t0
    med, p20, p80, how = time_fn(step, device, inputs if grad else (), opts.warmup_ms,
                                 opts.rep_ms, graph, opts.cpu_reps)
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "setup_s": setup_s, "timing": how,
            "rel_err": rel_err, **tuned}


def config_source(launches) -> str:
    """``tuned``, ``heuristic`` or ``k/n tuned``: how many of a case's distinct kernel launches
    found a winner tuned for their own shape in the autotune cache (none do under the
    interpreter, which never looks)."""
    from tritoncnn import autotune

    if not launches:
        return ""
    store = autotune.default_cache()
    unique = {_launch_id(k): k for k in launches}
    hits = 0 if autotune.INTERPRET else sum(tuned_for(store, k) for k in unique.values())
    if hits == len(unique):
        return "tuned"
    return "heuristic" if hits == 0 else f"{hits}/{len(unique)} tuned"


def _launch_id(launch) -> tuple:
    return (launch.kernel, _plain(launch.shape), str(launch.dtype), launch.layout)


def _plain(shape) -> str:
    """A shape dict as the cache file stores it (tuples as lists), in one canonical text."""
    import json

    return json.dumps(json.loads(json.dumps(dict(shape), default=list)), sort_keys=True)


def tuned_for(store, launch) -> bool:
    """Whether ``store`` holds a winner tuned for this launch's own shape. The cache serves every
    shape of a bucket from one entry; one tuned for a neighbour says nothing of this shape."""
    from tritoncnn import autotune

    entry = store.get(autotune.entry_key(launch.kernel, launch.shape, launch.dtype, launch.layout))
    return bool(entry) and _plain(entry.get("shape") or {}) == _plain(launch.shape)


def tune_launches(launches, case: Case, opts) -> float:
    """Tune every recorded launch whose own shape the cache lacks (winners go to the cache, the
    tables to ``opts.tune_tables``); the seconds it took, 0 when nothing needed tuning. Nothing is
    tuned under the interpreter."""
    from tritoncnn import autotune
    from tritoncnn.autotune import tuner

    start = time.perf_counter()
    if autotune.INTERPRET:
        return 0.0
    store = autotune.default_cache()
    seen = set()
    for k in launches:
        key = _launch_id(k)
        if key in seen or tuned_for(store, k):
            continue
        seen.add(key)
        try:
            problem = tuner.make_problem(k.kernel, k.shape, k.dtype, k.layout, k.heuristic)
            if problem is None:
                continue
            table, _ = tuner.tune_and_store(problem, store)
        except Exception as err:  # the case is still timed, on its heuristic configs
            print(f"tritoncnn bench: tuning {k.kernel} for {case.label()} failed: "
                  f"{type(err).__name__}: {_one_line(err)}")
            continue
        table.insert(0, "layers", f"{case.op} {case.direction}")
        table.insert(0, "model", f"{case.shape.suite}/{case.shape.layer}")
        opts.tune_tables.append(table)
    return time.perf_counter() - start if seen else 0.0


def write_tune_tables(tables, path: Path, info: dict, earlier=None) -> None:
    """The tuning tables of ``--tune`` as one CSV (the columns of ``tritoncnn tune``'s) after the
    rows ``earlier`` (what the file held before this run: other runs' tables are kept),
    rewritten whole after each tuned case: a run that is stopped keeps what it tuned."""
    import pandas as pd

    out = pd.concat(tables, ignore_index=True)
    for col in ("gpu", "torch", "triton", "git_sha"):
        out[col] = info.get(col, "")
    out["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if earlier is not None and len(earlier):
        out = pd.concat([earlier, out], ignore_index=True)
    tmp = path.with_name(path.name + ".tmp")
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_earlier_tables(path: Path):
    """The rows a tuning-table file already holds (None when there is none to keep)."""
    import pandas as pd

    if not path.is_file() or not path.stat().st_size:
        return None
    return pd.read_csv(path)


def relative_error(case: Case, out, inputs) -> float:
    """‖out − ref‖ / ‖ref‖ against PyTorch's op in IEEE float32 (float64 for float64 cases) on
    the same inputs: a fast result is only worth reporting if it is the right one."""
    import torch

    ref_fn = op_function(case.op, "cudnn", case.shape)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    wide = torch.float64 if out.dtype == torch.float64 else torch.float32
    try:
        with torch.no_grad():
            ref = ref_fn(*[t.detach().to(wide) for t in inputs])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from PyTorch's "
                         f"{tuple(ref.shape)}")
    return float((out.to(wide) - ref).norm() / ref.norm().clamp_min(1e-30))


def case_row(case: Case, device, info: dict, opts) -> dict:
    s = case.shape
    prec = _Precision(case.dtype, device)
    flop = S.shape_flops(s, case.direction)
    nbytes = S.shape_bytes(s, case.direction, S.ELEMENT_SIZE[dtype_name(case.dtype)],
                           fused=case.op == "conv_relu_pool")
    row = dict(info, suite=s.suite, layer=s.layer, op=case.op, shape=s.describe(),
               dtype=dtype_name(case.dtype), precision=prec.name, layout=case.layout,
               direction=case.direction, implementation=impl_name(case.impl, device),
               flop=flop, bytes=nbytes)
    graph = case.impl != "compile" and roofline_ms(flop, nbytes) < opts.graph_below_ms
    with recorded(row, device):
        with prec:
            row.update(run_case(case, device, opts, graph))
        row["status"] = "ok"
        ms = row["median_ms"]
        row["tflops"] = flop / (ms * 1e-3) / 1e12 if flop else None
        row["gbps"] = nbytes / (ms * 1e-3) / 1e9
    return row


@contextlib.contextmanager
def recorded(row: dict, device):
    """Run the block for ``row``: an error makes it an error row (with the device reset), so that
    no failing case stops the run."""
    try:
        yield
    except Exception as err:
        row.update(status="error", note=f"{type(err).__name__}: {_one_line(err)}")
        _recover(device)


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _recover(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# The device's own ceilings


def ceiling_rows(device, info: dict, opts) -> list[dict]:
    """Matmul TFLOP/s in bf16, fp16, TF32, IEEE fp32 and fp64 and device-to-device copy GB/s, as
    rows."""
    import torch

    rows = []
    dtypes = DTYPES if device.type == "cuda" else ("fp32",)
    n = 8192 if device.type == "cuda" else 256
    for token in dtypes:
        prec = _Precision(token, device)
        row = dict(info, suite="Ceiling", layer=f"matmul_{n}", op="matmul",
                   shape=f"{n}x{n}x{n}", dtype=dtype_name(token), precision=prec.name,
                   layout="-", direction="forward",
                   implementation="cublas" if device.type == "cuda" else "torch",
                   flop=S.matmul_flops(n, n, n),
                   bytes=3 * n * n * S.ELEMENT_SIZE[dtype_name(token)])
        rows.append(_measure_into(row, device, opts, prec, lambda t=token: _matmul(n, t, device)))
    numel = (512 << 20) if device.type == "cuda" else (4 << 20)  # 1 GiB of bf16 on a GPU
    row = dict(info, suite="Ceiling", layer=f"copy_{numel * 2 >> 20}MiB", op="copy",
               shape=f"{numel} bf16", dtype="bf16", precision="bf16", layout="-",
               direction="forward", implementation="torch", flop=0,
               bytes=S.copy_bytes(numel, 2))

    def copy():
        src = torch.randn(numel, device=device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    rows.append(_measure_into(row, device, opts, _Precision("bf16", device), copy))
    return rows


def _matmul(n: int, token: str, device):
    import torch

    a = torch.randn(n, n, device=device, dtype=torch_dtype(token))
    b = torch.randn(n, n, device=device, dtype=torch_dtype(token))
    return lambda: torch.matmul(a, b)


def _measure_into(row: dict, device, opts, prec, build) -> dict:
    with recorded(row, device):
        with prec:
            fn = build()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            row["setup_s"] = time.perf_counter() - t0
            med, p20, p80, how = time_fn(fn, device, (), opts.warmup_ms, opts.rep_ms, 0,
                                         opts.cpu_reps)
        row.update(status="ok", median_ms=med, p20_ms=p20, p80_ms=p80, timing=how,
                   gbps=row["bytes"] / (med * 1e-3) / 1e9,
                   tflops=row["flop"] / (med * 1e-3) / 1e12 if row["flop"] else None)
    return row


# ---------------------------------------------------------------------------------------------
# Training steps of zoo models


#: input (C, H, W) of the zoo models, when the model does not say
TRAIN_INPUTS = {"lenet5": (1, 32, 32)}


TRAIN_GRAPH_SUITE = "Train (CUDA graph)"
TRAIN_COMPILE_SUITE = "Train (compile)"
#: how a training step runs (as ``tritoncnn train --mode`` names it) -> the suite of its rows
TRAIN_SUITES = {"eager": "Train", "cuda-graphs": TRAIN_GRAPH_SUITE,
                "compile": TRAIN_COMPILE_SUITE}
TRAIN_MODES = tuple(TRAIN_SUITES)


def train_modes(opts, device) -> list[str]:
    """The training modes to time: ``--train-modes`` (default eager) plus cuda-graphs with
    ``--train-graphs``, in :data:`TRAIN_MODES`' order; on the CPU eager alone (graphs and
    Inductor's launches of the kernels need CUDA)."""
    asked = set(getattr(opts, "train_modes", None) or ["eager"])
    if getattr(opts, "train_graphs", False):
        asked.add("cuda-graphs")
    return [m for m in TRAIN_MODES if m in asked and (m == "eager" or device.type == "cuda")]


def train_rows(models, dtypes, device, info: dict, opts, stop=lambda: False):
    """Step time, images/s and peak memory of a training step, both backends, per model: yields
    one row per model, dtype, mode (:func:`train_modes`; each mode its own suite,
    :data:`TRAIN_SUITES`) and backend, until ``stop()`` says the budget is spent."""
    modes = train_modes(opts, device)
    for name in models:
        for token in dtypes:
            for mode in modes:
                if stop():
                    return
                yield from _train_pair(name, token, mode, device, info, opts)


def _train_pair(name: str, token: str, mode: str, device, info: dict, opts):
    """The two backends' rows of one model, dtype and mode."""
    for backend in ("triton", "torch"):
        impl = "tritoncnn" if backend == "triton" else impl_name("cudnn", device)
        row = dict(info, suite=TRAIN_SUITES[mode], layer=name,
                   op="train_step", dtype=dtype_name(token),
                   precision=_Precision(token, device).name,
                   layout="channels_last" if device.type == "cuda" else "nchw",
                   direction="forward+backward", implementation=impl, batch=opts.train_batch)
        with recorded(row, device):
            with _Precision(token, device):
                row.update(_train_step(name, backend, token, device, opts, mode))
            row["status"] = "ok"
        yield row


#: what each mode's timed steps are, for the ``timing`` column
_TIMED = {"eager": "steps", "cuda-graphs": "graph replays", "compile": "compiled steps"}


def _train_step(name: str, backend: str, token: str, device, opts, mode: str = "eager") -> dict:
    """One model's training step on synthetic data, timed over ``opts.train_steps`` steps after
    three untimed ones, run as ``mode`` says:

    * "eager": op by op;
    * "cuda-graphs": the step (forward, backward, SGD) is captured once in a CUDA graph after
      the warm-up, as PyTorch's whole-network capture recipe does (warm-up on a side stream,
      autocast without its weight-cast cache), and the timed steps replay it;
    * "compile": the model under ``torch.compile`` (static shapes), as ``tritoncnn train
      --compile`` runs it: the first warm-up step is eager (it compiles and tunes the kernels),
      the second traces and compiles; ``setup_s`` holds them."""
    if mode not in TRAIN_SUITES:
        raise ValueError(f"training mode must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    graph = mode == "cuda-graphs"
    import numpy as np
    import torch
    import torch.nn.functional as F

    from tritoncnn import models

    torch.manual_seed(0)
    model = models.get_model(name, backend=backend)
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "in_channels") and hasattr(cfg, "input_size"):
        chw = (cfg.in_channels, cfg.input_size, cfg.input_size)
    else:
        chw = tuple(getattr(model, "input_shape", None) or TRAIN_INPUTS.get(name, (3, 32, 32)))
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device=device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    B = opts.train_batch
    x = torch.randn(B, *chw, device=device).to(memory_format=fmt)
    autocast = token in ("bf16", "fp16")
    with torch.no_grad(), torch.autocast(device.type, torch_dtype(token), enabled=autocast):
        classes = model(x[:1]).shape[-1]
    target = torch.randint(0, classes, (B,), device=device)

    net = model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch_dtype(token), enabled=autocast,
                            cache_enabled=not graph):
            loss = F.cross_entropy(net(x).float(), target)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            step()
        step = captured.replay  # noqa: F811 (the timed steps replay the capture)
    else:
        for i in range(3):
            if mode == "compile" and i == 1:
                torch._dynamo.reset()  # a fresh compile per model: no recompile limit
                net = torch.compile(model, dynamic=False)
            step()
    _sync(device)
    setup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(max(1, opts.train_steps)):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    q = np.quantile(times, [0.5, 0.2, 0.8])
    return {"shape": f"batch {B} x {'x'.join(map(str, chw))}", "median_ms": float(q[0]),
            "p20_ms": float(q[1]), "p80_ms": float(q[2]), "setup_s": setup_s,
            "timing": f"perf_counter x{len(times)} {_TIMED[mode]}",
            "images_per_s": B / (float(q[0]) * 1e-3), "peak_mem_mb": peak}


# ---------------------------------------------------------------------------------------------
# Output


class RowWriter:
    """Appends rows to a CSV as they come; a file with other columns is not appended to."""

    def __init__(self, path: Path, columns: list[str] = COLUMNS):
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != columns:
                stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                path = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
        self.path = path
        new = not path.exists() or not path.stat().st_size
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
        self.counts: dict[str, int] = {}

    def write(self, row: dict) -> None:
        row = dict(row, timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self._writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._file.flush()
        self.counts[row.get("status", "?")] = self.counts.get(row.get("status", "?"), 0) + 1

    def close(self) -> None:
        self._file.close()


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


# ---------------------------------------------------------------------------------------------
# The command


def _resolve_options(args, device):
    quick = args.quick
    suites = [s for arg in (args.suite or []) for s in _csv_list(arg)]
    want_train = ("Train" in suites or not suites) and not args.no_train
    shape_suites = [s for s in suites if s != "Train"]
    if suites and not shape_suites:
        shapes = []
    else:
        try:
            shapes = S.select(shape_suites or None, quick=quick, layers=args.layers)
        except ValueError as err:  # an unknown suite or layer
            raise SystemExit(f"tritoncnn bench: --suite: {err}") from None
    cuda = device.type == "cuda"
    dtypes = args.dtype or (["bf16"] if quick and cuda else ["bf16", "tf32"] if cuda else ["fp32"])
    layouts = args.layout or (["channels_last"] if quick else list(LAYOUTS))
    directions = args.direction or (["forward", "forward+backward"] if quick
                                    else list(S.DIRECTIONS))
    impls = args.impl or (["tritoncnn", "cudnn"] if quick else list(IMPLEMENTATIONS))
    ops = args.ops or list(OPS)
    for name, got, known in (("--dtype", dtypes, DTYPES), ("--layout", layouts, LAYOUTS),
                             ("--direction", directions, S.DIRECTIONS),
                             ("--impl", impls, IMPLEMENTATIONS), ("--ops", ops, OPS),
                             ("--train-modes", args.train_modes or [], TRAIN_MODES)):
        bad = [g for g in got if g not in known]
        if bad:
            raise SystemExit(f"tritoncnn bench: {name} {','.join(bad)} is not one of "
                             f"{', '.join(known)}")
    train_models = args.train_models or list(QUICK_TRAIN_MODELS if quick else TRAIN_MODELS)
    if not want_train:
        train_models = []
    return shapes, ops, dtypes, layouts, directions, impls, train_models


def resolve_device(name: str | None):
    """``--device``: auto (cuda when there is a GPU, else cpu), cuda or cpu."""
    import torch

    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cuda", "cpu"):
        raise SystemExit(f"tritoncnn bench: --device {name} is not auto, cuda or cpu")
    return torch.device(name)


def main(args) -> int:
    import torch
    from tqdm import tqdm

    if args.host:
        return host.main(args)
    host.reject_host_options(args)
    device = resolve_device(args.device)
    if device.type == "cpu" and args.device == "auto" and not args.suite:
        args.suite = ["Tiny"]  # the full suites are GPU-sized: on the CPU, the harness itself
    shapes, ops, dtypes, layouts, directions, impls, train_models = _resolve_options(args, device)
    cases = build_cases(shapes, ops, dtypes, layouts, directions, impls)
    if args.list:
        for case in cases:
            print(case.label(), "|", case.shape.describe())
        for name in train_models:
            print(f"Train/{name} train_step {','.join(dtypes)} both backends, "
                  f"{','.join(train_modes(args, device))}")
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("tritoncnn bench: no CUDA device here; use --device cpu for a CPU run of the "
              "harness (torch implementation on tiny shapes: --suite Tiny)")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = run_info(device)
    out = Path(args.out) if args.out else Path("reports/results") / slug(info["gpu"])
    writer = RowWriter(out / (args.csv or "bench.csv"))
    args.tune_tables = []
    tune_path = writer.path.with_name("tune.csv")
    earlier_tables = read_earlier_tables(tune_path) if args.tune else None
    print(f"tritoncnn bench: {len(cases)} cases on {info['gpu']} -> {writer.path}")
    start = time.perf_counter()

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - start > args.budget_s

    try:
        if not args.no_ceilings:
            for row in ceiling_rows(device, info, args):
                writer.write(row)
        done = 0
        bar = tqdm(cases, unit="case", dynamic_ncols=True, disable=args.no_progress)
        for case in bar:
            if over_budget():
                break
            bar.set_postfix_str(case.label(), refresh=False)
            tables = len(args.tune_tables)
            writer.write(case_row(case, device, info, args))
            if len(args.tune_tables) > tables:
                write_tune_tables(args.tune_tables, tune_path, info, earlier_tables)
            done += 1
        bar.close()
        if done < len(cases):
            print(f"tritoncnn bench: budget of {args.budget_s:g} s spent; "
                  f"{len(cases) - done} of {len(cases)} cases not run")
        for row in train_rows(train_models, dtypes, device, info, args, stop=over_budget):
            writer.write(row)
    finally:
        writer.close()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(writer.counts.items()))
    print(f"tritoncnn bench: wrote {counts} rows to {writer.path}")
    return 0
