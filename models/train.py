"""``tritoncnn train``: train a CNN on tritoncnn kernels beside the same network on torch (cuDNN).

    tritoncnn train                                   # a small CNN on the built-in digits
    tritoncnn train --model vgg11 --data cifar10:~/data/cifar --dtype bf16 --epochs 10
    tritoncnn train --spec "[(CONV3-32-RELU)*2-POOL2]*3-(FC256-RELU)*1-FC10" --data synthetic
    tritoncnn train --out runs/a --resume             # continue a stopped run where it left off
    torchrun --nproc-per-node 2 -m tritoncnn.cli train --model vgg11   # data-parallel (DDP)

With ``--backend both`` (the default) the model is built once under ``--seed``; the triton twin is
that model passed through ``convert()``, so both start from the same weights and see the batches
in the same order (and dropout draws the same numbers). The run ends with a side-by-side table:
final loss, test accuracy, images/s, the first step's seconds and peak memory for each backend.
images/s leaves out the first step of each invocation, whose time includes Triton's JIT
compilation of the kernels (and cuDNN's algorithm search); that step's time is its own row. The
first step of each other batch size (an epoch's last, smaller batch) compiles and searches again,
and is left out too.

``--mode`` says how each step runs; both backends run the same way, so the side-by-side stays
fair, and the summary names the mode:

* ``cuda-graphs`` (``--cuda-graphs``; the default on CUDA, one process): each backend's forward and
  backward are captured in a CUDA graph and replayed for every full batch, so a small model's step
  is no longer bound by the host's kernel launches. The first steps run eagerly on a side stream
  (they compile, autotune and search cuDNN's algorithms: nothing is tuned inside a capture), then
  one step is captured; images/s leaves those steps out too.
* ``compile`` (``--compile``): the model under ``torch.compile``, the triton twin against the cuDNN
  twin. tritoncnn's ops are ``triton_op``s, so Inductor's generated code launches their Triton
  kernels itself. The first step runs eagerly (it compiles the kernels and, with ``--autotune``,
  tunes them: nothing is tuned while tracing), the second traces and compiles; images/s leaves
  both out. CUDA only, one process.
* ``eager`` (the default on the CPU and under torchrun): every step op by op.

In every mode a last, smaller batch of an epoch runs eagerly, and the optimizer step and the fp16
loss scaler stay eager, so the learning-rate schedule and skipped fp16 steps behave exactly as in
eager mode.

``--layout channels_last`` (the default on CUDA; also ``--channels-last``) keeps the weights and
images of both backends in channels_last (NHWC), the layout the kernels are fastest in; on the CPU
the default is ``nchw``. ``--dtype`` takes the names every command takes
(:mod:`tritoncnn.defaults`): ``fp32`` trains in IEEE float32 (TF32 off on both backends), ``tf32`` in float32 on TF32 tensor
cores, ``fp64`` in float64, ``bf16`` and ``fp16`` under ``torch.autocast``.

What ``--out DIR`` receives:

    config.json                   the run's settings (``--resume`` reads them back), the spec
                                  (the default one too) and the model's input, from which
                                  :func:`model_from_config` rebuilds the model, and the device's
                                  name
    steps.csv                     backend, epoch, step, global_step, loss, lr, seconds
    epochs.csv                    backend, epoch, train/test loss and accuracy, images/s (after
                                  the warm-up step), seconds, memory
    summary.csv                   the side-by-side table
    curves.png                    loss and accuracy (%) of both backends, titled with the model,
                                  device and dtype
    activations.png               the trained triton model's activation maps for one test
                                  image, layer by layer, as the lecture draws them
    <backend>/checkpoint.pt       model, optimizer, grad scaler, RNG and data-order state: tensors
                                  and plain values, read back with ``weights_only=True``

A checkpoint is written at the end of every epoch, every ``--save-every`` steps, and when the run
is stopped with Ctrl-C (at the next step boundary; a second Ctrl-C stops at once). ``--resume``
restores the weights, the optimizer, the random number generators and the position in the epoch's
batch order, so an interrupted and resumed run ends with the weights of an uninterrupted one.
A checkpoint that is missing, corrupt, truncated, not a checkpoint of this command or not of this
run's model stops ``--resume`` with one line naming the file; nothing in it can run code.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its share of each batch
(``DistributedSampler``; ``--batch-size`` is the global batch, split evenly) and
``DistributedDataParallel`` averages the gradients: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tritoncnn import defaults

_clock = time.perf_counter  # step timing (tests substitute a fake clock)

HELP = "train a CNN on tritoncnn kernels beside the same network on torch (cuDNN)"

DEFAULT_SPEC = defaults.SPEC  # the default run's model (see tritoncnn.defaults)

BACKENDS = ("triton", "torch")
DTYPES = defaults.DTYPES
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # trained under torch.autocast
STEP_FIELDS = ["backend", "epoch", "step", "global_step", "loss", "lr", "seconds"]
EPOCH_FIELDS = ["backend", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                "images_per_s", "seconds", "peak_mem_mb"]


@dataclass
class TrainConfig:
    model: str | None = None  # a zoo model (lenet5, convnetjs, vgg11, vgg16); None: use spec
    spec: str | None = None  # a spec string (see tritoncnn.models.spec); None: DEFAULT_SPEC
    data: str = defaults.DATA  # digits | mnist:DIR | cifar10:DIR | synthetic[:N]
    input_size: int | None = None  # None: the zoo model's default, or the data's own size
    width: float | None = None  # zoo models' width multiplier; None: the model's default
    epochs: int = 2
    batch_size: int = defaults.BATCH_SIZE  # the global batch: split across torchrun processes
    lr: float = 0.1  # peak learning rate
    schedule: str = "cosine"  # cosine: decay to 0 over the run, step by step; constant
    momentum: float = 0.9
    weight_decay: float = 0.0
    dtype: str = defaults.DTYPE  # fp32 (IEEE), tf32, fp64, or bf16 / fp16 under autocast
    backend: str = "both"  # triton | torch | both
    seed: int = 0
    out: str = "runs/train"
    resume: bool = False
    autotune: bool = False  # tune kernel configs per shape (sets TRITONCNN_AUTOTUNE=1)
    device: str = defaults.DEVICE  # auto: cuda when available, else cpu
    channels_last: bool | None = None  # model and images in channels_last; None: on CUDA only
    save_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    stop_after: int = 0  # stop, as Ctrl-C would, after N steps of this invocation (0: never)
    mode: str | None = None  # eager | cuda-graphs | compile; None: cuda-graphs on CUDA, else eager
    progress: bool = True  # tqdm progress bars


_FIELDS = frozenset(f.name for f in fields(TrainConfig))

# Settings a resumed run must share with the run it continues (epochs may grow).
_MUST_MATCH = ("model", "spec", "data", "input_size", "width", "batch_size", "lr", "schedule",
               "momentum", "weight_decay", "dtype", "backend", "seed", "channels_last", "mode")

#: how a step runs (see the module's docstring)
MODES = ("eager", "cuda-graphs", "compile")


# --------------------------------------------------------------------------------------------
# command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .data import DATA_HELP
    from .zoo import MODELS

    d = TrainConfig()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[1]
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", choices=sorted(MODELS), default=None,
                      help="a model from the zoo")
    what.add_argument("--spec", default=None,
                      help=f"a CNN as a spec string (default {DEFAULT_SPEC!r}); see "
                           "tritoncnn.models.spec for the grammar")
    a = parser.add_argument
    a("--data", default=None, help=f"{DATA_HELP} (default {d.data})")
    a("--input-size", type=int, default=None,
      help="image size fed to the model (default: the zoo model's, or the data's own)")
    a("--width", type=float, default=None, help="channel width multiplier of zoo models")
    a("--epochs", type=int, default=None, help=f"default {d.epochs}")
    a("--batch-size", type=int, default=None,
      help=f"global batch size (default {d.batch_size}); split across torchrun processes")
    a("--lr", type=float, default=None, help=f"SGD learning rate (default {d.lr})")
    a("--schedule", choices=("cosine", "constant"), default=None,
      help="learning-rate schedule (default cosine: from --lr down to 0 over all steps)")
    a("--momentum", type=float, default=None, help=f"SGD momentum (default {d.momentum})")
    a("--weight-decay", type=float, default=None, help=f"default {d.weight_decay}")
    a("--dtype", choices=tuple(DTYPES), default=None,
      help=f"{defaults.DTYPE_HELP}; bf16 and fp16 train under torch.autocast (default "
           f"{d.dtype})")
    a("--backend", choices=(*BACKENDS, "both"), default=None,
      help="tritoncnn kernels, plain torch (cuDNN on a GPU), or both side by side (default)")
    a("--seed", type=int, default=None, help=f"default {d.seed}")
    a("--out", default=None,
      help=f"output folder (default {d.out}): the CSVs, curves.png, checkpoints and, when the "
           "triton backend trains, activations.png (its activation maps, layer by layer, for "
           "one test image)")
    a("--resume", action="store_true", default=None,
      help="continue the run in --out from its checkpoints (its settings are read back)")
    a("--autotune", action="store_true", default=None,
      help="autotune the kernels' configs per layer shape (TRITONCNN_AUTOTUNE=1)")
    a("--device", default=None, help="auto (default: cuda when there is one), cpu, cuda or cuda:N")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--layout", choices=defaults.LAYOUTS, default=None,
                        help="memory format of the weights and images of both backends: "
                             "channels_last (NHWC, the kernels' fast path; default on CUDA) or "
                             "nchw (default on the CPU)")
    layout.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="the same as --layout channels_last / nchw")
    a("--save-every", type=int, default=None, metavar="STEPS",
      help="also checkpoint every STEPS steps (default: at each epoch's end only)")
    a("--stop-after", type=int, default=None, metavar="STEPS",
      help="stop after STEPS steps as Ctrl-C would (checkpoint, then --resume continues)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--mode", choices=MODES, default=None,
                      help="how each step runs, on both backends: eager, cuda-graphs (each full "
                           "batch's forward+backward replayed from a CUDA graph) or compile "
                           "(the model under torch.compile); default cuda-graphs on CUDA in one "
                           "process, else eager")
    mode.add_argument("--cuda-graphs", dest="mode", action="store_const", const="cuda-graphs",
                      help="the same as --mode cuda-graphs (CUDA only, not under torchrun)")
    mode.add_argument("--compile", dest="mode", action="store_const", const="compile",
                      help="the same as --mode compile (CUDA only, not under torchrun)")
    a("--no-progress", dest="progress", action="store_false", default=None,
      help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Settings from the command line; with --resume, unset ones come from the run's config.json."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if getattr(args, "layout", None) is not None:
        given["channels_last"] = args.layout == "channels_last"
    cfg = TrainConfig()
    if given.get("resume"):
        out = Path(given.get("out", cfg.out))
        saved = out / "config.json"
        if not saved.is_file():
            raise SystemExit(f"--resume: {saved} not found; nothing to resume in {out}")
        try:
            stored = json.loads(saved.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--resume: {saved} is not readable JSON ({err})") from None
        if not isinstance(stored, dict):
            raise SystemExit(f"--resume: {saved} holds no run settings")
        if "mode" not in stored and "cuda_graphs" in stored:  # a run from before --mode
            stored["mode"] = "cuda-graphs" if stored["cuda_graphs"] else "eager"
        for key in _MUST_MATCH:
            if key in given and key in stored and given[key] != stored[key]:
                raise SystemExit(
                    f"--resume: the run in {out} was started with --{key.replace('_', '-')} "
                    f"{stored[key]}, not {given[key]}; resume with the same settings"
                )
        cfg = TrainConfig(**{k: v for k, v in stored.items() if k in _FIELDS})
        cfg.stop_after = 0
    for key, value in given.items():
        setattr(cfg, key, value)
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as err:  # SpecError and the data's errors included
        print(f"tritoncnn train: error: {err}", file=sys.stderr)
        return 2
    return 130 if result["stopped"] else 0


# --------------------------------------------------------------------------------------------
# processes and devices

@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return _Dist(world, rank, local)


def _pick_device(cfg: TrainConfig, dist: _Dist) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world > 1:
        name = f"cuda:{dist.local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {cfg.device!r} is not a device this command trains on: "
                         "expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {cfg.device}: torch sees {torch.cuda.device_count()} "
                             "CUDA device(s)")
        if device.index is None:  # torch.cuda.set_device refuses a device without an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if "triton" in _backends(cfg):
        from tritoncnn import _runtime

        if device.type != _runtime.device_type():
            how = "interpreted (CPU tensors)" if _runtime.INTERPRET else "compiled (CUDA tensors)"
            raise ValueError(
                f"tritoncnn kernels run {how} in this process ({_runtime.REASON}), but --device "
                f"is {device}; choose --device {_runtime.device_type()} or --backend torch"
            )
    return device


def _backends(cfg: TrainConfig) -> tuple[str, ...]:
    if cfg.backend == "both":
        return BACKENDS
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend must be triton, torch or both, got {cfg.backend!r}")
    return (cfg.backend,)


class _PeakMemory:
    """Peak memory while one backend trains: CUDA bytes allocated, or the process's peak RSS on
    the CPU (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda max allocated" if device.type == "cuda" else "process peak RSS"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# model and data

def build_model(cfg: TrainConfig, in_channels: int, input_size: int, num_classes: int) -> nn.Module:
    """The plain torch.nn model the config names (the caller seeds)."""
    from .spec import build
    from .zoo import get_model

    if cfg.model:
        kw = {"in_channels": in_channels, "input_size": input_size, "num_classes": num_classes}
        if cfg.width is not None:
            kw["width"] = cfg.width
        return get_model(cfg.model, backend="torch", **kw)
    if cfg.width is not None:
        raise ValueError("--width applies to zoo models (--model); write the widths into --spec")
    return build(cfg.spec or DEFAULT_SPEC, backend="torch", in_channels=in_channels,
                 input_size=input_size)


def _model_input_size(cfg: TrainConfig) -> int | None:
    if cfg.input_size is not None:
        return cfg.input_size
    if cfg.model:
        from . import zoo

        configs = {"lenet5": zoo.LeNet5Config, "convnetjs": zoo.ConvNetJSConfig,
                   "convnetjs_cifar10": zoo.ConvNetJSConfig, "vgg11": zoo.VGGConfig,
                   "vgg16": zoo.VGGConfig}
        return configs[cfg.model]().input_size
    return None  # a spec takes the data at its own size


# --------------------------------------------------------------------------------------------
# files

def _write_rows(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        if new:
            w.writeheader()
        w.writerows(rows)


def _truncate_rows(path: Path, backend: str, key: str, limit: float) -> None:
    """Drop ``backend``'s rows whose ``key`` passed ``limit``: work the checkpoint does not hold
    and the resumed run does again."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = reader.fieldnames or []
        rows = [r for r in reader if r["backend"] != backend or float(r[key]) <= limit]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# A checkpoint is a dict of tensors and plain Python values only, so that it loads with
# torch.load(weights_only=True), which runs no code from the file (PyTorch's default load, too).
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "progress", "rng", "backend", "config")


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_error(err: BaseException) -> str:
    """The gist of torch.load's error, in one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # the first line is PyTorch's advice to load with weights_only=False: never here
        detail = next((line for line in lines[1:]
                       if not line.startswith("Check the documentation")), "")
        return f"it needs code to load, which is refused: {_one_line(detail)}"
    return f"{type(err).__name__}: {_one_line(lines[0].split('. ')[0] if lines else '')}"


def load_checkpoint(path: Path, backend: str) -> dict:
    """``backend``'s checkpoint at ``path``, loaded with ``weights_only=True``; a ValueError of
    one line, naming the file, when it is missing, corrupt, truncated or not such a checkpoint."""
    if not path.is_file():
        raise ValueError(f"--resume: {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (zip, pickle and refused-global errors alike)
        raise ValueError(f"--resume: {path} is not a readable checkpoint "
                         f"({_load_error(err)})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"--resume: {path} is not a tritoncnn train checkpoint (no "
                         f"{', '.join(map(repr, missing))})")
    if ckpt["backend"] != backend:
        raise ValueError(f"--resume: {path} holds the {ckpt['backend']!r} backend, not "
                         f"{backend!r}")
    return ckpt


def _rng_state(device: torch.device) -> dict:
    """The random number generators' states, as tensors and plain values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # MT19937: 624 uint32 keys
    version, internal, gauss_next = random.getstate()  # 624 words and an index
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_gauss": [int(has_gauss), float(gauss)],
             "python": torch.tensor(internal, dtype=torch.int64),
             "python_version": int(version), "python_gauss": gauss_next}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    # the setters want CPU tensors, wherever the checkpoint was loaded to
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy"].cpu().numpy().astype(np.uint32)
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), int(has_gauss), float(gauss)))
    random.setstate((int(state["python_version"]),
                     tuple(int(v) for v in state["python"].cpu().tolist()),
                     state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# --------------------------------------------------------------------------------------------
# stopping at a step boundary

class _StopFlag:
    """Ctrl-C asks the loop to stop after the current step; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ntritoncnn train: stopping after this step (Ctrl-C again to stop now)",
              file=sys.stderr)

    @contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._old = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------------------------
# a step replayed from a CUDA graph

class _CudaGraphs:
    """What :class:`_CapturedStep` asks of CUDA (tests on the CPU put a stand-in here)."""

    @staticmethod
    def check(device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"--mode cuda-graphs needs a CUDA device; this run is on {device}")

    @staticmethod
    @contextmanager
    def side_stream(device: torch.device):
        """Work on a side stream, ordered after and before the current stream's work."""
        main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            yield
        main.wait_stream(side)

    @staticmethod
    def capture(fn, device: torch.device):
        """``fn()`` recorded in a CUDA graph, not run: returns (replay, fn's outputs), which
        every replay refills in place."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph.replay, out


class _CapturedStep:
    """``fn(x, y)`` (forward and backward of one batch) replayed from a CUDA graph.

    The first ``warmup`` calls run eagerly on a side stream, as PyTorch's capture recipe asks:
    they compile and autotune the kernels and let cuDNN pick its algorithms. The next call
    captures ``fn`` on static copies of its inputs; from then on a call copies the batch into them
    and replays. The gradients the capture allocated are the parameters' ``.grad`` at every
    replay, even after an eager step (a smaller batch) has put others there. A capture that
    fails (an op that cannot be captured) is warned about once, and every later call runs
    eagerly: the run goes on.
    """

    def __init__(self, fn, params, device: torch.device, warmup: int = 3,
                 cuda=_CudaGraphs) -> None:
        self.fn, self.params, self.device = fn, list(params), device
        self.warmup, self.cuda = warmup, cuda
        self.calls = 0
        self.failed: str | None = None  # why the capture failed, if it did
        self._replay = None

    @property
    def warming(self) -> bool:
        """Whether the next call still runs eagerly or captures (its time is not a step's)."""
        return self._replay is None and self.failed is None

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        self.calls += 1
        if self.failed is not None:
            return self.fn(x, y)
        if self.calls <= self.warmup:
            with self.cuda.side_stream(self.device):
                return self.fn(x, y)
        if self._replay is None:
            # clone keeps x's memory format (channels_last stays channels_last)
            self._x, self._y = x.clone(), y.clone()
            try:
                self._replay, self._out = self.cuda.capture(lambda: self.fn(self._x, self._y),
                                                            self.device)
            except Exception as err:  # noqa: BLE001 (any capture failure: train on, eagerly)
                self.failed = f"{type(err).__name__}: {err}"
                warnings.warn(f"tritoncnn train --cuda-graphs: capturing the step failed "
                              f"({self.failed}); training goes on with eager steps",
                              RuntimeWarning, stacklevel=2)
                return self.fn(x, y)
            self._grads = [p.grad for p in self.params]
        else:
            self._x.copy_(x)
            self._y.copy_(y)
            for p, g in zip(self.params, self._grads):
                p.grad = g
        self._replay()
        return self._out


# --------------------------------------------------------------------------------------------
# a step under torch.compile

class _Compiler:
    """What :class:`_CompiledStep` asks of torch.compile (tests on the CPU put a stand-in here)."""

    @staticmethod
    def check(device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"--mode compile needs a CUDA device (Inductor compiles tritoncnn's "
                             f"kernels for the GPU); this run is on {device}")

    @staticmethod
    def compile(module: nn.Module):
        # static shapes: the ops' host code looks its configs up per shape while tracing, and a
        # smaller last batch runs eagerly instead of compiling again
        return torch.compile(module, dynamic=False)


class _CompiledStep:
    """``compiled(x, y)`` (forward and backward of one batch through the compiled model), after
    ``warmup`` eager calls of ``eager(x, y)``: they compile the kernels, autotune them (which
    cannot happen while tracing) and let cuDNN pick its algorithms. The first compiled call
    traces and compiles; :attr:`warming` is True until it has run."""

    def __init__(self, eager, compiled, warmup: int = 1) -> None:
        self.eager, self.compiled, self.warmup = eager, compiled, warmup
        self.calls = 0

    @property
    def warming(self) -> bool:
        """Whether the next call is an eager warm-up or the compiling one (its time is not a
        step's)."""
        return self.calls <= self.warmup

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        self.calls += 1
        return (self.eager if self.calls <= self.warmup else self.compiled)(x, y)


def resolve_mode(cfg: TrainConfig, device: torch.device, world: int = 1) -> str:
    """The mode a run on ``device`` in ``world`` processes trains in: ``cfg.mode``, checked, or
    the default (cuda-graphs on CUDA in one process, else eager). A ValueError names the option
    and why it cannot work."""
    mode = cfg.mode
    if mode is None:
        return "cuda-graphs" if device.type == "cuda" and world == 1 else "eager"
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "eager" and world > 1:
        raise ValueError(f"--mode {mode} is not supported under torchrun (DDP); run with "
                         "--mode eager")
    if mode == "cuda-graphs":
        _CudaGraphs.check(device)
    elif mode == "compile":
        _Compiler.check(device)
    return mode


# --------------------------------------------------------------------------------------------
# one backend

def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total``: a function of the step alone,
    so a resumed run follows the same schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ValueError(f"schedule must be cosine or constant, got {cfg.schedule!r}")


def _all_reduce(values: list[float], dist: _Dist, device: torch.device) -> list[float]:
    if dist.world == 1:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    tdist.all_reduce(t)
    return t.tolist()


def _rate(timed: list, everything: list) -> float:
    """Images per second of the timed steps ([images, seconds]); of every step when none were
    timed (a run of a single step)."""
    images, seconds = timed if timed[1] > 0 else everything
    return images / max(seconds, 1e-9)


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" if cfg.channels_last is None else bool(cfg.channels_last)


def _layout(cfg: TrainConfig, device: torch.device) -> str:
    return "channels_last" if _channels_last(cfg, device) else "nchw"


@dataclass
class _Progress:
    """Where one backend's training stands: saved in its checkpoint (plain numbers and lists, so
    ``torch.load(weights_only=True)`` reads it back) and restored by ``--resume``."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the current epoch
    global_step: int = 0
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # epoch's loss, correct, images
    epoch_time: float = 0.0
    train_time: float = 0.0
    images: int = 0
    history: list = field(default_factory=list)  # one epochs.csv row per epoch
    peak_mem_mb: float = 0.0
    # [images, seconds] of the steps that were not a warm-up: the first step of an invocation
    # and of each new batch size compiles the kernels (Triton's JIT, cuDNN's algorithm search),
    # as do the CUDA graph warm-up and capture steps; first_step_s is that first step's time
    timed: list = field(default_factory=lambda: [0, 0.0])
    epoch_timed: list = field(default_factory=lambda: [0, 0.0])
    first_step_s: float | None = None

    def end_epoch(self) -> None:
        self.epoch += 1
        self.step = 0
        self.sums, self.epoch_time, self.epoch_timed = [0.0, 0.0, 0.0], 0.0, [0, 0.0]


class _BackendRun:
    """Trains one backend's model to ``cfg.epochs`` (or until stopped), writing its rows of
    steps.csv and epochs.csv and its checkpoint; :meth:`train` returns its results."""

    def __init__(self, name: str, model: nn.Module, data, cfg: TrainConfig,
                 device: torch.device, dist: _Dist, out: Path, stop: _StopFlag,
                 checkpoint: dict | None) -> None:
        self.name, self.data, self.cfg, self.device, self.dist, self.stop = (
            name, data, cfg, device, dist, stop)
        self.ckpt_path = out / name / "checkpoint.pt"
        self.steps_csv, self.epochs_csv = out / "steps.csv", out / "epochs.csv"
        self.amp_dtype = _AMP_DTYPES.get(cfg.dtype)  # None: no autocast
        self.fmt = torch.channels_last if _channels_last(cfg, device) else torch.contiguous_format
        self.model = model.to(device, memory_format=self.fmt)
        self.input_dtype = next(model.parameters()).dtype
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
        self.progress = _Progress()
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            if cfg.resume and dist.main:  # rows of a start that never reached a checkpoint
                _truncate_rows(self.steps_csv, name, "global_step", 0)
                _truncate_rows(self.epochs_csv, name, "epoch", 0)
            # dropout and anything else random: the same numbers for each backend
            torch.manual_seed(cfg.seed + 1)
            np.random.seed(cfg.seed + 1)
            random.seed(cfg.seed + 1)
        self.net: nn.Module = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.batch_size % dist.world:
            raise ValueError(f"--batch-size {cfg.batch_size} does not split evenly over "
                             f"{dist.world} processes")
        self.local_batch = cfg.batch_size // dist.world
        from torch.utils.data import DistributedSampler

        self.sampler = DistributedSampler(range(len(data.y_train)), num_replicas=dist.world,
                                          rank=dist.rank, shuffle=True, seed=cfg.seed,
                                          drop_last=False)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.local_batch)
        # the step of a full batch, in cuda-graphs and compile modes (None: eager)
        self.fast = None
        if cfg.mode == "cuda-graphs":
            self.fast = _CapturedStep(self.forward_backward, model.parameters(), device,
                                      cuda=_CudaGraphs)
        elif cfg.mode == "compile":
            compiled = _Compiler.compile(self.net)
            self.fast = _CompiledStep(self.forward_backward,
                                      lambda x, y: self.forward_backward(x, y, compiled))
        self.memory = _PeakMemory(device)
        self.done_steps = 0  # in this invocation
        self.batch_sizes: set[int] = set()  # seen in this invocation: a new one compiles

    # -- checkpoints ------------------------------------------------------------------------

    def _restore(self, ckpt: dict) -> None:
        try:
            # on the CPU: load_state_dict copies weights and optimizer state to the model's
            # device, and the RNG states must stay CPU tensors
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.progress = _Progress(**ckpt["progress"])
            rngs = ckpt["rng"]
            _set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0],
                           self.device)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:
            raise ValueError(f"--resume: {self.ckpt_path} does not fit this run "
                             f"({_one_line(err)})") from None
        if self.dist.main:
            _truncate_rows(self.steps_csv, self.name, "global_step", self.progress.global_step)
            _truncate_rows(self.epochs_csv, self.name, "epoch", self.progress.epoch)

    def checkpoint(self) -> None:
        rng = [_rng_state(self.device)]
        if self.dist.world > 1:
            import torch.distributed as tdist

            rng = [None] * self.dist.world
            tdist.all_gather_object(rng, _rng_state(self.device))
        if self.dist.main:
            self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic({"model": self.model.state_dict(),
                          "optimizer": self.optimizer.state_dict(),
                          "scaler": self.scaler.state_dict(), "progress": asdict(self.progress),
                          "rng": rng, "backend": self.name, "config": asdict(self.cfg)},
                         self.ckpt_path)

    # -- steps ------------------------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        # no cast-weight cache under a graph: PyTorch's capture recipe for autocast
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              cache_enabled=self.cfg.mode != "cuda-graphs")

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor, net: nn.Module | None = None):
        """One batch's logits and loss through ``net`` (default the model itself), its
        gradients in the parameters' .grad."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = (net or self.net)(xb)  # (B, classes)
        loss = F.cross_entropy(logits.float(), yb)
        self.scaler.scale(loss).backward()
        return logits, loss

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = x.to(self.device, self.input_dtype, non_blocking=True,
                  memory_format=self.fmt)  # (B, C, H, W)
        return xb, y.to(self.device, non_blocking=True)  # (B,)

    def step(self, idx: torch.Tensor, epoch: int) -> float:
        """Train on the images ``idx``; returns the batch's loss (over every process)."""
        p = self.progress
        xb, yb = self._batch(self.data.x_train[idx], self.data.y_train[idx])
        lr = _lr_at(self.cfg, p.global_step, self.cfg.epochs * self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        full = self.fast is not None and len(idx) == self.local_batch
        warming = (self.done_steps == 0 or len(idx) not in self.batch_sizes
                   or (full and self.fast.warming))
        self.batch_sizes.add(len(idx))
        t0 = _clock()
        if full:
            logits, loss = self.fast(xb, yb)
        else:
            logits, loss = self.forward_backward(xb, yb)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss_v = loss.item()  # waits for the step to finish
        correct = (logits.detach().argmax(1) == yb).sum().item()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = _clock() - t0
        loss_g, correct_g, count_g = _all_reduce([loss_v * len(yb), correct, len(yb)],
                                                 self.dist, self.device)
        p.sums = [a + b for a, b in zip(p.sums, (loss_g, correct_g, count_g))]
        p.epoch_time += dt
        p.train_time += dt
        p.images += int(count_g)
        if not warming:
            p.timed = [p.timed[0] + int(count_g), p.timed[1] + dt]
            p.epoch_timed = [p.epoch_timed[0] + int(count_g), p.epoch_timed[1] + dt]
        elif p.first_step_s is None:
            p.first_step_s = dt
        p.global_step += 1
        p.step += 1
        self.done_steps += 1
        if self.dist.main:
            _write_rows(self.steps_csv, STEP_FIELDS, [{
                "backend": self.name, "epoch": epoch + 1, "step": p.step,
                "global_step": p.global_step, "loss": loss_g / count_g, "lr": lr,
                "seconds": round(p.train_time, 4)}])
        return loss_g / count_g

    # -- epochs -----------------------------------------------------------------------------

    def _want_stop(self) -> bool:
        want = self.stop.requested or bool(self.cfg.stop_after
                                           and self.done_steps >= self.cfg.stop_after)
        if self.dist.world > 1:
            want = bool(_all_reduce([float(want)], self.dist, self.device)[0])
        return want

    def epoch(self, epoch: int) -> bool:
        """The rest of epoch ``epoch`` (0-based); returns True when stopped inside it."""
        from tqdm.auto import tqdm

        p, cfg = self.progress, self.cfg
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long)  # this process's share
        bar = tqdm(total=self.steps_per_epoch, initial=p.step, leave=False, dynamic_ncols=True,
                   desc=f"{self.name:>6} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and self.dist.main), file=sys.stderr)
        with bar:
            for step in range(p.step, self.steps_per_epoch):
                loss = self.step(order[step * self.local_batch:(step + 1) * self.local_batch],
                                 epoch)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
                if self._want_stop() and p.step < self.steps_per_epoch:
                    return True
                if cfg.save_every and p.global_step % cfg.save_every == 0:
                    self.checkpoint()
        return False

    def end_epoch(self, epoch: int) -> None:
        """Test metrics, epochs.csv's row and a checkpoint at the end of epoch ``epoch``."""
        p = self.progress
        test_loss, test_acc = self.evaluate()
        loss_sum, correct_sum, count = p.sums
        p.peak_mem_mb = max(p.peak_mem_mb, self.memory.peak_mb())
        row = {"backend": self.name, "epoch": epoch + 1, "train_loss": loss_sum / count,
               "train_acc": correct_sum / count, "test_loss": test_loss, "test_acc": test_acc,
               "images_per_s": _rate(p.epoch_timed, [count, p.epoch_time]),
               "seconds": p.epoch_time, "peak_mem_mb": p.peak_mem_mb}
        p.history.append(row)
        p.end_epoch()
        if self.dist.main:
            _write_rows(self.epochs_csv, EPOCH_FIELDS, [row])
            if self.cfg.progress:
                from tqdm.auto import tqdm

                tqdm.write(f"{self.name:>6} epoch {epoch + 1}/{self.cfg.epochs}: train loss "
                           f"{row['train_loss']:.4f}, acc {row['train_acc']:.1%}; test loss "
                           f"{test_loss:.4f}, acc {test_acc:.1%}; "
                           f"{row['images_per_s']:.0f} images/s", file=sys.stderr)
        self.checkpoint()

    def evaluate(self, batch: int = 256) -> tuple[float, float]:
        """Loss and accuracy on the test images."""
        x, y = self.data.x_test, self.data.y_test
        self.model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(y), batch):
                xb, yb = self._batch(x[i:i + batch], y[i:i + batch])
                with self.autocast():
                    logits = self.model(xb)  # (B, classes)
                loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
                correct += (logits.argmax(1) == yb).sum().item()
        self.model.train()
        n = max(1, len(y))
        return loss_sum / n, correct / n

    def train(self) -> dict:
        self.memory.reset()
        self.net.train()
        stopped = False
        for epoch in range(self.progress.epoch, self.cfg.epochs):
            if self.epoch(epoch):
                stopped = True
                break
            self.end_epoch(epoch)
            if self._want_stop() and epoch + 1 < self.cfg.epochs:
                stopped = True
                break
        if stopped:
            self.progress.peak_mem_mb = max(self.progress.peak_mem_mb, self.memory.peak_mb())
            self.checkpoint()
        return self.results(stopped)

    def results(self, stopped: bool) -> dict:
        p = self.progress
        last = p.history[-1] if p.history else {}
        return {
            "backend": self.name,
            "stopped": stopped,
            "epochs": p.epoch,
            "steps": p.global_step,
            "final_loss": last.get("train_loss", float("nan")),
            "test_loss": last.get("test_loss", float("nan")),
            "test_acc": last.get("test_acc", float("nan")),
            "images_per_s": _rate(p.timed, [p.images, p.train_time]),
            "first_step_s": p.first_step_s if p.first_step_s is not None else float("nan"),
            "train_seconds": p.train_time,
            "peak_mem_mb": p.peak_mem_mb,
            "memory": self.memory.kind,
            "history": p.history,
            "state_dict": {k: v.detach().cpu().clone()
                           for k, v in self.model.state_dict().items()},
        }


# --------------------------------------------------------------------------------------------
# the run

def _check_config(cfg: TrainConfig) -> None:
    """A ValueError naming the first setting that cannot work."""
    _backends(cfg)
    defaults.torch_dtype(cfg.dtype)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"--epochs and --batch-size must be at least 1, got --epochs "
                         f"{cfg.epochs} and --batch-size {cfg.batch_size}")
    if cfg.input_size is not None and cfg.input_size < 1:
        raise ValueError(f"--input-size must be at least 1, got {cfg.input_size}")
    for name in ("lr", "momentum", "weight_decay"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, "
                             f"got {value}")
    if cfg.save_every < 0 or cfg.stop_after < 0:
        raise ValueError("--save-every and --stop-after must be >= 0")
    if cfg.model and cfg.spec:
        raise ValueError("give --model or --spec, not both")
    if cfg.mode is not None and cfg.mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode not in (None, "eager") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"--mode {cfg.mode} is not supported under torchrun (DDP); run with "
                         "--mode eager")


def _prepare_out(cfg: TrainConfig, out: Path) -> None:
    """Make --out, or say in one line why it cannot be written; a fresh run clears it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    if not cfg.resume:
        for f in ("steps.csv", "epochs.csv", "summary.csv", "curves.png", "activations.png"):
            (out / f).unlink(missing_ok=True)
        for b in BACKENDS:
            (out / b / "checkpoint.pt").unlink(missing_ok=True)


def _checkpoints(cfg: TrainConfig, out: Path) -> dict[str, dict | None]:
    """Per backend, the checkpoint --resume continues it from (None: it starts fresh).

    Backends train one after another and each checkpoints when it stops, so a run holds the
    checkpoints of its first backends: a later backend without one had not started. A missing
    first checkpoint, or a gap, means files were lost: resuming would silently start over."""
    backends = _backends(cfg)
    if not cfg.resume:
        return dict.fromkeys(backends)
    found = {b: (out / b / "checkpoint.pt").is_file() for b in backends}
    for i, b in enumerate(backends):
        if not found[b] and (i == 0 or any(found[c] for c in backends[i + 1:])):
            raise ValueError(f"--resume: {out / b / 'checkpoint.pt'} not found; the run in "
                             f"{out} cannot continue without it (start afresh without --resume)")
    return {b: load_checkpoint(out / b / "checkpoint.pt", b) if found[b] else None
            for b in backends}


def _check_fits(checkpoints: dict[str, dict | None], model: nn.Module, out: Path) -> None:
    """A ValueError naming the checkpoint whose weights are not ``model``'s."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, ckpt in checkpoints.items():
        if ckpt is None:
            continue
        got = ckpt["model"]
        have = {k: tuple(v.shape) for k, v in got.items() if isinstance(v, torch.Tensor)} \
            if isinstance(got, dict) else {}
        if have != want:
            odd = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
            raise ValueError(f"--resume: {out / name / 'checkpoint.pt'} does not fit this run's "
                             f"model (weights differ at {', '.join(odd[:3])})")


def _base_model(cfg: TrainConfig, data) -> nn.Module:
    """The plain torch model both backends start from, checked against the data."""
    in_channels, size, _ = data.image_shape
    torch.manual_seed(cfg.seed)
    base = build_model(cfg, in_channels, size, data.num_classes)
    base.eval()  # no dropout draws: the probe must not move the random number generator
    with torch.no_grad():
        probe = base(data.x_train[:2])
    base.train()
    if probe.dim() != 2 or probe.shape[1] != data.num_classes:
        raise ValueError(
            f"the model's output per image has shape {tuple(probe.shape[1:])}, but {data.name} "
            f"has {data.num_classes} classes: end the model with FC{data.num_classes}"
        )
    if cfg.dtype == "fp64":
        base = base.double()
    return base


def _write_config(cfg: TrainConfig, out: Path, device: torch.device, data) -> None:
    """config.json: the settings (what --resume reads back) and what rebuilds the model."""
    from tritoncnn.env import device_name

    saved = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "stop_after")}
    if not cfg.model:
        saved["spec"] = cfg.spec or DEFAULT_SPEC
    in_channels, size, _ = data.image_shape
    saved["model_input"] = {"in_channels": in_channels, "input_size": size,
                            "num_classes": data.num_classes}
    saved["device_name"] = device_name(device)  # what the report's figures name
    (out / "config.json").write_text(json.dumps(saved, indent=2) + "\n")


def model_from_config(config: dict | str | os.PathLike, backend: str = "torch") -> nn.Module:
    """The model of a run, untrained, from its config.json (a path, or the dict read from it);
    a checkpoint's ``model`` state dict loads into it."""
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    from .zoo import to_backend

    cfg = TrainConfig(**{k: v for k, v in config.items() if k in _FIELDS})
    shape = config["model_input"]
    model = build_model(cfg, shape["in_channels"], shape["input_size"], shape["num_classes"])
    if cfg.dtype == "fp64":
        model = model.double()
    return to_backend(model, backend)


def run(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says; returns ``{"results": {backend: ...}, "stopped": bool, ...}``."""
    _check_config(cfg)
    backends = _backends(cfg)
    if cfg.autotune:
        _enable_autotune()
    dist = _init_distributed(cfg.device if cfg.device != "auto" else
                             ("cuda" if torch.cuda.is_available() else "cpu"))
    device = _pick_device(cfg, dist)
    cfg = replace(cfg, mode=resolve_mode(cfg, device, dist.world))  # saved resolved: --resume
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the cuDNN twin at its best, as benchmarks run it
    out = Path(cfg.out)
    checkpoints = _checkpoints(cfg, out)
    if dist.main:
        _prepare_out(cfg, out)
    if "triton" in backends:
        from tritoncnn import _runtime

        _runtime.notice()

    from .data import load_data

    data = load_data(cfg.data, input_size=_model_input_size(cfg), seed=cfg.seed)
    base = _base_model(cfg, data)
    _check_fits(checkpoints, base, out)
    if dist.main:
        _write_config(cfg, out, device, data)
        print(f"tritoncnn train: {_describe(cfg)} on {data} | {', '.join(backends)} on "
              f"{device} | {cfg.dtype}, {_layout(cfg, device)}, {MODE_NAMES[cfg.mode]} | "
              f"{sum(p.numel() for p in base.parameters()):,} parameters | out {out}",
              file=sys.stderr)

    from .zoo import to_backend

    results: dict[str, dict] = {}
    stopped = False
    with _StopFlag().installed() as stop, defaults.precision(cfg.dtype):
        for name in backends:
            model = to_backend(copy.deepcopy(base), name)
            results[name] = _BackendRun(name, model, data, cfg, device, dist, out, stop,
                                        checkpoints.pop(name)).train()
            if results[name]["stopped"]:
                stopped = True
                break

    table = None
    if dist.main:
        if stopped:
            print(f"tritoncnn train: stopped; checkpoint saved. Continue with: tritoncnn train "
                  f"--out {out} --resume", file=sys.stderr)
        else:
            table = _summary(results, out, cfg.mode)
            print(_show_table(table), flush=True)
        _figures(out)
        if "triton" in results and not stopped:
            from .activations import save_training_figure

            save_training_figure(to_backend(copy.deepcopy(base), "triton"),
                                 results["triton"]["state_dict"], data, out, device,
                                 _channels_last(cfg, device))
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return {"results": results, "stopped": stopped, "summary": table, "out": out,
            "device": str(device), "mode": cfg.mode}


def _describe(cfg: TrainConfig) -> str:
    return cfg.model if cfg.model else f"spec {cfg.spec or DEFAULT_SPEC!r}"


def _enable_autotune() -> None:
    from tritoncnn import autotune

    os.environ[autotune.ENV_AUTOTUNE] = "1"
    autotune.enable_autotune()


WEIGHTS_ROW = "max |w_triton - w_torch|"


#: each mode as the printed line and the summary name it
MODE_NAMES = {"eager": "eager", "cuda-graphs": "CUDA graphs", "compile": "torch.compile"}
#: the steps each mode's images/s leaves out
_UNTIMED = {"eager": "the 1st step", "cuda-graphs": "the warm-up and capture steps",
            "compile": "the warm-up and compile steps"}


def _summary(results: dict[str, dict], out: Path, mode: str = "eager"):
    """The side-by-side table (one column per backend), also written to summary.csv; its images/s
    row names the mode. The weights' difference, one number for the pair, sits in the first
    column only."""
    import pandas as pd

    timed = f"{MODE_NAMES[mode]}, after {_UNTIMED[mode]}"
    rows = {
        "final train loss": {b: r["final_loss"] for b, r in results.items()},
        "test loss": {b: r["test_loss"] for b, r in results.items()},
        "test accuracy %": {b: 100 * r["test_acc"] for b, r in results.items()},
        f"images/s ({timed})": {b: r["images_per_s"] for b, r in results.items()},
        "1st step seconds (incl. compile)": {b: r["first_step_s"] for b, r in results.items()},
        "train seconds": {b: r["train_seconds"] for b, r in results.items()},
        f"peak memory MB ({next(iter(results.values()))['memory']})":
            {b: r["peak_mem_mb"] for b, r in results.items()},
    }
    table = pd.DataFrame(rows).T
    if {"triton", "torch"} <= set(results):
        a, b = results["triton"]["state_dict"], results["torch"]["state_dict"]
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        table.loc[WEIGHTS_ROW] = {"triton": diff}
    table.index.name = "metric"
    table.to_csv(out / "summary.csv")
    return table


def _show_table(table) -> str:
    """The summary as printed: no index-name line, and no NaN where a row has one value."""
    return table.rename_axis(None).to_string(float_format=lambda v: f"{v:.4g}", na_rep="")


def _figures(out: Path) -> None:
    """The run's figures, from the files in ``out``."""
    _plot(out)


# the report's colours for the backends: matplotlib's first two, in the order the report
# groups them (alphabetical)
BACKEND_COLORS = {"torch": "C0", "triton": "C1"}


def curves_figure(out: Path):
    """Loss per step and accuracy per epoch of every backend, titled with the run's model,
    device and dtype (from config.json); None when there are no steps yet."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    steps_csv, epochs_csv = out / "steps.csv", out / "epochs.csv"
    if not steps_csv.exists():
        return None
    steps = pd.read_csv(steps_csv)
    epochs = pd.read_csv(epochs_csv) if epochs_csv.exists() else pd.DataFrame()
    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    # the second backend wide and pale under the first: where the twins agree, both show
    styles = {"triton": dict(lw=1.2, zorder=3), "torch": dict(lw=3.5, alpha=0.55, zorder=2)}
    for backend, g in steps.groupby("backend"):
        ax_loss.plot(g["global_step"], g["loss"], label=backend,
                     color=BACKEND_COLORS.get(backend), **styles.get(backend, {}))
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", title="loss", yscale="log")
    ax_loss.legend()
    for backend, g in (epochs.groupby("backend") if len(epochs) else []):
        st = dict(color=BACKEND_COLORS.get(backend), **styles.get(backend, {}))
        ax_acc.plot(g["epoch"], 100 * g["test_acc"], marker="o", label=f"{backend} test", **st)
        ax_acc.plot(g["epoch"], 100 * g["train_acc"], marker=".", label=f"{backend} train",
                    **{**st, "ls": ":"})
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax_acc.xaxis.get_major_locator().set_params(integer=True)
    if len(epochs):
        ax_acc.legend()
    fig.suptitle(_run_title(out))
    fig.tight_layout()
    return fig


def _run_title(out: Path) -> str:
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return str(out)
    model = config.get("model") or config.get("spec") or DEFAULT_SPEC
    device = config.get("device_name") or config.get("device", "")
    return f"{model} | {device} | {config.get('dtype', '')}"


def _plot(out: Path) -> None:
    """curves.png (Agg, no display)."""
    fig = curves_figure(out)
    if fig is not None:
        fig.savefig(out / "curves.png", dpi=110)


if __name__ == "__main__":
    from tritoncnn.cli import main as _cli_main

    sys.exit(_cli_main(["train", *sys.argv[1:]]))
