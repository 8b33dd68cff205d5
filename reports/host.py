"""``tritoncnn bench --host``: microseconds of host time per op call, one long-format CSV row per case.

A small layer's GPU time is a few microseconds; what bounds it in an eager training step is the
host: Python argument checks, config lookups, allocation, autograd bookkeeping and Triton's
launch. This suite measures that host time alone:

* **stubbed launches** (``--launches stub``, the default on the CPU): every tritoncnn kernel
  launch is counted and skipped (:func:`tritoncnn._runtime.count_launches` with ``run=False``),
  so an op call costs its host code only, with outputs left as allocated. On the CPU this is the
  only meaningful number (Triton's interpreter would otherwise run the kernels); on a GPU it is
  tritoncnn's own Python without Triton's launch;
* **real launches** (``--launches real``, with ``stub`` the GPU's default): wall time of many
  back-to-back calls with no synchronisation inside a round (the queue is drained before each
  round and the closing synchronisation is not timed). For the small shapes used here the GPU
  keeps up with the host, so this is the host's time per call, Triton's launch included; the
  difference from the stubbed row of the same case is Triton's launch cost.

Cases: ``conv2d_relu``, ``conv2d_relu_pool``, ``max_pool2d`` and ``linear`` on small shapes, each
in the directions ``forward`` (under ``torch.no_grad``, as in the other suites),
``forward-autograd`` (inputs requiring grad, so autograd records the call) and
``forward+backward`` (``torch.autograd.grad`` of the output: no accumulation into ``.grad``); and
a ``vgg11`` training step (zero_grad, forward, cross-entropy, backward, SGD with momentum) at a
small batch. Implementations: ``tritoncnn``, and PyTorch's own ops on the same shapes (``torch``
on the CPU, ``cudnn`` on a GPU). PyTorch's ops cannot be stubbed: on the CPU its rows include the
compute of its CPU kernels (the ``compute`` column says so), which the tiny shapes keep small.

Each case is called a few times untimed (compilation, config lookups, caches), then once inside a
launch count (the ``launches`` column, per call or step, and ``launch_kernels`` by kernel), then
timed: ``rounds`` rounds of ``calls`` back-to-back calls, each round as long as ``--round-ms``
asks, with Python's garbage collector off inside a round (as ``timeit`` does); the row has the
median, p20 and p80 over rounds of the time per call, in microseconds.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

COLUMNS = [
    "suite", "layer", "op", "shape", "dtype", "layout", "direction", "implementation", "status",
    "median_us", "p20_us", "p80_us", "launches", "launch_kernels", "launch_mode", "compute",
    "calls", "rounds", "timing", "batch", "gpu", "device", "torch", "triton", "git_sha",
    "timestamp", "note",
]

SUITE = "Host"
OPS = ("conv_relu", "conv_relu_pool", "pool", "linear", "train_step")
DIRECTIONS = ("forward", "forward-autograd", "forward+backward")
IMPLEMENTATIONS = ("tritoncnn", "cudnn")
LAUNCH_MODES = ("stub", "real")
DTYPES = ("fp32", "bf16", "fp16")
LAYOUTS = ("nchw", "channels_last")

#: the function each op times (the ``layer`` column)
LAYERS = {"conv_relu": "conv2d_relu", "conv_relu_pool": "conv2d_relu_pool", "pool": "max_pool2d",
          "linear": "linear"}
#: the training steps: vgg11 at 32x32 in full, and at 1/16 of its width (every conv and FC layer
#: narrower: the same layers, calls and launches with 1/256 of the weights), whose PyTorch ops
#: (SGD, the launchers' weight copies) cost little compute where they run on the CPU
TRAIN_WIDTHS = {"vgg11": 1.0, "vgg11-w1/16": 1 / 16}

# Small shapes: on a GPU the kernels take a few microseconds, so a call is bound by the host; on
# the CPU PyTorch's own kernels, which cannot be stubbed, add little compute to its rows.
CONV = dict(N=2, C=16, H=8, W=8, K=16, R=3, S=3, pad=1)
POOL = dict(N=2, C=16, H=8, W=8, kernel=2)
LINEAR = dict(B=2, IN=64, OUT=32)


def add_arguments(parser) -> None:
    """The options of ``--host`` (added to ``tritoncnn bench``'s parser)."""
    parser.add_argument("--host", action="store_true",
                        help="the host-overhead suite instead: microseconds of host time per op "
                             "call (conv2d_relu, conv2d_relu_pool, max_pool2d, linear, a vgg11 "
                             "training step), kernel launches stubbed on the CPU; rows to "
                             "host.csv. With it, --ops takes conv_relu, conv_relu_pool, pool, "
                             "linear, train_step; --direction forward, forward-autograd, "
                             "forward+backward; --impl tritoncnn, cudnn")
    parser.add_argument("--launches", type=lambda t: [s.strip() for s in t.split(",") if s.strip()],
                        default=None,
                        help="with --host: stub (launches counted, not run), real (GPU only), or "
                             "both comma-separated; default stub on the CPU, real,stub on a GPU")
    parser.add_argument("--rounds", type=int, default=15,
                        help="with --host: timed rounds per case (median, p20, p80 over them)")
    parser.add_argument("--round-ms", type=float, default=50.0,
                        help="with --host: length of one round of back-to-back calls (ms)")
    parser.add_argument("--host-batch", type=int, default=2,
                        help="with --host: batch of the vgg11 training step")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="with --host: also profile STEPS eager vgg11 training steps per "
                             "backend (torch.profiler: host time per layer, autograd node and "
                             "optimizer, launches a step, GPU busy and idle time), at "
                             "--profile-batch, the first --dtype and --layout (on the CPU: vgg11 "
                             "at 1/16 of its width, launches stubbed); rows to profile.csv")
    parser.add_argument("--profile-batch", type=int, default=None, metavar="N",
                        help="with --profile: the profiled steps' batch (default --host-batch)")


# ---------------------------------------------------------------------------------------------
# Options


#: bench options that mean nothing to --host
_NOT_FOR_HOST = ("suite", "quick", "layers", "graph_below_ms", "tune", "train_graphs",
                 "train_modes", "train_models", "no_train", "no_ceilings", "warmup_ms", "rep_ms",
                 "cpu_reps", "train_steps", "train_batch")
#: --host's own options
HOST_ONLY = ("launches", "rounds", "round_ms", "host_batch", "profile", "profile_batch")


def _given(args, names) -> list[str]:
    """The options among ``names`` that ``args`` sets to other than the command's defaults, as
    written on the command line."""
    import argparse

    from tritoncnn.reports import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return ["--" + n.replace("_", "-") for n in names
            if getattr(args, n, defaults[n]) != defaults[n]]


def _apply(options: list[str]) -> str:
    return f"{', '.join(options)} {'applies' if len(options) == 1 else 'apply'}"


def reject_host_options(args) -> None:
    """A SystemExit naming the --host options given to a run without --host."""
    stray = _given(args, HOST_ONLY)
    if stray:
        raise SystemExit(f"tritoncnn bench: {_apply(stray)} only with --host")


def _fail(message: str):
    raise SystemExit(f"tritoncnn bench --host: {message}")


def resolve(args, device) -> dict:
    """The run's settings from ``args``, each checked: a bad value is a SystemExit that names
    the option, the value and what it may be."""
    stray = _given(args, _NOT_FOR_HOST)
    if stray:
        _fail(f"{_apply(stray)} to the other suites, not to --host")
    cuda = device.type == "cuda"
    ops = args.ops or list(OPS)
    directions = args.direction or list(DIRECTIONS)
    impls = args.impl or list(IMPLEMENTATIONS)
    dtypes = args.dtype or ["fp32"]
    layouts = args.layout or (["channels_last"] if cuda else ["nchw"])
    launches = args.launches or (["real", "stub"] if cuda else ["stub"])
    for name, got, known in (("--ops", ops, OPS), ("--direction", directions, DIRECTIONS),
                             ("--impl", impls, IMPLEMENTATIONS), ("--dtype", dtypes, DTYPES),
                             ("--layout", layouts, LAYOUTS), ("--launches", launches,
                                                              LAUNCH_MODES)):
        bad = [g for g in got if g not in known]
        if bad:
            _fail(f"{name} {','.join(bad)} is not one of {', '.join(known)}")
    if "real" in launches and not cuda:
        _fail("--launches real needs a CUDA device: on the CPU Triton's interpreter would run "
              "the kernels, and its compute is not host time; use --launches stub")
    for name in ("rounds", "host_batch"):
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            _fail(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if not isinstance(args.profile, int) or args.profile < 0:
        _fail(f"--profile must be a number of steps (0: none), got {args.profile!r}")
    profile_batch = args.host_batch if args.profile_batch is None else args.profile_batch
    if not isinstance(profile_batch, int) or profile_batch < 1:
        _fail(f"--profile-batch must be a positive integer, got {profile_batch!r}")
    if not (args.round_ms > 0 and math.isfinite(args.round_ms)):
        _fail(f"--round-ms must be a positive number of milliseconds, got {args.round_ms!r}")
    return dict(ops=ops, directions=directions, impls=impls, dtypes=dtypes, layouts=layouts,
                launches=launches, rounds=args.rounds, round_s=args.round_ms / 1e3,
                batch=args.host_batch, profile=args.profile, profile_batch=profile_batch)


class Case:
    def __init__(self, op: str, direction: str, impl: str, dtype: str, layout: str,
                 launches: str | None, layer: str | None = None):
        self.op, self.direction, self.impl = op, direction, impl
        self.dtype, self.layout, self.launches = dtype, layout, launches
        self.layer = layer or LAYERS[op]

    def label(self) -> str:
        mode = f" launches={self.launches}" if self.launches else ""
        return (f"{SUITE}/{self.layer} {self.dtype} {self.layout} {self.direction} "
                f"{self.impl}{mode}")


def build_cases(s: dict) -> list[Case]:
    """Every case of the settings: a training step has the one direction forward+backward, and
    PyTorch's rows have no launch mode (its kernels always run)."""
    cases = []
    for dtype in s["dtypes"]:
        for layout in s["layouts"]:
            for op in s["ops"]:
                if op == "train_step":
                    directions = [d for d in s["directions"] if d == "forward+backward"]
                    layers = list(TRAIN_WIDTHS)
                else:
                    directions, layers = s["directions"], [LAYERS[op]]
                for layer in layers:
                    for direction in directions:
                        for impl in s["impls"]:
                            for mode in (s["launches"] if impl == "tritoncnn" else [None]):
                                cases.append(Case(op, direction, impl, dtype, layout, mode,
                                                  layer))
    return cases


# ---------------------------------------------------------------------------------------------
# Machine


def machine_name(device) -> str:
    """The name results are filed under: the GPU's; on the CPU its model and core count
    ("CPU AMD EPYC (2 cores)"), so that runs on different CPUs land in different folders."""
    from tritoncnn import env

    if device.type == "cuda":
        return env.device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.lower().startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown"
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor"):
        model = model.replace(noise, "")
    model = model.split("@")[0].strip()
    return f"CPU {' '.join(model.split())} ({os.cpu_count()} cores)"


# ---------------------------------------------------------------------------------------------
# The calls


def _inputs(case: Case, device, grad: bool):
    """The op's tensors (x, w, b, or x alone for the pool), requiring grad when ``grad``."""
    import torch

    from tritoncnn.reports.bench import torch_dtype

    dtype = torch_dtype(case.dtype)
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format

    def t(*shape, four_d=False):
        x = torch.randn(*shape, device=device, dtype=dtype)
        if four_d:
            x = x.to(memory_format=fmt)
        return x.requires_grad_(grad)

    if case.op == "pool":
        p = POOL
        return (t(p["N"], p["C"], p["H"], p["W"], four_d=True),)
    if case.op == "linear":
        p = LINEAR
        return t(p["B"], p["IN"]), t(p["OUT"], p["IN"]), t(p["OUT"])
    p = CONV
    return (t(p["N"], p["C"], p["H"], p["W"], four_d=True), t(p["K"], p["C"], p["R"], p["S"],
                                                              four_d=True), t(p["K"]))


def describe(case: Case, batch: int) -> str:
    if case.op == "pool":
        p = POOL
        return f"{p['N']}x{p['C']}x{p['H']}x{p['W']} k{p['kernel']}"
    if case.op == "linear":
        p = LINEAR
        return f"{p['B']}x{p['IN']} -> {p['OUT']}"
    if case.op == "train_step":
        return f"batch {batch} x 3x32x32, width {TRAIN_WIDTHS[case.layer]:g}"
    p = CONV
    pool = " pool2" if case.op == "conv_relu_pool" else ""
    return (f"{p['N']}x{p['C']}x{p['H']}x{p['W']} k{p['K']} {p['R']}x{p['S']} "
            f"pad{p['pad']}{pool}")


def op_function(op: str, impl: str) -> Callable:
    import torch.nn.functional as F

    import tritoncnn.kernels as K

    pad, k = CONV["pad"], POOL["kernel"]
    if impl == "tritoncnn":
        return {"conv_relu": lambda x, w, b: K.conv2d_relu(x, w, b, 1, pad),
                "conv_relu_pool": lambda x, w, b: K.conv2d_relu_pool(x, w, b, 1, pad),
                "pool": lambda x: K.max_pool2d(x, k),
                "linear": lambda x, w, b: K.linear(x, w, b)}[op]
    return {"conv_relu": lambda x, w, b: F.relu(F.conv2d(x, w, b, 1, pad)),
            "conv_relu_pool": lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, 1, pad)), 2),
            "pool": lambda x: F.max_pool2d(x, k),
            "linear": lambda x, w, b: F.linear(x, w, b)}[op]


def make_call(case: Case, device, batch: int) -> Callable[[], object]:
    """A no-argument call of the case, its inputs bound."""
    import torch

    if case.op == "train_step":
        return _train_step(case, device, batch)
    fn = op_function(case.op, case.impl)
    grad = case.direction != "forward"
    inputs = _inputs(case, device, grad)
    if case.direction == "forward":
        def call():
            with torch.no_grad():
                return fn(*inputs)
        return call
    if case.direction == "forward-autograd":
        return lambda: fn(*inputs)
    with torch.no_grad():
        upstream = torch.randn_like(fn(*inputs))

    def forward_backward():
        return torch.autograd.grad(fn(*inputs), inputs, upstream)

    return forward_backward


def _train_step(case: Case, device, batch: int) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    from tritoncnn import models
    from tritoncnn.reports.bench import torch_dtype

    torch.manual_seed(0)
    backend = "triton" if case.impl == "tritoncnn" else "torch"
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    dtype = torch_dtype(case.dtype)
    model = models.get_model("vgg11", backend=backend, input_size=32,
                             width=TRAIN_WIDTHS[case.layer])
    model = model.to(device=device, dtype=dtype).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype).to(memory_format=fmt)
    target = torch.randint(0, model.config.num_classes, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        return loss

    step.model = model  # (what a profile hooks)
    return step


# ---------------------------------------------------------------------------------------------
# Timing


def time_calls(call: Callable[[], object], rounds: int, round_s: float, sync=lambda: None):
    """(per-call seconds of each round, calls per round): ``call`` run back to back, ``calls``
    times per round, enough for a round of about ``round_s``; ``sync()`` (the device's
    synchronisation) before each round and after it, neither timed."""
    sync()
    t0 = time.perf_counter()
    call()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, min(1_000_000, math.ceil(round_s / once)))
    if calls > 1:  # a second estimate, from a short round: the first call was a cold one
        sync()
        n = max(1, calls // 10)
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        sync()
        calls = max(1, min(1_000_000, math.ceil(round_s / max((time.perf_counter() - t0) / n,
                                                              1e-7))))
    per_call = []
    enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            sync()
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            elapsed = time.perf_counter() - t0
            gc.enable()
            sync()
            per_call.append(elapsed / calls)
    finally:
        if enabled:
            gc.enable()
    return per_call, calls


def quantiles_us(per_call) -> tuple[float, float, float]:
    import numpy as np

    q = np.quantile(np.asarray(per_call) * 1e6, [0.5, 0.2, 0.8])
    return float(q[0]), float(q[1]), float(q[2])


def _compute_note(case: Case, device) -> str:
    if case.impl == "tritoncnn":
        if case.launches == "stub":
            what = "tritoncnn launches stubbed: host code only"
        else:
            what = "tritoncnn launches real, queued without synchronisation"
        if case.op == "train_step":
            what += "; the step's PyTorch ops (loss, dropout, SGD) run"
            if device.type == "cpu":
                what += " their CPU kernels (compute included)"
        return what
    if device.type == "cpu":
        return "PyTorch's CPU kernels run: compute included"
    return "PyTorch's launches real, queued without synchronisation"


def measure(case: Case, device, s: dict) -> dict:
    """The timed fields of one case's row."""
    import torch

    from tritoncnn import _runtime

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    stub = case.impl == "tritoncnn" and case.launches == "stub"
    call = make_call(case, device, s["batch"])
    counted = None
    with _runtime.count_launches(run=not stub) as count:
        for _ in range(3):  # compilation, config lookups, the optimizer's state
            call()
        sync()
        count.clear()
        call()
        sync()
        counted = dict(count)
        if stub:  # the stub stays on while the calls are timed
            per_call, calls = time_calls(call, s["rounds"], s["round_s"], sync)
    if not stub:
        per_call, calls = time_calls(call, s["rounds"], s["round_s"], sync)
    med, p20, p80 = quantiles_us(per_call)
    out = dict(median_us=med, p20_us=p20, p80_us=p80, calls=calls, rounds=len(per_call),
               compute=_compute_note(case, device),
               timing=f"perf_counter: median of {len(per_call)} rounds x {calls} back-to-back "
                      f"calls, gc off in a round"
                      + (", device synchronised between rounds only"
                         if device.type == "cuda" else ""))
    if case.impl == "tritoncnn":
        out.update(launches=sum(counted.values()), launch_mode=case.launches,
                   launch_kernels=";".join(f"{k}:{v}" for k, v in sorted(counted.items())))
    return out


def case_row(case: Case, device, info: dict, s: dict) -> dict:
    from tritoncnn.reports.bench import dtype_name, impl_name, recorded

    row = dict(info, suite=SUITE, layer=case.layer, op=case.op,
               shape=describe(case, s["batch"]), dtype=dtype_name(case.dtype),
               layout=case.layout, direction=case.direction,
               implementation=impl_name(case.impl, device),
               batch=s["batch"] if case.op == "train_step" else None)
    with recorded(row, device):
        row.update(measure(case, device, s))
        row["status"] = "ok"
        if hasattr(os, "getloadavg"):  # how busy the machine was: these numbers move with it
            row["note"] = f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    return row


# ---------------------------------------------------------------------------------------------
# The command


def main(args) -> int:
    import torch

    from tritoncnn import _runtime
    from tritoncnn.reports import bench

    try:
        device = torch.device(_runtime.device_type() if args.device in (None, "auto")
                              else args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        _fail(f"--device {args.device} is not cpu or cuda")
    s = resolve(args, device)
    cases = build_cases(s)
    if args.list:
        for case in cases:
            print(case.label(), "|", describe(case, s["batch"]))
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("tritoncnn bench --host: no CUDA device here; on the CPU, --device cpu (launches "
              "stubbed)")
        return 2
    if device.type != _runtime.device_type():
        _fail(f"tritoncnn kernels run on {_runtime.device_type()!r} in this process "
              f"({_runtime.REASON}), not on {device.type!r}; set {_runtime.ENV_VAR} or --device")
    info = bench.run_info(device)
    info["gpu"] = machine_name(device)
    out = Path(args.out) if args.out else Path("reports/results") / bench.slug(info["gpu"])
    writer = bench.RowWriter(out / (args.csv or "host.csv"), COLUMNS)
    print(f"tritoncnn bench --host: {len(cases)} cases on {info['gpu']} -> {writer.path}")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        # One intra-op thread: these tiny shapes gain nothing from more, and PyTorch's CPU
        # threads waiting on each other make the torch rows swing with whatever else runs on a
        # small machine.
        torch.set_num_threads(1)
        done = 0
        for case in cases:
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                break
            row = case_row(case, device, info, s)
            writer.write(row)
            done += 1
            got = (f"{row['median_us']:.1f} us" if row.get("status") == "ok"
                   else f"error: {row.get('note')}")
            launches = f", {row['launches']} launches" if row.get("launches") is not None else ""
            print(f"  {case.label()}: {got}{launches}", flush=True)
        if done < len(cases):
            print(f"tritoncnn bench --host: budget of {args.budget_s:g} s spent; "
                  f"{len(cases) - done} of {len(cases)} cases not run")
    finally:
        torch.set_num_threads(threads)
        writer.close()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(writer.counts.items()))
    print(f"tritoncnn bench --host: wrote {counts} rows to {writer.path}")
    if s["profile"]:
        from tritoncnn.reports import step_profile

        # real launches on a GPU (what a step costs there), stubbed on the CPU
        cuda = device.type == "cuda"
        rows = step_profile.profile_rows(device, s["dtypes"][0], s["layouts"][0],
                                         s["profile_batch"], s["profile"], stub=not cuda,
                                         layer="vgg11" if cuda else "vgg11-w1/16")
        path = step_profile.write(rows, info, out / "profile.csv")
        for row in rows:
            if row["kind"] in ("step", "launches", "gpu"):
                value = (f"{row['calls']:.0f} a step" if row["kind"] == "launches" else
                         f"{row['us']:.0f} us" if row["status"] == "ok" else row.get("note"))
                print(f"  profile {row['implementation']} {row['item']}: {value}")
        print(f"tritoncnn bench --host: wrote {len(rows)} profile rows to {path}")
    return 0
