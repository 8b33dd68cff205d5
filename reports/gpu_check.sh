#!/usr/bin/env bash
# The GPU run: install, environment report, the headline benchmarks, GPU tests, the fuller
# benchmarks and tuning, on a CUDA machine that needs no network. Every part has its own time
# limit and a failing part does not stop the others; the whole run, the closing report included,
# keeps within TOTAL_S seconds (default 480).
#
#   bash reports/gpu_check.sh OUTDIR
#
# Writes at most ten files and a training run's folder into OUTDIR:
#   env.txt    tritoncnn env
#   tests.log  pytest output
#   bench.csv  every benchmark row (the headline's, ceilings, the fuller suites, training steps)
#   host.csv   host time per op call and per training step (bench --host)
#   profile.csv  torch.profiler's breakdown of eager vgg11 training steps (bench --host --profile)
#   ncu.csv    hardware counters of one layer's forward and backward kernels (where ncu runs;
#              ncu.log: its messages)
#   tune.csv   the tuning tables of bench --tune (every config tried, per kernel shape)
#   run.log    everything else (install, bench and tune output, part timings and exit codes)
#   summary.md the report's summary tables, built from bench.csv on the same machine
#   train/     tritoncnn train's default run (config.json, steps/epochs/summary.csv, curves.png,
#              checkpoints)
# Then, on any machine: tritoncnn report --add OUTDIR --readme README.md (files the CSVs and the
# training run under reports/results/<gpu-name>/, writes reports/REPORT.md and the README's
# headline numbers)
#
# The first part, "headline" (about 5.5 minutes), measures what the README's headline reports, on
# the configs a user gets without tuning: VGG-16's 13 conv layers and its five fused-pool layers in
# every direction, tritoncnn and cuDNN; torch.compile (default mode) forward on the 13 layers; the
# Pool suite; the vgg11 training step, eager, from CUDA graphs and under torch.compile, on both
# backends. Everything else runs after it, in the time left.
#
# Environment: PYTHON (default python3), TOTAL_S (default 480), TRITONCNN_GIT_SHA (the commit the
# rows record, for a copy of the tree without git metadata), TEST_TIMEOUT_S (limit of one test,
# default 120, when pytest-timeout is installed), PARTS (the parts to run after install and env,
# by name, comma- or space-separated; "headline" names all of the headline's parts; default all:
# a rerun of the parts that failed, into a fresh OUTDIR, gets the whole time), DRY_RUN=1 (print
# what each selected part would run and its estimated time, run nothing and write nothing). The
# autotune cache is a fresh temporary folder, so every run starts untuned (tune.csv keeps the
# winners). OUTDIR is only ever data: a path with spaces or shell characters is used as it is.
set -u

HEADLINE_PARTS="headline-conv headline-compile headline-pool headline-train"
ALL_PARTS="$HEADLINE_PARTS ncu host tests-gpu bench-quick train bench-tuned bench-bwd bench-conv \
bench-tf32 bench-pool tests-rest bench-compile"
WANTED=$(echo "${PARTS:-$ALL_PARTS}" | tr ',' ' ')
PARTS="install env"  # always first
for name in $WANTED; do
    case " headline $ALL_PARTS " in
        *" $name "*) ;;
        *) echo "gpu_check: unknown part '$name' in PARTS; the parts: headline $ALL_PARTS" >&2
           exit 2 ;;
    esac
    if [ "$name" = headline ]; then PARTS="$PARTS $HEADLINE_PARTS"; else PARTS="$PARTS $name"; fi
done

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash reports/gpu_check.sh OUTDIR" >&2
    exit 2
fi
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
    # nothing is written: an earlier run's files in OUTDIR stay as they are
    OUTDIR=$1
    case "$OUTDIR" in /*) ;; *) OUTDIR="$PWD/$OUTDIR" ;; esac
    LOG=/dev/null
else
    mkdir -p -- "$1" || exit 2
    OUTDIR=$(cd -- "$1" && pwd) || exit 2
    LOG="$OUTDIR/run.log"
    : > "$LOG"
fi
cd "$(dirname "$0")/.." || exit 2

read -r -a PY <<< "${PYTHON:-python3}"  # words, never evaluated
TOTAL_S=${TOTAL_S:-480}
REPORT_S=25  # kept back from the parts for the closing report
PARTS_S=$(( TOTAL_S - REPORT_S ))
START=$(date +%s)
PLANNED=0  # DRY_RUN: the estimated seconds of the parts so far, in place of the clock
CSV=bench.csv
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15 TRITONCNN_MODE=${TRITONCNN_MODE:-compiled}
if [ "$DRY" != 1 ]; then
    TRITONCNN_CACHE_DIR=$(mktemp -d)
    export TRITONCNN_CACHE_DIR
fi

exec 3>&1  # the console, while parts write into the log
elapsed() { echo $(( $(date +%s) - START + PLANNED )); }
say() { echo "[$(date -u +%H:%M:%S) +$(elapsed)s] $*" | tee -a "$LOG" >&3; }

# part NAME LIMIT_S ESTIMATE_S COMMAND...: run with the smaller of LIMIT_S and the time left;
# never fails. ESTIMATE_S is what the part usually takes, for DRY_RUN's plan.
part() {
    local name=$1 limit=$2 est=$3
    shift 3
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    local left=$(( PARTS_S - $(elapsed) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 15 ]; then
        say "$name: not run, ${left}s left of ${PARTS_S}s"
        return 0
    fi
    if [ "$DRY" = 1 ]; then
        if [ "$est" -gt "$limit" ]; then est=$limit; fi
        say "$name: would run (about ${est}s, limit ${limit}s): $(printf '%q ' "$@")"
        PLANNED=$(( PLANNED + est ))
        case " $HEADLINE_PARTS install env " in
            *" $name "*) HEADLINE_PLANNED=$(( HEADLINE_PLANNED + est )) ;;
        esac
        return 0
    fi
    say "$name: start (limit ${limit}s)"
    local t0
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@"
    local rc=$?
    local why=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why=" (time limit)"; fi
    say "$name: exit $rc after $(( $(date +%s) - t0 ))s$why"
    return 0
}
HEADLINE_PLANNED=0

# bench NAME LIMIT_S ESTIMATE_S ARGS...: a bench part whose budget ends before its time limit
bench() {
    local name=$1 limit=$2 est=$3
    shift 3
    local left=$(( PARTS_S - $(elapsed) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    # no new case after the budget; 30 s (a third, for short parts) left for the case in flight
    local budget=$(( limit > 90 ? limit - 30 : limit * 2 / 3 ))
    part "$name" "$limit" "$est" "${PY[@]}" -m tritoncnn.cli bench --out "$OUTDIR" --csv "$CSV" \
        --budget-s "$budget" "$@" >> "$LOG" 2>&1
}

say "gpu_check: output in $OUTDIR, ${TOTAL_S}s in all (mode $TRITONCNN_MODE), parts: $PARTS"
if [ "$DRY" != 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
        --format=csv >> "$LOG" 2>&1 || say "nvidia-smi: not available"
fi

part install 60 15 "${PY[@]}" -m pip install --no-deps --no-build-isolation -e . >> "$LOG" 2>&1
ENV_TXT="$OUTDIR/env.txt"
if [ "$DRY" = 1 ]; then ENV_TXT=/dev/null; fi  # the redirection opens it, run or not
part env 30 5 "${PY[@]}" -m tritoncnn.cli env > "$ENV_TXT" 2>&1

# The headline. The directions run in this order (each over all layers before the next), so
# that a part stopped by its limit loses the dX-alone and dW-alone rows first.
bench headline-conv 170 115 --no-ceilings --no-train --suite VGG16_224_N64 \
    --ops conv_relu,conv_relu_pool --dtype bf16 --layout channels_last \
    --direction forward,forward+backward,backward,backward-dx,backward-dw \
    --impl tritoncnn,cudnn --warmup-ms 10 --rep-ms 50
bench headline-compile 70 45 --no-ceilings --no-train --suite VGG16_224_N64 --ops conv_relu \
    --dtype bf16 --layout channels_last --direction forward --impl compile-default
bench headline-pool 45 30 --no-ceilings --no-train --suite Pool --ops pool --dtype bf16 \
    --layout channels_last --direction forward,backward,forward+backward --impl tritoncnn,cudnn
# vgg11 (32x32, batch 256, bf16 autocast) on both backends: time, images/s, memory; run eagerly,
# replayed from a CUDA graph (the GPU's time without launch overhead) and under torch.compile
# (Inductor's code launching tritoncnn's kernels, against the compiled cuDNN twin), each mode its
# own suite. Compiling both twins' forward and backward takes most of the part (an estimate: not
# yet measured); the compile rows come last, so a part stopped by its limit loses them first.
bench headline-train 180 120 --no-ceilings --suite Train --train-models vgg11 --dtype bf16 \
    --train-steps 10 --train-modes eager,cuda-graphs,compile

# Hardware counters of one layer's forward and backward kernels (VGG-16 conv3_2, bf16): where
# ncu can read them (--clock-control none), whether each kernel waits on memory, on issue or on
# barriers. Its own file, ncu.csv.
part ncu 60 30 bash -c 'out=$1; shift
    command -v ncu > /dev/null || { echo "ncu: not installed"; exit 0; }
    ncu --clock-control none --kernel-name "regex:^_(conv|grad_z|dx_weight|sum_splits)" \
        --launch-skip 12 --launch-count 6 --section SpeedOfLight --section WarpStateStats \
        --section Occupancy --csv --log-file "$out/ncu.log" "$@" reports/profile_layer.py \
        > "$out/ncu.csv"' \
    _ "$OUTDIR" "${PY[@]}" >> "$LOG" 2>&1

# Host time per op call on small shapes (bench --host): tritoncnn with real launches and with
# launches stubbed (the difference is Triton's launch), cuDNN beside it, and the vgg11 training
# step; bf16, whose vgg11 kernels headline-train has compiled already. Its own file, host.csv.
# Then torch.profiler's breakdown of five eager vgg11 steps at batch 256 per backend (host time
# per layer, autograd node and optimizer, launches a step, GPU busy and idle): profile.csv.
part host 120 60 "${PY[@]}" -m tritoncnn.cli bench --host --out "$OUTDIR" --dtype bf16 \
    --rounds 7 --round-ms 20 --budget-s 60 --profile 5 --profile-batch 256 >> "$LOG" 2>&1

# Compiling each kernel specialization dominates the compiled tests: spread them over a process
# per CPU core (at most 16), with pytest-xdist or, where it is not installed, tests/shards.py (one
# pytest per shard of the test ids). One line per test as it finishes (-v), so a run stopped at
# its limit still names its results; a test that hangs fails on its own after TEST_TIMEOUT_S
# instead of taking the whole part.
WORKERS=$(nproc 2>/dev/null || echo 8)
if [ "$WORKERS" -gt 16 ]; then WORKERS=16; fi
if [ "$DRY" = 1 ] || "${PY[@]}" -c "import xdist" 2>/dev/null; then
    PYTEST=("${PY[@]}" -m pytest -n "$WORKERS")
else PYTEST=("${PY[@]}" tests/shards.py "$WORKERS"); fi
if [ "$DRY" != 1 ] && "${PY[@]}" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST+=(--timeout "${TEST_TIMEOUT_S:-120}")
fi
# tests NAME LIMIT_S ESTIMATE_S MARK: the tests of MARK into tests.log, their last lines into the
# run's log. The shell code is fixed; the log path, the mark and pytest's words are its arguments.
tests() {
    part "$1" "$2" "$3" bash -c 'set -o pipefail; log=$1; mark=$2; shift 2
        "$@" -v --tb=short -m "$mark" --maxfail=25 -p no:cacheprovider -rfE 2>&1 \
            | tee -a "$log" | tail -n 30' _ "$OUTDIR/tests.log" "$4" "${PYTEST[@]}" >> "$LOG" 2>&1
}
# The gpu-marked tests (compiled-only checks that no CPU run covers: larger shapes, every tuning
# config against the reference); the rest after the fuller benchmarks (below).
tests tests-gpu 80 70 gpu

# Ceilings (the card's matmul and copy rates, for % of peak) and a few layers of each suite.
bench bench-quick 60 40 --quick --no-train
# tritoncnn train's default run (the digits, both backends) for the report's training curves:
# steps replayed from CUDA graphs, or eagerly when that fails
part train 45 35 bash -c 'out=$1; shift
    "$@" -m tritoncnn.cli train --epochs 3 --out "$out/train" --no-progress --cuda-graphs || {
        echo "train --cuda-graphs failed: eager steps"
        "$@" -m tritoncnn.cli train --epochs 3 --out "$out/train" --no-progress --mode eager; }' \
    _ "$OUTDIR" "${PY[@]}" >> "$LOG" 2>&1
# The quick layers' tritoncnn kernels tuned first (compiled in parallel, then timed; winners to
# the cache, tables to tune.csv): rows marked configs=tuned.
bench bench-tuned 70 60 --no-ceilings --no-train --quick --impl tritoncnn --tune
# The conv backward (dX and dW) of two large VGG-16 layers, tuned, beside cuDNN's.
bench bench-bwd 60 50 --no-ceilings --no-train --suite VGG16_224_N64 --layers conv3_2,conv4_3 \
    --ops conv_relu --dtype bf16 --layout channels_last \
    --direction backward,backward-dx,backward-dw --impl tritoncnn,cudnn --tune
# The CIFAR ResNet-9 layers and the vgg11 training step's (32x32, batch 256) in every direction
# against cuDNN.
bench bench-conv 80 60 --no-ceilings --no-train --suite ResNet9_CIFAR_N512,VGG11_CIFAR_N256 \
    --ops conv_relu,conv_relu_pool --dtype bf16 --layout channels_last \
    --direction forward,forward+backward,backward --impl tritoncnn,cudnn
# VGG-16 and ResNet-9 in float32 with TF32 against cuDNN.
bench bench-tf32 60 45 --no-ceilings --no-train --suite VGG16_224_N64,ResNet9_CIFAR_N512 \
    --ops conv_relu,conv_relu_pool --dtype tf32 --layout channels_last \
    --direction forward,forward+backward --impl tritoncnn,cudnn
# Large max- and average pools: both layouts, bf16 and fp32, against F.max_pool2d and F.avg_pool2d.
bench bench-pool 60 50 --no-ceilings --no-train --suite Pool --dtype bf16,fp32 \
    --direction forward,forward+backward --impl tritoncnn,cudnn
# The rest of the test suite compiled (the CPU tests' algorithms on the real compiler), in the
# time the benchmarks left: every benchmark row also records its error against a reference.
tests tests-rest 90 90 "not gpu"
# torch.compile(mode="max-autotune") on the quick layers (its autotuning is slow: few cases), when
# the parts before it left the time.
bench bench-compile 50 50 --no-ceilings --no-train --quick --impl compile --direction forward

if [ "$DRY" = 1 ]; then
    say "gpu_check: planned about ${PLANNED}s in all, ${HEADLINE_PLANNED}s of it install, env and" \
        "the headline parts; nothing was run"
    exit 0
fi
LEFT=$(( TOTAL_S - $(elapsed) ))
if [ -s "$OUTDIR/$CSV" ] && [ "$LEFT" -ge 10 ]; then
    REPORT_DIR=$(mktemp -d)
    RESULTS=(--results "$OUTDIR/$CSV")
    if [ -s "$OUTDIR/tune.csv" ]; then RESULTS+=(--results "$OUTDIR/tune.csv"); fi
    # in the time kept back for it (REPORT_S) and whatever the parts left: the summary is what
    # the console shows last
    timeout -k 3 "$(( LEFT > 40 ? 40 : LEFT - 3 ))" "${PY[@]}" -m tritoncnn.cli report \
        "${RESULTS[@]}" --out "$REPORT_DIR" >> "$LOG" 2>&1 || say "report: failed"
    if [ -f "$REPORT_DIR/REPORT.md" ]; then
        # the headline and the summary tables (ceilings, geometric means, failures), not the
        # per-layer ones
        awk '/^##+ /{keep = ($0 ~ /Headline|ceilings|Geometric|Skipped/)} keep' \
            "$REPORT_DIR/REPORT.md" > "$OUTDIR/summary.md"
        cat "$OUTDIR/summary.md"
    fi
fi
say "gpu_check: done; files: $(ls "$OUTDIR" | tr '\n' ' ')"
exit 0
