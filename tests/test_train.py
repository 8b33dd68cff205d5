"""tritoncnn.models.train: convergence of the two backends, resume, data-parallel training, the
``tritoncnn train`` command."""

from __future__ import annotations

import csv
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import tritoncnn.kernels as K
from tritoncnn.cli import main as cli_main
from tritoncnn.models.train import TrainConfig, run

HAVE_KERNELS = all(hasattr(K, n) for n in ("conv2d", "conv2d_relu", "linear", "max_pool2d"))

TINY_SPEC = "CONV3-4-RELU-POOL2-CONV3-8-RELU-POOL2-FC10"


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(spec=TINY_SPEC, data="synthetic:64", input_size=8, epochs=2, batch_size=16,
                lr=0.05, backend="torch", out=str(tmp_path / "run"), progress=False)
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
    if not HAVE_KERNELS:
        pytest.skip("tritoncnn.kernels lacks conv2d/conv2d_relu/linear/max_pool2d")
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
    assert table.loc["max |w_triton - w_torch|", "torch"] < 1e-4
    assert abs(res["triton"]["test_acc"] - res["torch"]["test_acc"]) <= 1 / 12


# --------------------------------------------------------------------------------------------
# resume

def test_resume_equals_uninterrupted(tmp_path):
    # VGG-11 (thin) has dropout, so the random number generators must be restored too
    # on the CPU, where torch's own kernels are deterministic, so "equal" means bit for bit
    kw = dict(spec=None, model="vgg11", width=1 / 16, input_size=32, data="synthetic:48",
              epochs=3, batch_size=16, device="cpu")
    whole = run(_config(tmp_path / "a", **kw))["results"]["torch"]

    first = run(_config(tmp_path / "b", stop_after=4, **kw))  # mid-epoch 2 (3 steps per epoch)
    assert first["stopped"] and first["results"]["torch"]["steps"] == 4
    second = run(_config(tmp_path / "b", resume=True, stop_after=3, **kw))  # ends epoch 3 - 1
    assert second["stopped"] and second["results"]["torch"]["steps"] == 7
    third = run(_config(tmp_path / "b", resume=True, **kw))
    assert not third["stopped"]
    resumed = third["results"]["torch"]

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


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_train_mixed_precision_torch(tmp_path, dtype):
    res = run(_config(tmp_path, dtype=dtype, epochs=1))["results"]["torch"]
    assert res["steps"] == 4 and res["final_loss"] == res["final_loss"]  # finite, not NaN


@pytest.mark.parametrize("argv,match", [
    (["--spec", "CONV3-4-RELU-FC7", "--data", "synthetic:8", "--input-size", "4"], "FC10"),
    (["--spec", "CONV3-4-", "--data", "synthetic:8"], "index 8"),
    (["--data", "mnist:/nonexistent/folder"], "not found"),
])
def test_train_command_errors(tmp_path, capsys, argv, match):
    rc = cli_main(["train", "--backend", "torch", "--out", str(tmp_path / "r"), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
