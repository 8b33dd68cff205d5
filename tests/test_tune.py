"""``tritoncnn tune`` (tritoncnn/tune.py): the shapes it finds in a model, its plan, its
arguments, and a tuning run on fake kernels and a fake timer. Nothing here launches a kernel."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from tritoncnn import _runtime, autotune, cli, defaults, tune
from tritoncnn.autotune import spaces, tuner

from test_autotune import HEURISTIC, FakeConstantTimer, store  # noqa: F401  (store: a fixture)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 16, 16, 16)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 8, 8)
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )


def test_collect_layers_on_the_meta_device():
    layers = tune.collect_layers(small_cnn(), (3, 32, 32), batch_size=8)
    assert [r["type"] for r in layers] == ["conv", "pool", "conv", "conv", "pool", "linear"]
    assert layers[0]["first"] and not layers[2]["first"]
    assert layers[3]["input"] == (8, 32, 16, 16) and layers[4]["input"] == (8, 32, 16, 16)
    kernels = tune.layer_kernels(layers, torch.bfloat16, "nhwc")
    names = [k["kernel"] for k in kernels]
    # the stem needs no dX; the two 16x16 convs differ in C; the two pools in H, W and C;
    # the Linear layer runs on the conv kernels as a 1x1 conv (all conv kernels: nhwc)
    assert names.count("conv_fwd") == 4 and names.count("conv_dx") == 3
    assert names.count("conv_dw") == 4 and names.count("max_pool_fwd") == 2
    assert all(k["configs"] > 0 for k in kernels)
    fc = [k for k in kernels if k["layers"] == ["9"]]
    assert len(fc) == 3 and {k["layout"] for k in kernels if k["kernel"].startswith("conv")} == {
        "nhwc"}
    assert fc[0]["shape"] == spaces.conv_shape((8, 2048, 1, 1), (10, 2048, 1, 1))


def test_tune_plans_ieee_float32_entries_when_tf32_is_off(monkeypatch):
    """With TF32 off, float32 conv launches are IEEE ones: tune plans their own entries."""
    layers = tune.collect_layers(small_cnn(), (3, 32, 32), batch_size=8)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert not any("ieee" in k["shape"] for k in tune.layer_kernels(layers, torch.float32,
                                                                          "nhwc"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    kernels = tune.layer_kernels(layers, torch.float32, "nhwc")
    assert all(bool(k["shape"].get("ieee")) == k["kernel"].startswith("conv") for k in kernels)
    assert not any("ieee" in k["shape"] for k in tune.layer_kernels(layers, torch.bfloat16,
                                                                          "nhwc"))


def test_collect_layers_deduplicates_shared_shapes():
    model = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
    kernels = tune.layer_kernels(tune.collect_layers(model, (8, 8, 8), 2),
                                     torch.float16, "nchw")
    assert [k["kernel"] for k in kernels] == ["conv_fwd", "conv_dw", "conv_dx"]
    assert kernels[2]["layers"] == ["1", "2", "3"]


def test_tune_dry_run_cli(monkeypatch, capsys):
    monkeypatch.setattr(tune, "build_model", lambda args, backend: small_cnn())
    rc = cli.main(["tune", "--model", "small", "--batch-size", "4", "--dtype", "fp16",
                   "--input-shape", "3x32x32", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "conv_fwd" in out and "max_pool_bwd" in out and "configs to time" in out
    assert "from 6 layers" in out


@pytest.mark.parametrize("argv,match", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--input-shape", "3x0x5"], "CxHxW of positive sizes.*3x0x5"),
    (["--spec", "CONV3-"], "tritoncnn tune: .*index 6"),
    (["--input-shape", "1x2x2"], "tritoncnn tune: POOL2 does not fit a 1x1 input"),
])
def test_tune_bad_arguments_are_one_line_errors(argv, match):
    with pytest.raises(SystemExit, match=match):
        cli.main(["tune", "--dry-run", *argv])


def test_tune_without_a_gpu_says_it_needs_one(monkeypatch, capsys):
    monkeypatch.setattr(tune, "build_model", lambda args, backend: small_cnn())
    monkeypatch.setattr(_runtime, "INTERPRET", True)
    rc = cli.main(["tune", "--model", "small", "--input-shape", "3x32x32"])
    assert rc == 1 and "needs a CUDA GPU" in capsys.readouterr().err


def test_tune_cli_tunes_writes_the_cache_and_the_table(store, monkeypatch, tmp_path, capsys):
    made = []

    def factory(shape, dtype, layout):
        made.append(shape)
        ref = torch.ones(3)
        return autotune.Problem(run=lambda cfg: ref.clone(), reference=ref)

    monkeypatch.setattr(tuner, "_FACTORIES", {"conv_fwd": factory, "max_pool_fwd": factory})
    monkeypatch.setattr(tuner, "_ensure_kernels_imported", lambda: None)
    monkeypatch.setattr(tuner, "default_timer", FakeConstantTimer)
    monkeypatch.setattr(_runtime, "INTERPRET", False)
    monkeypatch.setattr(tune, "build_model", lambda args, backend: small_cnn())
    monkeypatch.setattr(tune, "_shapes_from_run", lambda args, dtype: [])  # no GPU here
    out = tmp_path / "results.csv"
    rc = cli.main(["tune", "--model", "small", "--batch-size", "4", "--input-shape", "3x32x32",
                   "--dtype", "fp16", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "no problem factory registered for conv_dw, conv_dx, max_pool_bwd" in captured.err
    assert len(made) == 6  # 3 conv + 1 linear conv_fwd shapes, 2 max_pool_fwd shapes
    import pandas as pd

    table = pd.read_csv(out)
    assert set(table["kernel"]) == {"conv_fwd", "max_pool_fwd"} and table["best"].sum() == 6
    assert {"layers", "gpu", "triton", "ms", "status", "config"} <= set(table)
    store.reload()
    assert len(store.entries) == 6
    assert autotune.get_config("conv_fwd", made[0], torch.float16, "nhwc", HEURISTIC) != HEURISTIC


def test_tune_defaults_are_train_defaults():
    """What `tritoncnn tune` tunes with no options is what `tritoncnn train` looks up on a GPU."""
    from tritoncnn.models import train as train_mod
    from tritoncnn.models.train import TrainConfig

    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    args = parser.parse_args([])
    tune.resolve_defaults(args)
    train = TrainConfig()
    assert args.batch_size == train.batch_size and args.dtype == train.dtype
    assert args.layout == "nhwc" and train_mod._channels_last(train, torch.device("cuda"))
    assert args.spec == train_mod.DEFAULT_SPEC == defaults.SPEC and args.input_shape == "1x8x8"
    args = parser.parse_args(["--no-channels-last", "--model", "vgg11"])
    tune.resolve_defaults(args)
    assert args.layout == "nchw" and args.spec is None


def test_tune_speaks_the_shared_vocabulary():
    """--layout channels_last|nchw, the dtype names of every command, --no-progress."""
    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    for argv, layout in ((["--layout", "channels_last"], "nhwc"), (["--layout", "nchw"], "nchw"),
                         (["--channels-last"], "nhwc")):
        args = parser.parse_args(argv)
        tune.resolve_defaults(args)
        assert args.layout == layout, argv
    assert set(parser.parse_args(["--dtype", "tf32"]).__dict__) >= {"dtype", "progress"}
    assert parser.parse_args(["--no-progress"]).progress is False
    for name in defaults.DTYPES:
        assert parser.parse_args(["--dtype", name]).dtype == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--layout", "NHWC"])


@pytest.mark.parametrize("dtype,ieee", [("fp32", True), ("tf32", False)])
def test_tune_fp32_plans_ieee_entries_and_tf32_plans_tf32_ones(monkeypatch, capsys, dtype, ieee):
    """fp32 is IEEE float32 whatever torch's TF32 flags say, tf32 is float32 on TF32 cores: each
    plans the cache entries that `tritoncnn train --dtype` of the same name looks up."""
    seen = []
    real = tune.layer_kernels

    def spy(layers, dt, layout):
        kernels = real(layers, dt, layout)
        seen.extend(kernels)
        return kernels

    monkeypatch.setattr(tune, "build_model", lambda args, backend: small_cnn())
    monkeypatch.setattr(tune, "layer_kernels", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not ieee)  # the opposite, before
    assert cli.main(["tune", "--model", "small", "--dtype", dtype, "--input-shape", "3x32x32",
                     "--dry-run"]) == 0
    convs = [k for k in seen if k["kernel"].startswith("conv")]
    assert convs and all(bool(k["shape"].get("ieee")) == ieee for k in convs)
    assert torch.backends.cudnn.allow_tf32 is (not ieee)  # the flags are put back
    assert f"{dtype}, channels_last" in capsys.readouterr().out
