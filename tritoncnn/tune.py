"""``tritoncnn tune``: tune every kernel launch of a model ahead of training.

Shapes come from the model itself: forward hooks on its ``nn.Conv2d`` / ``nn.MaxPool2d`` /
``nn.Linear`` layers record their inputs during one forward pass on the meta device (no memory, no
GPU), and each conv layer yields its forward, dX and dW kernels (no dX for a layer that reads the
model's input), each max-pool its forward and backward kernels. A Linear layer runs on the conv
kernels as a 1x1 convolution over a (B, in_features, 1, 1) map (``kernels.linear``). Conv kernels
always read their operands with the channels innermost (NCHW ones through channels_last copies),
so their entries are "nhwc" whatever ``--layout`` says; it sets the max-pools'. Shapes that share
a cache entry (same bucketed key) are tuned once.

On a GPU, the model is also run once forward and backward on tritoncnn's kernels with every
``get_config`` call recorded; when that works, the recorded launches (fused kernels included) are
what gets tuned. ``--dry-run`` lists the shapes and how many configs each would try, on any machine.

The defaults are ``tritoncnn train``'s on a GPU (:mod:`tritoncnn.defaults`), so that what is tuned
is what training looks up (cache entries are keyed by kernel, dtype, layout and the shape with the
batch bucketed): batch 32, fp32, channels_last, and, with neither ``--model`` nor ``--spec``,
train's default model on its default data (the digits, 1x8x8). For another run pass the same
``--model``/``--spec``, ``--batch-size`` (per process under torchrun: the global batch over the
number of processes), ``--dtype``, ``--layout`` and, for a spec, the data's image shape as
``--input-shape``. ``fp32`` tunes IEEE float32 launches, ``tf32`` the TF32 ones: each has cache
entries of its own.

This command lives beside the other commands rather than in ``tritoncnn.autotune``: it builds
models (``tritoncnn.models``), and the tuner, its spaces and its cache import nothing from them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
import time
import warnings
from typing import Iterable

import torch
from torch import nn

from tritoncnn import _runtime, defaults
from tritoncnn.autotune import cache as _cache
from tritoncnn.autotune import spaces, tuner

HELP = "autotune every kernel of a model for this GPU and store the winners in the tuning cache"

DTYPES = defaults.DTYPES
DEFAULT_INPUT = (3, 224, 224)  # a model that does not say
SPEC_INPUT = (3, 32, 32)  # tritoncnn.models.build's default
TRAIN_DEFAULT_INPUT = defaults.DATA_INPUT_SHAPE
# --layout names -> the tuning cache's layout keys
_CACHE_LAYOUT = {"channels_last": "nhwc", "nhwc": "nhwc", "nchw": "nchw"}


def _shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def layout_name(cache_layout: str) -> str:
    """The command-line name of a cache layout key."""
    return "channels_last" if cache_layout == "nhwc" else cache_layout


def resolve_defaults(args) -> None:
    """Fill in what the command line left open: the layout (as the cache's key, nhwc or nchw),
    and tritoncnn train's default model when neither --model nor --spec is given."""
    if args.layout is True or args.layout is None:
        args.layout = "nhwc"
    elif args.layout is False:
        args.layout = "nchw"
    else:
        args.layout = _CACHE_LAYOUT[args.layout]
    if not args.model and not args.spec:
        args.spec = defaults.SPEC
        if not args.input_shape:
            args.input_shape = _shape_text(TRAIN_DEFAULT_INPUT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a model of the zoo (tritoncnn.models), e.g. vgg16")
    which.add_argument("--spec", help="a model spec string (tritoncnn.models.build); with neither "
                                      f"--model nor --spec: tritoncnn train's default "
                                      f"{defaults.SPEC!r} at {_shape_text(TRAIN_DEFAULT_INPUT)}")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                        help=f"batch size per process (default {defaults.BATCH_SIZE}, as "
                             "tritoncnn train)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=defaults.DTYPE,
                        help=f"{defaults.DTYPE_HELP}; default {defaults.DTYPE}, as tritoncnn "
                             "train")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--layout", choices=("channels_last", "nchw", "nhwc"), default=None,
                        metavar="{channels_last,nchw}",
                        help="activations in channels_last or nchw; default channels_last, as "
                             "tritoncnn train on a GPU")
    layout.add_argument("--channels-last", dest="layout", action=argparse.BooleanOptionalAction,
                        default=None, help="the same as --layout channels_last / nchw")
    parser.add_argument("--input-shape", default=None, metavar="CxHxW",
                        help="one input image, e.g. 3x224x224 (default: the model's own; "
                             "3x32x32 for a spec)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the shapes and how many configs each would try; time nothing")
    parser.add_argument("--out", default=None, metavar="CSV",
                        help="where to write every measurement "
                             "(default tune_<model>_<dtype>_<layout>_b<batch>.csv)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


# Shapes ------------------------------------------------------------------------------------------

def collect_layers(model: nn.Module, input_shape: Iterable[int], batch_size: int,
                   device: str = "meta") -> list[dict]:
    """Every Conv2d / MaxPool2d / Linear call of one forward pass, in order.

    Each record: ``name``, ``type`` ("conv", "pool", "linear"), ``input`` shape, the layer's
    arguments, and ``first`` (the layer reads the model's input, so it needs no input gradient).
    The model is moved to ``device`` (meta by default: shapes only, nothing computed).
    """
    model = model.to(device)
    x = torch.zeros((batch_size, *input_shape), device=device)
    records: list[dict] = []

    def hook(module, args, _output, name):
        inp = args[0] if args else None
        if not isinstance(inp, torch.Tensor):
            return
        rec = dict(name=name, input=tuple(inp.shape), first=inp is x)
        if isinstance(module, nn.Conv2d):
            rec.update(type="conv", weight=tuple(module.weight.shape), stride=module.stride,
                       padding=module.padding, dilation=module.dilation, groups=module.groups)
        elif isinstance(module, nn.MaxPool2d):
            rec.update(type="pool", kernel_size=module.kernel_size, stride=module.stride,
                       padding=module.padding, dilation=module.dilation, ceil_mode=module.ceil_mode)
        else:
            rec.update(type="linear", weight=tuple(module.weight.shape))
        records.append(rec)

    handles = [m.register_forward_hook(lambda mod, a, o, n=name: hook(mod, a, o, n))
               for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return records


CONV_LAYOUT = "nhwc"  # conv launches read channels-innermost operands whatever the model's format


def layer_kernels(layers: list[dict], dtype: torch.dtype, layout: str) -> list[dict]:
    """The kernel launches of ``layers``, one per cache entry: kernel, shape, dtype, layout, layers
    (names of the layers sharing it), configs (how many candidates survive pruning). ``layout``
    is the max-pools'; conv kernels always run with channels innermost (:data:`CONV_LAYOUT`).
    float32 conv launches are IEEE ones (``ieee`` in their shapes) when
    ``torch.backends.cudnn.allow_tf32`` is off, as on a GPU, and float64 ones always."""
    out: dict[str, dict] = {}
    ieee = dtype == torch.float64 or dtype == torch.float32 and not torch.backends.cudnn.allow_tf32

    def add(kernel, shape, name, layout=layout):
        key = _cache.entry_key(kernel, shape, dtype, layout, device="-")
        if key in out:
            out[key]["layers"].append(name)
        else:
            out[key] = dict(kernel=kernel, shape=shape, dtype=dtype, layout=layout, layers=[name],
                            configs=len(spaces.candidates(kernel, shape, dtype)))

    for rec in layers:
        if rec["type"] in ("conv", "linear"):
            kernels = ["conv_fwd", "conv_dx", "conv_dw"]
            if rec["first"]:
                kernels.remove("conv_dx")  # the model's input needs no gradient
            if rec["type"] == "conv":
                shape = spaces.conv_shape(rec["input"], rec["weight"], rec["stride"],
                                          rec["padding"], rec["dilation"], rec["groups"])
                lay = CONV_LAYOUT
            else:
                out_f, in_f = rec["weight"]
                rows = math.prod(rec["input"][:-1])
                shape = spaces.conv_shape((rows, in_f, 1, 1), (out_f, in_f, 1, 1))
                lay = CONV_LAYOUT
            if ieee:
                shape["ieee"] = 1
            for k in kernels:
                add(k, shape, rec["name"], lay)
        elif rec["type"] == "pool":
            shape = spaces.pool_shape(rec["input"], rec["kernel_size"], rec["stride"],
                                      rec["padding"], rec["dilation"], rec["ceil_mode"])
            for k in ("max_pool_fwd", "max_pool_bwd"):
                add(k, shape, rec["name"])
    return list(out.values())


def recorded_kernels(calls, dtype: torch.dtype, layout: str) -> list[dict]:
    """Like :func:`layer_kernels`, from ``autotune.record_calls`` tuples of a real run."""
    out: dict[str, dict] = {}
    for kernel, shape, dt, lay, heuristic, _ in calls:
        key = _cache.entry_key(kernel, shape, dt, lay, device="-")
        if key in out:
            out[key]["layers"].append(kernel)
            continue
        try:
            n = len(spaces.candidates(kernel, shape, dt))
        except KeyError:
            n = 0
        out[key] = dict(kernel=kernel, shape=shape, dtype=dt, layout=lay, layers=[kernel],
                        configs=n, heuristic=heuristic)
    return list(out.values())


# The model ---------------------------------------------------------------------------------------

def _parse_input_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise SystemExit(f"tritoncnn tune: --input-shape wants CxHxW of positive sizes, e.g. "
                         f"3x32x32, got {text!r}")
    return shape


def _model_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) from a zoo model's config (``in_channels``, ``input_size``), if it has one."""
    config = getattr(model, "config", None)
    c, size = getattr(config, "in_channels", None), getattr(config, "input_size", None)
    if isinstance(c, int) and isinstance(size, int):
        return c, size, size
    if isinstance(c, int) and isinstance(size, (tuple, list)) and len(size) == 2:
        return c, int(size[0]), int(size[1])
    return None


def build_model(args, backend: str) -> nn.Module:
    """The model the arguments name, from tritoncnn.models (imported only here).

    ``backend`` is "torch" (plain torch.nn layers) or "triton" (tritoncnn's kernels). An
    ``--input-shape`` goes to the model as ``in_channels`` and ``input_size``."""
    from tritoncnn import models

    kw = {}
    if args.input_shape:
        c, h, w = _parse_input_shape(args.input_shape)
        kw = dict(in_channels=c, input_size=h if h == w or not args.spec else (h, w))
    if args.spec:
        return models.build(args.spec, backend=backend, **kw)
    return models.get_model(args.model, backend=backend, **kw)


def _input_shape(args, model: nn.Module) -> tuple[int, int, int]:
    if args.input_shape:
        return _parse_input_shape(args.input_shape)
    return _model_input_shape(model) or (SPEC_INPUT if args.spec else DEFAULT_INPUT)


def _shapes_from_hooks(args, dtype) -> tuple[list[dict], list[dict]]:
    """(layers, kernels) of the model, from a forward pass on the meta device."""
    try:
        with torch.device("meta"):
            model = build_model(args, backend="torch")
    except SystemExit:
        raise
    except Exception:  # some initialisers refuse meta tensors: build on the CPU, then move
        model = build_model(args, backend="torch")
    args.input_shape_used = _input_shape(args, model)
    layers = collect_layers(model, args.input_shape_used, args.batch_size)
    return layers, layer_kernels(layers, dtype, args.layout)


def _shapes_from_run(args, dtype) -> list[dict]:
    """The launches of one forward and backward pass on tritoncnn's kernels, recorded."""
    from tritoncnn import autotune

    model = build_model(args, backend="triton").to("cuda", dtype)
    x = torch.randn((args.batch_size, *args.input_shape_used), device="cuda", dtype=dtype)
    if args.layout == "nhwc":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with autotune.record_calls() as calls:
        model(x).float().sum().backward()
    torch.cuda.synchronize()
    return recorded_kernels(calls, dtype, args.layout)


_DEFAULTS = dict(dil_h=1, dil_w=1, groups=1, DH=1, DW=1)


def _show(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items() if _DEFAULTS.get(k) != v)


def _print_plan(kernels: list[dict], layers: list[dict]) -> None:
    import pandas as pd

    rows = [dict(kernel=k["kernel"], layout=k["layout"], shape=_show(k["shape"]),
                 configs=k["configs"], layers=",".join(dict.fromkeys(k["layers"])))
            for k in kernels]
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 60,
                           "display.width", 200):
        print(pd.DataFrame(rows).to_string(index=False) if rows else "(no tunable layers)")
    total = sum(k["configs"] for k in kernels)
    print(f"{len(kernels)} kernel shapes from {len(layers)} layers, {total} configs to time")


# The command -------------------------------------------------------------------------------------

def main(args) -> int:
    if args.batch_size < 1:
        raise SystemExit(f"tritoncnn tune: --batch-size must be at least 1, got {args.batch_size}")
    resolve_defaults(args)
    with defaults.precision(args.dtype):  # fp32: IEEE launches and entries; tf32: TF32 ones
        return _plan_and_tune(args)


def _plan_and_tune(args) -> int:
    dtype = DTYPES[args.dtype]
    name = args.model or "spec"
    try:
        layers, kernels = _shapes_from_hooks(args, dtype)
    except ValueError as err:  # a spec that does not parse or fit the input (SpecError)
        raise SystemExit(f"tritoncnn tune: {err}") from None
    c, h, w = args.input_shape_used
    print(f"{name}: batch {args.batch_size}, input {c}x{h}x{w}, {args.dtype}, "
          f"{layout_name(args.layout)}, {len(layers)} layers")
    if args.dry_run:
        _print_plan(kernels, layers)
        return 0
    if _runtime.INTERPRET:
        print("tritoncnn tune: tuning times compiled kernels and needs a CUDA GPU; this process "
              f"runs Triton interpreted ({_runtime.REASON}). Use --dry-run to list the shapes.",
              file=sys.stderr)
        return 1
    try:
        recorded = _shapes_from_run(args, dtype)
        if recorded:
            kernels = recorded
    except Exception as err:
        warnings.warn(f"running {name} on tritoncnn's kernels failed ({type(err).__name__}: "
                      f"{err}); tuning the shapes its layers imply instead")
    _print_plan(kernels, layers)
    return _tune_all(args, name, kernels)


def _tune_all(args, name: str, kernels: list[dict]) -> int:
    import pandas as pd
    import triton
    from tqdm.auto import tqdm

    store = _cache.default_cache()
    out = args.out or (f"tune_{name}_{args.dtype}_{layout_name(args.layout)}"
                       f"_b{args.batch_size}.csv")

    def write(tables) -> "pd.DataFrame":
        # rewritten after every kernel shape: a run that is stopped keeps what it measured
        results = pd.concat(tables, ignore_index=True)
        results.insert(0, "model", name)
        results["batch_size"] = args.batch_size
        results["gpu"] = _cache.device_id().split("|")[0]
        results["torch"] = torch.__version__
        results["triton"] = triton.__version__
        results["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        results.to_csv(out, index=False)
        return results

    tables, missing, start = [], set(), time.perf_counter()
    with tqdm(total=sum(k["configs"] + 1 for k in kernels), unit="cfg", desc="tuning",
              disable=not getattr(args, "progress", True)) as bar:
        for k in kernels:
            bar.set_postfix_str(f"{k['kernel']} {','.join(dict.fromkeys(k['layers']))[:40]}")
            problem = tuner.make_problem(k["kernel"], k["shape"], k["dtype"], k["layout"],
                                         k.get("heuristic"))
            if problem is None:
                missing.add(k["kernel"])
                bar.update(k["configs"] + 1)
                continue
            table, _ = tuner.tune_and_store(problem, store, progress=bar)
            table.insert(0, "layers", ",".join(dict.fromkeys(k["layers"])))
            tables.append(table)
            write(tables)
            bar.update(max(0, k["configs"] + 1 - len(table)))
    elapsed = time.perf_counter() - start
    if missing:
        print(f"no problem factory registered for {', '.join(sorted(missing))}: not tuned",
              file=sys.stderr)
    if not tables:
        print("nothing was tuned", file=sys.stderr)
        return 1
    results = write(tables)

    best = results[results["best"]].set_index(["kernel", "shape"])["ms"]
    heur = results[results["heuristic"] & results["status"].eq("ok")].set_index(
        ["kernel", "shape"])["ms"]
    speedup = (heur / best).dropna()
    print(f"tuned {len(tables)} kernel shapes in {elapsed:.1f} s; cache {store.path}; table {out}")
    if len(speedup):
        print(f"speed-up over the heuristic config: median {speedup.median():.2f}x, "
              f"max {speedup.max():.2f}x")
    return 0
