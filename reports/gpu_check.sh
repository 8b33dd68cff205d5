#!/usr/bin/env bash
# The GPU run: install, environment report, GPU tests, benchmarks, tuning, on a CUDA machine that
# needs no network. Every part has its own time limit and a failing part does not stop the others;
# the whole run, the closing report included, keeps within TOTAL_S seconds (default 480).
#
#   bash reports/gpu_check.sh OUTDIR
#
# Writes at most six files and a training run's folder into OUTDIR:
#   env.txt    tritoncnn env
#   tests.log  pytest output
#   bench.csv  every benchmark row (ceilings, --quick, the fuller suites, training steps)
#   tune.csv   the tuning tables of bench --tune (every config tried, per kernel shape)
#   run.log    everything else (install, bench and tune output, part timings and exit codes)
#   summary.md the report's summary tables, built from bench.csv on the same machine
#   train/     tritoncnn train's default run (config.json, steps/epochs/summary.csv, curves.png,
#              checkpoints)
# Then, on any machine: tritoncnn report --add OUTDIR --readme README.md (files the CSVs and the
# training run under reports/results/<gpu-name>/, writes reports/REPORT.md and the README's
# headline numbers)
#
# Environment: PYTHON (default python3), TOTAL_S (default 480), TRITONCNN_GIT_SHA (the commit the
# rows record, for a copy of the tree without git metadata), TEST_TIMEOUT_S (limit of one test,
# default 120, when pytest-timeout is installed), PARTS (the parts to run after install and env,
# by name, comma- or space-separated; default all of them: a rerun of the parts that failed,
# into a fresh OUTDIR, gets the whole time), DRY_RUN=1 (say what each selected part would run, and run nothing). The
# autotune cache is a fresh temporary folder, so every run starts untuned (tune.csv keeps the
# winners).
set -u

ALL_PARTS="tests-gpu bench-quick bench-train train bench-tuned bench-bwd bench-conv bench-pool \
tests-rest bench-compile"
PARTS="install env $(echo "${PARTS:-$ALL_PARTS}" | tr ',' ' ')"  # install and env: always
for name in $PARTS; do
    case " install env $ALL_PARTS " in
        *" $name "*) ;;
        *) echo "gpu_check: unknown part '$name' in PARTS; the parts: $ALL_PARTS" >&2; exit 2 ;;
    esac
done

if [ $# -ne 1 ]; then
    echo "usage: bash reports/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-480}
REPORT_S=25  # kept back from the parts for the closing report
PARTS_S=$(( TOTAL_S - REPORT_S ))
START=$(date +%s)
LOG="$OUTDIR/run.log"
CSV=bench.csv
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15 TRITONCNN_MODE=${TRITONCNN_MODE:-compiled}
TRITONCNN_CACHE_DIR=$(mktemp -d)
export TRITONCNN_CACHE_DIR
: > "$LOG"

exec 3>&1  # the console, while parts write into the log
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&3; }

# part NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the time left; never fails.
part() {
    local name=$1 limit=$2
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    local left=$(( PARTS_S - ($(date +%s) - START) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 15 ]; then
        say "$name: not run, ${left}s left of ${PARTS_S}s"
        return 0
    fi
    if [ "${DRY_RUN:-0}" = 1 ]; then
        say "$name: would run (limit ${limit}s): $*"
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

bench() {  # bench LIMIT_S NAME ARGS...: a bench part whose budget ends before its time limit
    local limit=$1 name=$2
    shift 2
    local left=$(( PARTS_S - ($(date +%s) - START) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    # no new case after the budget; 30 s (a third, for short parts) left for the case in flight
    local budget=$(( limit > 90 ? limit - 30 : limit * 2 / 3 ))
    part "$name" "$limit" $PY -m tritoncnn.cli bench --out "$OUTDIR" --csv "$CSV" \
        --budget-s "$budget" "$@" >> "$LOG" 2>&1
}

say "gpu_check: output in $OUTDIR, ${TOTAL_S}s in all (mode $TRITONCNN_MODE), parts: $PARTS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv >> "$LOG" 2>&1 || say "nvidia-smi: not available"

part install 60 $PY -m pip install --no-deps --no-build-isolation -e . >> "$LOG" 2>&1
part env 30 $PY -m tritoncnn.cli env > "$OUTDIR/env.txt" 2>&1

# Compiling each kernel specialization dominates the compiled tests: spread them over a process
# per CPU core (at most 16), with pytest-xdist or, where it is not installed, tests/shards.py (one
# pytest per shard of the test ids). One line per test as it finishes (-v), so a run stopped at
# its limit still names its results; a test that hangs fails on its own after TEST_TIMEOUT_S
# instead of taking the whole part.
WORKERS=$(nproc 2>/dev/null || echo 8)
if [ "$WORKERS" -gt 16 ]; then WORKERS=16; fi
if $PY -c "import xdist" 2>/dev/null; then PYTEST="$PY -m pytest -n $WORKERS"
else PYTEST="$PY tests/shards.py $WORKERS"; fi
PER_TEST=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout ${TEST_TIMEOUT_S:-120}")
# The gpu-marked tests first (compiled-only checks that no CPU run covers: larger shapes, every
# tuning config against the reference); the rest after the report's benchmarks (below). Both
# into tests.log.
tests() {  # tests NAME LIMIT_S MARK
    part "$1" "$2" bash -c "set -o pipefail; $PYTEST -v --tb=short $PER_TEST \
        -m '$3' --maxfail=25 -p no:cacheprovider -rfE 2>&1 | tee -a '$OUTDIR/tests.log' \
        | tail -n 30"
}
tests tests-gpu 80 gpu

# The parts run in this order, which puts what the report needs first when time runs short:
# the GPU tests, the ceilings and quick layers, the training benchmark and training curves, then
# tuning, the fuller suites, the rest of the tests and torch.compile.
# Ceilings, a few layers of each suite, bf16, channels_last, forward and forward+backward,
# tritoncnn (heuristic configs: nothing is tuned yet) and cuDNN.
bench 60 bench-quick --quick --no-train
# A vgg11 training step (32x32, batch 256, bf16 autocast) on both backends: time, images/s,
# memory; run eagerly and replayed from a CUDA graph (the GPU's time without launch overhead).
bench 55 bench-train --no-ceilings --suite Train --train-models vgg11 --dtype bf16 --train-steps 10 \
    --train-graphs
# tritoncnn train's default run (the digits, both backends) for the report's training curves:
# steps replayed from CUDA graphs, or eagerly when that fails
TRAIN="$PY -m tritoncnn.cli train --epochs 3 --out $OUTDIR/train --no-progress"
part train 45 bash -c "$TRAIN --cuda-graphs >> '$LOG' 2>&1 || \
    { echo 'train --cuda-graphs failed: eager steps' >> '$LOG'; $TRAIN >> '$LOG' 2>&1; }"

# The same layers' tritoncnn kernels tuned first (compiled in parallel, then timed; winners to the
# cache, tables to tune.csv): rows marked configs=tuned, reported as "tritoncnn (tuned)".
bench 70 bench-tuned --no-ceilings --no-train --quick --impl tritoncnn --tune
# The conv backward (dX and dW) of two large VGG-16 layers, tuned: its configs' times against
# the heuristic's and cuDNN's say whether the backward kernels lose to cuDNN by their configs.
bench 60 bench-bwd --no-ceilings --no-train --suite VGG16_224_N64 --layers conv3_2,conv4_3 \
    --ops conv_relu --dtype bf16 --layout channels_last --direction backward \
    --impl tritoncnn,cudnn --tune
# The VGG-16 and CIFAR layers in bf16 and TF32 against cuDNN (the kernel work's headline cases).
bench 60 bench-conv --no-ceilings --suite VGG16_224_N64,ResNet9_CIFAR_N512 --ops conv_relu,conv_relu_pool \
    --dtype bf16,tf32 --layout channels_last --direction forward,forward+backward --impl tritoncnn,cudnn
# Large max-pools: both layouts, bf16 and fp32, against F.max_pool2d.
bench 35 bench-pool --no-ceilings --suite Pool --dtype bf16,fp32 \
    --direction forward,forward+backward --impl tritoncnn,cudnn
# The rest of the test suite compiled (the CPU tests' algorithms on the real compiler), in the
# time the report's benchmarks left: every benchmark row also records its error against a
# reference.
tests tests-rest 90 "not gpu"

# torch.compile(mode="max-autotune") on the quick layers (its autotuning is slow: few cases), when
# the parts before it left the time.
bench 50 bench-compile --no-ceilings --no-train --quick --impl compile --direction forward

LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
if [ -s "$OUTDIR/$CSV" ] && [ "$LEFT" -ge 10 ]; then
    REPORT_DIR=$(mktemp -d)
    # in the time kept back for it (REPORT_S) and whatever the parts left: the summary is what
    # the console shows last
    timeout -k 3 "$(( LEFT > 40 ? 40 : LEFT - 3 ))" $PY -m tritoncnn.cli report \
        --results "$OUTDIR/$CSV" --out "$REPORT_DIR/REPORT.md" >> "$LOG" 2>&1 || say "report: failed"
    if [ -f "$REPORT_DIR/REPORT.md" ]; then
        # the summary tables (ceilings, geometric means, failures), not the per-layer ones
        awk '/^### /{keep = ($0 ~ /ceilings|Geometric|Skipped/)} keep' "$REPORT_DIR/REPORT.md" \
            > "$OUTDIR/summary.md"
        cat "$OUTDIR/summary.md"
    fi
fi
say "gpu_check: done; files: $(ls "$OUTDIR" | tr '\n' ' ')"
exit 0
