"""Data sets for training: built-in digits, MNIST and CIFAR-10 from local files, synthetic data.

Everything is held in memory as tensors (a :class:`DataSplit`): images ``(N, C, H, W)`` float32,
standardised with the training set's mean and standard deviation, labels ``(N,)`` int64.

* ``digits`` (the default, no network): scikit-learn's ``load_digits``, 1,797 real 8x8
  handwritten digits shipped inside the scikit-learn package, resized (bilinear) or zero-padded to
  the model's input size, with a fixed stratified 80/20 train/test split (1,437 / 360 images).
* ``mnist:DIR``: the four MNIST IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in ``DIR``, or
  where torchvision's download puts them (``DIR/MNIST/raw``; ``FashionMNIST`` and ``KMNIST``
  too; ``DIR/raw``).
* ``cifar10:DIR``: the CIFAR-10 python batches (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``) in ``DIR`` or in ``DIR/cifar-10-batches-py``. They are pickles; they are read
  with an unpickler that accepts only the dicts, lists and NumPy arrays those files hold.
* ``synthetic``: random images of any shape with a learnable class signal, for benchmarks.

A missing path or a malformed file raises ``FileNotFoundError`` or ``ValueError`` naming the file
and what is wrong with it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataSplit", "load_data", "load_digits", "load_mnist", "load_cifar10", "synthetic",
    "read_idx", "write_idx", "read_cifar10_batch", "fit_images",
]


@dataclass
class DataSplit:
    """A train/test split held as tensors."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, C, H, W) float32
    y_test: torch.Tensor  # (M,) int64
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def __str__(self) -> str:
        c, h, w = self.image_shape
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test images, "
                f"{c}x{h}x{w}, {self.num_classes} classes")


# --------------------------------------------------------------------------------------------
# shaping images for a model

def fit_images(x: torch.Tensor, input_size: int | None, in_channels: int | None,
               mode: str = "resize") -> torch.Tensor:
    """Images ``(N, C, H, W)`` brought to ``input_size`` x ``input_size`` and ``in_channels``.

    ``mode="resize"`` interpolates bilinearly (for a smaller image: with antialiasing);
    ``mode="pad"`` centres the image in zeros (or crops the centre when it is larger).
    Channels: 1 -> C repeats the gray channel; 3 -> 1 takes the luminance; else an error.
    """
    if in_channels is not None and x.shape[1] != in_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, in_channels, -1, -1).contiguous()
        elif x.shape[1] == 3 and in_channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {in_channels} channels")
    if input_size is None or tuple(x.shape[2:]) == (input_size, input_size):
        return x
    if mode == "resize":
        smaller = input_size < min(x.shape[2:])
        return F.interpolate(x, size=(input_size, input_size), mode="bilinear",
                             align_corners=False, antialias=smaller)
    if mode == "pad":
        h, w = x.shape[2:]
        top, left = (input_size - h) // 2, (input_size - w) // 2
        # negative padding crops
        return F.pad(x, (left, input_size - w - left, top, input_size - h - top))
    raise ValueError(f"mode must be 'resize' or 'pad', got {mode!r}")


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel zero mean and unit variance, with the training set's statistics."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


# --------------------------------------------------------------------------------------------
# digits, built in

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the split is fixed, whatever seed training uses


def load_digits(input_size: int | None = 8, in_channels: int = 1,
                mode: str = "resize") -> DataSplit:
    """scikit-learn's 8x8 digits, split 80/20 (stratified, always the same split)."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)  # (1797,)
    xtr, xte, ytr, yte = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    xtr = fit_images(torch.from_numpy(xtr)[:, None], input_size, in_channels, mode)
    xte = fit_images(torch.from_numpy(xte)[:, None], input_size, in_channels, mode)
    xtr, xte = _standardise(xtr, xte)
    return DataSplit("digits", xtr.contiguous(), torch.from_numpy(ytr), xte.contiguous(),
                     torch.from_numpy(yte), 10)


# --------------------------------------------------------------------------------------------
# MNIST IDX files

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err})") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (MNIST's format; ``.gz`` is unpacked) as a NumPy array.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, each
    dimension as a big-endian int32, then the data.
    """
    path = Path(path)
    raw = _open_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex(' ')}; expected 00 00 <type> "
            f"<ndim> with type one of {', '.join(f'{c:#04x}' for c in _IDX_TYPES)})"
        )
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated or with {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {tuple(dims)} ({expected} bytes of data), "
            f"but the file holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {(v.kind, v.itemsize): k for k, v in _IDX_TYPES.items()}
    code = codes.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_mnist_file(folder: Path, stem: str) -> Path:
    # the usual names, the gzip'ed ones, and the "train-images.idx3-ubyte" spelling
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"MNIST folder {folder} has no {stem} (or {stem}.gz); it needs the four IDX files "
        f"{', '.join(_MNIST_FILES.values())}"
    )


# where torchvision's MNIST, FashionMNIST and KMNIST(root, download=True) put the files
_TORCHVISION_MNIST = ("raw", "MNIST/raw", "FashionMNIST/raw", "KMNIST/raw")


def _mnist_folder(folder: Path) -> Path:
    """``folder``, or the first of torchvision's layouts under it that holds the training
    images."""
    stem = _MNIST_FILES["x_train"]
    for candidate in (folder, *(folder / sub for sub in _TORCHVISION_MNIST)):
        if any((candidate / name).is_file() for name in (stem, stem + ".gz")):
            return candidate
    return folder


def load_mnist(folder: str | os.PathLike, input_size: int | None = None, in_channels: int = 1,
               mode: str = "pad") -> DataSplit:
    """MNIST (or Fashion-MNIST) from its four IDX files in ``folder`` (or torchvision's
    ``folder/MNIST/raw``); 28x28 padded by default."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder}")
    folder = _mnist_folder(folder)
    arrays = {key: read_idx(_find_mnist_file(folder, stem)) for key, stem in _MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xs, ys = _MNIST_FILES[f"x_{split}"], _MNIST_FILES[f"y_{split}"]
        if x.ndim != 3:
            raise ValueError(f"{folder / xs}: expected images of shape (N, H, W), got {x.shape}")
        if y.ndim != 1:
            raise ValueError(f"{folder / ys}: expected labels of shape (N,), got {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{folder}: {xs} holds {len(x)} images but {ys} {len(y)} labels")
    xtr, xte = (torch.from_numpy(arrays[k].astype(np.float32) / 255.0)[:, None]
                for k in ("x_train", "x_test"))
    ytr, yte = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("y_train", "y_test"))
    num_classes = int(max(ytr.max(), yte.max())) + 1 if len(ytr) else 10
    xtr = fit_images(xtr, input_size, in_channels, mode)
    xte = fit_images(xte, input_size, in_channels, mode)
    xtr, xte = _standardise(xtr, xte)
    return DataSplit("mnist", xtr.contiguous(), ytr, xte.contiguous(), yte, max(num_classes, 10))


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches

class _ArrayUnpickler(pickle.Unpickler):
    """Loads dicts, lists, strings, numbers and NumPy arrays; refuses any other class."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch (unpickling failed: {err})"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (holds a {type(batch).__name__}, "
                         "expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{path}: not a CIFAR-10 python batch (no {key!r} entry; it has "
                             f"{', '.join(map(str, batch)) or 'no entries'})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got "
                         f"{data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"


def load_cifar10(folder: str | os.PathLike, input_size: int | None = None, in_channels: int = 3,
                 mode: str = "resize") -> DataSplit:
    """CIFAR-10 from its python batches in ``folder`` (or ``folder/cifar-10-batches-py``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {folder}")
    if not (folder / CIFAR10_TEST).exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    missing = [n for n in CIFAR10_TRAIN + [CIFAR10_TEST] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} lacks {', '.join(missing)}; it needs the python batches "
            f"{', '.join(CIFAR10_TRAIN)} and {CIFAR10_TEST} (cifar-10-python.tar.gz, unpacked)"
        )
    train = [read_cifar10_batch(folder / n) for n in CIFAR10_TRAIN]
    xte, yte = read_cifar10_batch(folder / CIFAR10_TEST)
    xtr = np.concatenate([x for x, _ in train])
    ytr = np.concatenate([y for _, y in train])
    xtr = fit_images(torch.from_numpy(xtr).float() / 255.0, input_size, in_channels, mode)
    xte = fit_images(torch.from_numpy(xte).float() / 255.0, input_size, in_channels, mode)
    xtr, xte = _standardise(xtr, xte)
    return DataSplit("cifar10", xtr.contiguous(), torch.from_numpy(ytr), xte.contiguous(),
                     torch.from_numpy(yte), 10)


# --------------------------------------------------------------------------------------------
# synthetic

def synthetic(n_train: int = 1024, n_test: int = 256, shape: tuple[int, int, int] = (3, 32, 32),
              num_classes: int = 10, seed: int = 0, signal: float = 0.5) -> DataSplit:
    """Random images of any ``(C, H, W)`` shape: Gaussian noise plus ``signal`` times a fixed
    random template per class, so a model can learn them (``signal=0``: pure noise)."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, *shape, generator=g)  # (classes, C, H, W)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = torch.randn(n, *shape, generator=g) + signal * templates[y]
        return x, y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return DataSplit("synthetic", xtr, ytr, xte, yte, num_classes)


# --------------------------------------------------------------------------------------------

DATA_HELP = "digits (built in, default) | mnist:DIR | cifar10:DIR | synthetic[:N]"


def load_data(spec: str, input_size: int | None = None, in_channels: int | None = None,
              seed: int = 0) -> DataSplit:
    """A data set by name: ``digits``, ``mnist:DIR``, ``cifar10:DIR`` or ``synthetic[:N]``.

    ``input_size`` and ``in_channels`` shape the images for a model (None: the data set's own).
    """
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name == "digits":
        if arg:
            raise ValueError("digits takes no argument (it ships with scikit-learn)")
        return load_digits(input_size, in_channels or 1)
    if name in ("mnist", "cifar10"):
        if not arg:
            raise ValueError(f"{name} needs a folder: --data {name}:DIR")
        load = load_mnist if name == "mnist" else load_cifar10
        kw = {"in_channels": in_channels} if in_channels else {}
        return load(Path(arg).expanduser(), input_size, **kw)
    if name == "synthetic":
        n = 1024
        if arg:
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"synthetic:N needs a positive number of images, got {arg!r}")
            n = int(arg)
        size = input_size or 32
        return synthetic(n, max(1, n // 4), (in_channels or 3, size, size), seed=seed)
    raise ValueError(f"unknown data set {spec!r}; expected {DATA_HELP}")
