"""The persistent tuning cache: one JSON file per user, shared by every process.

Location: ``$TRITONCNN_CACHE_DIR/autotune.json`` when that variable is set, else
``$XDG_CACHE_HOME/tritoncnn/autotune.json``, else ``~/.cache/tritoncnn/autotune.json``.

Format (``FORMAT_VERSION``)::

    {"format": 1,
     "entries": {"<gpu>|triton-<version>|<kernel>|<dtype>|<layout>|<shape key>":
                 {"config": {...}, "shape": {...}, "ms": 0.12, "heuristic_ms": 0.20,
                  "tried": 11, "failed": 0, "wrong": 0, "tuned_at": "..."}}}

Shape keys are bucketed so that one tuning serves nearby shapes (a new batch size or image size does
not force a re-tune): every dimension is rounded up to the next power of two (N, C, H, W, K, P, Q,
...), except the small structural ones, which change the kernel's work per output and are kept
exact: the conv filter ``R, S``, ``stride_*``, ``pad_*``, ``dil_*``, ``groups``, the fused pool
``pool``, ``ieee`` (float32 conv launches with TF32 off, tuned apart from TF32's), and the pool
window ``KH, KW``, stride ``SH, SW``, padding ``PH, PW`` and dilation ``DH, DW`` (see
:data:`EXACT_KEYS` and :data:`EXACT_PREFIXES`). Keys are sorted, so ``{"N": 48, "R": 3}`` becomes
``"N=64,R=3"``.

Writes are atomic and merge: under an exclusive ``fcntl`` lock on ``autotune.json.lock`` the
current file is re-read, the new entries are added, and the result is written to a temporary file
in the same folder and moved over the old one with ``os.replace``; several processes tuning at once
keep each other's entries, and a reader never sees half a file. A file that is not valid JSON, or
has another format version, is ignored with one warning (and replaced by the next write), never an
error.
Reads happen once per process; lookups after that are dictionary hits.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Mapping

import torch

try:  # POSIX; elsewhere writes stay atomic but concurrent writers may drop each other's entries
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT_VERSION = 1
FILE_NAME = "autotune.json"
ENV_DIR = "TRITONCNN_CACHE_DIR"

# Structural dimensions kept exact in shape keys; every other integer is bucketed to a power of two.
EXACT_KEYS = frozenset({"R", "S", "groups", "ceil_mode",  # conv filter, groups
                        "pool",  # window of the fused conv + ReLU + max-pool
                        "ieee",  # float32 conv launches with TF32 off
                        "KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW"})  # pool window
EXACT_PREFIXES = ("stride", "pad", "dil", "kernel_size")


def cache_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tritoncnn"


def cache_path() -> Path:
    return cache_dir() / FILE_NAME


# Keys --------------------------------------------------------------------------------------------

def _bucket(value: int) -> int:
    value = int(value)
    return value if value <= 1 else 1 << (value - 1).bit_length()


def bucket_shape(shape: Mapping[str, object]) -> dict:
    """The bucketed copy of a shape dict (the rules are in the module docstring)."""
    out = {}
    for name, value in shape.items():
        if isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, int) and not (name in EXACT_KEYS or name.startswith(EXACT_PREFIXES)):
            out[name] = _bucket(value)
        elif isinstance(value, (tuple, list)):
            out[name] = "x".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def shape_key(shape: Mapping[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(bucket_shape(shape).items()))


def dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(str(dtype), str(dtype))


@functools.lru_cache(maxsize=None)
def device_id() -> str:
    """``"<GPU name>|triton-<version>"``: the part of every key that names the machine.

    Read once per process (one GPU model per process is assumed)."""
    import triton

    gpu = "cpu"
    try:
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:
        pass
    return f"{gpu}|triton-{triton.__version__}"


def entry_key(kernel: str, shape: Mapping[str, object], dtype, layout: str,
              device: str | None = None) -> str:
    return "|".join((device or device_id(), kernel, dtype_name(dtype), str(layout).lower(),
                     shape_key(shape)))


# What the launchers' prepared launches rest on ---------------------------------------------------

_epoch = 0


def configs_changed() -> None:
    """Say that a launch config may have changed (an entry stored or reloaded, another cache or
    autotune switch chosen): the launchers drop the launches they prepared per shape
    (``kernels._checks.PlanCache``) and look their configs up again."""
    global _epoch
    _epoch += 1


def config_epoch() -> int:
    """How many times :func:`configs_changed` has been called: a prepared launch is valid while
    this is what it was when the launch was prepared."""
    return _epoch


# The file ----------------------------------------------------------------------------------------

class ConfigCache:
    """The cache file and its in-memory copy. ``path`` defaults to :func:`cache_path`."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else cache_path()
        self._entries: dict[str, dict] | None = None
        self._memo: dict[tuple, dict | None] = {}
        self._warned = False
        self._lock = threading.Lock()

    # reading
    def _read_file(self) -> dict[str, dict]:
        """The file's entries; {} (with one warning) when it is missing, corrupt or stale."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as err:
            return self._ignore(f"cannot be read ({err})")
        try:
            data = json.loads(text)
        except ValueError as err:
            return self._ignore(f"is not valid JSON ({err})")
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            return self._ignore(f"has format {found!r}, expected {FORMAT_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return self._ignore("has no 'entries' table")
        return {k: v for k, v in entries.items()
                if isinstance(v, dict) and isinstance(v.get("config"), dict)}

    def _ignore(self, why: str) -> dict:
        if not self._warned:
            self._warned = True
            warnings.warn(f"tritoncnn autotune cache {self.path} {why}; ignoring it (heuristic "
                          "configs are used, and the next tuning run rewrites it)", stacklevel=3)
        return {}

    @property
    def entries(self) -> dict[str, dict]:
        if self._entries is None:
            with self._lock:
                if self._entries is None:
                    self._entries = self._read_file()
        return self._entries

    def reload(self) -> None:
        """Forget the in-memory copy; the next lookup reads the file again."""
        with self._lock:
            self._entries = None
            self._memo = {}
        configs_changed()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def lookup(self, kernel: str, shape: Mapping[str, object], dtype, layout: str) -> dict | None:
        """The cached config for one launch, or None. Memoised on the exact arguments."""
        try:
            memo_key = (kernel, tuple(shape.items()), dtype, layout)
            return self._memo[memo_key]
        except KeyError:
            pass
        except TypeError:  # unhashable values in shape
            memo_key = None
        entry = self.entries.get(entry_key(kernel, shape, dtype, layout))
        config = entry["config"] if entry is not None else None
        if memo_key is not None:
            self._memo[memo_key] = config
        return config

    # writing
    @contextlib.contextmanager
    def _file_lock(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def update(self, new: Mapping[str, Mapping]) -> None:
        """Add or replace entries, merging with what other processes wrote meanwhile."""
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        new = {k: {"tuned_at": stamp, **dict(v)} for k, v in new.items()}
        with self._lock, self._file_lock():
            merged = self._read_file()
            merged.update(new)
            data = {"format": FORMAT_VERSION, "entries": merged}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._entries = merged
            self._memo = {}
        configs_changed()

    def put(self, kernel: str, shape: Mapping[str, object], dtype, layout: str, config: Mapping,
            **info) -> str:
        """Store one winner (``info``: timings and the like, kept beside it). Returns its key."""
        key = entry_key(kernel, shape, dtype, layout)
        self.update({key: {"config": dict(config), "shape": dict(shape), **info}})
        return key


_default: ConfigCache | None = None
_default_lock = threading.Lock()


def default_cache() -> ConfigCache:
    """The process-wide cache at :func:`cache_path` (resolved on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = ConfigCache()
    return _default


def set_default_cache(cache: ConfigCache | str | os.PathLike | None) -> None:
    """Point the process-wide cache elsewhere (a ConfigCache or a path); None re-resolves it from
    the environment on next use."""
    global _default
    with _default_lock:
        if cache is not None and not isinstance(cache, ConfigCache):
            cache = ConfigCache(cache)
        _default = cache
    configs_changed()
