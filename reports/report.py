"""``tritoncnn report``: REPORT.md and its figures from the benchmark CSVs (no GPU needed).

Reads every CSV under the results folders: rows of ``tritoncnn bench`` (recognised by their columns),
tuning tables of ``tritoncnn tune`` (a file whose name has "tune" in it) and training metrics (a
CSV with ``step`` and ``loss`` columns). A run is one commit on one GPU: rows are compared with
their own run's baseline, and where a run measured a case more than once, its newest row counts.
Writes a headline (per suite, op and direction, one run's geometric-mean speedup over cuDNN across
every layer of the suite, missing layers named), then per GPU: the measured ceilings; per run,
suite and dtype the geometric-mean speedup over cuDNN; per layer the time, TFLOP/s, % of the
measured matmul peak and the speedup; max-pool GB/s and % of the measured copy bandwidth; training
step time, images/s and peak memory; the failed cases. Then the autotuning results and the
training curves, when present. Figures (PNG): speedup per layer and direction, a roofline with the
measured ceilings, pool bandwidth against size, training curves.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from pathlib import Path

HELP = "write reports/REPORT.md and its figures from benchmark, tuning and training CSVs"

# one measured case; the last entry is the implementation, compared against a baseline row
# that matches on all the others
KEY = ["gpu", "git_sha", "suite", "layer", "op", "shape", "dtype", "precision", "layout",
       "direction", "implementation"]
BENCH_REQUIRED = {"suite", "layer", "implementation", "median_ms", "direction", "status"}
HOST_REQUIRED = {"suite", "layer", "implementation", "median_us", "direction", "status"}
PROFILE_REQUIRED = {"suite", "item", "kind", "us", "implementation", "status"}  # --profile
BASELINES = ("cudnn", "torch")  # F.conv2d & co: cuDNN on a GPU, PyTorch's own kernels on the CPU
KERNEL_OPS = ("conv_relu", "conv_relu_pool", "pool", "avg_pool")
DIRECTION_ORDER = {"forward": 0, "backward": 1, "backward-dx": 2, "backward-dw": 3,
                   "forward+backward": 4}
# the README's generated block: everything between these two lines belongs to the report
HEADLINE_BEGIN = "<!-- headline: written by `tritoncnn report --readme`, from the CSVs -->"
HEADLINE_END = "<!-- /headline -->"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", action="append", default=None, metavar="PATH",
                        help="CSV file or folder searched for CSVs (repeatable; default "
                             "reports/results)")
    parser.add_argument("--out", default="reports/REPORT.md",
                        help="the report to write: a .md file, or a folder that gets REPORT.md "
                             "(default reports/REPORT.md)")
    parser.add_argument("--figures", default=None,
                        help="folder for the PNG figures (default: figures/ beside the report)")
    parser.add_argument("--add", action="append", default=None, metavar="PATH",
                        help="first copy the bench and tuning CSVs of PATH (a file or a folder, "
                             "such as gpu_check.sh's OUTDIR) into <results>/<gpu-name>/, "
                             "appending to the files already there (repeatable)")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="also write the headline table into FILE (the README), between "
                             f"its '{HEADLINE_BEGIN}' and '{HEADLINE_END}' lines")


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown_table(df, align: dict[str, str] | None = None) -> str:
    """A GitHub-flavoured markdown table of ``df`` (cells as they print; numbers right-aligned)."""
    if df is None or len(df) == 0:
        return "_(none)_\n"
    cols = [str(c) for c in df.columns]
    align = align or {}

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |"]
    seps = []
    for c, series in zip(cols, (df[c] for c in df.columns)):
        right = align.get(c, "r" if _numeric(series) else "l") == "r"
        seps.append("---:" if right else "---")
    lines.append("| " + " | ".join(seps) + " |")
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _numeric(series) -> bool:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return True
    cells = [str(v).strip().rstrip("x%") for v in series if str(v).strip() not in ("", "nan")]
    if not cells:
        return False
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def _num(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, fmt)


def _sig(v) -> str:
    """One decimal from 10 up, three significant digits below (CPU runs are tiny numbers)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def _times(v) -> str:
    """A ratio as "1.23x": two decimals from 0.1 up, two significant digits below (a CPU run's
    interpreted kernels are thousands of times slower, and "0.00x" would say nothing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.2f}x" if abs(v) >= 0.1 else f"{v:.2g}x"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


# ---------------------------------------------------------------------------------------------
# Loading


def find_csvs(paths) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".csv":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("*.csv")))
    return found


def read_csvs(paths, skipping: str = "skipping"):
    """(path, table, kind) of each readable CSV under ``paths``; kind is "bench" (rows of
    ``tritoncnn bench``), "host" (rows of ``tritoncnn bench --host``, in microseconds: filed by
    ``--add``, not in the report's tables), "profile" (``--host --profile``'s step breakdown,
    filed the same way), "tune" (a tuning table: "tune" in the file name),
    "curves" (training metrics) or None."""
    import pandas as pd

    for path in find_csvs(paths):
        try:
            df = pd.read_csv(path)
        except Exception as err:
            print(f"tritoncnn report: {skipping} {path}: {type(err).__name__}: {err}")
            continue
        kind = None
        if BENCH_REQUIRED <= set(df.columns):
            kind = "bench"
        elif HOST_REQUIRED <= set(df.columns):
            kind = "host"
        elif PROFILE_REQUIRED <= set(df.columns):
            kind = "profile"
        elif "tune" in path.name.lower():
            kind = "tune"
        elif {"step", "loss"} <= set(df.columns) or (
                "epoch" in df.columns and any(c.endswith("acc") for c in df.columns)):
            kind = "curves"
        yield path, df, kind


def load(paths):
    """(bench rows, tuning tables, training-metric tables) from the CSVs under ``paths``."""
    import pandas as pd

    bench, tune, curves = [], [], []
    for path, df, kind in read_csvs(paths):
        if kind == "bench":
            bench.append(df.assign(source=str(path)))
        elif kind == "tune":
            tune.append((path, df))
        elif kind == "curves":
            curves.append((path, df))
    rows = pd.concat(bench, ignore_index=True) if bench else pd.DataFrame()
    return check_tuned(prepare(rows), tune), tune, curves


#: the directions whose cases tune the kernels a direction launches: every case launches the
#: forward kernels; dX alone needs a case that launched dX, dW alone one that launched dW
_TUNES_DX = {"backward", "backward-dx", "forward+backward"}
_TUNES_DW = {"backward", "backward-dw", "forward+backward"}
UNTABLED = "tuned (no table)"


def _covered(direction: str, tuned_in: set[str]) -> bool:
    """Whether cases of the directions ``tuned_in`` tuned every kernel ``direction`` launches."""
    dx, dw = bool(tuned_in & _TUNES_DX), bool(tuned_in & _TUNES_DW)
    need = {"forward": True, "backward-dx": dx, "backward-dw": dw}
    return bool(tuned_in) and need.get(direction, dx and dw)


def check_tuned(df, tune):
    """Rows whose configs say tuned, checked against the tuning tables of their run (those of
    ``tritoncnn bench --tune``, whose ``model`` is "suite/layer" and ``layers`` "op direction"):
    a row stays ``tuned`` where its run's tables hold the tuning of a layer of the same suite, op
    and shape, by a case whose direction launched the row's kernels (a ``k/n tuned`` row: by any
    case); else it becomes :data:`UNTABLED`."""
    if df.empty or "configs" not in df.columns:
        return df
    tuned = df["configs"].str.endswith("tuned") & df["implementation"].str.startswith("tritoncnn")
    if not tuned.any():
        return df
    shapes = dict(zip(zip(df["gpu"], df["git_sha"], df["suite"], df["layer"], df["op"]),
                      df["shape"]))
    done: dict[tuple, set[str]] = {}
    for _, t in tune:
        if not {"model", "layers", "gpu", "git_sha"} <= set(t.columns):
            continue
        for gpu, sha, model, layers in t[["gpu", "git_sha", "model", "layers"]].drop_duplicates(
                ).astype(str).itertuples(index=False):
            suite, _, layer = model.partition("/")
            op, _, direction = layers.partition(" ")
            shape = shapes.get((gpu, sha, suite, layer, op))
            done.setdefault((gpu, sha, suite, op, shape), set()).add(direction)
    df = df.copy()
    for i in df.index[tuned]:
        r = df.loc[i]
        # a partly tuned row needs some of its kernels tuned: the forward's, which every case has
        direction = r["direction"] if r["configs"] == "tuned" else "forward"
        if not _covered(direction, done.get((r["gpu"], r["git_sha"], r["suite"], r["op"],
                                             r["shape"]), set())):
            df.at[i, "configs"] = UNTABLED
    return df


TRAIN_RUN_FILES = ("config.json", "steps.csv", "epochs.csv", "summary.csv")


def _training_runs(sources) -> list[Path]:
    """The ``tritoncnn train --out`` folders under ``sources``: a config.json beside a steps.csv."""
    runs = []
    for src in map(Path, sources):
        if src.is_dir():
            runs += sorted({p.parent for p in src.rglob("steps.csv")
                            if (p.parent / "config.json").is_file()})
    return runs


def add_results(sources, into: Path) -> list[Path]:
    """Copy the bench rows (``bench --host``'s and its profile's too) and tuning tables under
    ``sources`` into ``into/<gpu-name>/`` (the folder ``tritoncnn bench`` writes by default), one
    file per source file name, appended to a file of the same name already there; rows already
    present are not added twice. A ``tritoncnn train`` run's folder (its CSVs and config.json)
    goes to ``into/<device-name>/<folder name>/`` whole, in place of an earlier run of that name.
    Returns the files written. Other CSVs are left where they are."""
    import json
    import shutil

    import pandas as pd

    from .bench import slug

    written = []
    runs = _training_runs(sources)
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        name = config.get("device_name") if isinstance(config, dict) else None
        dest = Path(into) / slug(str(name or "unknown")) / run.name
        if dest.resolve() == run.resolve():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for file in TRAIN_RUN_FILES:
            (dest / file).unlink(missing_ok=True)
            if (run / file).is_file():
                shutil.copyfile(run / file, dest / file)
                written.append(dest / file)
    for path, df, kind in read_csvs(sources, "not adding"):
        if path.parent in runs:
            continue
        if kind not in ("bench", "host", "profile", "tune") or "gpu" not in df.columns:
            print(f"tritoncnn report: not adding {path}: neither bench rows nor a tuning table "
                  "with a gpu column")
            continue
        for gpu, rows in df.groupby(df["gpu"].fillna("unknown").astype(str), sort=False):
            dest = Path(into) / slug(gpu) / path.name
            if dest.resolve() == path.resolve():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                # both sides read back from CSV text, so equal rows compare equal
                rows = pd.concat([pd.read_csv(dest), rows], ignore_index=True).drop_duplicates()
            rows.to_csv(dest, index=False)
            written.append(dest)
    return written


def prepare(df):
    """Numbers as numbers, the newest row per case and run, and each row's baseline time and
    speedup. A run is one GPU and one commit (``gpu``, ``git_sha``): a row is compared with its own
    run's baseline only, and where a run measured a case more than once (say on heuristic configs,
    then tuned) its newest row counts, whatever its configs."""
    import numpy as np
    import pandas as pd

    if df.empty:
        return df
    df = df.copy()
    for col in KEY:
        if col not in df.columns:
            df[col] = "-"
        df[col] = df[col].fillna("-").astype(str)
    for col in ("median_ms", "p20_ms", "p80_ms", "tflops", "gbps", "flop", "bytes", "setup_s",
                "rel_err", "images_per_s", "peak_mem_mb", "batch"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    for col in ("note", "timestamp", "torch", "triton", "timing", "configs"):
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str)
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(KEY, keep="last")
    ok = df[df["status"] == "ok"]
    base = ok[ok["implementation"].isin(BASELINES)]
    base = base.sort_values("implementation").drop_duplicates(KEY[:-1], keep="first")
    base = base[KEY[:-1] + ["median_ms"]].rename(columns={"median_ms": "baseline_ms"})
    df = df.merge(base, on=KEY[:-1], how="left")
    df["speedup"] = np.where(df["status"] == "ok", df["baseline_ms"] / df["median_ms"], np.nan)
    df["ai"] = np.where(df["bytes"] > 0, df["flop"] / df["bytes"], np.nan)
    return df.reset_index(drop=True)


def ceilings(df) -> dict:
    """Per GPU: {"matmul": {precision: TFLOP/s}, "copy": GB/s} from the Ceiling rows (the newest
    run's where several measured them)."""
    out: dict = {}
    if df.empty:
        return out
    rows = df[(df["suite"] == "Ceiling") & (df["status"] == "ok")].sort_values("timestamp")
    for gpu, g in rows.groupby("gpu"):
        g = g.drop_duplicates(["op", "precision", "layer"], keep="last")
        mm = g[g["op"] == "matmul"]
        cp = g[g["op"] == "copy"]
        out[gpu] = {"matmul": dict(zip(mm["precision"], mm["tflops"])),
                    "copy": float(cp["gbps"].max()) if len(cp) else math.nan}
    return out


def add_peaks(df, ceil: dict):
    """% of the matmul ceiling of the row's precision (bf16's when that one was not measured),
    and % of the copy bandwidth."""
    import numpy as np

    if df.empty:
        return df
    df = df.copy()

    def peak(row):
        c = ceil.get(row["gpu"], {}).get("matmul", {})
        return c.get(row["precision"], c.get("bf16", np.nan))

    df["peak_tflops"] = df.apply(peak, axis=1) if len(df) else np.nan
    df["copy_gbps"] = df["gpu"].map(lambda g: ceil.get(g, {}).get("copy", np.nan))
    df["pct_peak"] = 100 * df["tflops"] / df["peak_tflops"]
    df["pct_bw"] = 100 * df["gbps"] / df["copy_gbps"]
    return df


def _direction_rank(direction: str) -> int:
    return DIRECTION_ORDER.get(direction, len(DIRECTION_ORDER))


def geomean_speedups(df):
    """Per GPU, commit, suite, op, dtype/precision, layout, direction and implementation: the
    geometric mean over the layers measured of (baseline time / implementation time)."""
    import numpy as np
    import pandas as pd

    group = ["gpu", "git_sha", "suite", "op", "dtype", "precision", "layout", "direction",
             "implementation"]
    rows = df[(df["status"] == "ok") & df["speedup"].notna()
              & ~df["implementation"].isin(BASELINES) & df["op"].isin(KERNEL_OPS + ("train_step",))]
    if rows.empty:
        return pd.DataFrame(columns=group + ["layers", "geomean", "min", "max"])
    out = rows.groupby(group, sort=False)["speedup"].agg(
        layers="count", geomean=lambda s: float(np.exp(np.log(s).mean())), min="min",
        max="max").reset_index()
    out["_d"] = out["direction"].map(_direction_rank)
    return out.sort_values(["gpu", "git_sha", "suite", "op", "precision", "layout", "_d",
                            "implementation"]).drop(columns="_d").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The headline


def suite_layers(df) -> dict[tuple[str, str], list[str]]:
    """Every layer of each (suite, op), in order: the suite file's (reports/suites.py) for the
    suites it lists, else every layer a row of ``df`` names. A headline row covers these."""
    from .bench import ops_for
    from .suites import all_shapes

    layers: dict[tuple[str, str], list[str]] = {}
    for sh in all_shapes():
        for op in ops_for(sh):
            layers.setdefault((sh.suite, op), []).append(sh.layer)
    if not df.empty:
        for (suite, op), g in df.groupby(["suite", "op"], sort=False):
            if (suite, op) not in layers:
                layers[(suite, op)] = list(dict.fromkeys(g["layer"]))
    return layers


def config_label(configs: str) -> str:
    """A layer's configs as the headline counts them: ``tuned`` (every kernel launch ran a
    winner the run tuned for its own shape), ``partly tuned``, :data:`UNTABLED` (the row says
    tuned, and its run's tuning tables do not show it), or ``heuristic`` (also where the row does
    not say)."""
    configs = str(configs).strip()
    if configs in ("tuned", UNTABLED):
        return configs
    return "partly tuned" if configs.endswith(" tuned") else "heuristic"


def timing_label(timing: str) -> str:
    """How a row was timed, with what that means for the L2 cache."""
    timing = str(timing)
    if timing.startswith("do_bench_cudagraph"):
        return "cudagraph"
    if timing.startswith("do_bench"):
        return "do_bench"
    return timing.split(" ")[0] if timing else ""


HEADLINE_COLUMNS = ["gpu", "commit", "suite", "op", "case", "layers", "speedup", "range",
                    "configs", "missing", "timing", "memory"]
#: the case a headline row prefers: bf16, fp16, TF32, IEEE fp32, fp64; channels_last, then NCHW
CASE_RANK = {"bf16": 0, "fp16": 1, "tf32": 2, "ieee": 3, "fp64": 4, "channels_last": 0}


def _gpu_rows(df):
    if "device" in df.columns:
        return df[df["device"].astype(str).eq("cuda")]
    return df[~df["gpu"].astype(str).str.startswith("CPU")]


def _pick_case(g):
    """The rows of the one run and case that stand for a (gpu, suite, op, direction): the
    preferred dtype and layout, then the newest run that measured it."""
    measured = g[(g["status"] == "ok") & g["speedup"].notna()]
    if measured.empty:
        return None
    cases = (measured.groupby(["git_sha", "precision", "layout"], sort=False)["timestamp"].max()
             .reset_index())
    cases["_r"] = [(CASE_RANK.get(p, 9), CASE_RANK.get(lay, 9)) for p, lay in
                   zip(cases["precision"], cases["layout"])]
    best = cases.sort_values("timestamp", ascending=False, kind="stable").sort_values(
        "_r", kind="stable").iloc[0]
    return g[(g["git_sha"] == best["git_sha"]) & (g["precision"] == best["precision"])
             & (g["layout"] == best["layout"])]


def _count_text(labels) -> str:
    """"heuristic" when all agree, else "9 heuristic, 4 tuned"."""
    counts = {k: labels.count(k) for k in dict.fromkeys(sorted(labels, key=labels.count,
                                                               reverse=True))}
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _memory_text(df, rows) -> str:
    """The training step's peak memory against cuDNN's, from the same run."""
    import numpy as np

    r = rows.iloc[0]
    base = df[(df["gpu"] == r["gpu"]) & (df["git_sha"] == r["git_sha"])
              & (df["suite"] == r["suite"]) & (df["op"] == r["op"])
              & (df["precision"] == r["precision"]) & (df["layout"] == r["layout"])
              & (df["status"] == "ok") & df["implementation"].isin(BASELINES)]
    pair = rows.merge(base, on="layer", suffixes=("", "_base"))
    pair = pair[(pair["peak_mem_mb"] > 0) & (pair["peak_mem_mb_base"] > 0)]
    if pair.empty:
        return ""
    ratio = float(np.exp(np.log(pair["peak_mem_mb"] / pair["peak_mem_mb_base"]).mean()))
    return (f"{_times(ratio)} of cuDNN's ({pair['peak_mem_mb'].sum():.0f} vs "
            f"{pair['peak_mem_mb_base'].sum():.0f} MiB)")


def _headline_row(df, rows, every: list[str]) -> dict:
    """One headline row from the rows of one run and case: the geometric mean over the layers
    measured, the layers of the suite not measured named as missing."""
    import numpy as np

    r = rows.iloc[0]
    ok = rows[(rows["status"] == "ok") & rows["speedup"].notna()]
    ok = ok.set_index("layer")
    every = every + [lay for lay in ok.index if lay not in every]
    missing = [lay for lay in every if lay not in ok.index]
    speedups = ok["speedup"]
    train = r["op"] == "train_step"
    case = (f"{r['precision']} {r['layout']} training step" if train
            else f"{r['precision']} {r['layout']} {r['direction']}")
    return dict(
        gpu=r["gpu"], commit=r["git_sha"], suite=r["suite"], op=r["op"], case=case,
        layers=f"{len(ok)} of {len(every)}",
        speedup=_times(float(np.exp(np.log(speedups).mean()))),
        range=f"{_times(speedups.min())}-{_times(speedups.max())}",
        configs="" if train else _count_text([config_label(c) for c in ok["configs"]]),
        missing=", ".join(missing),
        timing="" if train else _count_text([timing_label(t) for t in ok["timing"]]),
        memory=_memory_text(df, ok.reset_index()) if train else "",
        _d=_direction_rank(r["direction"]))


def headline(df):
    """The first numbers a reader asks for, per GPU (GPU runs only): for each suite, op and
    direction, one geometric-mean speedup of tritoncnn over cuDNN, over every layer of the suite.

    Each row comes from one run (one GPU, one commit) and one case: bf16 before fp16, TF32, IEEE
    fp32 and fp64, channels_last before NCHW, then the newest run. Within it each layer counts
    its newest measurement, on the configs that run gave it (tuned where the run tuned that
    layer's own kernel shapes, the heuristic otherwise, as the row's ``configs`` says), and a
    layer of the suite without a measurement is named as missing, never dropped. Training
    steps add their peak memory beside cuDNN's."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    gpu = _gpu_rows(df)
    ours = gpu[(gpu["implementation"] == "tritoncnn")
               & gpu["op"].isin(KERNEL_OPS + ("train_step",))]
    layers = suite_layers(gpu)
    rows = []
    for (_, suite, op, _), g in ours.groupby(["gpu", "suite", "op", "direction"], sort=False):
        picked = _pick_case(g)
        if picked is not None:
            rows.append(_headline_row(df, picked, layers.get((suite, op), [])))
    if not rows:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    out = pd.DataFrame(rows, columns=HEADLINE_COLUMNS + ["_d"])
    ops = {op: i for i, op in enumerate(KERNEL_OPS + ("train_step",))}
    out = out.assign(_o=out["op"].map(ops))
    return (out.sort_values(["gpu", "_o", "suite", "_d"], kind="stable")
            .drop(columns=["_o", "_d"]).reset_index(drop=True))


HEADLINE_METHOD = (
    "Each row comes from one run (one commit on one GPU) and covers every layer of its suite: "
    "*layers* counts those measured, *missing* names the rest. Each layer ran the configs a user "
    "of that commit gets: *tuned* where the run tuned that layer's own kernel shapes, the "
    "*heuristic* otherwise (*tuned (no table)*: the row says tuned, and the run's tuning tables "
    "do not hold that tuning). *timing*, layers per method: *do_bench* "
    "(`triton.testing.do_bench`) flushes the L2 cache before every call; *cudagraph* "
    "(`do_bench_cudagraph`, for layers whose roofline time is under 0.1 ms) replays a CUDA graph "
    "without flushing it between replays; both sides of a layer are timed the same way.")


def _fill(text: str) -> str:
    return textwrap.fill(text, 100, break_on_hyphens=False, break_long_words=False)


def headline_markdown(df, report_link: str | None = None) -> str:
    """The headline as markdown: a sentence per GPU naming its run (and linking the report, for
    the README), the table, and how to read it."""
    h = headline(df)
    where = f" and into the [report]({report_link})" if report_link else ""
    if h.empty:
        return _fill(
            "No GPU measurements are committed yet: `bash reports/gpu_check.sh OUTDIR` on a GPU "
            "machine makes them; `tritoncnn report --add OUTDIR --readme README.md` brings them "
            f"here{where}.") + "\n"
    link = f"; [full report]({report_link})" if report_link else ""
    out = []
    for gpu, t in h.groupby("gpu", sort=False):
        commits = list(dict.fromkeys(t["commit"]))
        run = f"commit {commits[0]}" if len(commits) == 1 else "the commits named per row"
        out += [_fill(f"{gpu}, {run}: per suite, op and direction, the geometric mean over the "
                      f"suite's layers of cuDNN's time over tritoncnn's (above 1x is "
                      f"faster){link}."), ""]
        t = t.drop(columns=["gpu"] + (["commit"] if len(commits) == 1 else []))
        t = t.drop(columns=[c for c in ("configs", "missing", "timing", "memory")
                            if not t[c].astype(bool).any()])
        t = t.rename(columns={"speedup": "speedup over cuDNN", "range": "min-max",
                              "memory": "peak memory"})
        out.append(markdown_table(t))
    out += [_fill(HEADLINE_METHOD), ""]
    return "\n".join(out)


def _headline_span(readme: Path) -> tuple[list[str], int, int]:
    """The README's lines and the indices of its two headline marker lines."""
    lines = Path(readme).read_text().splitlines(keepends=True)
    try:
        begin = next(i for i, ln in enumerate(lines) if ln.strip() == HEADLINE_BEGIN)
        end = next(i for i, ln in enumerate(lines) if i > begin and ln.strip() == HEADLINE_END)
    except StopIteration:
        raise ValueError(f"{readme} has no '{HEADLINE_BEGIN}' ... '{HEADLINE_END}' block for the "
                         "headline numbers") from None
    return lines, begin, end


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the README's headline marker lines with ``block``."""
    lines, begin, end = _headline_span(readme)
    lines[begin + 1:end] = [block.rstrip("\n") + "\n"]
    Path(readme).write_text("".join(lines))


# ---------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pick_layout(df):
    layouts = list(df["layout"].unique())
    return "channels_last" if "channels_last" in layouts else layouts[0]


def baseline_name(df) -> str:
    return "cuDNN" if (df["implementation"] == "cudnn").any() else "PyTorch"


def _speedup_bars(rows):
    """The figure's rows, top to bottom: one per layer (and op) and direction that has a
    measurement, in the suite file's order, then the direction's."""
    from .suites import all_shapes

    order = {(sh.suite, sh.layer): i for i, sh in enumerate(all_shapes())}
    rows = rows.assign(bar_label=[
        f"{r.suite}/{r.layer}" + (" +pool" if r.op == "conv_relu_pool" else "") + f", {r.direction}"
        for r in rows.itertuples()])
    first = rows.drop_duplicates("bar_label")
    labels = [r.bar_label for r in sorted(first.itertuples(), key=lambda r: (
        order.get((r.suite, r.layer), len(order)), r.suite, r.layer, r.op != "conv_relu",
        _direction_rank(r.direction)))]
    return rows, labels


def fig_speedup(df, gpu: str, precision: str, path: Path) -> Path | None:
    """Horizontal bars of the speedup over cuDNN (log scale): one row per layer and direction
    measured, down the side, one bar per implementation; no row is left empty."""
    import numpy as np

    rows = df[(df["gpu"] == gpu) & (df["precision"] == precision) & (df["status"] == "ok")
              & df["op"].isin(KERNEL_OPS) & df["speedup"].notna()
              & ~df["implementation"].isin(BASELINES)]
    if rows.empty:
        return None
    layout = _pick_layout(rows)
    # a layer measured by several runs: the newest run's bar
    rows, labels = _speedup_bars(rows[rows["layout"] == layout].sort_values("timestamp"))
    impls = sorted(rows["implementation"].unique())
    plt = _plt()
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    height = (0.1 * len(impls) + 0.14) * len(labels) + 2.0
    fig, ax = plt.subplots(figsize=(9, height))
    base = baseline_name(df[df["gpu"] == gpu])
    width = 0.8 / len(impls)
    y = np.arange(len(labels))
    for i, impl in enumerate(impls):
        mine = rows[rows["implementation"] == impl]
        vals = dict(zip(mine["bar_label"], mine["speedup"]))
        widths = np.array([vals.get(lb, np.nan) for lb in labels]) - 1.0
        # bars start at 1 (cuDNN's time): right when faster, left when slower
        ax.barh(y + (i - (len(impls) - 1) / 2) * width, widths, width, left=1.0,
                color=f"C{i}", label=impl)
    lo, hi = rows["speedup"].min(), rows["speedup"].max()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(min(lo, 0.9) / 1.15, max(hi, 1.1) * 1.15)
    ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(-6, 7)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"speedup over {base} (log scale; right of 1x = faster)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper right", fontsize=8,
               ncol=min(3, len(impls)))
    fig.suptitle(f"Speedup over {base} per layer and direction, {gpu}\n{precision}, {layout}",
                 x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))  # room for the title and the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_roofline(df, gpu: str, precision: str, ceil: dict, path: Path) -> Path | None:
    """Achieved TFLOP/s against arithmetic intensity, under the measured ceilings."""
    import numpy as np

    rows = df[(df["gpu"] == gpu) & (df["precision"] == precision) & (df["status"] == "ok")
              & df["op"].isin(("conv_relu", "conv_relu_pool")) & df["tflops"].notna()
              & (df["ai"] > 0)]
    if rows.empty:
        return None
    c = ceil.get(gpu, {})
    peak = c.get("matmul", {}).get(precision, c.get("matmul", {}).get("bf16", math.nan))
    bw = c.get("copy", math.nan)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    lo = max(min(rows["ai"].min() / 2, 1.0), 1e-3)
    hi = max(rows["ai"].max() * 2, 1e4)
    if not math.isnan(peak) and not math.isnan(bw):
        xs = np.logspace(math.log10(lo), math.log10(hi), 200)
        ax.plot(xs, np.minimum(peak, xs * bw / 1e3), color="black", linewidth=1.2,
                label=f"measured ceilings: {_sig(peak)} TFLOP/s matmul, {_sig(bw)} GB/s copy")
    markers = {"forward": "o", "backward": "v", "forward+backward": "s"}
    for (impl, direction), g in rows.groupby(["implementation", "direction"]):
        ax.scatter(g["ai"], g["tflops"], marker=markers.get(direction, "x"), s=22, alpha=0.8,
                   label=f"{impl}, {direction}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per minimum byte moved)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"Roofline of the conv layers, {gpu} ({precision})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_pool(df, gpu: str, ceil: dict, path: Path) -> Path | None:
    """Max-pool GB/s against the bytes each call must move, with the copy bandwidth: one panel
    per direction, one colour per implementation, one marker per dtype and layout; hollow where
    the case was timed from CUDA graph replays (no L2 flush between them, so a small pool's input
    may be read from L2, above the device's copy bandwidth)."""
    rows = df[(df["gpu"] == gpu) & (df["op"] == "pool") & (df["status"] == "ok")
              & df["gbps"].notna()]
    if rows.empty:
        return None
    plt = _plt()
    directions = sorted(rows["direction"].unique(), key=DIRECTION_ORDER.get)
    fig, axes = plt.subplots(1, len(directions), squeeze=False, sharey=True,
                             figsize=(6 * len(directions) + 1, 5))
    impls = sorted(rows["implementation"].unique())
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    kinds = sorted({(p, lay) for p, lay in zip(rows["precision"], rows["layout"])})
    markers = dict(zip(kinds, "osD^vP*X"))
    bw = ceil.get(gpu, {}).get("copy", math.nan)
    graphed = rows["timing"].astype(str).str.contains("cudagraph") if "timing" in rows else None
    for ax, direction in zip(axes[0], directions):
        for (impl, prec, layout), g in rows[rows["direction"] == direction].groupby(
                ["implementation", "precision", "layout"]):
            hollow = graphed[g.index] if graphed is not None else g["bytes"] < 0
            for is_hollow, part in g.groupby(hollow):
                ax.scatter(part["bytes"] / 1e6, part["gbps"], s=28, marker=markers[(prec, layout)],
                           facecolors="none" if is_hollow else colors[impl],
                           edgecolors=colors[impl], linewidths=1.2,
                           label=None if is_hollow else f"{impl}, {prec}, {layout}")
        if not math.isnan(bw):
            ax.axhline(bw, color="black", linestyle="--", linewidth=1,
                       label=f"measured device copy: {_sig(bw)} GB/s")
        ax.set_xscale("log")
        ax.set_xlabel("minimum bytes moved per call (MB, log scale)")
        ax.set_title(direction, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("effective bandwidth (GB/s)")
    handles = {}
    for ax in axes[0]:
        for h, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, h)
    axes[0, -1].legend(handles.values(), handles.keys(), fontsize=7, loc="best")
    fig.suptitle(f"Max-pool bandwidth against size, {gpu}\n(hollow: timed from CUDA graph "
                 f"replays, without an L2 flush)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve_label(path: Path, name, many: bool) -> str:
    return f"{path.parent.name}: {name}" if many else str(name)


def fig_curves(curves, path: Path, title: str) -> Path | None:
    """Training loss against step (files with ``step`` and ``loss``) and accuracy against epoch
    (files with ``epoch`` and ``*_acc``), one line per backend and run."""
    import pandas as pd

    steps = [(p, df) for p, df in curves if {"step", "loss"} <= set(df.columns)]
    epochs = [(p, df) for p, df in curves if "epoch" in df.columns
              and any(c.endswith("acc") for c in df.columns)]
    if not steps and not epochs:
        return None
    panels = [k for k, v in (("loss", steps), ("acc", epochs)) if v]
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(6.5 * len(panels), 4.5))
    many = len({p.parent for p, _ in curves}) > 1
    for ax, kind in zip(axes[0], panels):
        for p, df in steps if kind == "loss" else epochs:
            groups = df.groupby("backend") if "backend" in df.columns else [(p.stem, df)]
            for name, g in groups:
                label = _curve_label(p, name, many)
                if kind == "loss":
                    x = "global_step" if "global_step" in g.columns else "step"
                    g = g.sort_values(x)
                    ax.plot(g[x], pd.to_numeric(g["loss"], errors="coerce"), linewidth=1,
                            label=label)
                else:
                    g = g.sort_values("epoch")
                    for col in (c for c in g.columns if c.endswith("acc")):
                        ax.plot(g["epoch"], pd.to_numeric(g[col], errors="coerce"), marker="o",
                                markersize=3, label=f"{label} {col.replace('_acc', '')}")
        if kind == "loss":
            ax.set_xlabel("training step")
            ax.set_ylabel("training loss (cross-entropy)")
        else:
            from matplotlib.ticker import MaxNLocator

            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (fraction correct)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Sections


def _layer_table(rows):
    import pandas as pd

    rows = rows.assign(_d=rows["direction"].map(DIRECTION_ORDER)).sort_values(
        ["layer", "op", "precision", "layout", "_d", "implementation"], kind="stable")
    ok = rows["status"] == "ok"
    out = pd.DataFrame({
        "layer": rows["layer"],
        "op": rows["op"],
        "shape": rows["shape"],
        "dtype": rows["precision"],
        "layout": rows["layout"],
        "direction": rows["direction"],
        "implementation": rows["implementation"],
        "median ms": [_num(v, ".4g") if o else s for v, o, s in
                      zip(rows["median_ms"], ok, rows["status"])],
        "p20-p80 ms": [f"{a:.4g}-{b:.4g}" if o else "" for a, b, o in
                       zip(rows["p20_ms"], rows["p80_ms"], ok)],
        "TFLOP/s": [_sig(v) if o else "" for v, o in zip(rows["tflops"], ok)],
        "% of peak": [_num(v, ".0f") if o else "" for v, o in zip(rows["pct_peak"], ok)],
        "speedup": [(_num(v, ".2f") + "x") if not math.isnan(v) else "" for v in
                    rows["speedup"]],
        "rel. error": [_num(v, ".1e") for v in rows["rel_err"]],
        "configs": rows["configs"],
        "timing": [timing_label(t) for t in rows["timing"]],
    })
    return _with_commit(out, rows)


def _with_commit(table, rows):
    """A commit column first where the rows come from more than one run."""
    if rows["git_sha"].nunique() > 1:
        table.insert(0, "commit", rows["git_sha"].values)
    return table


def _pool_table(rows):
    import pandas as pd

    rows = rows.assign(_d=rows["direction"].map(DIRECTION_ORDER)).sort_values(
        ["bytes", "layer", "precision", "layout", "_d", "implementation"], kind="stable")
    ok = rows["status"] == "ok"
    return pd.DataFrame({
        "layer": rows["layer"],
        "shape": rows["shape"],
        "dtype": rows["precision"],
        "layout": rows["layout"],
        "direction": rows["direction"],
        "implementation": rows["implementation"],
        "MB moved": [_sig(v / 1e6) for v in rows["bytes"]],
        "median ms": [_num(v, ".4g") if o else s for v, o, s in
                      zip(rows["median_ms"], ok, rows["status"])],
        "GB/s": [_sig(v) if o else "" for v, o in zip(rows["gbps"], ok)],
        "% of copy": [_num(v, ".0f") if o else "" for v, o in zip(rows["pct_bw"], ok)],
        "speedup": [(_num(v, ".2f") + "x") if not math.isnan(v) else "" for v in
                    rows["speedup"]],
        "rel. error": [_num(v, ".1e") for v in rows["rel_err"]],
        "timing": [timing_label(t) for t in rows["timing"]],
    }).pipe(_with_commit, rows)


def _train_table(rows):
    import pandas as pd

    rows = rows.sort_values(["layer", "precision", "suite", "implementation"], kind="stable")
    ok = rows["status"] == "ok"
    return pd.DataFrame({
        "model": rows["layer"],
        "steps": ["CUDA graph replays" if "graph" in s.lower() else "eager" for s in rows["suite"]],
        "input": rows["shape"],
        "dtype": rows["precision"],
        "implementation": rows["implementation"],
        "step ms": [_num(v, ".4g") if o else s for v, o, s in
                    zip(rows["median_ms"], ok, rows["status"])],
        "images/s": [_num(v, ".0f") for v in rows["images_per_s"]],
        "peak memory MiB": [_num(v, ".0f") for v in rows["peak_mem_mb"]],
        "speedup": [(_num(v, ".2f") + "x") if not math.isnan(v) else "" for v in
                    rows["speedup"]],
        "note": rows["note"],
    }).pipe(_with_commit, rows)


def _tune_section(tune) -> list[str]:
    """Per tuned kernel shape: configs tried, the best time, the heuristic's, the winner, and the
    tuning time (with the part of it spent compiling, when the table has it)."""
    import pandas as pd

    lines = ["## Autotuning", ""]
    for path, df in tune:
        lines += [f"From `{path}` ({len(df)} measurements).", ""]
        tcol = next((c for c in ("ms", "median_ms", "time_ms") if c in df.columns), None)
        keys = [c for c in ("gpu", "model", "kernel", "dtype", "layout", "shape")
                if c in df.columns]
        if tcol is None or "kernel" not in keys:
            lines.append(markdown_table(df.head(40)))
            continue
        df = df.assign(**{tcol: pd.to_numeric(df[tcol], errors="coerce")})
        ok = df["status"].eq("ok") if "status" in df.columns else df[tcol].notna()
        rows = []
        for key, g in df.groupby(keys, sort=False, dropna=False):
            good = g[ok.loc[g.index] & g[tcol].notna()]
            row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
            row["configs"] = len(g)
            row["failed or wrong"] = int((~ok.loc[g.index]).sum())
            if len(good):
                best = good.loc[good[tcol].idxmin()]
                row["best ms"] = _sig(best[tcol])
                heur = good[good["heuristic"].astype(str).eq("True")] if "heuristic" in g else []
                if len(heur):
                    h = float(heur[tcol].iloc[0])
                    row["heuristic ms"] = _sig(h)
                    row["tuned speedup"] = _times(h / best[tcol])
                row["winner"] = best.get("config", "")
            for col, name in (("tune_s", "tuning s"), ("compile_s", "of it compiling s")):
                if col in g.columns and pd.notna(pd.to_numeric(g[col], errors="coerce").iloc[0]):
                    row[name] = f"{float(g[col].iloc[0]):.1f}"
            rows.append(row)
        lines.append(markdown_table(pd.DataFrame(rows)))
    return lines


def _run_devices(path: Path) -> list[str]:
    """The device a training run names: a ``gpu``, ``device_name`` or ``device`` entry of
    config.json beside its CSVs."""
    import json

    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(config, dict):
        return []
    return [str(config[k]) for k in ("gpu", "device_name", "device") if config.get(k)][:1]


READING_GUIDE = (
    "How to read it: *speedup* is the cuDNN time (`F.conv2d` + `F.relu` (+ `F.max_pool2d`), "
    "`torch.backends.cudnn.benchmark = True`, same dtype and memory format) over the "
    "implementation's time, above 1 is faster, both measured in the same run (one commit on one "
    "GPU); on a CPU run the baseline is PyTorch's own kernels. Where a run measured a case more "
    "than once, its newest row counts. Times are medians (p20-p80 beside them) of "
    "`triton.testing.do_bench` (*timing* `do_bench`: the L2 cache is flushed before every call), "
    "or, for the small cases whose roofline time is under 0.1 ms, where eager timing would "
    "measure the host's kernel launches, of CUDA graph replays (`do_bench_cudagraph`, *timing* "
    "`cudagraph`: no L2 flush between replays), every implementation of the case alike but "
    "torch.compile in max-autotune mode; the first call (compilation, autotuning, cuDNN's "
    "algorithm search) is not timed. *configs*: `tuned` where every kernel launch ran a winner "
    "tuned for its own shape, `heuristic` where none did. Directions: `backward` is dX, dW and db; "
    "`backward-dx` and `backward-dw` are dX and dW alone. TFLOP/s counts "
    "2·N·K·P·Q·(C/groups)·R·S per forward, dX or dW, twice that per backward; GB/s counts the "
    "fewest bytes each op must move (reports/suites.py). *% of peak* is against the "
    "bf16/fp16/TF32/fp32/fp64 matmul rate measured on the same card; *% of copy* against its "
    "measured device-to-device copy bandwidth. dtype `tf32` is float32 with TF32 allowed on "
    "both sides, `ieee` float32 without. *rel. error* is ‖out − ref‖ / ‖ref‖ of the "
    "implementation's output against PyTorch's op in IEEE float32 (float64 for fp64 cases) on "
    "the same inputs.")


def _intro(df, results) -> list[str]:
    src = ", ".join(f"`{p}`" for p in results)
    lines = ["# tritoncnn performance report", "",
             f"Generated by `tritoncnn report` from {len(df)} benchmark rows found under {src}. "
             "Regenerate with `tritoncnn report`; the CSVs hold every number below.", "",
             READING_GUIDE, ""]
    if df.empty:
        return lines + ["No benchmark rows found: run `tritoncnn bench` on a GPU first "
                        "(or `bash reports/gpu_check.sh OUTDIR`).", ""]
    return lines + ["## Headline", "", headline_markdown(df)]


def _run_table(g) -> list[str]:
    import pandas as pd

    meta = {
        "torch": ", ".join(sorted(set(g["torch"]) - {""})),
        "triton": ", ".join(sorted(set(g["triton"]) - {""})),
        "git sha": ", ".join(sorted(set(g["git_sha"]) - {"", "-"})),
        "measured": f"{g['timestamp'].min()} to {g['timestamp'].max()}",
        "rows": ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().items()),
    }
    return [markdown_table(pd.DataFrame({"": list(meta), "value": list(meta.values())}))]


def _ceiling_lines(c: dict | None) -> list[str]:
    import pandas as pd

    lines = ["### Measured ceilings", ""]
    if not c:
        return lines + ["_No ceiling rows: % of peak is left blank._", ""]
    crow = [(f"matmul {p}", f"{_sig(v)} TFLOP/s") for p, v in c["matmul"].items()]
    crow.append(("device-to-device copy (read + write)", f"{_sig(c['copy'])} GB/s"))
    return lines + [markdown_table(pd.DataFrame(crow, columns=["ceiling", "measured"]))]


def _geomean_lines(g) -> list[str]:
    base = baseline_name(g)
    lines = [f"### Geometric-mean speedup over {base}", "",
             f"Per run, suite, op, dtype, layout and direction: the geometric mean over the layers "
             f"measured of the {base} time over the implementation's time.", ""]
    gm = geomean_speedups(g)
    if gm.empty:
        return lines + ["_No implementation was timed beside its baseline._", ""]
    t = gm.drop(columns=["gpu", "dtype"]).assign(
        geomean=gm["geomean"].map(_times), min=gm["min"].map(_times), max=gm["max"].map(_times))
    t = t.rename(columns={"precision": "dtype (precision)", "git_sha": "commit"})
    if gm["git_sha"].nunique() == 1:
        t = t.drop(columns=["commit"])
    return lines + [markdown_table(t)]


def _figure_lines(g, gpu: str, ceil: dict, figures: Path, link) -> list[str]:
    lines = []
    for prec in g["precision"].unique():
        p = fig_speedup(g, gpu, prec, figures / f"speedup_{_slug(gpu)}_{_slug(prec)}.png")
        if p:
            lines += [f"![speedup, {gpu}, {prec}]({link(p)})", ""]
        p = fig_roofline(g, gpu, prec, ceil, figures / f"roofline_{_slug(gpu)}_{_slug(prec)}.png")
        if p:
            lines += [f"![roofline, {gpu}, {prec}]({link(p)})", ""]
    return lines


TRAIN_GUIDE = (
    "Synthetic data, SGD with momentum, autocast for bf16/fp16; the first steps (compilation, "
    "autotuning) are not timed. *steps*: run eagerly from Python (the host's launch overhead "
    "included), or captured once in a CUDA graph and replayed (the GPU's time alone). *speedup* "
    "is the torch backend's step time over this backend's, in the same mode.")


def _table_sections(g, gpu: str, ceil: dict, figures: Path, link) -> list[str]:
    """Per-layer conv tables per suite, the max-pool table and figure, the training steps, and
    the cases that did not run."""
    lines = []
    conv = g[g["op"].isin(("conv_relu", "conv_relu_pool"))]
    for suite, s in conv.groupby("suite", sort=False):
        lines += [f"### {suite}: time, TFLOP/s, % of peak, speedup per layer", "",
                  markdown_table(_layer_table(s))]
    pool = g[g["op"] == "pool"]
    if len(pool):
        lines += ["### Max-pool: GB/s and % of copy bandwidth", "",
                  markdown_table(_pool_table(pool))]
        p = fig_pool(g, gpu, ceil, figures / f"pool_bandwidth_{_slug(gpu)}.png")
        if p:
            lines += [f"![max-pool bandwidth, {gpu}]({link(p)})", ""]
    train = g[g["op"] == "train_step"]
    if len(train):
        lines += ["### Training step: time, images/s, peak memory", "", TRAIN_GUIDE, "",
                  markdown_table(_train_table(train))]
    bad = g[g["status"] != "ok"]
    if len(bad):
        summary = (bad.groupby(["status", "implementation", "op", "note"], sort=False)
                   .size().reset_index(name="cases"))
        lines += ["### Skipped and failed cases", "",
                  markdown_table(summary[["status", "implementation", "op", "cases", "note"]])]
    return lines


def _gpu_section(g, gpu: str, ceil: dict, figures: Path, link) -> list[str]:
    return [f"## {gpu}", "", *_run_table(g), *_ceiling_lines(ceil.get(gpu)), *_geomean_lines(g),
            *_figure_lines(g, gpu, ceil, figures, link),
            *_table_sections(g, gpu, ceil, figures, link)]


def _curves_section(curves, figures: Path, link) -> list[str]:
    lines = ["## Training runs", ""]
    for path, df in curves:
        if "epoch" in df.columns and "step" not in df.columns:
            last = df.groupby("backend").tail(1) if "backend" in df.columns else df.tail(1)
            last = last.apply(lambda c: c.map(_sig) if c.dtype.kind == "f" else c)
            on = ", ".join(_run_devices(path))
            lines += [f"Last epoch of `{path}`{f' ({on})' if on else ''}:", "",
                      markdown_table(last)]
    devices = sorted({d for path, _ in curves for d in _run_devices(path)})
    p = fig_curves(curves, figures / "training_curves.png",
                   "Training curves, tritoncnn and torch backends, "
                   + (", ".join(devices) if devices else "device not recorded"))
    if p:
        lines += [f"![training curves]({link(p)})", ""]
    return lines


def build(results, out: Path, figures: Path | None = None) -> Path:
    """Write the report and its figures; returns the report's path."""
    out = Path(out)
    figures = Path(figures) if figures else out.parent / "figures"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    df, tune, curves = load(results)
    ceil = ceilings(df)
    df = add_peaks(df, ceil)

    def link(path: Path) -> str:
        return os.path.relpath(path, out.parent).replace(os.sep, "/")

    lines = _intro(df, results)
    for gpu, g in df.groupby("gpu", sort=False) if not df.empty else []:
        lines += _gpu_section(g, gpu, ceil, figures, link)
    if tune:
        lines += _tune_section(tune)
    if curves:
        lines += _curves_section(curves, figures, link)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def report_path(out: str | Path) -> Path:
    """``--out`` as the report's path: a folder (one that exists, or a name without a suffix)
    gets REPORT.md inside it."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / "REPORT.md"
    return out


def _fail(message: str) -> int:
    print(f"tritoncnn report: {message}", file=sys.stderr)
    return 2


def _check_arguments(args, results: list[str]) -> None:
    """Raise ValueError, naming the argument, for what would stop the report half-way."""
    if args.readme:
        try:
            _headline_span(Path(args.readme))
        except (OSError, ValueError) as err:
            raise ValueError(f"--readme: {err}") from None
    missing = [r for r in args.add or [] if not Path(r).exists()]
    if missing:
        raise ValueError(f"--add: no such path: {', '.join(missing)}")
    if args.add and Path(results[0]).suffix == ".csv":
        raise ValueError(f"--add copies into a results folder, and --results names a file: "
                         f"{results[0]}")
    # the default folder may be missing (nothing committed yet): the CSV check below says so
    missing = [r for r in args.results or [] if not Path(r).exists()]
    if missing:
        raise ValueError(f"--results: no such path: {', '.join(missing)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir() and out.suffix.lower() != ".md":
        raise ValueError(f"--out: {out} is neither a folder nor a .md file")


def main(args) -> int:
    results = args.results or ["reports/results"]
    try:
        _check_arguments(args, results)
    except ValueError as err:
        return _fail(str(err))
    if args.add:
        for dest in add_results(args.add, Path(results[0])):
            print(f"tritoncnn report: added {dest}")
    if not find_csvs(results):
        return _fail(f"--results: no CSV files under {', '.join(map(str, results))}: run "
                     "`tritoncnn bench` (or `bash reports/gpu_check.sh OUTDIR` and "
                     "`tritoncnn report --add OUTDIR`) first")
    path = build(results, report_path(args.out), Path(args.figures) if args.figures else None)
    print(f"tritoncnn report: wrote {path}")
    if args.readme:
        readme = Path(args.readme)
        link = os.path.relpath(path, readme.resolve().parent).replace(os.sep, "/")
        update_readme(readme, headline_markdown(load(results)[0], link))
        print(f"tritoncnn report: wrote the headline into {readme}")
    return 0
