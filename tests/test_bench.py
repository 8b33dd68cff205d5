"""The benchmark harness on the CPU: FLOP and byte counts against hand-computed values, the suite
file, and ``tritoncnn bench`` on tiny shapes with the torch implementation (and stand-in kernels)."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tritoncnn.kernels as kernels
from tritoncnn import cli
from tritoncnn.reports import bench
from tritoncnn.reports import suites as S

# --------------------------------------------------------------------------------------------
# Counts


def test_conv_flops_by_hand():
    # VGG-16 conv1_1: 64 images 3x224x224 -> 64 maps 224x224, 3x3 filters, padding 1
    assert S.conv_flops(64, 3, 224, 224, 64, 3, 3, 1, 1) == 2 * 64 * 64 * 224 * 224 * 3 * 3 * 3
    assert S.conv_flops(64, 3, 224, 224, 64, 3, 3, 1, 1) == 11_098_128_384
    # stride 2, no padding: 7 -> (7 - 3) // 2 + 1 = 3
    assert S.conv_flops(1, 2, 7, 7, 5, 3, 3, stride=2) == 2 * 1 * 5 * 3 * 3 * 2 * 3 * 3
    # groups 2: each filter sees C / groups = 4 channels; 5x5 input, pad 1 keeps 5x5
    assert S.conv_flops(2, 8, 5, 5, 4, 3, 3, 1, 1, groups=2) == 2 * 2 * 4 * 5 * 5 * 4 * 3 * 3
    # dilation 2: effective 5x5 window, 9 -> 5 without padding
    assert S.conv_flops(1, 1, 9, 9, 1, 3, 3, dilation=2) == 2 * 5 * 5 * 9
    # backward is dX and dW: two forward-sized products; each alone is one
    fwd = S.conv_flops(2, 3, 8, 8, 4, 3, 3, 1, 1)
    assert S.conv_flops(2, 3, 8, 8, 4, 3, 3, 1, 1, direction="backward") == 2 * fwd
    assert S.conv_flops(2, 3, 8, 8, 4, 3, 3, 1, 1, direction="backward-dx") == fwd
    assert S.conv_flops(2, 3, 8, 8, 4, 3, 3, 1, 1, direction="backward-dw") == fwd
    assert S.conv_flops(2, 3, 8, 8, 4, 3, 3, 1, 1, direction="forward+backward") == 3 * fwd
    with pytest.raises(ValueError, match="direction"):
        S.conv_flops(1, 1, 3, 3, 1, 1, 1, direction="sideways")


def test_conv_bytes_by_hand():
    # conv1_1 in bf16: X 64*3*224*224, W 64*3*3*3, b 64, Y 64*64*224*224, two bytes each
    x, w, b, y = 9_633_792, 1_728, 64, 205_520_896
    assert S.conv_min_bytes(64, 3, 224, 224, 64, 3, 3, 1, 1, element_size=2) == 2 * (x + w + b + y)
    assert S.conv_min_bytes(64, 3, 224, 224, 64, 3, 3, 1, 1, element_size=2) == 430_312_960
    # a fused 2x2 pool writes a quarter of Y
    assert S.conv_min_bytes(64, 3, 224, 224, 64, 3, 3, 1, 1, element_size=2,
                            fused_pool=2) == 2 * (x + w + b + y // 4)
    # tiny, fp32: X 1*2*4*4 = 32, W 3*2*1*1 = 6, b 3, Y 1*3*4*4 = 48
    assert S.conv_min_bytes(1, 2, 4, 4, 3, 1, 1, element_size=4) == 4 * (32 + 6 + 3 + 48)
    # backward reads X, W, dY, Y and writes dX, dW, db
    assert S.conv_min_bytes(1, 2, 4, 4, 3, 1, 1, element_size=4, direction="backward") == \
        4 * (32 + 6 + 48 + 48 + 32 + 6 + 3)
    assert S.conv_min_bytes(1, 2, 4, 4, 3, 1, 1, element_size=4, bias=False) == 4 * (32 + 6 + 48)
    # dX alone reads W, dY, Y and writes dX; dW alone reads X, dY, Y and writes dW
    assert S.conv_min_bytes(1, 2, 4, 4, 3, 1, 1, element_size=4, direction="backward-dx") == \
        4 * (6 + 48 + 48 + 32)
    assert S.conv_min_bytes(1, 2, 4, 4, 3, 1, 1, element_size=4, direction="backward-dw") == \
        4 * (32 + 48 + 48 + 6)


def test_pool_bytes_by_hand():
    # 64x64x224x224 -> 112x112 in bf16: read 205,520,896 elements, write a quarter of them
    assert S.pool_min_bytes(64, 64, 224, 224, 2, element_size=2) == 2 * (205_520_896 + 51_380_224)
    assert S.pool_min_bytes(64, 64, 224, 224, 2, element_size=2) == 513_802_240
    assert S.pool_min_bytes(64, 64, 224, 224, 2, element_size=2, direction="backward") == \
        513_802_240
    assert S.pool_min_bytes(64, 64, 224, 224, 2, element_size=2,
                            direction="forward+backward") == 2 * 513_802_240
    # overlapping 3x3 stride 2 padding 1 on 112: (112 + 2 - 3) // 2 + 1 = 56
    assert S.pool_min_bytes(1, 1, 112, 112, 3, 2, 1, element_size=4) == 4 * (112 * 112 + 56 * 56)
    # a max-pool has no weight: no dW, and its backward is already dX alone
    with pytest.raises(ValueError, match="direction"):
        S.pool_min_bytes(1, 1, 4, 4, 2, element_size=4, direction="backward-dw")
    assert S.copy_bytes(1000, 2) == 4000
    assert S.matmul_flops(2, 3, 4) == 48


def test_suite_file_matches_its_own_derived_columns():
    """The counts recomputed from the shapes agree with the columns bench_suite.csv carries."""
    shapes = S.load_conv_suite()
    with open(S.SUITE_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(shapes) == len(rows) == 45
    for shape, row in zip(shapes, rows):
        assert (shape.P, shape.Q) == (int(row["P"]), int(row["Q"])), shape.layer
        gflop = S.shape_flops(shape, "forward") / 1e9
        assert gflop == pytest.approx(float(row["GFLOP_fwd"]), rel=1e-3, abs=1e-3), shape.layer
        mb = S.shape_bytes(shape, "forward", 2, fused=shape.fused_pool) / 1e6
        assert mb == pytest.approx(float(row["min_MB_fwd_bf16"]), abs=0.01), shape.layer


def test_select():
    assert {s.suite for s in S.select()} == {"VGG16_224_N64", "ResNet_56x56_N256",
                                             "ResNet9_CIFAR_N512", "airbench94_N1024",
                                             "LeNet5_N1024", "VGG11_CIFAR_N256", "Pool"}
    quick = S.select(quick=True)
    assert [s.layer for s in quick if s.suite == "VGG16_224_N64"] == list(
        S.QUICK_LAYERS["VGG16_224_N64"])
    assert [s.layer for s in S.select(["Pool"], layers=["vgg_pool1"])] == ["vgg_pool1"]
    pool1 = S.select(["Pool"], layers=["vgg_pool1"])[0]
    assert (pool1.P, pool1.Q) == (112, 112)
    with pytest.raises(ValueError, match="unknown suite"):
        S.select(["NoSuchSuite"])


# --------------------------------------------------------------------------------------------
# The harness on the CPU


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _bench(tmp_path, *extra):
    argv = ["bench", "--device", "cpu", "--out", str(tmp_path), "--cpu-reps", "2", *extra]
    assert cli.main(argv) == 0
    return _rows(tmp_path / "bench.csv")


def test_bench_float64_cases(tmp_path):
    """--dtype fp64 benchmarks float64 (precision fp64, 8-byte elements in the byte counts), and
    its relative error is taken against a float64 reference: float64 rounding, not float32's."""
    from conftest import DEVICE  # the kernels run where this process runs them
    _, rows = _bench(tmp_path, "--suite", "Tiny", "--impl", "tritoncnn,tritoncnn-unfused",
                     "--dtype", "fp64",
                     "--ops", "conv_relu_pool", "--direction", "forward", "--layout", "nchw",
                     "--no-ceilings", "--device", DEVICE)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}, rows
    assert {(r["dtype"], r["precision"]) for r in rows} == {("fp64", "fp64")}
    assert all(float(r["rel_err"]) < 1e-13 for r in rows)
    shape = S.TINY_SHAPES[0]
    assert int(rows[0]["bytes"]) == S.shape_bytes(shape, "forward", 8, fused=True)


def test_bench_torch_on_tiny_shapes(tmp_path):
    header, rows = _bench(tmp_path, "--suite", "Tiny", "--impl", "cudnn")
    assert header == bench.COLUMNS
    for col in ("suite", "layer", "shape", "dtype", "layout", "direction", "implementation",
                "median_ms", "p20_ms", "p80_ms", "tflops", "gbps", "gpu", "torch", "triton",
                "git_sha", "timestamp", "precision", "note"):
        assert col in header
    ceil = [r for r in rows if r["suite"] == "Ceiling"]
    assert {r["op"] for r in ceil} == {"matmul", "copy"}
    cases = [r for r in rows if r["suite"] == "Tiny"]
    # conv3x3 (conv_relu and conv_relu_pool), conv1x1_s2: 3 conv ops x 5 directions; pool2, max
    # and average: 3 directions each (no dW, and its backward is dX alone); 2 layouts
    assert len(cases) == (3 * 5 + 2 * 3) * 2
    assert {r["status"] for r in rows} == {"ok"}, [r["note"] for r in rows if r["note"]]
    assert {r["implementation"] for r in cases} == {"torch"}
    assert {r["direction"] for r in cases} == set(S.DIRECTIONS)
    assert {r["layout"] for r in cases} == {"channels_last", "nchw"}
    assert {(r["dtype"], r["precision"]) for r in cases} == {("fp32", "ieee")}
    for r in cases:
        ms = float(r["median_ms"])
        assert float(r["p20_ms"]) <= ms <= float(r["p80_ms"])
        assert float(r["gbps"]) == pytest.approx(int(r["bytes"]) / (ms * 1e-3) / 1e9, rel=1e-4)
        if r["op"] in ("pool", "avg_pool"):
            assert r["tflops"] == "" and int(r["flop"]) == 0
        else:
            assert float(r["tflops"]) == pytest.approx(int(r["flop"]) / (ms * 1e-3) / 1e12,
                                                       rel=1e-4)
        assert r["gpu"].startswith("CPU") and r["torch"] == torch.__version__
    conv = next(r for r in cases if r["layer"] == "conv3x3" and r["op"] == "conv_relu"
                and r["direction"] == "forward")
    assert int(conv["flop"]) == 2 * 2 * 4 * 8 * 8 * 3 * 3 * 3
    assert conv["shape"] == "2x3x8x8 k4 3x3 s1 p1 -> 8x8"


def test_bench_calls_the_public_kernels_and_survives_failures(tmp_path, monkeypatch):
    """Stand-in kernels: one works, two raise; every case still gets its row."""
    def broken_conv2d_relu(*args, **kwargs):
        raise RuntimeError("stand-in failure")

    def broken_conv2d_relu_pool(*args, **kwargs):
        raise ValueError("stand-in pool failure")

    monkeypatch.setattr(kernels, "conv2d_relu", broken_conv2d_relu)
    monkeypatch.setattr(kernels, "conv2d_relu_pool", broken_conv2d_relu_pool)
    monkeypatch.setattr(kernels, "max_pool2d", lambda x, k, s=None, p=0: F.max_pool2d(x, k, s, p))
    _, rows = _bench(tmp_path, "--suite", "Tiny", "--impl", "tritoncnn,tritoncnn-unfused,cudnn",
                     "--layout", "nchw", "--direction", "forward,forward+backward",
                     "--no-ceilings")
    # per direction: conv3x3 conv_relu (tritoncnn, torch), conv3x3 conv_relu_pool (tritoncnn,
    # tritoncnn-unfused, torch), conv1x1_s2 conv_relu (2), pool2 max and average (2 each)
    assert len(rows) == 2 * (2 + 3 + 2 + 2 + 2)
    by = {}
    for r in rows:
        by.setdefault((r["op"], r["implementation"]), set()).add(r["status"])
    assert by[("pool", "tritoncnn")] == by[("avg_pool", "tritoncnn")] == {"ok"}
    # the stand-in max-pool is PyTorch's own: no error against the reference
    assert {float(r["rel_err"]) for r in rows
            if r["op"] == "pool" and r["implementation"] == "tritoncnn"} == {0.0}
    assert {r["rel_err"] for r in rows if r["implementation"] == "torch"} == {""}
    assert by[("conv_relu", "tritoncnn")] == {"error"}
    assert by[("conv_relu_pool", "tritoncnn-unfused")] == {"error"}
    assert by[("conv_relu_pool", "tritoncnn")] == {"error"}
    assert by[("conv_relu", "torch")] == by[("conv_relu_pool", "torch")] == {"ok"}
    notes = {r["note"] for r in rows if r["status"] != "ok"}
    assert notes == {"RuntimeError: stand-in failure", "ValueError: stand-in pool failure"}
    # the unfused composition exists for the fused op alone
    assert {r["op"] for r in rows if r["implementation"] == "tritoncnn-unfused"} == {
        "conv_relu_pool"}
    assert all(r["median_ms"] == "" for r in rows if r["status"] != "ok")


def test_bench_tune_tunes_each_missing_launch_once_and_says_where_configs_came_from(
        tmp_path, monkeypatch):
    """Real tritoncnn kernels (interpreted) with ``--tune``: the case's forward and backward
    launches are recorded, each missing cache entry is tuned once (a stand-in tuner: nothing is
    timed on the CPU), the tables land in tune.csv, and the rows say ``tuned``; a second run finds
    everything cached and tunes nothing. Without --tune the rows say ``heuristic``."""
    from conftest import DEVICE
    from tritoncnn import autotune
    from tritoncnn.autotune import cache as cache_mod
    from tritoncnn.autotune import tuner

    monkeypatch.setenv(cache_mod.ENV_DIR, str(tmp_path / "cache"))
    autotune.set_default_cache(None)
    args = ("--suite", "Tiny", "--layers", "conv3x3", "--ops", "conv_relu", "--impl",
            "tritoncnn,cudnn", "--layout", "nchw", "--direction", "forward+backward",
            "--no-ceilings", "--cpu-reps", "1", "--device", DEVICE)
    try:
        _, rows = _bench(tmp_path / "plain", *args)
        ours = next(r for r in rows if r["implementation"] == "tritoncnn")
        assert ours["status"] == "ok" and ours["configs"] == "heuristic" and ours["tune_s"] == ""
        baseline = bench.impl_name("cudnn", torch.device(DEVICE))  # F.conv2d & co, by device
        assert next(r for r in rows if r["implementation"] == baseline)["configs"] == ""

        tuned = []

        def fake_tune_and_store(problem, store):
            tuned.append(problem.kernel)
            time.sleep(0.01)
            store.put(problem.kernel, problem.shape, problem.dtype, problem.layout,
                      problem.heuristic, ms=1.0)
            return pd.DataFrame([dict(kernel=problem.kernel, config=json.dumps(problem.heuristic),
                                      status="ok", ms=1.0, heuristic=True, best=True)]), None

        monkeypatch.setattr(autotune, "INTERPRET", False)  # lookups as on a GPU
        monkeypatch.setattr(tuner, "tune_and_store", fake_tune_and_store)
        # another run's tables in the same file are kept: every tuning a row relies on stays
        (tmp_path / "tuned").mkdir()
        pd.DataFrame([dict(model="Earlier/layer", kernel="max_pool_fwd", status="ok",
                           ms=2.0)]).to_csv(tmp_path / "tuned" / "tune.csv", index=False)
        _, rows = _bench(tmp_path / "tuned", *args, "--tune")
        ours = next(r for r in rows if r["implementation"] == "tritoncnn")
        assert ours["status"] == "ok", ours["note"]
        assert sorted(tuned) == ["conv_dw", "conv_dx", "conv_fwd"]
        assert ours["configs"] == "tuned" and float(ours["tune_s"]) >= 0.03
        assert float(ours["setup_s"]) >= float(ours["tune_s"])
        table = pd.read_csv(tmp_path / "tuned" / "tune.csv")
        assert list(table["model"]) == ["Earlier/layer"] + ["Tiny/conv3x3"] * 3
        table = table.iloc[1:]
        assert sorted(table["kernel"]) == ["conv_dw", "conv_dx", "conv_fwd"]
        assert set(table["layers"]) == {"conv_relu forward+backward"}
        assert table["gpu"].str.startswith("CPU").all()

        _, rows = _bench(tmp_path / "again", *args, "--tune")
        ours = next(r for r in rows if r["implementation"] == "tritoncnn")
        assert len(tuned) == 3 and ours["configs"] == "tuned" and float(ours["tune_s"]) == 0.0
        assert not (tmp_path / "again" / "tune.csv").exists()

        # a tuning that fails leaves its kernel on the heuristic; the case is still timed
        def failing_dw(problem, store):
            if problem.kernel == "conv_dw":
                raise RuntimeError("stand-in tuning failure")
            return fake_tune_and_store(problem, store)

        monkeypatch.setenv(cache_mod.ENV_DIR, str(tmp_path / "cache2"))
        autotune.set_default_cache(None)
        monkeypatch.setattr(tuner, "tune_and_store", failing_dw)
        _, rows = _bench(tmp_path / "failing", *args, "--tune")
        ours = next(r for r in rows if r["implementation"] == "tritoncnn")
        assert ours["status"] == "ok" and ours["configs"] == "2/3 tuned"
    finally:
        autotune.set_default_cache(None)


def test_a_bucket_neighbours_winner_does_not_make_a_launch_tuned(tmp_path):
    """The cache serves a whole shape bucket from one entry: a launch counts as tuned only where
    the winner was tuned for its own shape."""
    from tritoncnn import autotune

    store = autotune.ConfigCache(tmp_path / "cache.json")
    own = {"N": 5, "C": 16, "stride": (1, 1)}
    neighbour = {"N": 6, "C": 16, "stride": (1, 1)}  # N buckets to 8 for both
    assert autotune.entry_key("conv_fwd", own, torch.float16, "nhwc") == \
        autotune.entry_key("conv_fwd", neighbour, torch.float16, "nhwc")
    store.put("conv_fwd", own, torch.float16, "nhwc", {"BLOCK_M": 64})

    def launch(shape):
        return autotune.Launch("conv_fwd", shape, torch.float16, "nhwc", {}, {})

    assert bench.tuned_for(store, launch(own))
    assert not bench.tuned_for(store, launch(neighbour))
    assert not bench.tuned_for(store, launch({"N": 5, "C": 32, "stride": (1, 1)}))


@pytest.mark.parametrize("direction, grads", [
    ("forward", [False, False, False]), ("backward", [True, True, True]),
    ("backward-dx", [True, False, False]), ("backward-dw", [False, True, False]),
    ("forward+backward", [True, True, True])])
def test_each_direction_asks_for_its_own_gradients(direction, grads):
    conv = bench.Case(S.TINY_SHAPES[0], "conv_relu", "fp32", "nchw", direction, "cudnn")
    assert [t.requires_grad for t in bench.make_inputs(conv, torch.device("cpu"))] == grads
    pool = bench.Case(S.TINY_SHAPES[2], "pool", "fp32", "nchw", direction, "cudnn")
    if direction in S.POOL_DIRECTIONS:
        assert [t.requires_grad for t in bench.make_inputs(pool, torch.device("cpu"))] == [
            direction != "forward"]


def test_backward_directions_launch_only_their_kernels(tmp_path, monkeypatch):
    """dX alone launches the forward and dX kernels, dW alone the forward and dW kernels, the
    backward both; their rows count one, one and two forward-sized products."""
    from conftest import DEVICE

    launched = {}

    def spy(launches):
        launched.setdefault(len(launched), sorted({k.kernel for k in launches}))
        return "heuristic"

    monkeypatch.setattr(bench, "config_source", spy)
    _, rows = _bench(tmp_path, "--suite", "Tiny", "--layers", "conv3x3", "--ops", "conv_relu",
                     "--impl", "tritoncnn", "--layout", "nchw", "--direction",
                     "backward,backward-dx,backward-dw", "--no-ceilings", "--cpu-reps", "1",
                     "--device", DEVICE)
    assert [r["direction"] for r in rows] == ["backward", "backward-dx", "backward-dw"]
    assert {r["status"] for r in rows} == {"ok"}, [r["note"] for r in rows]
    assert list(launched.values()) == [["conv_dw", "conv_dx", "conv_fwd"],
                                       ["conv_dx", "conv_fwd"], ["conv_dw", "conv_fwd"]]
    fwd = S.shape_flops(S.TINY_SHAPES[0], "forward")
    assert [int(r["flop"]) for r in rows] == [2 * fwd, fwd, fwd]


def test_bench_appends_and_keeps_one_header(tmp_path):
    args = ("--suite", "Tiny", "--layers", "pool2", "--ops", "pool", "--impl", "cudnn",
            "--layout", "nchw",
            "--direction", "forward", "--no-ceilings")
    _bench(tmp_path, *args)
    header, rows = _bench(tmp_path, *args)
    assert header == bench.COLUMNS and len(rows) == 2
    lines = (tmp_path / "bench.csv").read_text().splitlines()
    assert sum(line.startswith("suite,") for line in lines) == 1


def test_bench_budget_and_list(tmp_path, capsys):
    _, rows = _bench(tmp_path, "--suite", "Tiny", "--impl", "cudnn", "--no-ceilings",
                     "--budget-s", "0")
    assert rows == []
    assert "cases not run" in capsys.readouterr().out
    assert cli.main(["bench", "--device", "cpu", "--suite", "Tiny", "--impl", "cudnn",
                     "--layout", "nchw", "--direction", "forward", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 5 and listed[0].startswith("Tiny/conv3x3 conv_relu fp32 nchw forward")


def test_bench_rejects_unknown_choices(tmp_path):
    with pytest.raises(SystemExit, match="--dtype fp8"):
        cli.main(["bench", "--device", "cpu", "--suite", "Tiny", "--dtype", "fp8",
                  "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--suite: unknown suite.*Nope.*known: .*Tiny"):
        cli.main(["bench", "--device", "cpu", "--suite", "Nope", "--out", str(tmp_path)])


class _TinyNet(nn.Sequential):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def test_bench_training_step(tmp_path, monkeypatch):
    import tritoncnn.models as models

    built = []

    def get_model(name, backend="triton"):
        built.append((name, backend))
        return _TinyNet()

    monkeypatch.setattr(models, "get_model", get_model, raising=False)
    _, rows = _bench(tmp_path, "--suite", "Train", "--train-models", "tiny", "--train-steps", "2",
                     "--train-batch", "4", "--no-ceilings")
    assert sorted(built) == [("tiny", "torch"), ("tiny", "triton")]
    assert [r["implementation"] for r in rows] == ["tritoncnn", "torch"]
    for r in rows:
        assert r["status"] == "ok", r["note"]
        assert r["op"] == "train_step" and r["batch"] == "4" and r["shape"] == "batch 4 x 1x8x8"
        assert float(r["images_per_s"]) == pytest.approx(4 / (float(r["median_ms"]) * 1e-3),
                                                         rel=1e-4)


@pytest.mark.parametrize("flags,eager", [(["--train-graphs"], True),
                                         (["--train-modes", "compile,eager", "--train-graphs"],
                                          True),
                                         (["--train-modes", "cuda-graphs,compile"], False)])
def test_training_graphs_and_compile_only_on_a_gpu(tmp_path, monkeypatch, flags, eager):
    """--train-graphs and --train-modes add the CUDA-graph and compile suites on a GPU; a CPU run
    keeps the eager rows alone (none when eager was not asked for)."""
    import tritoncnn.models as models

    monkeypatch.setattr(models, "get_model", lambda name, backend="triton": _TinyNet(),
                        raising=False)
    _, rows = _bench(tmp_path, "--suite", "Train", "--train-models", "tiny", "--train-steps", "1",
                     "--train-batch", "2", "--no-ceilings", *flags)
    assert [(r["suite"], r["implementation"], r["status"]) for r in rows] == [
        ("Train", "tritoncnn", "ok"), ("Train", "torch", "ok")][:2 if eager else 0]


def test_training_modes_in_order_one_suite_each():
    """The modes a GPU run times, in eager, cuda-graphs, compile order whatever the order asked,
    each as its own suite; an unknown mode is an error naming the option."""
    import types

    cuda, cpu = types.SimpleNamespace(type="cuda"), types.SimpleNamespace(type="cpu")

    def modes(device, **opts):
        return bench.train_modes(types.SimpleNamespace(**opts), device)

    assert modes(cuda) == ["eager"]
    assert modes(cuda, train_graphs=True) == ["eager", "cuda-graphs"]
    assert modes(cuda, train_modes=["compile", "eager"], train_graphs=True) == [
        "eager", "cuda-graphs", "compile"]
    assert modes(cuda, train_modes=["compile"]) == ["compile"]
    assert modes(cpu, train_modes=["compile", "eager"], train_graphs=True) == ["eager"]
    assert bench.TRAIN_SUITES == {"eager": "Train", "cuda-graphs": "Train (CUDA graph)",
                                  "compile": "Train (compile)"}
    with pytest.raises(SystemExit, match="--train-modes jit is not one of eager, cuda-graphs, "
                                         "compile"):
        cli.main(["bench", "--device", "cpu", "--suite", "Train", "--train-modes", "eager,jit",
                  "--list"])


def test_compile_training_step_on_the_cpu_traces_the_kernels(monkeypatch):
    """_train_step's compile mode on the CPU with torch.compile's aot_eager backend (Inductor
    needs CUDA to launch the kernels): the tritoncnn model's steps run through graphs that launch
    its kernels, and train as eager steps do."""
    import types

    import tritoncnn.models as models
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    from conftest import DEVICE

    built, backends = [], []
    real_compile = torch.compile

    def get_model(name, backend="triton"):
        torch.manual_seed(0)
        net = _TinyNet()
        built.append(models.convert(net) if backend == "triton" else net)
        return built[-1]

    def compile_aot_eager(model, dynamic=None):
        backends.append(AotEagerAndRecordGraphs())
        return real_compile(model, backend=backends[-1], dynamic=dynamic)

    monkeypatch.setattr(models, "get_model", get_model, raising=False)
    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    opts = types.SimpleNamespace(train_batch=4, train_steps=2)
    device = torch.device(DEVICE)
    eager = bench._train_step("tiny", "triton", "fp32", device, opts, "eager")
    compiled = bench._train_step("tiny", "triton", "fp32", device, opts, "compile")
    torch._dynamo.reset()
    assert compiled["timing"] == "perf_counter x2 compiled steps" and eager["timing"].endswith(
        " steps")
    (backend,) = backends
    launches = [n for g in backend.fw_graphs + backend.bw_graphs for n in g.graph.nodes
                if "triton_kernel_wrapper" in str(n.target)]
    assert launches and len(backend.fw_graphs) == 1
    a, b = (dict(m.named_parameters()) for m in built)
    for name, param in a.items():
        assert torch.equal(b[name], param), name
    with pytest.raises(ValueError, match="training mode must be one of eager, cuda-graphs, "
                                         "compile, got 'jit'"):
        bench._train_step("tiny", "triton", "fp32", device, opts, "jit")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gpu_graph_replays_train_as_eager_steps_do(monkeypatch, backend):
    """The captured training step really trains: 3 warm-up steps and 4 graph replays leave the
    weights where 3 + 4 eager steps leave them (the same seeds; to float32 rounding where the
    loss's PyTorch kernels or cuDNN's algorithms may sum in another order)."""
    import types

    import tritoncnn.models as models

    built = []

    def get_model(name, backend="triton"):
        torch.manual_seed(0)
        net = _TinyNet()
        built.append(models.convert(net) if backend == "triton" else net)
        return built[-1]

    monkeypatch.setattr(models, "get_model", get_model, raising=False)
    opts = types.SimpleNamespace(train_batch=8, train_steps=4)
    cuda = torch.device("cuda")
    results = [bench._train_step("tiny", backend, "fp32", cuda, opts, mode)
               for mode in ("eager", "cuda-graphs")]
    assert all(r["median_ms"] > 0 for r in results)
    assert "graph replays" in results[1]["timing"]
    eager, graphed = (dict(m.named_parameters()) for m in built)
    for name, param in eager.items():
        atol = 1e-6 if backend == "triton" else 1e-5
        torch.testing.assert_close(graphed[name], param, atol=atol, rtol=atol, msg=name)


def test_gpu_timing_path_with_stand_in_timers(monkeypatch):
    """The GPU branch of the timer: do_bench quantiles, then CUDA graphs for microsecond cases."""
    import types

    import triton.testing

    calls = []

    def do_bench(fn, warmup, rep, grad_to_none, quantiles):
        calls.append(("events", quantiles))
        return [0.01, 0.009, 0.012]

    def do_bench_cudagraph(fn, rep, grad_to_none, quantiles):
        calls.append(("graph", rep))
        return [0.008, 0.0079, 0.0081]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", do_bench_cudagraph)
    cuda = types.SimpleNamespace(type="cuda")
    assert bench.time_fn(lambda: None, cuda) == (0.01, 0.009, 0.012, "do_bench")
    assert calls == [("events", [0.5, 0.2, 0.8])]
    assert bench.time_fn(lambda: None, cuda, graph=True) == (0.008, 0.0079, 0.0081,
                                                             "do_bench_cudagraph")
    assert calls[-1] == ("graph", 20.0) and len(calls) == 2

    def no_graph(*args, **kwargs):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", no_graph)
    med, _, _, how = bench.time_fn(lambda: None, cuda, graph=True)
    assert med == 0.01 and how == "do_bench (graph capture failed: RuntimeError)"


def test_graph_timing_is_decided_by_the_case_not_its_implementation(monkeypatch):
    """Every implementation of a case is timed the same way: from a CUDA graph when the case's
    roofline time is under --graph-below-ms (torch.compile excepted), whatever its eager time."""
    seen = []
    monkeypatch.setattr(bench, "run_case",
                        lambda case, device, opts, graph=False: seen.append(
                            (case.shape.suite, case.direction, case.impl, graph)) or
                        {"median_ms": 1.0})
    assert bench.roofline_ms(800e12, 0) == 1000.0 and bench.roofline_ms(0, 3e9) == 1.0
    shapes = bench.S.select(["LeNet5_N1024", "VGG16_224_N64"])
    small = next(s for s in shapes if s.suite.startswith("LeNet"))  # microseconds
    big = next(s for s in shapes if s.suite.startswith("VGG"))  # milliseconds
    cases = bench.build_cases([small, big], ["conv_relu"], ["bf16"], ["channels_last"],
                              ["forward", "forward+backward"], ["tritoncnn", "cudnn", "compile"])
    opts = argparse.Namespace(graph_below_ms=0.1)
    cpu = torch.device("cpu")
    for case in cases:
        bench.case_row(case, cpu, {}, opts)
    for suite, direction, impl, graph in seen:
        assert graph == (suite == small.suite and impl != "compile"), (suite, direction, impl)
    assert len(seen) == 12


def test_default_output_folder_names_the_gpu():
    assert bench.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.slug("CPU x86_64 (2 cores)") == "cpu-x86-64-2-cores"


GPU_CHECK = str(Path(bench.__file__).with_name("gpu_check.sh"))


def _gpu_check_bench_lines():
    """The argument lists of the ``bench NAME LIMIT_S ESTIMATE_S ARGS...`` parts of
    reports/gpu_check.sh."""
    import shlex

    text = Path(GPU_CHECK).read_text().replace("\\\n", " ")
    parts = []
    for line in text.splitlines():
        if not line.startswith("bench "):
            continue
        words = shlex.split(line, comments=True)
        if len(words) > 3 and words[0] == "bench" and words[2].isdigit() and words[3].isdigit():
            parts.append((words[1], words[4:]))
    return parts


def test_gpu_check_script_parses_and_its_bench_parts_select_cases(capsys):
    """The GPU run has one try: its shell must parse and every bench part's arguments must be
    accepted and select something (checked with --list, which needs no GPU)."""
    import subprocess

    assert subprocess.run(["bash", "-n", GPU_CHECK]).returncode == 0
    usage = subprocess.run(["bash", GPU_CHECK], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    parts = _gpu_check_bench_lines()
    assert {name for name, _ in parts} >= {"headline-conv", "headline-compile", "headline-pool",
                                           "headline-train", "bench-quick", "bench-tuned",
                                           "bench-bwd", "bench-conv", "bench-pool"}
    for name, args in parts:
        capsys.readouterr()
        assert cli.main(["bench", *args, "--list"]) == 0, name
        assert capsys.readouterr().out.strip(), f"{name} selects no case"


def test_gpu_check_headline_measures_every_vgg16_layer_in_every_direction(capsys):
    """The headline part's cases: VGG-16's 13 conv layers and 5 fused-pool layers in every
    direction on both sides, torch.compile's default mode forward on the 13, every Pool size."""
    parts = dict(_gpu_check_bench_lines())
    capsys.readouterr()
    assert cli.main(["bench", *parts["headline-conv"], "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for direction in S.DIRECTIONS:
        for op, layers in (("conv_relu", 13), ("conv_relu_pool", 5)):
            for impl in ("tritoncnn", "cudnn"):
                mine = [ln for ln in listed if f" {op} bf16 channels_last {direction} {impl} " in ln]
                assert len(mine) == layers, (op, direction, impl)
    assert cli.main(["bench", *parts["headline-compile"], "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 13 and all(" forward compile-default " in ln for ln in listed)
    assert cli.main(["bench", *parts["headline-pool"], "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(S.POOL_SHAPES) * 3 * 2


def _dry_run(outdir, **env):
    import os
    import subprocess

    env = dict(os.environ, DRY_RUN="1", **env)
    return subprocess.run(["bash", GPU_CHECK, str(outdir)], env=env, capture_output=True,
                          text=True)


def test_gpu_check_runs_only_the_parts_named(tmp_path):
    """PARTS picks the parts a rerun needs (install and env always run first); DRY_RUN says what
    each would run and about how long it takes; a name that is no part is refused before
    anything runs."""
    import re

    run = _dry_run(tmp_path / "out", PARTS="bench-pool,train")
    assert run.returncode == 0, run.stderr
    ran = re.findall(r"\] ([\w-]+): would run", run.stdout)
    assert ran == ["install", "env", "train", "bench-pool"]  # the script's order, not PARTS'
    assert "--suite Pool" in run.stdout and not (tmp_path / "out").exists()

    # all parts by default, the headline first: should time run short, the tuning, the fuller
    # suites, the CPU tests compiled and torch.compile's max-autotune are what it loses
    run = _dry_run(tmp_path / "all")
    ran = re.findall(r"\] ([\w-]+): (?:would run|not run)", run.stdout)
    assert ran == ["install", "env", "headline-conv", "headline-compile", "headline-pool",
                   "headline-train", "ncu", "host", "tests-gpu", "bench-quick", "train", "bench-tuned",
                   "bench-bwd", "bench-conv", "bench-tf32", "bench-pool", "tests-rest",
                   "bench-compile"]

    # PARTS=headline: its parts alone, planned at about 5.5 minutes, install and env included
    run = _dry_run(tmp_path / "h", PARTS="headline")
    ran = re.findall(r"\] ([\w-]+): would run \(about (\d+)s", run.stdout)
    assert [name for name, _ in ran] == ["install", "env", "headline-conv", "headline-compile",
                                         "headline-pool", "headline-train"]
    planned = int(re.search(r"planned about (\d+)s in all", run.stdout).group(1))
    assert planned == sum(int(s) for _, s in ran) and 240 <= planned <= 360

    bad = _dry_run(tmp_path / "bad", PARTS="bench-pool tests-all")
    assert bad.returncode == 2 and "unknown part 'tests-all'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def _pwned(tmp_path) -> list:
    """Files the hostile names' commands would make: the script runs from the repository root."""
    places = [Path(GPU_CHECK).resolve().parent.parent, Path.cwd()]
    return list(tmp_path.rglob("PWNED")) + [p / "PWNED" for p in places if (p / "PWNED").exists()]


HOSTILE = ["out dir with spaces", "$(touch PWNED)", "x'; touch PWNED; echo '", 'a"b `touch PWNED`',
           "-leading dash"]


@pytest.mark.parametrize("name", HOSTILE)
def test_gpu_check_dry_run_writes_nothing_into_outdir(tmp_path, name):
    """DRY_RUN leaves an earlier run's files as they are and runs nothing from the path."""
    outdir = tmp_path / name
    outdir.mkdir()
    (outdir / "run.log").write_text("earlier run\n")
    (outdir / "env.txt").write_text("earlier env\n")
    run = _dry_run(outdir, PARTS="headline,train,tests-gpu")
    assert run.returncode == 0, run.stderr
    assert (outdir / "run.log").read_text() == "earlier run\n"
    assert (outdir / "env.txt").read_text() == "earlier env\n"
    assert sorted(p.name for p in outdir.iterdir()) == ["env.txt", "run.log"]
    assert not _pwned(tmp_path)
    assert f"output in {outdir}," in run.stdout


STUB = """#!/bin/sh
# a stand-in for python: records its arguments, one a line, and a blank line after each call
for a in "$@"; do printf '%s\\n' "$a"; done >> "$STUB_LOG"
echo >> "$STUB_LOG"
"""


@pytest.mark.parametrize("name", HOSTILE)
def test_gpu_check_passes_a_hostile_outdir_as_data(tmp_path, name):
    """A real run with a stand-in PYTHON: every part gets OUTDIR as one argument (bench's --out,
    train's --out OUTDIR/train), tests.log and run.log land inside it, and no shell code in the
    name runs."""
    import os
    import subprocess

    stub = tmp_path / "stub-python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.txt"
    outdir = tmp_path / "runs" / name
    env = dict(os.environ, PYTHON=str(stub), STUB_LOG=str(log), TOTAL_S="200",
               PARTS="headline-pool,train,tests-gpu")
    env.pop("DRY_RUN", None)
    run = subprocess.run(["bash", GPU_CHECK, str(outdir)], env=env, capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    calls = [c.split("\n") for c in log.read_text().strip("\n").split("\n\n")]
    bench_call = next(c for c in calls if "bench" in c)
    assert bench_call[bench_call.index("--out") + 1] == str(outdir)
    train_calls = [c for c in calls if "train" in c]
    assert train_calls and all(c[c.index("--out") + 1] == str(outdir / "train")
                               for c in train_calls)
    assert any("pytest" in c and "gpu" in c for c in calls)
    assert {"run.log", "tests.log"} <= {p.name for p in outdir.iterdir()}
    assert "headline-pool: exit 0" in (outdir / "run.log").read_text()
    assert not _pwned(tmp_path)


def test_bench_device_auto_and_no_progress(capsys):
    """--device auto (the default) is the GPU where there is one, else the CPU, whose default
    suite is Tiny (the full suites are GPU-sized); a device that is neither is a one-line error;
    --no-progress is accepted as on every long-running command."""
    assert bench.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cli.main(["bench", "--list", "--no-progress", "--impl", "cudnn"]) == 0
    listed = capsys.readouterr().out.splitlines()
    if not torch.cuda.is_available():
        assert listed and all(line.startswith(("Tiny/", "Train/")) for line in listed)
    with pytest.raises(SystemExit, match="--device foo is not auto, cuda or cpu"):
        cli.main(["bench", "--device", "foo", "--list"])
