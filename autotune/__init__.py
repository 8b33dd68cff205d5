"""tritoncnn.autotune: config spaces, the tuner, the persistent per-GPU cache, ``tritoncnn tune``.

Launchers call :func:`get_config` on every launch, with the shape dict that :func:`conv_shape` /
:func:`pool_shape` build for the same layer (``tritoncnn tune`` plans with those, so both must
agree; tests/test_autotune.py checks it)::

    shape = autotune.conv_shape(x.shape, w.shape, stride, padding, dilation, groups)
    cfg = autotune.get_config("conv_fwd", shape, x.dtype, "nhwc", _conv_fwd_heuristic(shape))

and make their kernels tunable by registering a problem factory (details in :mod:`.tuner`)::

    autotune.register_problem("conv_fwd", _conv_fwd_problem)  # (shape, dtype, layout) -> Problem

Nothing is tuned inside a training step unless asked for: ``TRITONCNN_AUTOTUNE=1`` in the
environment, or :func:`enable_autotune`, makes a lookup that misses the cache tune that shape on the
spot (through the kernel's registered factory) and store the winner. Otherwise a miss returns the
heuristic.

Modules: :mod:`.spaces` (config spaces and pruning), :mod:`.tuner` (the tuner and the factory
registry), :mod:`.cache` (the cache file), :mod:`.tune` (the ``tritoncnn tune`` command).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Mapping, NamedTuple

import torch

from tritoncnn import _runtime

from . import cache, spaces, tuner
from .cache import (ConfigCache, bucket_shape, cache_path, default_cache, entry_key,
                    set_default_cache, shape_key)
from .spaces import SPACES, candidates, conv_shape, pool_shape
from .tuner import (Problem, best_config, make_problem, register_problem, tune_and_store,
                    tune_problem)

__all__ = [
    "get_config", "enable_autotune", "autotune_enabled", "record_calls", "Launch",
    "register_problem", "make_problem", "Problem", "tune_problem", "tune_and_store", "best_config",
    "SPACES", "candidates", "conv_shape", "pool_shape",
    "ConfigCache", "default_cache", "set_default_cache", "cache_path", "entry_key", "shape_key",
    "bucket_shape", "INTERPRET", "ENV_AUTOTUNE", "plan_epoch",
]

INTERPRET = _runtime.INTERPRET  # under the interpreter nothing is timed: the heuristic is used
ENV_AUTOTUNE = "TRITONCNN_AUTOTUNE"

_autotune: bool | None = None  # None: follow the environment variable
_tried: set[str] = set()  # keys tuned on first use in this process (winner or not)
_records: list | None = None


def enable_autotune(on: bool = True) -> None:
    """Tune cache misses on first use (what ``TRITONCNN_AUTOTUNE=1`` does); ``train --autotune``."""
    global _autotune
    _autotune = bool(on)
    cache.configs_changed()


def autotune_enabled() -> bool:
    if _autotune is not None:
        return _autotune
    value = os.environ.get(ENV_AUTOTUNE)  # (read per call: a launch asks, so keep it short)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


class Launch(NamedTuple):
    """One ``get_config`` call, as :func:`record_calls` keeps it."""

    kernel: str
    shape: dict
    dtype: torch.dtype
    layout: str
    heuristic: dict
    config: dict  # what get_config returned


@contextlib.contextmanager
def record_calls():
    """Collect every ``get_config`` call made inside the block as a :class:`Launch`: the exact
    launches of a model (``tune`` tunes those), and the configs they got."""
    global _records
    outer, _records = _records, []
    try:
        yield _records
    finally:
        _records = outer


def plan_epoch() -> tuple | None:
    """What the launchers' per-shape prepared launches (``kernels._checks.PlanCache``) rest on:
    they are valid while this stays the same (no entry stored or reloaded, the same cache, the
    same autotune switch). None inside :func:`record_calls`, which must see every lookup: the
    launchers then prepare nothing and look every config up."""
    if _records is not None:
        return None
    return cache.config_epoch(), autotune_enabled()


def get_config(kernel: str, shape: Mapping[str, int], dtype: torch.dtype, layout: str,
               heuristic: Mapping[str, int]) -> dict:
    """The launch configuration for one kernel call.

    ``kernel`` names the kernel ("conv_fwd", "max_pool_fwd", ...), ``shape`` its problem sizes,
    ``layout`` "nchw" or "nhwc". Returns the tuned winner cached for this GPU, Triton version,
    kernel, dtype, layout and bucketed shape, or ``heuristic`` when there is none (and always under
    the interpreter, where nothing is timed).
    """
    if INTERPRET:
        config = dict(heuristic)
    else:
        found = default_cache().lookup(kernel, shape, dtype, layout)
        if found is None:
            found = _missing(kernel, shape, dtype, layout, heuristic)
        if found is None:
            config = dict(heuristic)
        else:  # keys the launcher no longer takes are dropped, keys an entry lacks kept
            config = {k: found.get(k, v) for k, v in heuristic.items()}
            problem = _checked_problem(kernel, found, config)
            if problem is not None:
                _warn_bad_entry(entry_key(kernel, shape, dtype, layout), problem)
                config = dict(heuristic)
    if _records is not None:
        _records.append(Launch(kernel, dict(shape), dtype, layout, dict(heuristic), dict(config)))
    return config


def _missing(kernel: str, shape: Mapping[str, int], dtype: torch.dtype, layout: str,
             heuristic: Mapping[str, int]) -> dict | None:
    """A cache miss: tune it now when asked to (once per entry and process), else None."""
    if not autotune_enabled() or tuner.tuning_now() or tuner.cannot_time_now():
        return None  # (not tried: a later call may tune it)
    key = entry_key(kernel, shape, dtype, layout)
    if key in _tried:
        return None
    _tried.add(key)
    return tuner.tune_on_first_use(kernel, shape, dtype, layout, heuristic, default_cache())


_MAX_STAGES = 8
_warned: set[tuple] = set()  # (entry, problem) already reported in this process
_checked: dict[tuple, tuple] = {}  # (kernel, id of a cached config) -> (that config, problem)


def _checked_problem(kernel: str, found: dict, config: dict) -> str | None:
    """:func:`config_problem` of a cached entry, once per entry object (the cache hands back the
    same dict for every launch of a shape: a dict hit on the per-launch path)."""
    key = (kernel, id(found))
    hit = _checked.get(key)
    if hit is None or hit[0] is not found:
        hit = _checked[key] = (found, config_problem(kernel, config))
    return hit[1]


def config_problem(kernel: str, config: Mapping[str, object]) -> str | None:
    """What makes ``config`` unusable for a launch of ``kernel``, or None: every value an int;
    block sizes powers of two (at least 16 for the conv kernels, whose ``tl.dot`` needs it);
    ``num_warps`` a power of two from 1 to 32; ``num_stages`` 1 to 8; counts at least 1. A
    cache file edited by hand or written by another version can hold anything."""
    for key, value in config.items():
        if type(value) is not int:
            return f"{key}={value!r} is not an int"
        if key.startswith("BLOCK"):
            least = spaces.MIN_DOT if kernel.startswith("conv") else 1
            if value < least or value & (value - 1):
                return f"{key}={value} is not a power of two >= {least}"
        elif key == "num_warps":
            if not 1 <= value <= 32 or value & (value - 1):
                return f"num_warps={value} is not a power of two from 1 to 32"
        elif key == "num_stages":
            if not 1 <= value <= _MAX_STAGES:
                return f"num_stages={value} is not from 1 to {_MAX_STAGES}"
        elif value < 1:
            return f"{key}={value} is below 1"
    return None


def _warn_bad_entry(key: str, problem: str) -> None:
    """One warning per invalid cache entry and process; the launch uses the heuristic."""
    if (key, problem) in _warned:
        return
    _warned.add((key, problem))
    warnings.warn(f"tritoncnn autotune cache {default_cache().path}: entry {key} has an invalid "
                  f"config ({problem}); using the default config instead (re-tune with "
                  "`tritoncnn tune` to replace it)", RuntimeWarning, stacklevel=3)
