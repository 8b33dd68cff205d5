"""``tritoncnn bench --host --profile``: where an eager vgg11 training step spends its time, per
backend, from ``torch.profiler``: one long-format CSV row per item (``profile.csv``).

The host suite times whole calls; this says what a step is made of. Each backend (tritoncnn, and
PyTorch's own ops: ``cudnn`` on a GPU, ``torch`` on the CPU) runs the host suite's vgg11
training step (zero_grad, forward, cross-entropy, backward, SGD with momentum) a few times
untimed, then ``steps`` times under the profiler, each step ending in a device synchronisation.
Rows, per step (``calls`` and ``us``: totals over the profiled steps divided by their number):

* ``step``: the step's wall time as the profiler saw it (synchronisation included);
* ``forward <Module>``: host time inside each kind of leaf module's forward (a record_function
  around every leaf module; children are not double counted: leaves have none);
* ``backward <Node>``: host time of each kind of autograd node the engine evaluated;
* ``optimizer``: SGD's zero_grad and step;
* ``launches``: kernel launches a step: the CUDA launch API calls the profiler saw on a GPU;
  with tritoncnn's launches stubbed, the launches tritoncnn counted (none run);
* ``gpu busy`` and ``gpu idle``: on a GPU, the time a step's kernels kept the GPU busy (the union
  of their intervals) and the rest of the step's wall time: what host overhead costs the step.

Host times include the profiler's own overhead (a few microseconds per recorded event): they
say where the time goes, and ``tritoncnn bench --host`` says how much a call costs.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path

PROFILE_COLUMNS = [
    "suite", "model", "shape", "dtype", "layout", "implementation", "launch_mode", "item",
    "kind", "calls", "us", "steps", "status", "batch", "gpu", "device", "torch", "triton",
    "git_sha", "timestamp", "note",
]
SUITE = "Host profile"
#: the launch API calls the profiler records on a GPU (runtime and driver API)
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
_BACKWARD = "autograd::engine::evaluate_function: "


@contextlib.contextmanager
def _leaf_forwards(model):
    """A ``record_function("forward <Module>")`` around every leaf module's forward."""
    from torch.autograd.profiler import record_function

    open_ = []
    handles = []

    def pre(module, _inputs):
        rf = record_function(f"forward {type(module).__name__}")
        rf.__enter__()
        open_.append(rf)

    def post(module, _inputs, _output):
        open_.pop().__exit__(None, None, None)

    for module in model.modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _union_us(intervals) -> float:
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def breakdown(events, steps: int, cuda: bool) -> list[tuple[str, str, float, float]]:
    """(item, kind, calls a step, us a step) from the profiler's events of ``steps`` steps, each
    inside a ``record_function("step")``."""
    from torch.autograd import DeviceType

    totals: dict = defaultdict(lambda: [0, 0.0])
    launches = 0
    kernels = []
    step_ranges = []
    for e in events:
        name = e.name
        if e.device_type == DeviceType.CUDA:
            kernels.append((e.time_range.start, e.time_range.end))
            continue
        if name == "step":
            step_ranges.append((e.time_range.start, e.time_range.end))
            key = ("step", "step")
        elif name.startswith("forward "):
            key = (name, "forward")
        elif name.startswith(_BACKWARD):
            key = ("backward " + name[len(_BACKWARD):], "backward")
        elif name.startswith("Optimizer."):
            key = ("optimizer", "optimizer")
        elif name in LAUNCH_CALLS:
            launches += 1
            continue
        else:
            continue
        totals[key][0] += 1
        totals[key][1] += e.cpu_time_total
    rows = [(item, kind, n / steps, us / steps) for (item, kind), (n, us) in totals.items()]
    order = {"step": 0, "forward": 1, "backward": 2, "optimizer": 3}
    rows.sort(key=lambda r: (order[r[1]], -r[3]))
    if cuda:
        rows.append(("launches", "launches", launches / steps, float("nan")))
        busy = sum(_union_us([(max(a, s), min(b, t)) for a, b in kernels if b > s and a < t])
                   for s, t in step_ranges)
        wall = sum(t - s for s, t in step_ranges)
        rows.append(("gpu busy", "gpu", float("nan"), busy / steps))
        rows.append(("gpu idle", "gpu", float("nan"), (wall - busy) / steps))
    return rows


def profile_rows(device, dtype: str, layout: str, batch: int, steps: int, stub: bool,
                 layer: str = "vgg11") -> list[dict]:
    """The rows of both backends' profiled steps (a backend that fails gets an error row)."""
    import torch

    from tritoncnn import _runtime
    from tritoncnn.reports import host
    from tritoncnn.reports.bench import impl_name, recorded

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    rows = []
    for impl in host.IMPLEMENTATIONS:
        ours = impl == "tritoncnn"
        mode = ("stub" if stub else "real") if ours else None
        base = dict(suite=SUITE, model=layer, shape=host.describe(
            host.Case("train_step", "forward+backward", impl, dtype, layout, mode, layer), batch),
            dtype=dtype, layout=layout, implementation=impl_name(impl, device),
            launch_mode=mode, steps=steps, batch=batch)
        error = dict(base, item="step", kind="step", status="error")
        with recorded(error, device):
            case = host.Case("train_step", "forward+backward", impl, dtype, layout, mode, layer)
            step = host.make_call(case, device, batch)
            with _runtime.count_launches(run=not (ours and stub)) as count:
                for _ in range(3):  # compilation, config lookups, the optimizer's state
                    step()
                sync()
                count.clear()
                with _leaf_forwards(step.model), \
                        torch.profiler.profile(activities=activities) as prof:
                    for _ in range(steps):
                        with torch.profiler.record_function("step"):
                            step()
                            sync()
                counted = sum(count.values())
            items = breakdown(prof.events(), steps, cuda)
            if ours and stub:
                items.append(("launches", "launches", counted / steps, float("nan")))
            note = ("tritoncnn launches stubbed: host code only" if ours and stub else
                    "host times include the profiler's overhead per recorded event")
            rows.extend(dict(base, item=item, kind=kind, calls=calls, us=us, status="ok",
                             note=note) for item, kind, calls, us in items)
            continue
        rows.append(error)
    return rows


def write(rows: list[dict], info: dict, path: Path) -> Path:
    """Append ``rows`` (with the run's ``info``) to the CSV at ``path``; its actual path (another
    name when an existing file there has other columns)."""
    from tritoncnn.reports import bench

    writer = bench.RowWriter(path, PROFILE_COLUMNS)
    try:
        for row in rows:
            writer.write(dict(info, **row))
    finally:
        writer.close()
    return writer.path
