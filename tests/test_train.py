"""tritoncnn.models.train: convergence of the two backends, resume, data-parallel training, the
``tritoncnn train`` command."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import socket
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tritoncnn.cli import main as cli_main
from tritoncnn.models import train as train_mod
from tritoncnn.models.layers import Conv2dReLUPool
from tritoncnn.models.train import TrainConfig, run

from conftest import DEVICE

TINY_SPEC = "CONV3-4-RELU-POOL2-CONV3-8-RELU-POOL2-FC10"


def _config(tmp_path, **kw) -> TrainConfig:
    # eager unless a test says otherwise (the default on CUDA is cuda-graphs)
    base = dict(spec=TINY_SPEC, data="synthetic:64", input_size=8, epochs=2, batch_size=16,
                lr=0.05, backend="torch", out=str(tmp_path / "run"), progress=False, mode="eager")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """float32 in IEEE on both backends (no TF32 on a GPU), so the twins can agree to 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert list(a) == list(b)
    for k in a:
        diff = (a[k] - b[k]).abs().max().item()
        assert diff <= atol, f"{k}: weights differ by {diff:.3g} > {atol}"


# --------------------------------------------------------------------------------------------
# convergence: tritoncnn and torch, same tiny CNN, same seed, same batches

def test_convergence_triton_matches_torch(tmp_path):
    cfg = _config(tmp_path, backend="both", data="synthetic:48", epochs=2, batch_size=12, lr=0.1)
    out = run(cfg)
    res = out["results"]
    steps = _rows(tmp_path / "run" / "steps.csv")
    losses = {b: [float(r["loss"]) for r in steps if r["backend"] == b] for b in res}
    assert len(losses["triton"]) == len(losses["torch"]) == 8
    for step, (a, b) in enumerate(zip(losses["triton"], losses["torch"])):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"step {step + 1}: {a} vs {b}"
    assert losses["torch"][-1] < losses["torch"][0]  # it learns
    _assert_same_weights(res["triton"]["state_dict"], res["torch"]["state_dict"], atol=1e-4)
    table = out["summary"]
    assert list(table.columns) == ["triton", "torch"]
    assert table.loc["max |w_triton - w_torch|", "triton"] < 1e-4
    assert abs(res["triton"]["test_acc"] - res["torch"]["test_acc"]) <= 1 / 12


# --------------------------------------------------------------------------------------------
# resume

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_resume_equals_uninterrupted(tmp_path, backend):
    # torch: VGG-11 (thin) has dropout, so the random number generators must be restored too;
    # on the CPU, where torch's own kernels are deterministic, so "equal" means bit for bit.
    # triton: the tiny CNN on the kernels' device (a GPU when there is one: the checkpoint's
    # RNG state must come back as CPU tensors); the kernels are deterministic too
    if backend == "torch":
        kw = dict(spec=None, model="vgg11", width=1 / 16, input_size=32, data="synthetic:48",
                  epochs=3, batch_size=16, device="cpu")
    else:
        kw = dict(data="synthetic:48", epochs=3, batch_size=16, backend="triton", device=DEVICE)
    whole = run(_config(tmp_path / "a", **kw))["results"][backend]

    first = run(_config(tmp_path / "b", stop_after=4, **kw))  # mid-epoch 2 (3 steps per epoch)
    assert first["stopped"] and first["results"][backend]["steps"] == 4
    second = run(_config(tmp_path / "b", resume=True, stop_after=3, **kw))  # ends epoch 3 - 1
    assert second["stopped"] and second["results"][backend]["steps"] == 7
    third = run(_config(tmp_path / "b", resume=True, **kw))
    assert not third["stopped"]
    resumed = third["results"][backend]

    _assert_same_weights(resumed["state_dict"], whole["state_dict"])
    a, b = _rows(tmp_path / "a/run/steps.csv"), _rows(tmp_path / "b/run/steps.csv")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # no step lost or done twice
    ea, eb = _rows(tmp_path / "a/run/epochs.csv"), _rows(tmp_path / "b/run/epochs.csv")
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert [r[key] for r in eb] == [r[key] for r in ea], key


def test_resume_rejects_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--backend", "torch", "--data", "synthetic:32", "--spec",
                     TINY_SPEC, "--input-size", "8", "--epochs", "1", "--batch-size", "16",
                     "--out", str(out), "--no-progress"]) == 0
    with pytest.raises(SystemExit, match="--batch-size 16, not 8"):
        cli_main(["train", "--out", str(out), "--resume", "--batch-size", "8"])
    # more epochs are fine: settings come back from config.json
    assert cli_main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert [r["epoch"] for r in _rows(out / "epochs.csv")] == ["1", "2"]


# --------------------------------------------------------------------------------------------
# data parallel: two gloo processes == one process on the full batch

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run(cfg)


def test_ddp_two_processes_match_one(tmp_path):
    # 768 images split evenly: DistributedSampler pads an uneven split with repeated images
    kw = dict(data="synthetic:768", epochs=1, batch_size=64, lr=0.1, device="cpu")
    single = run(_config(tmp_path / "one", **kw))["results"]["torch"]

    cfg = _config(tmp_path / "two", **kw)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg), nprocs=2, join=True)
    ckpt = torch.load(tmp_path / "two/run/torch/checkpoint.pt", weights_only=False)
    _assert_same_weights(ckpt["model"], single["state_dict"], atol=1e-5)  # fp32 rounding
    # the logged losses are the global batch's, as in one process
    a = [float(r["loss"]) for r in _rows(tmp_path / "one/run/steps.csv")]
    b = [float(r["loss"]) for r in _rows(tmp_path / "two/run/steps.csv")]
    assert len(a) == len(b) == 12
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# the command

def test_train_command_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["train", "--backend", "torch", "--data", "synthetic:32", "--spec",
                   TINY_SPEC, "--input-size", "8", "--epochs", "2", "--batch-size", "16",
                   "--out", str(out), "--no-progress", "--save-every", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test accuracy %" in printed and "images/s" in printed and "peak memory" in printed
    for name in ("config.json", "steps.csv", "epochs.csv", "summary.csv", "curves.png",
                 "torch/checkpoint.pt"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len(_rows(out / "steps.csv")) == 4 and len(_rows(out / "epochs.csv")) == 2
    config = json.loads((out / "config.json").read_text())
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"  # the report's
    assert config["device"] == "auto" and config["device_name"].startswith(name)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_train_mixed_precision_torch(tmp_path, dtype):
    kw = dict(epochs=2, data="synthetic:64")
    full = run(_config(tmp_path / "fp32", **kw))["results"]["torch"]
    half = run(_config(tmp_path / dtype, dtype=dtype, **kw))["results"]["torch"]
    a = [float(r["loss"]) for r in _rows(tmp_path / "fp32/run/steps.csv")]
    b = [float(r["loss"]) for r in _rows(tmp_path / f"{dtype}/run/steps.csv")]
    assert half["steps"] == len(b) == len(a) == 8
    # autocast ran: the losses move off fp32's by rounding, and stay within its size
    assert a != b
    for step, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= 3e-2 * max(1.0, abs(x)), f"step {step + 1}: {dtype} {y} vs fp32 {x}"
    assert b[-1] < b[0]  # it learns
    assert abs(half["test_acc"] - full["test_acc"]) <= 0.25


def test_train_bf16_autocast_triton_matches_torch(tmp_path):
    cfg = _config(tmp_path, backend="both", dtype="bf16", data="synthetic:48", epochs=1,
                  batch_size=12, lr=0.1)
    res = run(cfg)["results"]
    steps = _rows(tmp_path / "run" / "steps.csv")
    losses = {b: [float(r["loss"]) for r in steps if r["backend"] == b] for b in res}
    assert len(losses["triton"]) == len(losses["torch"]) == 4
    for step, (a, b) in enumerate(zip(losses["triton"], losses["torch"])):
        assert abs(a - b) <= 3e-2 * max(1.0, abs(b)), f"step {step + 1}: {a} vs {b}"
    _assert_same_weights(res["triton"]["state_dict"], res["torch"]["state_dict"], atol=3e-2)


def test_train_channels_last(tmp_path):
    """--channels-last: weights and images of both twins in channels_last; the twins agree."""
    args = argparse.Namespace(**{f: None for f in TrainConfig.__dataclass_fields__})
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    assert train_mod.config_from_args(parser.parse_args(["--channels-last"])).channels_last
    assert train_mod.config_from_args(parser.parse_args([])).channels_last is None
    cpu = torch.device("cpu")
    assert not train_mod._channels_last(train_mod.config_from_args(args), cpu)  # CPU default
    assert train_mod._channels_last(TrainConfig(), torch.device("cuda"))  # CUDA default

    res = run(_config(tmp_path, backend="both", channels_last=True, data="synthetic:32",
                      epochs=1))["results"]
    for backend in ("triton", "torch"):
        w = res[backend]["state_dict"]["3.weight"]  # (8, 4, 3, 3): the second conv
        assert w.is_contiguous(memory_format=torch.channels_last), backend
        assert not w.is_contiguous()
    _assert_same_weights(res["triton"]["state_dict"], res["torch"]["state_dict"], atol=1e-4)


def test_images_per_second_leaves_out_the_first_step(tmp_path, monkeypatch):
    """The first step (Triton's JIT compilation on a GPU) is timed apart from the rest, and so is
    the first step of the epochs' last, smaller batch (new kernel specializations)."""
    ticks = iter(range(1000))

    def clock():  # every step takes 1 s, except the first: 101 s
        t = next(ticks)
        return float(t if t == 0 else t + 100)

    monkeypatch.setattr(train_mod, "_clock", clock)
    # 72 images in batches of 16: 4 full batches and one of 8 per epoch
    out = run(_config(tmp_path, data="synthetic:72", epochs=2, batch_size=16))
    res = out["results"]["torch"]
    assert res["first_step_s"] == 101.0 and res["train_seconds"] == 101.0 + 9
    # epoch 1: steps 2 to 4 (the batch of 8 is a new size); epoch 2: every step
    assert res["history"][0]["images_per_s"] == 48 / 3
    assert res["history"][1]["images_per_s"] == 72 / 5
    assert res["images_per_s"] == (48 + 72) / 8
    table = out["summary"]
    assert table.loc["images/s (eager, after the 1st step)", "torch"] == 15.0
    assert table.loc["1st step seconds (incl. compile)", "torch"] == 101.0


def test_rng_state_restores_from_a_checkpoint_on_the_device(tmp_path):
    """torch.load(map_location=<the device>) moves the saved RNG tensors there; setting the
    generators wants CPU tensors."""
    device = torch.device(DEVICE)
    torch.manual_seed(11)
    if device.type == "cuda":
        torch.cuda.manual_seed(11)
    saved = train_mod._rng_state(device)
    expect = torch.rand(3), (torch.rand(3, device=device) if device.type == "cuda" else None)
    torch.save({"rng": saved}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", map_location=device, weights_only=True)["rng"]
    torch.manual_seed(0)
    train_mod._set_rng_state(loaded, device)
    assert torch.equal(torch.rand(3), expect[0])
    if device.type == "cuda":
        assert torch.equal(torch.rand(3, device=device), expect[1])


def test_default_model_uses_the_fused_block():
    from tritoncnn.models.zoo import to_backend

    torch.manual_seed(0)
    model = to_backend(train_mod.build_model(TrainConfig(), 1, 8, 10), "triton")
    assert sum(type(m) is Conv2dReLUPool for m in model.modules()) == 2


@pytest.mark.parametrize("argv,match", [
    (["--spec", "CONV3-4-RELU-FC7", "--data", "synthetic:8", "--input-size", "4"], "FC10"),
    (["--spec", "CONV3-4-", "--data", "synthetic:8"], "index 8"),
    (["--data", "mnist:/nonexistent/folder"], "not found"),
    (["--data", "synthetic:8", "--device", "cpu", "--cuda-graphs"],
     "--mode cuda-graphs needs a CUDA device"),
    (["--data", "synthetic:8", "--device", "cpu", "--mode", "cuda-graphs"],
     "--mode cuda-graphs needs a CUDA device"),
    (["--data", "synthetic:8", "--device", "cpu", "--compile"],
     "--mode compile needs a CUDA device"),
    (["--data", "synthetic:8", "--lr", "nan"], "--lr must be a finite number >= 0, got nan"),
    (["--data", "synthetic:8", "--momentum", "-0.5"], "--momentum must be a finite number"),
    (["--data", "synthetic:8", "--model", "vgg11", "--width", "-1"],
     "width must be a positive number, got -1"),
])
def test_train_command_errors(tmp_path, capsys, argv, match):
    rc = cli_main(["train", "--backend", "torch", "--out", str(tmp_path / "r"), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err


def test_pick_device_gives_cuda_an_index(monkeypatch):
    """torch.cuda.set_device refuses torch.device("cuda") (no index): --device cuda and auto
    resolve to the current device's index first."""
    seen = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index, got {device}")
        seen.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for name in ("auto", "cuda"):
        device = train_mod._pick_device(TrainConfig(device=name, backend="torch"),
                                        train_mod._Dist())
        assert device == torch.device("cuda", 0)
    assert seen == [torch.device("cuda", 0)] * 2


# --------------------------------------------------------------------------------------------
# --cuda-graphs

class _ReplayedGraphs:
    """CUDA graphs' contract on the CPU: a capture hands back fn's outputs, and every replay runs
    fn again (on whatever the static inputs hold now) and refills those outputs in place."""

    captures = 0

    @staticmethod
    def check(device):
        pass

    @staticmethod
    def side_stream(device):
        return nullcontext()

    @classmethod
    def capture(cls, fn, device):
        cls.captures += 1
        out = fn()
        replays = iter(range(10**9))

        def replay():
            if next(replays):  # the first replay's work is the capture's own run
                for static, new in zip(out, fn()):
                    static.copy_(new)
        return replay, out


def test_captured_step_replays_the_new_batch(monkeypatch):
    calls = []

    def fn(x, y):
        calls.append(y.clone())
        return (x * 2, y.sum())

    step = train_mod._CapturedStep(fn, [], torch.device("cpu"), warmup=2, cuda=_ReplayedGraphs)
    for i in range(5):
        x, y = torch.full((3,), float(i)), torch.full((2,), i)
        assert step.warming == (i < 3)
        out2x, outsum = step(x, y)
        assert torch.equal(out2x, 2 * x) and outsum.item() == 2 * i, i
    assert [c[0].item() for c in calls] == [0, 1, 2, 3, 4]
    first = step(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    assert first[0] is out2x  # replays refill the captured outputs


def test_cuda_graph_training_equals_eager_steps(tmp_path, monkeypatch):
    """The training loop around the captured step: each full batch goes through the static
    inputs, a last smaller batch runs eagerly (and the replays after it still train), the warm-up
    steps and the capture stay out of images/s. The stand-in's replays compute what eager steps
    do, so the weights must be equal bit for bit (but for cuDNN's on a GPU: its weight gradients
    add in a run-dependent order)."""
    kw = dict(data="synthetic:72", epochs=2, batch_size=16, backend="both")  # 4 full + 8, twice
    eager = run(_config(tmp_path / "eager", **kw))["results"]
    monkeypatch.setattr(train_mod, "_CudaGraphs", _ReplayedGraphs)
    monkeypatch.setattr(_ReplayedGraphs, "captures", 0)
    ticks = iter(range(1000))
    monkeypatch.setattr(train_mod, "_clock", lambda: float(next(ticks)))  # 1 s per step
    run_graphed = run(_config(tmp_path / "graphs", mode="cuda-graphs", **kw))
    graphed = run_graphed["results"]
    assert _ReplayedGraphs.captures == 2  # one per backend
    exact = {"triton": True, "torch": DEVICE == "cpu"}
    for backend in ("triton", "torch"):
        _assert_same_weights(graphed[backend]["state_dict"], eager[backend]["state_dict"],
                             atol=0.0 if exact[backend] else 1e-6)
        # steps 1-4 are the 3 eager warm-up steps and the capture, step 5 the first batch of 8
        # (a new size: compiles): the 5 steps of epoch 2 are timed
        assert graphed[backend]["images_per_s"] == (4 * 16 + 8) / 5
    table = run_graphed["summary"]
    assert table.loc["images/s (CUDA graphs, after the warm-up and capture steps)",
                     "torch"] == (4 * 16 + 8) / 5
    a = _rows(tmp_path / "eager/run/steps.csv")
    b = _rows(tmp_path / "graphs/run/steps.csv")
    assert [(r["backend"], r["step"]) for r in b] == [(r["backend"], r["step"]) for r in a]
    for ra, rb in zip(a, b):
        if exact[ra["backend"]]:
            assert rb["loss"] == ra["loss"], ra
        else:
            assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5), ra


def test_a_failed_capture_trains_on_eagerly(tmp_path, monkeypatch):
    """A step that cannot be captured does not stop the run: one warning, then eager steps,
    which train exactly as a run without graphs (on the CPU, where PyTorch's own kernels are
    deterministic: bit for bit)."""
    kw = dict(data="synthetic:64", epochs=1, batch_size=16, device="cpu")
    eager = run(_config(tmp_path / "eager", **kw))["results"]["torch"]

    class Uncapturable(_ReplayedGraphs):
        @classmethod
        def capture(cls, fn, device):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(train_mod, "_CudaGraphs", Uncapturable)
    with pytest.warns(RuntimeWarning, match="capturing the step failed.*not permitted.*eager"):
        graphed = run(_config(tmp_path / "graphs", mode="cuda-graphs", **kw))["results"]["torch"]
    _assert_same_weights(graphed["state_dict"], eager["state_dict"])


# --------------------------------------------------------------------------------------------
# modes: the default, bad combinations, config.json and --resume, --compile

def test_default_mode_is_cuda_graphs_on_cuda_in_one_process_else_eager():
    resolve = train_mod.resolve_mode
    assert resolve(TrainConfig(), torch.device("cpu")) == "eager"
    assert resolve(TrainConfig(), torch.device("cuda", 0)) == "cuda-graphs"
    assert resolve(TrainConfig(), torch.device("cuda", 0), world=2) == "eager"
    assert resolve(TrainConfig(mode="eager"), torch.device("cuda", 0)) == "eager"
    with pytest.raises(ValueError, match="--mode must be one of eager, cuda-graphs, compile, "
                                         "got 'jit'"):
        resolve(TrainConfig(mode="jit"), torch.device("cpu"))


@pytest.mark.parametrize("mode", ["cuda-graphs", "compile"])
def test_graphs_and_compile_refuse_torchrun(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = cli_main(["train", "--backend", "torch", "--data", "synthetic:8", "--out",
                   str(tmp_path / "r"), "--mode", mode])
    assert rc == 2
    assert f"--mode {mode} is not supported under torchrun (DDP)" in capsys.readouterr().err


def test_mode_is_saved_named_and_resumed(tmp_path, capsys):
    """config.json holds the resolved mode, --resume keeps it (another mode is refused), a run
    saved before --mode existed resumes in the mode its cuda_graphs flag meant, and the printed
    line and the summary name the mode."""
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--data", "synthetic:32", "--spec", TINY_SPEC,
            "--input-size", "8", "--epochs", "1", "--batch-size", "8", "--out", str(out),
            "--no-progress", "--device", "cpu"]
    assert cli_main([*argv, "--stop-after", "1"]) == 130
    assert "fp32, nchw, eager |" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["mode"] == "eager"
    with pytest.raises(SystemExit, match="started with --mode eager, not compile"):
        cli_main([*_resume_argv(out), "--compile"])
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    assert train_mod.config_from_args(parser.parse_args(["--out", str(out), "--resume"])
                                      ).mode == "eager"
    old = json.loads((out / "config.json").read_text())
    del old["mode"]
    for flag, mode in ((True, "cuda-graphs"), (False, "eager")):
        (out / "config.json").write_text(json.dumps(dict(old, cuda_graphs=flag)))
        cfg = train_mod.config_from_args(parser.parse_args(["--out", str(out), "--resume"]))
        assert cfg.mode == mode
    (out / "config.json").write_text(json.dumps(dict(old, mode="eager")))
    assert cli_main(_resume_argv(out)) == 0
    table = _rows(out / "summary.csv")
    assert "images/s (eager, after the 1st step)" in [r["metric"] for r in table]
    for argv_mode, mode in ((["--cuda-graphs"], "cuda-graphs"), (["--compile"], "compile"),
                            (["--mode", "compile"], "compile"), ([], None)):
        assert train_mod.config_from_args(parser.parse_args(argv_mode)).mode == mode
    with pytest.raises(SystemExit):  # one mode at a time
        parser.parse_args(["--cuda-graphs", "--compile"])


class _AotEagerCompiler:
    """torch.compile on the CPU: Dynamo and AOTAutograd trace the model as on a GPU, and the
    graphs run eagerly (aot_eager: no Inductor, which cannot launch Triton kernels on the CPU).
    Records every forward and backward graph."""

    backends: list = []  # one graph-recording backend per compiled model

    @staticmethod
    def check(device):
        pass

    @classmethod
    def compile(cls, module):
        from torch._dynamo.testing import AotEagerAndRecordGraphs

        cls.backends.append(AotEagerAndRecordGraphs())
        return torch.compile(module, backend=cls.backends[-1], dynamic=False, fullgraph=True)


def _graph_targets(graphs) -> set[str]:
    return {str(node.target) for g in graphs for node in g.graph.nodes
            if node.op == "call_function"}


def test_compiled_training_equals_eager_steps(tmp_path, monkeypatch):
    """--compile's training loop, with the model traced by torch.compile as on a GPU (the graphs
    run by aot_eager on the CPU): the triton twin's forward and backward graphs hold the kernel
    launches themselves (triton_kernel_wrapper nodes), no opaque tritoncnn op; the weights and
    losses are those of eager steps (bit for bit: the same kernels with the same configs); the
    warm-up step, the compiling step and the first smaller batch stay out of images/s."""
    torch._dynamo.reset()
    kw = dict(data="synthetic:72", epochs=2, batch_size=16, backend="both")  # 4 full + 8, twice
    eager = run(_config(tmp_path / "eager", **kw))["results"]
    monkeypatch.setattr(train_mod, "_Compiler", _AotEagerCompiler)
    monkeypatch.setattr(_AotEagerCompiler, "backends", [])
    ticks = iter(range(1000))
    monkeypatch.setattr(train_mod, "_clock", lambda: float(next(ticks)))  # 1 s per step
    out = run(_config(tmp_path / "compiled", mode="compile", **kw))
    torch._dynamo.reset()
    assert out["mode"] == "compile"
    compiled = out["results"]
    triton_backend, torch_backend = _AotEagerCompiler.backends  # built in this order
    targets = _graph_targets(triton_backend.fw_graphs) | _graph_targets(triton_backend.bw_graphs)
    assert "triton_kernel_wrapper_functional" in {t.split(".")[-1] for t in targets}, targets
    assert not any("tritoncnn" in t for t in targets), targets
    assert len(triton_backend.fw_graphs) == len(triton_backend.bw_graphs) == 1  # no recompile
    assert not any("triton_kernel" in t for t in _graph_targets(torch_backend.fw_graphs))
    for backend in ("triton", "torch"):
        _assert_same_weights(compiled[backend]["state_dict"], eager[backend]["state_dict"],
                             atol=0.0 if backend == "triton" else 1e-6)
        # epoch 1: step 1 eager (warm-up), step 2 compiles, 3 and 4 timed, 5 a new size
        assert compiled[backend]["images_per_s"] == (2 * 16 + 4 * 16 + 8) / (2 + 5)
    assert out["summary"].loc["images/s (torch.compile, after the warm-up and compile steps)",
                              "torch"] == (2 * 16 + 4 * 16 + 8) / 7
    a = _rows(tmp_path / "eager/run/steps.csv")
    b = _rows(tmp_path / "compiled/run/steps.csv")
    assert [(r["backend"], r["step"]) for r in b] == [(r["backend"], r["step"]) for r in a]
    for ra, rb in zip(a, b):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-6, abs=1e-7), ra
    assert json.loads((tmp_path / "compiled/run/config.json").read_text())["mode"] == "compile"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_compiled_training_matches_eager(tmp_path, dtype):
    """Real torch.compile (Inductor) of both twins: its generated code launches tritoncnn's
    kernels with the configs the eager steps use, so the triton twin trains as eager steps do
    (to rounding: Inductor may fuse the parts of the step around the kernels differently)."""
    torch._dynamo.reset()
    kw = dict(data="synthetic:72", epochs=2, batch_size=16, backend="both", device="cuda",
              dtype=dtype, channels_last=True)
    eager = run(_config(tmp_path / "eager", **kw))["results"]
    compiled = run(_config(tmp_path / "compiled", mode="compile", **kw))["results"]
    torch._dynamo.reset()
    tol = 1e-5 if dtype == "fp32" else 2e-2
    for backend in ("triton", "torch"):
        _assert_same_weights(compiled[backend]["state_dict"], eager[backend]["state_dict"],
                             atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_cuda_graph_training_equals_eager(tmp_path, dtype):
    """Real CUDA graphs: captured and replayed steps train the weights eager steps train; the
    tritoncnn kernels are deterministic, so bit for bit there."""
    kw = dict(data="synthetic:72", epochs=2, batch_size=16, backend="both", device="cuda",
              dtype=dtype, channels_last=True)
    eager = run(_config(tmp_path / "eager", **kw))["results"]
    graphed = run(_config(tmp_path / "graphs", mode="cuda-graphs", **kw))["results"]
    _assert_same_weights(graphed["triton"]["state_dict"], eager["triton"]["state_dict"])
    # cuDNN's benchmark mode may pick other algorithms in another run
    tol = 1e-5 if dtype == "fp32" else 1e-2
    _assert_same_weights(graphed["torch"]["state_dict"], eager["torch"]["state_dict"], atol=tol)


@pytest.mark.gpu
def test_gpu_captured_step_keeps_the_captured_gradients():
    """After a capture the parameters' .grad are the graph's own tensors at every replay, even
    when an eager step (a smaller batch) has put other tensors there in between."""
    device = torch.device("cuda")
    model = torch.nn.Linear(4, 3).to(device)

    def fn(x, y):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return (loss,)

    step = train_mod._CapturedStep(fn, model.parameters(), device, warmup=1)
    batches = [(torch.randn(8, 4, device=device), torch.randint(0, 3, (8,), device=device))
               for _ in range(4)]
    step(*batches[0])
    step(*batches[1])  # capture and first replay
    captured = [p.grad for p in model.parameters()]
    fn(batches[2][0][:5], batches[2][1][:5])  # an eager step on a smaller batch
    (loss,) = step(*batches[3])
    assert all(p.grad is g for p, g in zip(model.parameters(), captured))
    (expect,) = fn(*batches[3])
    torch.testing.assert_close(loss, expect)
    for p, g in zip(model.parameters(), captured):
        torch.testing.assert_close(g, p.grad)


# --------------------------------------------------------------------------------------------
# checkpoints: loaded with weights_only=True, one-line errors naming the file

def _short_run(tmp_path, **kw) -> Path:
    """A stopped one-step run of the torch backend; returns its --out."""
    cfg = _config(tmp_path, data="synthetic:32", epochs=1, stop_after=1, **kw)
    with contextlib.redirect_stderr(io.StringIO()):
        assert run(cfg)["stopped"]
    return Path(cfg.out)


def _resume_argv(out) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--no-progress"]


def test_checkpoint_loads_with_torch_defaults_and_weights_only(tmp_path):
    out = _short_run(tmp_path)
    path = out / "torch" / "checkpoint.pt"
    for ckpt in (torch.load(path), torch.load(path, weights_only=True)):
        assert ckpt["backend"] == "torch" and ckpt["progress"]["global_step"] == 1
        assert ckpt["config"]["spec"] == TINY_SPEC
        rng = ckpt["rng"][0]
        assert all(isinstance(rng[k], torch.Tensor) for k in ("torch", "numpy", "python"))


class _RunsCode:
    """Unpickling this object calls os.mkdir(marker): proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    out = _short_run(tmp_path)
    path = out / "torch" / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    ckpt = torch.load(path)
    ckpt["progress"] = _RunsCode(marker)
    torch.save(ckpt, path)
    assert cli_main(_resume_argv(out)) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not a readable checkpoint" in err
    assert "needs code to load, which is refused" in err and "mkdir" in err


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
     "not a readable checkpoint"),
    (lambda p: p.write_bytes(b"\x00garbage" * 10), "not a readable checkpoint"),
    (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    (lambda p: torch.save({"weight": torch.zeros(3)}, p), "not a tritoncnn train checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "not a tritoncnn train checkpoint"),
    (lambda p: torch.save(dict(torch.load(p), backend="triton"), p), "holds the 'triton'"),
    (lambda p: torch.save(dict(torch.load(p), model={"0.weight": torch.zeros(1)}), p),
     "does not fit this run"),
])
def test_a_damaged_or_foreign_checkpoint_is_a_one_line_error(tmp_path, capsys, damage, match):
    out = _short_run(tmp_path)
    path = out / "torch" / "checkpoint.pt"
    damage(path)
    assert cli_main(_resume_argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tritoncnn train: error: --resume: ") and str(path) in err
    assert match in err


def test_resume_with_the_checkpoint_missing_says_so(tmp_path, capsys):
    out = _short_run(tmp_path)
    (out / "torch" / "checkpoint.pt").unlink()
    assert cli_main(_resume_argv(out)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'torch' / 'checkpoint.pt'} not found" in err
    assert len(_rows(out / "steps.csv")) == 1  # nothing was trained again from step 0


def test_resume_of_a_later_backend_that_had_not_started_starts_it(tmp_path):
    """backend both, stopped inside the first backend: the second has no checkpoint yet, and
    --resume trains it from its start."""
    cfg = _config(tmp_path, backend="both", data="synthetic:16", epochs=1, batch_size=8,
                  stop_after=1)
    assert run(cfg)["stopped"]
    assert not (Path(cfg.out) / "torch" / "checkpoint.pt").exists()
    cfg.stop_after, cfg.resume = 0, True
    res = run(cfg)
    assert not res["stopped"] and res["results"]["torch"]["steps"] == 2


# --------------------------------------------------------------------------------------------
# the command's errors and words

@pytest.mark.parametrize("argv,match", [
    (["--device", "foo"], "--device 'foo' is not a device this command trains on: expected auto"),
    (["--device", "meta"], "--device 'meta' is not a device"),
    (["--input-size", "0"], "--input-size must be at least 1, got 0"),
    (["--input-size", "-3"], "--input-size must be at least 1, got -3"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, match):
    rc = cli_main(["train", "--backend", "torch", "--data", "synthetic:8",
                   "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert match in err


def test_an_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "run"):
        rc = cli_main(["train", "--backend", "torch", "--data", "synthetic:8", "--out", str(out),
                       "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert f"--out {out}: cannot write there" in err


def test_train_speaks_the_shared_vocabulary():
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    from tritoncnn import defaults

    for name in defaults.DTYPES:
        assert train_mod.config_from_args(parser.parse_args(["--dtype", name])).dtype == name
    layout = {"channels_last": True, "nchw": False}
    for name in defaults.LAYOUTS:
        assert train_mod.config_from_args(
            parser.parse_args(["--layout", name])).channels_last is layout[name]
    cfg = train_mod.config_from_args(parser.parse_args([]))
    assert cfg.device == "auto" and cfg.channels_last is None
    assert parser.parse_args(["--no-progress"]).progress is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--layout", "channels_last", "--no-channels-last"])


@pytest.mark.parametrize("dtype,tf32", [("fp32", False), ("tf32", True)])
def test_fp32_trains_in_ieee_and_tf32_with_tf32(tmp_path, monkeypatch, dtype, tf32):
    """The TF32 switches during the run follow --dtype (whatever they were before), and are put
    back after."""
    seen = []
    real = train_mod._BackendRun.train

    def spy(self):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(self)

    monkeypatch.setattr(train_mod._BackendRun, "train", spy)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32
    run(_config(tmp_path, dtype=dtype, data="synthetic:16", epochs=1))
    assert seen == [(tf32, tf32)]
    assert torch.backends.cudnn.allow_tf32 is (not tf32)


def test_fp64_trains_both_backends_in_float64(tmp_path):
    res = run(_config(tmp_path, backend="both", dtype="fp64", data="synthetic:16", epochs=1,
                      batch_size=8))["results"]
    for backend in ("triton", "torch"):
        assert all(v.dtype == torch.float64 for v in res[backend]["state_dict"].values())
    _assert_same_weights(res["triton"]["state_dict"], res["torch"]["state_dict"], atol=1e-10)


# --------------------------------------------------------------------------------------------
# what a run leaves behind

def test_config_json_rebuilds_the_model_of_the_default_spec(tmp_path):
    cfg = _config(tmp_path, spec=None, data="digits", epochs=1, stop_after=1)
    run(cfg)
    out = Path(cfg.out)
    config = json.loads((out / "config.json").read_text())
    assert config["spec"] == train_mod.DEFAULT_SPEC
    assert config["model_input"] == {"in_channels": 1, "input_size": 8, "num_classes": 10}
    model = train_mod.model_from_config(out / "config.json")
    ckpt = torch.load(out / "torch" / "checkpoint.pt")
    model.load_state_dict(ckpt["model"])  # strict: the same layers and shapes
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_curves_are_titled_coloured_and_in_percent(tmp_path):
    from matplotlib.colors import to_hex

    cfg = _config(tmp_path, backend="both", data="synthetic:16", epochs=2, batch_size=8)
    run(cfg)
    fig = train_mod.curves_figure(Path(cfg.out))
    title = fig._suptitle.get_text()
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    assert TINY_SPEC in title and name in title and "fp32" in title
    ax_loss, ax_acc = fig.axes
    colours = {line.get_label(): to_hex(line.get_color()) for line in ax_loss.lines}
    assert colours == {"torch": to_hex("C0"), "triton": to_hex("C1")}
    values = [v for line in ax_acc.lines for v in line.get_ydata()]
    assert max(values) > 1 and max(values) <= 100  # per cent, not a fraction
    assert ax_acc.yaxis.get_major_formatter()(50, 0) == "50%"


def test_summary_table_prints_each_value_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--backend", "both", "--data", "synthetic:16", "--spec", TINY_SPEC,
                     "--input-size", "8", "--epochs", "1", "--batch-size", "8", "--out",
                     str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["triton", "torch"]  # the header, then the rows at once
    assert lines[1].startswith("final train loss")
    weights = [line for line in lines if line.startswith("max |w_triton - w_torch|")]
    assert len(weights) == 1 and len(weights[0].split()) == 5  # the label's 4 words, 1 value
    assert "NaN" not in "\n".join(lines)
