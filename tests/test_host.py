"""``tritoncnn bench --host``: the launch stub, the launch counts, the CSV rows and the argument
checks. Nothing here asserts a time: the numbers depend on the machine and what else runs on it."""

from __future__ import annotations

import csv
import gc

import pytest
import torch
import triton
import triton.language as tl

import tritoncnn.kernels as K
from tritoncnn import _runtime, cli
from tritoncnn.reports import bench, host

from conftest import DEVICE

STUB_ON_THIS_DEVICE = ["--launches", "stub"]


@triton.jit
def _fill_kernel(out_ptr, value, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, value, mask=offs < n)


def test_stubbed_launch_leaves_its_output_untouched():
    out = torch.zeros(8, device=DEVICE)
    with _runtime.count_launches(run=False) as count:
        assert _runtime.launch(_fill_kernel, (1,), out, 3.0, 8, BLOCK=8) is None
    assert count.total == 1 and torch.equal(out, torch.zeros(8, device=DEVICE))
    _runtime.launch(_fill_kernel, (1,), out, 3.0, 8, BLOCK=8)  # the same launch, run
    assert torch.equal(out, torch.full((8,), 3.0, device=DEVICE))


def test_counted_launch_with_run_still_runs():
    out = torch.zeros(4, device=DEVICE)
    with _runtime.count_launches(run=True) as count:
        _runtime.launch(_fill_kernel, (1,), out, 2.0, 4, BLOCK=4)
    assert dict(count) == {"_fill_kernel": 1}
    assert torch.equal(out, torch.full((4,), 2.0, device=DEVICE))


def test_stub_keeps_every_op_from_reaching_a_kernel(monkeypatch):
    """Any kernel run raises here; the ops (forward and backward) called under the stub do not."""
    kernel_type = type(K.conv._conv_fwd_kernel)

    def refuse(self, grid):
        raise AssertionError(f"kernel {self} ran under the stub")

    monkeypatch.setattr(kernel_type, "__getitem__", refuse)
    x = torch.randn(2, 4, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    with pytest.raises(AssertionError, match="ran under the stub"):
        K.conv2d_relu(x, w, b, 1, 1)  # the patch is what a real launch reaches
    xl = torch.randn(3, 8, device=DEVICE, requires_grad=True)
    wl = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    with _runtime.count_launches(run=False) as count:
        for y, inputs in ((K.conv2d_relu(x, w, b, 1, 1), (x, w, b)),
                          (K.conv2d_relu_pool(x, w, b, 1, 1), (x, w, b)),
                          (K.max_pool2d(x, 2), (x,)), (K.linear(xl, wl, b), (xl, wl, b))):
            torch.autograd.grad(y, inputs, torch.ones_like(y))
    # each conv op and linear: forward, dZ (and db), the flipped weight, dX (on the forward
    # kernel) and dW; forward and backward of the pool
    assert count.total == 3 * 5 + 2 and count["_conv_dw_kernel"] == 3


def test_count_launches_nests_and_restores():
    out = torch.zeros(2, device=DEVICE)
    with _runtime.count_launches(run=False) as outer:
        _runtime.launch(_fill_kernel, (1,), out, 1.0, 2, BLOCK=2)
        with _runtime.count_launches(run=False) as inner:
            _runtime.launch(_fill_kernel, (1,), out, 1.0, 2, BLOCK=2)
            _runtime.launch(_fill_kernel, (1,), out, 1.0, 2, BLOCK=2)
        _runtime.launch(_fill_kernel, (1,), out, 1.0, 2, BLOCK=2)
    assert (outer.total, inner.total) == (2, 2)
    with pytest.raises(ValueError), _runtime.count_launches(run=False):
        raise ValueError("the stub ends however the block ends")
    assert _runtime._counting is None
    assert torch.equal(out, torch.zeros(2, device=DEVICE))


TINY = dict(rounds=2, round_s=1e-4, batch=2)


def _row(op, direction, impl="tritoncnn", layer=None):
    case = host.Case(op, direction, impl, "fp32", "nchw", "stub" if impl == "tritoncnn" else None,
                     layer)
    row = host.case_row(case, torch.device(DEVICE), {"gpu": "test"}, TINY)
    assert row["status"] == "ok", row.get("note")
    return row


def _kernels(row) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split(":") for p in row["launch_kernels"].split(";"))}


@pytest.mark.parametrize("op, direction, want", [
    ("conv_relu", "forward", {"_conv_fwd_kernel": 1}),
    ("conv_relu", "forward-autograd", {"_conv_fwd_kernel": 1}),
    ("conv_relu_pool", "forward", {"_conv_pool_fwd_kernel": 1}),
    ("linear", "forward", {"_conv_fwd_kernel": 1}),
])
def test_forward_launches_one_kernel(op, direction, want):
    row = _row(op, direction)
    assert row["launches"] == 1 and _kernels(row) == want and row["launch_mode"] == "stub"


@pytest.mark.parametrize("op, forward", [("conv_relu", "_conv_fwd_kernel"),
                                         ("conv_relu_pool", "_conv_pool_fwd_kernel"),
                                         ("linear", "_conv_fwd_kernel")])
def test_forward_backward_launches_the_dx_and_dw_kernels(op, forward):
    kernels = _kernels(_row(op, "forward+backward"))
    # the stride-1 dX: the forward kernel on the flipped weight (_dx_weight_kernel)
    assert kernels[forward] == (2 if forward == "_conv_fwd_kernel" else 1)
    assert kernels["_conv_fwd_kernel"] >= 1 and kernels["_dx_weight_kernel"] == 1
    assert kernels["_conv_dw_kernel"] == 1
    assert set(kernels) <= {forward, "_conv_fwd_kernel", "_dx_weight_kernel", "_grad_z_kernel",
                            "_conv_dw_kernel", "_sum_splits_kernel"}


def test_pool_forward_backward_launches_its_backward_kernel():
    row = _row("pool", "forward+backward")
    kernels = _kernels(row)
    assert kernels.get("_max_pool_bwd_kernel") == 1 and row["launches"] == 2
    assert sum(v for k, v in kernels.items() if k.startswith("_max_pool_fwd")) == 1


def test_training_step_counts_its_launches():
    row = _row("train_step", "forward+backward", layer="vgg11-w1/16")
    kernels = _kernels(row)
    # vgg11: 8 conv layers and 3 linear layers, each with a forward and a dX/dW in backward
    forwards = sum(v for k, v in kernels.items() if "fwd" in k)
    assert forwards >= 11 and kernels["_conv_dw_kernel"] >= 11 and \
        kernels["_dx_weight_kernel"] >= 10
    assert row["launches"] == sum(kernels.values()) and row["batch"] == 2


def test_torch_rows_have_no_launch_count_and_say_they_compute():
    row = _row("conv_relu", "forward", impl="cudnn")
    assert row.get("launches") is None and row["implementation"] == bench.impl_name(
        "cudnn", torch.device(DEVICE))
    if DEVICE == "cpu":
        assert "compute included" in row["compute"]


def test_time_calls_runs_whole_rounds_and_turns_gc_back_on():
    calls = []
    per_call, n = host.time_calls(lambda: calls.append(1), rounds=3, round_s=1e-3)
    assert len(per_call) == 3 and all(t > 0 for t in per_call) and n >= 1
    assert len(calls) >= 3 * n + 1 and gc.isenabled()  # the sizing call, then the rounds


def test_machine_name_names_the_cpu_model_and_cores():
    name = host.machine_name(torch.device("cpu"))
    assert name.startswith("CPU ") and name.endswith(" cores)") and "@" not in name
    assert bench.slug(name).startswith("cpu-")


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU run of the command (stubbed launches)")
def test_command_writes_host_rows_with_every_column(tmp_path):
    argv = ["bench", "--host", "--device", "cpu", "--ops", "pool,conv_relu", "--direction",
            "forward,forward+backward", "--rounds", "2", "--round-ms", "0.2", "--out",
            str(tmp_path)]
    assert cli.main(argv) == 0
    assert cli.main(argv[:-2] + ["--ops", "pool", "--out", str(tmp_path)]) == 0  # appends
    with open(tmp_path / "host.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == host.COLUMNS
        rows = list(reader)
    assert len(rows) == 8 + 4 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert r["suite"] == "Host" and float(r["p20_us"]) <= float(r["median_us"]) <= float(
            r["p80_us"])
        assert int(r["rounds"]) == 2 and int(r["calls"]) >= 1 and r["timing"] and r["compute"]
        assert r["gpu"] == host.machine_name(torch.device("cpu")) and r["device"] == "cpu"
        assert r["torch"] and r["triton"] and r["git_sha"] and r["timestamp"]
    ours = [r for r in rows if r["implementation"] == "tritoncnn"]
    theirs = [r for r in rows if r["implementation"] == "torch"]
    assert len(ours) == len(theirs) == 6
    assert all(r["launch_mode"] == "stub" and int(r["launches"]) >= 1 for r in ours)
    assert all(r["launches"] == "" and r["launch_mode"] == "" for r in theirs)
    assert {(r["layer"], r["direction"], r["launches"]) for r in ours} >= {
        ("max_pool2d", "forward", "1"), ("max_pool2d", "forward+backward", "2"),
        ("conv2d_relu", "forward", "1"), ("conv2d_relu", "forward+backward", "5")}


def test_list_names_every_case(capsys):
    assert cli.main(["bench", "--host", "--device", "cpu", "--list", *STUB_ON_THIS_DEVICE]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 4 ops x 3 directions + 2 training steps, each on both implementations
    assert len(lines) == (4 * 3 + 2) * 2
    assert any(line.startswith("Host/vgg11 ") for line in lines)
    assert any(line.startswith("Host/vgg11-w1/16 ") for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--launches", "real", "--device", "cpu"], "--launches real needs a CUDA device"),
    (["--launches", "fast"], "--launches fast is not one of stub, real"),
    (["--ops", "conv"], "--ops conv is not one of"),
    (["--direction", "backward"], "--direction backward is not one of"),
    (["--impl", "compile"], "--impl compile is not one of"),
    (["--dtype", "fp8"], "--dtype fp8 is not one of"),
    (["--rounds", "0"], "--rounds must be a positive integer"),
    (["--round-ms", "-1"], "--round-ms must be a positive number"),
    (["--round-ms", "nan"], "--round-ms must be a positive number"),
    (["--host-batch", "0"], "--host-batch must be a positive integer"),
    (["--profile", "2", "--profile-batch", "0"], "--profile-batch must be a positive integer"),
    (["--tune"], "--tune applies to the other suites, not to --host"),
    (["--suite", "Tiny", "--quick"], "--suite, --quick apply to the other suites, not to --host"),
    (["--device", "tpu"], "--device tpu is not cpu or cuda"),
])
def test_bad_host_arguments_are_clear_errors(args, message, tmp_path):
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--host", "--list", "--out", str(tmp_path), *args])
    assert message in str(err.value)
    assert not list(tmp_path.iterdir())


def test_host_options_without_host_are_errors(tmp_path):
    with pytest.raises(SystemExit, match="--rounds applies only with --host"):
        cli.main(["bench", "--device", "cpu", "--suite", "Tiny", "--rounds", "3", "--out",
                  str(tmp_path)])


def test_report_files_host_rows_apart_from_the_bench_tables(tmp_path):
    from tritoncnn.reports import report

    writer = bench.RowWriter(tmp_path / "run" / "host.csv", host.COLUMNS)
    writer.write(dict(suite="Host", layer="conv2d_relu", op="conv_relu", direction="forward",
                      implementation="tritoncnn", status="ok", median_us=12.5, gpu="CPU Test (2 "
                      "cores)", launches=1))
    writer.close()
    written = report.add_results([tmp_path / "run"], tmp_path / "results")
    assert written == [tmp_path / "results" / "cpu-test-2-cores" / "host.csv"]
    rows, _, _ = report.load([tmp_path / "results"])
    assert rows.empty  # microseconds of host time are not kernel times of the bench tables


def test_gpu_check_host_part_selects_the_host_cases(capsys):
    """The GPU run's host part (reports/gpu_check.sh) takes arguments the command accepts."""
    import shlex
    from pathlib import Path

    text = Path(bench.__file__).with_name("gpu_check.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("part host "))
    words = shlex.split(line.split(">>")[0])  # no expansion: "$OUTDIR" stays a word
    args = words[words.index("bench"):]
    out = args.index("--out")
    del args[out:out + 2]
    capsys.readouterr()
    assert cli.main([*args, "--device", "cpu", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == (4 * 3 + 2) * 2 and all(" bf16 " in ln for ln in listed)


# The step profile -------------------------------------------------------------------------------


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU run of the command (stubbed launches)")
def test_profile_breaks_a_training_step_down_per_backend(tmp_path):
    """--profile writes profile.csv: per backend, the step, each kind of layer's forward, each
    kind of autograd node, the optimizer, and (tritoncnn, stubbed) its launches a step, which
    are the host suite's count for the same step; report --add files it."""
    from tritoncnn.reports import report, step_profile

    argv = ["bench", "--host", "--device", "cpu", "--ops", "train_step", "--impl", "tritoncnn",
            "--rounds", "1", "--round-ms", "0.2", "--profile", "2", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    with open(tmp_path / "profile.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == step_profile.PROFILE_COLUMNS
        rows = list(reader)
    assert {r["status"] for r in rows} == {"ok"} and {r["steps"] for r in rows} == {"2"}
    by = {(r["implementation"], r["item"]): r for r in rows}
    for impl in ("tritoncnn", "torch"):
        assert float(by[impl, "step"]["us"]) > 0 and by[impl, "step"]["calls"] == "1"
        assert by[impl, "optimizer"]["kind"] == "optimizer"
    assert by["tritoncnn", "forward Conv2dReLUPool"]["calls"] == "5"  # vgg11's five pools
    assert by["tritoncnn", "forward Conv2dReLU"]["calls"] == "3"
    assert by["torch", "forward Conv2d"]["calls"] == "8"
    assert any(item.startswith("backward _Conv2dReLUPoolChecked") for _, item in by)
    with open(tmp_path / "host.csv", newline="") as f:
        steps = [r for r in csv.DictReader(f) if r["layer"] == "vgg11-w1/16"]
    assert by["tritoncnn", "launches"]["calls"] == steps[0]["launches"]
    assert by["tritoncnn", "launches"]["launch_mode"] == "stub"
    assert all(r["gpu"] == host.machine_name(torch.device("cpu")) for r in rows)
    written = report.add_results([tmp_path], tmp_path / "results")
    assert tmp_path / "results" / bench.slug(rows[0]["gpu"]) / "profile.csv" in written


def test_profile_gpu_rows_count_launches_and_split_busy_from_idle():
    """On a GPU the launches are the CUDA launch calls the profiler saw, and a step's wall time
    splits into the union of its kernels' intervals (busy) and the rest (idle)."""
    from types import SimpleNamespace as NS

    from torch.autograd import DeviceType

    from tritoncnn.reports import step_profile

    def event(name, start, end, cuda=False, cpu_us=0.0):
        return NS(name=name, time_range=NS(start=start, end=end), cpu_time_total=cpu_us,
                  device_type=DeviceType.CUDA if cuda else DeviceType.CPU)

    events = [event("step", 0, 100, cpu_us=100), event("step", 200, 260, cpu_us=60),
              event("forward Conv2dReLU", 1, 5, cpu_us=4), event("cuLaunchKernel", 2, 3),
              event("cudaLaunchKernel", 4, 5), event("cuLaunchKernel", 201, 202),
              event("kernel a", 10, 40, cuda=True), event("kernel b", 30, 50, cuda=True),
              event("kernel c", 90, 120, cuda=True), event("kernel d", 210, 220, cuda=True),
              event("Optimizer.step#SGD.step", 80, 90, cpu_us=10)]
    rows = {item: (kind, calls, us) for item, kind, calls, us in
            step_profile.breakdown(events, steps=2, cuda=True)}
    assert rows["step"] == ("step", 1, 80)
    assert rows["forward Conv2dReLU"] == ("forward", 0.5, 2)
    assert rows["optimizer"] == ("optimizer", 0.5, 5)
    assert rows["launches"][1] == 1.5
    # busy: [10, 50] and [90, 100] in the first step, [210, 220] in the second: 60 of 160 us
    assert rows["gpu busy"][2] == 30 and rows["gpu idle"][2] == 50


def test_profile_steps_must_be_a_count(tmp_path):
    with pytest.raises(SystemExit, match="--profile must be a number of steps"):
        cli.main(["bench", "--host", "--list", "--profile", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--profile applies only with --host"):
        cli.main(["bench", "--device", "cpu", "--suite", "Tiny", "--profile", "2", "--out",
                  str(tmp_path)])


# Prepared launches ------------------------------------------------------------------------------


def test_prepared_launch_runs_counts_and_stubs_like_a_launch():
    out = torch.zeros(8, device=DEVICE)
    fill = _runtime.KernelLaunch(_fill_kernel, (1,), ("out_ptr",), value=3.0, n=8, BLOCK=8)
    with _runtime.count_launches(run=False) as count:
        assert fill(out_ptr=out) is None
    assert dict(count) == {"_fill_kernel": 1} and torch.equal(out, torch.zeros(8, device=DEVICE))
    fill(out_ptr=out)
    assert torch.equal(out, torch.full((8,), 3.0, device=DEVICE))


def test_prepared_launch_names_what_it_lacks_or_does_not_know():
    with pytest.raises(TypeError, match=r"missing \['n'\]"):
        _runtime.KernelLaunch(_fill_kernel, (1,), ("out_ptr",), value=3.0, BLOCK=8)
    with pytest.raises(TypeError, match=r"unknown arguments \['size'\]"):
        _runtime.KernelLaunch(_fill_kernel, (1,), ("out_ptr",), value=3.0, n=8, size=8, BLOCK=8)
    with pytest.raises(TypeError, match="tensors per call"):
        _runtime.KernelLaunch(_fill_kernel, (1,), (), out_ptr=torch.zeros(1), value=3.0, n=8,
                              BLOCK=8)


class _Compiled:
    """A compiled kernel as a Triton launch returns it: what a prepared launch calls directly."""

    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.runs = []

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.runs.append(args)


class _FakeKernel:
    """A kernel whose launch returns :class:`_Compiled` (or records a launch after the first)."""

    def __init__(self, fn):
        self.fn, self.__name__ = fn, fn.__name__
        self.launches, self.compiled = 0, _Compiled()

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launches += 1
            return self.compiled
        return run


def _fake(out_ptr, x_ptr, n, scale, BLOCK, FLAG=7):
    pass


def test_prepared_launch_calls_the_compiled_kernel_with_every_argument_in_order(monkeypatch):
    """After the first launch (through Triton) returned the compiled kernel, a call hands the
    arguments to it directly: every parameter in the kernel's order, constexprs and defaults
    included (what Triton's binder passes), on the current stream. A tensor that is not 16-byte
    aligned, or a counted call, takes Triton's route again."""
    aligned = {"ok": True}
    monkeypatch.setattr(_runtime, "_fast_device",
                        lambda tensors: 0 if aligned["ok"] else None)
    monkeypatch.setattr(_runtime, "_stream", lambda device: "stream")
    kernel = _FakeKernel(_fake)
    prepared = _runtime.KernelLaunch(kernel, (5, 2), ("out_ptr", "x_ptr"), n=9, scale=0.5,
                                     BLOCK=64, num_warps=4)
    out, x = torch.zeros(4), torch.ones(4)
    assert prepared(x_ptr=x, out_ptr=out) is kernel.compiled and kernel.launches == 1
    prepared(x_ptr=x, out_ptr=out)
    assert kernel.launches == 1
    (run,) = kernel.compiled.runs
    assert run[:9] == (5, 2, 1, "stream", "function", "packed", None, run[7], run[8])
    assert run[9:11] == (out, x) and run[11:] == (9, 0.5, 64, 7)
    aligned["ok"] = False
    prepared(x_ptr=x, out_ptr=out)
    with _runtime.count_launches(run=True):
        aligned["ok"] = True
        prepared(x_ptr=x, out_ptr=out)
    assert kernel.launches == 3 and len(kernel.compiled.runs) == 1


def test_layers_prepare_their_launches_once_per_signature_and_again_after_tuning(monkeypatch):
    """A conv layer derives its configs on its first call with a signature only; storing a
    tuned config (or any change of the autotune cache) makes the next call look them up
    again, and inside record_calls (what `tritoncnn tune` plans with) every call looks up."""
    from tritoncnn import autotune
    from tritoncnn.autotune import heuristics

    calls = []
    real = heuristics.conv_config
    monkeypatch.setattr(heuristics, "conv_config",
                        lambda kernel, *a, **kw: calls.append(kernel) or real(kernel, *a, **kw))
    x = torch.randn(2, 4, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, device=DEVICE, requires_grad=True)

    def step():
        with _runtime.count_launches(run=False):
            y = K.conv2d_relu(x, w, None, 1, 1)
            torch.autograd.grad(y, (x, w), torch.ones_like(y))

    step()
    first = list(calls)
    assert sorted(set(first)) == ["conv_dw", "conv_dx", "conv_fwd"]
    step()
    step()
    assert calls == first  # prepared: nothing looked up again
    autotune.cache.configs_changed()  # what storing a tuned config does
    step()
    assert calls == first * 2
    with autotune.record_calls() as records:
        step()
        step()
    assert calls == first * 4 and len(records) == 2 * len(first)
