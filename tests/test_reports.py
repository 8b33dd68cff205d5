"""``tritoncnn report`` on small fixture CSVs: numbers checked by hand, figures written."""

from __future__ import annotations

import csv
import math

import pandas as pd
import pytest

from tritoncnn import cli
from tritoncnn.reports import bench, report

GPU = "Test GPU 80GB"
PNG = b"\x89PNG\r\n\x1a\n"


def _row(**kw):
    row = dict(gpu=GPU, device="cuda", torch="2.11.0", triton="3.6.0", git_sha="abc1234",
               timestamp="2026-11-26T00:00:00+00:00", status="ok", dtype="bf16",
               precision="bf16", layout="channels_last", direction="forward", shape="-")
    row.update(kw)
    return row


def _conv(layer, impl, ms, tflops, timestamp="2026-11-26T00:00:01+00:00", **kw):
    flop = tflops * 1e12 * ms * 1e-3
    fields = dict(suite="S1", layer=layer, op="conv_relu", implementation=impl, median_ms=ms,
                  p20_ms=ms * 0.9, p80_ms=ms * 1.1, tflops=tflops, flop=flop, bytes=flop / 100,
                  gbps=flop / 100 / (ms * 1e-3) / 1e9, timestamp=timestamp)
    return _row(**{**fields, **kw})


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=bench.COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in bench.COLUMNS})


@pytest.fixture
def results(tmp_path):
    """A bench CSV, a tuning table and a training run, as the three commands write them."""
    d = tmp_path / "results" / "test-gpu"
    d.mkdir(parents=True)
    rows = [
        # the card's ceilings: 800 TFLOP/s bf16 matmul, 3000 GB/s copy
        _row(suite="Ceiling", layer="matmul_8192", op="matmul", implementation="cublas",
             median_ms=1.0, tflops=800.0, flop=8e11, bytes=1, gbps=1.0),
        _row(suite="Ceiling", layer="copy_1024MiB", op="copy", implementation="torch",
             median_ms=1.0, gbps=3000.0, flop=0, bytes=3e9),
        # L1: cuDNN 2 ms, tritoncnn 1 ms (2x, 400 TFLOP/s = 50% of peak);
        # L2: cuDNN 1 ms, tritoncnn 0.25 ms (4x). Geometric mean: sqrt(2 * 4) = 2.83x
        _conv("L1", "cudnn", 2.0, 200.0),
        _conv("L1", "tritoncnn", 1.0, 400.0),
        _conv("L2", "cudnn", 1.0, 100.0),
        _conv("L2", "tritoncnn", 0.25, 400.0),
        # older measurements of the same case in the same run: the newest row counts, whatever
        # its configs (tuned rows are no implementation of their own)
        _conv("L1", "tritoncnn", 0.5, 800.0, configs="tuned",
              timestamp="2026-11-25T12:00:00+00:00"),
        _conv("L1", "tritoncnn", 10.0, 40.0, timestamp="2026-11-25T00:00:00+00:00"),
        # a case that could not run
        _conv("L2", "tritoncnn-unfused", 1.0, 1.0, status="error",
              note="OutOfMemoryError: stand-in", median_ms=""),
        # pool: PyTorch at 1500 GB/s (50% of copy), tritoncnn at 3000 GB/s (100%, 2x)
        _row(suite="Pool", layer="vgg_pool1", op="pool", implementation="cudnn", median_ms=0.4,
             gbps=1500.0, flop=0, bytes=6e8, shape="64x64x224x224 k2 s2 p0 -> 112x112"),
        _row(suite="Pool", layer="vgg_pool1", op="pool", implementation="tritoncnn",
             median_ms=0.2, gbps=3000.0, flop=0, bytes=6e8, shape="64x64x224x224 k2 s2 p0 -> 112x112"),
        # training step: torch 20 ms, tritoncnn 16 ms (1.25x)
        _row(suite="Train", layer="vgg11", op="train_step", implementation="cudnn",
             direction="forward+backward", median_ms=20.0, images_per_s=12800.0,
             peak_mem_mb=1000.0, batch=256, shape="batch 256 x 3x32x32"),
        _row(suite="Train", layer="vgg11", op="train_step", implementation="tritoncnn",
             direction="forward+backward", median_ms=16.0, images_per_s=16000.0,
             peak_mem_mb=700.0, batch=256, shape="batch 256 x 3x32x32"),
    ]
    _write(d / "bench.csv", rows)
    # tuning: three configs of one kernel shape; the heuristic 1.0 ms, the best 0.5 ms, one failed
    pd.DataFrame([
        dict(model="lenet5", layers="c1", kernel="conv_fwd", dtype="bfloat16", layout="nhwc",
             shape='{"C": 1}', config='{"BLOCK_M": 64}', heuristic=True, cfg_BLOCK_M=64,
             status="ok", ms=1.0, p20_ms=0.9, p80_ms=1.1, max_error=0.0, error="", best=False),
        dict(model="lenet5", layers="c1", kernel="conv_fwd", dtype="bfloat16", layout="nhwc",
             shape='{"C": 1}', config='{"BLOCK_M": 128}', heuristic=False, cfg_BLOCK_M=128,
             status="ok", ms=0.5, p20_ms=0.45, p80_ms=0.55, max_error=0.0, error="", best=True),
        dict(model="lenet5", layers="c1", kernel="conv_fwd", dtype="bfloat16", layout="nhwc",
             shape='{"C": 1}', config='{"BLOCK_M": 256}', heuristic=False, cfg_BLOCK_M=256,
             status="failed", ms=math.nan, p20_ms=math.nan, p80_ms=math.nan, max_error=math.nan,
             error="OutOfResources: shared memory", best=False),
    ]).assign(batch_size=1024, gpu=GPU, tune_s=2.5, compile_s=1.5).to_csv(
        d / "tune_lenet5_bf16_nhwc_b1024.csv", index=False)
    # a training run: per-step losses and per-epoch accuracies of both backends
    run = tmp_path / "results" / "train-run"
    run.mkdir()
    pd.DataFrame([dict(backend=b, epoch=1, step=s, global_step=s, loss=2.3 / s, lr=0.01,
                       seconds=s * 0.1) for b in ("triton", "torch") for s in range(1, 6)]
                 ).to_csv(run / "steps.csv", index=False)
    pd.DataFrame([dict(backend=b, epoch=e, train_loss=1.0 / e, train_acc=0.5 + 0.1 * e,
                       test_loss=1.1 / e, test_acc=0.45 + 0.1 * e, images_per_s=1000.0,
                       seconds=1.0, peak_mem_mb=10.0) for b in ("triton", "torch")
                  for e in (1, 2)]).to_csv(run / "epochs.csv", index=False)
    return tmp_path / "results"


def test_geomean_speedup_by_hand(results):
    df, tune, curves = report.load([results])
    gm = report.geomean_speedups(df)
    conv = gm[(gm["op"] == "conv_relu") & (gm["implementation"] == "tritoncnn")]
    assert len(conv) == 1
    assert conv["geomean"].iloc[0] == pytest.approx(math.sqrt(2.0 * 4.0))
    assert conv["layers"].iloc[0] == 2
    assert (conv["min"].iloc[0], conv["max"].iloc[0]) == pytest.approx((2.0, 4.0))
    pool = gm[gm["op"] == "pool"]
    assert pool["geomean"].iloc[0] == pytest.approx(2.0)
    train = gm[gm["op"] == "train_step"]
    assert train["geomean"].iloc[0] == pytest.approx(1.25)
    assert len(tune) == 1 and len(curves) == 2
    assert set(gm["implementation"]) == {"tritoncnn"}
    # the older L1 rows, the tuned one too, were dropped
    l1 = df[(df["layer"] == "L1") & (df["implementation"] == "tritoncnn")]
    assert list(l1["median_ms"]) == [1.0]


def test_peaks_from_measured_ceilings(results):
    df, _, _ = report.load([results])
    ceil = report.ceilings(df)
    assert ceil[GPU]["matmul"] == {"bf16": 800.0} and ceil[GPU]["copy"] == 3000.0
    df = report.add_peaks(df, ceil)
    l1 = df[(df["layer"] == "L1") & (df["implementation"] == "tritoncnn")].iloc[0]
    assert l1["pct_peak"] == pytest.approx(50.0)
    pool = df[(df["op"] == "pool")].set_index("implementation")
    assert pool.loc["tritoncnn", "pct_bw"] == pytest.approx(100.0)
    assert pool.loc["cudnn", "pct_bw"] == pytest.approx(50.0)


def test_report_tables_and_figures(results, tmp_path):
    out = tmp_path / "doc" / "REPORT.md"
    assert cli.main(["report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"## {GPU}" in text
    assert "| matmul bf16 | 800.0 TFLOP/s |" in text
    assert "| device-to-device copy (read + write) | 3000.0 GB/s |" in text
    # the summary line of S1: two layers, geomean 2.83x, min 2.00x, max 4.00x
    assert ("| S1 | conv_relu | bf16 | channels_last | forward | tritoncnn | 2 | 2.83x | 2.00x | "
            "4.00x |") in text
    # per layer: L1 on tritoncnn, 1 ms, 400 TFLOP/s, 50% of peak, 2x
    line = next(ln for ln in text.splitlines() if ln.startswith("| L1 |") and "| tritoncnn |" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[7:12] == ["1", "0.9-1.1", "400.0", "50", "2.00x"]
    # pool: 3000 GB/s, 100% of copy, 2x
    line = next(ln for ln in text.splitlines() if ln.startswith("| vgg_pool1 |")
                and "| tritoncnn |" in ln)
    assert [c.strip() for c in line.strip("|").split("|")][-5:-2] == ["3000.0", "100", "2.00x"]
    # training: images/s, peak memory, speedup
    line = next(ln for ln in text.splitlines() if ln.startswith("| vgg11 |") and "tritoncnn" in ln)
    assert "| 16000 | 700 | 1.25x |" in line
    # failed cases are listed with their reason
    assert "OutOfMemoryError: stand-in" in text
    # autotuning: 3 configs, 1 failed, best 0.5 ms against the heuristic's 1 ms
    line = next(ln for ln in text.splitlines() if "| conv_fwd |" in ln)
    # ... tuned in 2.5 s, 1.5 s of it compiling
    assert '| 3 | 1 | 0.5 | 1 | 2.00x | {"BLOCK_M": 128} | 2.5 | 1.5 |' in line
    # figures: written, linked relative to the report, PNG
    figures = out.parent / "figures"
    names = {p.name for p in figures.glob("*.png")}
    assert names == {"speedup_test-gpu-80gb_bf16.png", "roofline_test-gpu-80gb_bf16.png",
                     "pool_bandwidth_test-gpu-80gb.png", "training_curves.png"}
    for name in names:
        assert (figures / name).read_bytes()[:8] == PNG
        assert f"](figures/{name})" in text


def test_report_without_results(tmp_path, capsys):
    """No CSV at all is an error that says where it looked; CSVs without bench rows (training
    curves alone) still make a report that says so."""
    empty = tmp_path / "none"
    empty.mkdir()
    out = tmp_path / "REPORT.md"
    assert cli.main(["report", "--results", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tritoncnn report: --results: no CSV files under") and str(empty) in err
    assert err.count("\n") == 1 and not out.exists()
    assert cli.main(["report", "--results", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "--results: no such path" in capsys.readouterr().err
    pd.DataFrame({"step": [1, 2], "loss": [2.0, 1.0]}).to_csv(empty / "steps.csv", index=False)
    assert cli.main(["report", "--results", str(empty), "--out", str(out)]) == 0
    assert "No benchmark rows found" in out.read_text()


def test_report_out_may_name_a_folder(results, tmp_path, capsys):
    """--out DIR writes DIR/REPORT.md and DIR/figures/, whether DIR exists or not."""
    for folder in (tmp_path / "existing", tmp_path / "new" / "site"):
        if folder.name == "existing":
            folder.mkdir()
        assert cli.main(["report", "--results", str(results), "--out", str(folder)]) == 0
        assert (folder / "REPORT.md").is_file()
        assert (folder / "figures" / "training_curves.png").is_file()
        assert "](figures/training_curves.png)" in (folder / "REPORT.md").read_text()
    bad = tmp_path / "notes.txt"
    bad.write_text("keep")
    assert cli.main(["report", "--results", str(results), "--out", str(bad)]) == 2
    assert "--out:" in capsys.readouterr().err and bad.read_text() == "keep"


def test_markdown_table():
    df = pd.DataFrame({"name": ["a|b", "c"], "n": [1, 22], "s": ["1.5x", ""]})
    assert report.markdown_table(df) == (
        "| name | n | s |\n"
        "| --- | ---: | ---: |\n"
        "| a\\|b | 1 | 1.5x |\n"
        "| c | 22 |  |\n"
    )
    assert report.markdown_table(df.iloc[:0]) == "_(none)_\n"


def test_report_reads_what_bench_writes(tmp_path):
    """The two commands fit together: a CPU bench run becomes a report (PyTorch as baseline)."""
    res = tmp_path / "res"
    assert cli.main(["bench", "--device", "cpu", "--suite", "Tiny", "--layers", "conv3x3",
                     "--impl", "cudnn", "--layout", "nchw", "--direction", "forward",
                     "--cpu-reps", "1", "--out", str(res)]) == 0
    out = tmp_path / "REPORT.md"
    assert cli.main(["report", "--results", str(res), "--out", str(out)]) == 0
    text = out.read_text()
    assert "### Tiny: time, TFLOP/s, % of peak, speedup per layer" in text
    assert "| conv3x3 | conv_relu_pool |" in text and "matmul ieee" in text


README = f"""# project

intro
{report.HEADLINE_BEGIN}
old numbers
{report.HEADLINE_END}

rest
"""


def _table_rows(text):
    """The cells of every markdown table row in ``text``, headers and rules left out."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [r for i, r in enumerate(rows) if not set(rows[i][0]) <= {"-", ":"}
            and not (i + 1 < len(rows) and set(rows[i + 1][0]) <= {"-", ":"})]


def test_headline_into_readme(results, tmp_path):
    """The README's generated block: per suite, op and direction the geometric mean over the
    suite's layers, the training step's memory beside cuDNN's, how it was timed, and a link to
    the report."""
    readme = tmp_path / "README.md"
    readme.write_text(README)
    # the unfused composition of tritoncnn's own ops: in the tables, never in the headline
    _write(results / "test-gpu" / "unfused.csv", [
        _conv("L1", "cudnn", 2.0, 200.0, suite="S2"),
        _conv("L1", "tritoncnn-unfused", 0.1, 4000.0, suite="S2"),
        # S1's L1 forward+backward, a row of its own: 4 ms against 8 ms, 0.5x
        _conv("L1", "cudnn", 4.0, 300.0, direction="forward+backward"),
        _conv("L1", "tritoncnn", 8.0, 150.0, direction="forward+backward")])
    out = tmp_path / "doc" / "REPORT.md"
    assert cli.main(["report", "--results", str(results), "--out", str(out),
                     "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n" + report.HEADLINE_BEGIN + "\n")
    assert text.endswith(report.HEADLINE_END + "\n\nrest\n")
    assert "old numbers" not in text
    assert "[full report](doc/REPORT.md)" in text and "commit abc1234" in text
    assert "flushes the L2 cache" in text  # how the numbers were timed, beside them
    assert _table_rows(text) == [
        # S1 forward: both layers; forward+backward: L2 was not measured, and says so
        ["S1", "conv_relu", "bf16 channels_last forward", "2 of 2", "2.83x", "2.00x-4.00x",
         "heuristic", "", ""],
        ["S1", "conv_relu", "bf16 channels_last forward+backward", "1 of 2", "0.50x",
         "0.50x-0.50x", "heuristic", "L2", ""],
        # the Pool suite is the suite file's: its other seven sizes were not measured
        ["Pool", "pool", "bf16 channels_last forward", "1 of 8", "2.00x", "2.00x-2.00x",
         "heuristic", "vgg_pool2, vgg_pool3, vgg_pool4, vgg_pool5, resnet_stem_3x3s2, "
         "resnet9_pool1, resnet9_pool3", ""],
        ["Train", "train_step", "bf16 channels_last training step", "1 of 1", "1.25x",
         "1.25x-1.25x", "", "", "0.70x of cuDNN's (700 vs 1000 MiB)"],
    ]
    header = next(ln for ln in text.splitlines() if ln.startswith("| suite |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "suite", "op", "case", "layers", "speedup over cuDNN", "min-max", "configs", "missing",
        "peak memory"]
    # the report carries the same table, under its own heading
    assert "## Headline" in out.read_text()
    # CPU rows never make a headline
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    df = pd.read_csv(next(results.rglob("bench.csv")))
    df.assign(device="cpu", gpu="CPU x86_64 (2 cores)").to_csv(cpu / "bench.csv", index=False)
    assert cli.main(["report", "--results", str(cpu), "--out", str(out),
                     "--readme", str(readme)]) == 0
    assert "No GPU measurements are committed yet" in readme.read_text()


def _tune_rows(model, layers, sha="abc1234"):
    return [dict(model=model, layers=layers, kernel="conv_fwd", config='{"BLOCK_M": 64}',
                 status="ok", ms=1.0, heuristic=True, gpu=GPU, git_sha=sha)]


def _headline(tmp_path, rows, tune=()):
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    _write(d / "bench.csv", rows)
    if tune:
        pd.DataFrame([r for t in tune for r in t]).to_csv(d / "tune.csv", index=False)
    df = report.load([d])[0]
    return df, report.headline(df)


def test_headline_covers_every_layer_missing_ones_named_configs_per_layer(tmp_path):
    """One row for the suite's forward: a heuristic layer and a tuned one together (tuning is no
    implementation of its own), and a layer without a tritoncnn measurement named as missing,
    not dropped."""
    df, h = _headline(tmp_path, [
        _conv("L1", "cudnn", 2.0, 200.0), _conv("L1", "tritoncnn", 1.0, 400.0,
                                                configs="heuristic"),
        _conv("L2", "cudnn", 1.0, 100.0, shape="s2"),
        _conv("L2", "tritoncnn", 0.25, 400.0, configs="tuned", shape="s2"),
        _conv("L3", "cudnn", 1.0, 100.0),
        _conv("L3", "tritoncnn", 1.0, 1.0, status="error", note="RuntimeError: x", median_ms="")],
        tune=[_tune_rows("S1/L2", "conv_relu forward")])
    assert len(h) == 1
    row = h.iloc[0]
    assert (row["layers"], row["speedup"], row["range"]) == ("2 of 3", "2.83x", "2.00x-4.00x")
    assert (row["configs"], row["missing"]) == ("1 heuristic, 1 tuned", "L3")
    # the suite file's layers count for the suites it lists: VGG-16 has 13, measured or not
    df, h = _headline(tmp_path, [
        _conv("conv1_1", "cudnn", 2.0, 200.0, suite="VGG16_224_N64"),
        _conv("conv1_1", "tritoncnn", 1.0, 400.0, suite="VGG16_224_N64")])
    assert h.iloc[0]["layers"] == "1 of 13"
    assert h.iloc[0]["missing"].split(", ")[:2] == ["conv1_2", "conv2_1"]


def test_tuned_needs_the_runs_own_tuning_tables(tmp_path):
    """A row says tuned; the report believes it where the same run's tables hold the tuning of a
    layer of that shape by a case that launched the row's kernels."""
    rows = [_conv(lay, impl, ms, 100.0, direction=d, configs="tuned" if impl == "tritoncnn"
                  else "", shape="same")
            for lay in ("L1", "L2") for d in ("forward", "backward-dx", "forward+backward")
            for impl, ms in (("cudnn", 2.0), ("tritoncnn", 1.0))]
    # L1 tuned by a forward case; L2 has L1's shape, so L1's tuning is its own too
    df, h = _headline(tmp_path, rows, tune=[_tune_rows("S1/L1", "conv_relu forward")])
    configs = dict(zip(h["case"].str.split(" ").str[-1], h["configs"]))
    assert configs == {"forward": "tuned", "backward-dx": report.UNTABLED,
                       "forward+backward": report.UNTABLED}
    # a dX-alone case tuned the dX kernels: dX alone is tuned, forward+backward (dW) is not
    df, h = _headline(tmp_path, rows, tune=[_tune_rows("S1/L1", "conv_relu backward-dx")])
    configs = dict(zip(h["case"].str.split(" ").str[-1], h["configs"]))
    assert configs["backward-dx"] == "tuned" and configs["forward+backward"].endswith("(no table)")
    # another run's tables do not count
    df, h = _headline(tmp_path, rows, tune=[_tune_rows("S1/L1", "conv_relu forward+backward",
                                                       sha="0ther00")])
    assert set(h["configs"]) == {report.UNTABLED}


def test_headline_has_a_row_per_training_mode(tmp_path):
    """The bench's training modes are suites of their own: eager, CUDA graphs and torch.compile
    each get a headline row, each against cuDNN in the same mode."""
    from tritoncnn.reports.bench import TRAIN_SUITES

    def step(suite, impl, ms):
        return _row(suite=suite, layer="vgg11", op="train_step", implementation=impl,
                    direction="forward+backward", median_ms=ms, images_per_s=256 / ms * 1e3,
                    peak_mem_mb=700.0 if impl == "tritoncnn" else 1000.0, batch=256,
                    shape="batch 256 x 3x32x32")

    times = {"eager": (20.0, 16.0), "cuda-graphs": (10.0, 10.0), "compile": (8.0, 10.0)}
    df, h = _headline(tmp_path, [step(TRAIN_SUITES[mode], impl, ms)
                                 for mode, pair in times.items()
                                 for impl, ms in zip(("cudnn", "tritoncnn"), pair)])
    got = {r["suite"]: r["speedup"] for _, r in h.iterrows()}
    assert got == {"Train": "1.25x", "Train (CUDA graph)": "1.00x", "Train (compile)": "0.80x"}


def test_headline_rows_never_mix_runs(tmp_path):
    """Two runs (commits) on one GPU: a row's speedup is against its own run's cuDNN, a headline
    row comes from one run (the newest that measured the case), and the table names the commit
    of each row."""
    later = dict(git_sha="def5678", timestamp="2026-11-27T00:00:00+00:00")
    df, h = _headline(tmp_path, [
        _conv("L1", "cudnn", 2.0, 200.0), _conv("L1", "tritoncnn", 1.0, 400.0),
        _conv("L2", "cudnn", 1.0, 100.0), _conv("L2", "tritoncnn", 0.5, 400.0),
        _row(suite="Pool", layer="p1", op="pool", implementation="cudnn", median_ms=0.4),
        _row(suite="Pool", layer="p1", op="pool", implementation="tritoncnn", median_ms=0.2),
        # the later run: L1 at 4x; L2 without a cuDNN row of its own
        _conv("L1", "cudnn", 2.0, 200.0, **later), _conv("L1", "tritoncnn", 0.5, 400.0, **later),
        _conv("L2", "tritoncnn", 0.1, 400.0, **later)])
    l2 = df[(df["layer"] == "L2") & (df["implementation"] == "tritoncnn")].set_index("git_sha")
    assert l2.loc["abc1234", "speedup"] == pytest.approx(2.0)
    assert math.isnan(l2.loc["def5678", "speedup"])  # never the other run's cuDNN time
    rows = {(r.suite, r.commit): r for r in h.itertuples()}
    assert set(rows) == {("S1", "def5678"), ("Pool", "abc1234")}
    s1 = rows[("S1", "def5678")]
    assert (s1.layers, s1.speedup, s1.missing) == ("1 of 2", "4.00x", "L2")
    text = report.headline_markdown(df)
    assert "the commits named per row" in text
    assert "| commit | suite |" in text and "| def5678 | S1 |" in text


def test_speedup_figure_has_a_row_per_layer_and_direction_measured():
    """No empty rows: a layer gets a row for each direction it was measured in, and only those."""
    df = report.prepare(pd.DataFrame([
        _conv("L1", "cudnn", 2.0, 1.0), _conv("L1", "tritoncnn", 1.0, 1.0),
        _conv("L1", "cudnn", 2.0, 1.0, direction="forward+backward"),
        _conv("L1", "tritoncnn", 4.0, 1.0, direction="forward+backward"),
        _conv("L2", "cudnn", 2.0, 1.0, direction="backward-dx"),
        _conv("L2", "tritoncnn", 1.0, 1.0, direction="backward-dx")]))
    ours = df[df["implementation"] == "tritoncnn"]
    _, labels = report._speedup_bars(ours)
    assert labels == ["S1/L1, forward", "S1/L1, forward+backward", "S1/L2, backward-dx"]


def test_readme_without_markers_is_refused(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    out = tmp_path / "REPORT.md"
    assert cli.main(["report", "--results", str(results), "--out", str(out),
                     "--readme", str(readme)]) == 2
    assert report.HEADLINE_BEGIN in capsys.readouterr().err
    assert readme.read_text() == "# project\n" and not out.exists()
    assert cli.main(["report", "--results", str(results), "--out", str(out),
                     "--readme", str(tmp_path / "missing.md")]) == 2


def test_add_results_per_gpu(results, tmp_path):
    """--add files a run's CSVs under <results>/<gpu-name>/, appends, and never doubles a row."""
    run = next(results.rglob("bench.csv")).parent
    store = tmp_path / "store"
    store.mkdir()
    out = tmp_path / "REPORT.md"
    for _ in range(2):  # the same run added twice
        assert cli.main(["report", "--add", str(run), "--results", str(store),
                         "--out", str(out)]) == 0
    dest = store / "test-gpu-80gb"
    assert sorted(p.name for p in dest.iterdir()) == ["bench.csv", "tune_lenet5_bf16_nhwc_b1024.csv"]
    assert pd.read_csv(dest / "bench.csv").equals(pd.read_csv(run / "bench.csv"))
    assert len(pd.read_csv(dest / "tune_lenet5_bf16_nhwc_b1024.csv")) == 3
    # a later run of another GPU goes beside it; a newer row of the same GPU is appended
    df = pd.read_csv(run / "bench.csv")
    later = tmp_path / "later"
    later.mkdir()
    pd.concat([df.head(2).assign(gpu="Other GPU"),
               df.head(1).assign(timestamp="2026-11-27T00:00:00+00:00")]).to_csv(
        later / "bench.csv", index=False)
    # training curves carry no gpu column: left where they are
    pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(later / "steps.csv", index=False)
    assert cli.main(["report", "--add", str(later), "--results", str(store), "--out", str(out)]) == 0
    assert len(pd.read_csv(store / "other-gpu" / "bench.csv")) == 2
    assert len(pd.read_csv(dest / "bench.csv")) == len(df) + 1
    assert not list(store.rglob("steps.csv"))
    assert "## Other GPU" in out.read_text() and f"## {GPU}" in out.read_text()
    assert cli.main(["report", "--add", str(tmp_path / "missing"), "--results", str(store),
                     "--out", str(out)]) == 2


def test_add_files_a_training_run_whole(results, tmp_path):
    """A `tritoncnn train --out` folder in OUTDIR goes under <results>/<device>/<folder>/ (its
    CSVs and config.json, replacing an earlier run of that name), and the report draws its
    curves with the device in the title."""
    import json

    outdir = tmp_path / "outdir"
    run = outdir / "train"
    (run / "triton").mkdir(parents=True)
    (run / "triton" / "checkpoint.pt").write_bytes(b"weights")  # not a result: stays behind
    json.dump({"epochs": 2, "device": "auto", "device_name": "Test GPU 80GB"},
              (run / "config.json").open("w"))
    for backend, losses in (("triton", [2.0, 1.5]), ("torch", [2.0, 1.5])):
        pd.DataFrame({"backend": backend, "epoch": 1, "step": [1, 2], "global_step": [1, 2],
                      "loss": losses, "lr": 0.1, "seconds": [0.1, 0.2]}).to_csv(
            run / "steps.csv", mode="a", header=backend == "triton", index=False)
    pd.DataFrame({"backend": ["triton", "torch"], "epoch": 1, "train_loss": 1.5,
                  "train_acc": 0.5, "test_loss": 1.6, "test_acc": 0.4, "images_per_s": 1e4,
                  "seconds": 1.0, "peak_mem_mb": 10.0}).to_csv(run / "epochs.csv", index=False)
    store = tmp_path / "store"
    store.mkdir()
    stale = store / "test-gpu-80gb" / "train"
    stale.mkdir(parents=True)
    (stale / "summary.csv").write_text("metric,triton,torch\nold,1,1\n")
    out = tmp_path / "REPORT.md"
    assert cli.main(["report", "--add", str(outdir), "--results", str(store),
                     "--out", str(out)]) == 0
    assert sorted(p.name for p in stale.iterdir()) == ["config.json", "epochs.csv", "steps.csv"]
    assert pd.read_csv(stale / "steps.csv").equals(pd.read_csv(run / "steps.csv"))
    assert (tmp_path / "figures" / "training_curves.png").is_file()
    assert "Test GPU 80GB" in out.read_text()


def test_readme_headline_is_the_committed_results(tmp_path):
    """The README's numbers are those the committed CSVs give: regenerating changes nothing."""
    from pathlib import Path

    root = Path(report.__file__).resolve().parent.parent
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    df = report.load([root / "reports" / "results"])[0]
    report.update_readme(readme, report.headline_markdown(df, "reports/REPORT.md"))
    assert readme.read_text() == (root / "README.md").read_text(), (
        "README.md's headline differs from the committed results: run "
        "`tritoncnn report --readme README.md`")


def test_speedups_keep_their_digits_below_a_tenth():
    """Ratios read "1.23x"; below 0.1 (a CPU run's interpreted kernels) two significant digits
    instead of "0.00x"; NaN leaves the cell empty."""
    from tritoncnn.reports.report import _times
    assert [_times(v) for v in (12.345, 1.234, 0.1, 0.0213, 0.000456, float("nan"))] == \
        ["12.35x", "1.23x", "0.10x", "0.021x", "0.00046x", ""]
