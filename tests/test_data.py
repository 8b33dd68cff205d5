"""tritoncnn.models.data: the built-in digits, the MNIST and CIFAR-10 readers on files written
here (good and malformed), synthetic data."""

from __future__ import annotations

import gzip
import pickle
import struct
from datetime import date

import numpy as np
import pytest
import torch

from tritoncnn.models.data import (
    load_cifar10, load_data, load_digits, load_mnist, read_cifar10_batch, read_idx, synthetic,
    write_idx,
)


# --------------------------------------------------------------------------------------------
# digits

def test_digits_fixed_split_and_shapes():
    torch.manual_seed(123)  # the split must not depend on the training seed
    a = load_digits()
    torch.manual_seed(7)
    b = load_digits()
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.y_train.dtype == torch.int64 and a.num_classes == 10
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_train, b.x_train)
    assert set(a.y_test.tolist()) == set(range(10))  # stratified
    assert abs(a.x_train.mean().item()) < 1e-4 and abs(a.x_train.std().item() - 1) < 1e-3


@pytest.mark.parametrize("size,channels,mode", [(16, 1, "resize"), (32, 3, "resize"),
                                                (12, 1, "pad"), (6, 1, "resize")])
def test_digits_fitted_to_the_model(size, channels, mode):
    d = load_digits(size, channels, mode)
    assert d.x_train.shape == (1437, channels, size, size)
    if mode == "pad":  # the 8x8 digit sits in the middle of a constant border
        border = d.x_train[:, :, :2, :]
        assert torch.allclose(border, border.flatten()[0].expand_as(border))


# --------------------------------------------------------------------------------------------
# MNIST IDX files

def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file written by hand: 00 00 <type> <ndim>, big-endian int32 dims, data."""
    return struct.pack(">HBB", 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.tobytes()


def _mnist_folder(tmp_path, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (tmp_path / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = _mnist_folder(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    assert np.array_equal(read_idx(tmp_path / name), arrays["train-images-idx3-ubyte"])
    d = load_mnist(tmp_path)
    assert d.x_train.shape == (6, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    assert d.y_train.tolist() == list(range(6)) and d.num_classes == 10
    d32 = load_data(f"mnist:{tmp_path}", input_size=32)  # padded 28 -> 32
    assert d32.x_train.shape == (6, 1, 32, 32)


def test_idx_roundtrip_other_dtypes(tmp_path):
    for arr in (np.arange(12, dtype=np.int32).reshape(3, 4),
                np.linspace(0, 1, 5, dtype=np.float32)):
        write_idx(tmp_path / "a.idx.gz", arr)
        got = read_idx(tmp_path / "a.idx.gz")
        assert got.dtype == arr.dtype.newbyteorder("=") and np.array_equal(got, arr)
    assert _idx_bytes(np.arange(6, dtype=np.uint8)) == (write_idx(tmp_path / "b", np.arange(
        6, dtype=np.uint8)) or (tmp_path / "b").read_bytes())


@pytest.mark.parametrize("content,match", [
    (b"\x01\x02\x08\x01" + b"\0" * 8, "not an IDX file"),
    (b"\x00\x00\x42\x01" + b"\0" * 8, "not an IDX file"),
    (b"\x00\x00", "only 2 bytes"),
    (struct.pack(">HBBI", 0, 8, 1, 10) + b"\x01" * 7, "holds 7 bytes"),
    (struct.pack(">HBBI", 0, 8, 3, 10), "header truncated"),
    (b"\x1f\x8b" + b"garbage", "not a valid gzip"),
])
def test_idx_malformed(tmp_path, content, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_mnist_missing_and_inconsistent(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST folder not found"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    _mnist_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros((4, 2), np.uint8)))
    with pytest.raises(ValueError, match=r"labels of shape \(N,\)"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="needs a folder"):
        load_data("mnist")


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches

def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n}


def _cifar_folder(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(n, i)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)  # what the published files use
    return batches


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_reads_python_batches(tmp_path, nested):
    batches = _cifar_folder(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    x, y = read_cifar10_batch((tmp_path / "cifar-10-batches-py" if nested else tmp_path)
                              / "test_batch")
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x.reshape(4, -1), batches["test_batch"][b"data"])
    assert y.tolist() == batches["test_batch"][b"labels"]
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.y_train.tolist() == sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)),
                                     [])
    assert load_data(f"cifar10:{tmp_path}", input_size=16).x_test.shape == (4, 3, 16, 16)


def test_cifar10_current_pickle_protocol(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump(_cifar_batch(3, 0), f, protocol=pickle.HIGHEST_PROTOCOL)
    assert read_cifar10_batch(tmp_path / "b")[0].shape == (3, 3, 32, 32)


@pytest.mark.parametrize("payload,match", [
    (b"not a pickle at all", "unpickling failed"),
    (pickle.dumps([1, 2, 3]), "holds a list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "no 'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"\(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}), "0..9"),
    (pickle.dumps({b"data": date(2020, 1, 1), b"labels": []}), "refusing to load datetime"),
])
def test_cifar10_malformed(tmp_path, payload, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        read_cifar10_batch(path)
    assert str(path) in str(info.value)


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 folder not found"):
        load_cifar10(tmp_path / "nope")
    _cifar_folder(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------------------------
# synthetic, and the --data names

def test_synthetic_any_shape_deterministic():
    a = synthetic(10, 4, (2, 5, 7), num_classes=3, seed=1)
    b = synthetic(10, 4, (2, 5, 7), num_classes=3, seed=1)
    assert a.x_train.shape == (10, 2, 5, 7) and a.x_test.shape == (4, 2, 5, 7)
    assert torch.equal(a.x_train, b.x_train) and int(a.y_train.max()) < 3
    assert not torch.equal(a.x_train, synthetic(10, 4, (2, 5, 7), 3, seed=2).x_train)
    d = load_data("synthetic:40", input_size=9, in_channels=1)
    assert d.x_train.shape == (40, 1, 9, 9) and len(d.y_test) == 10
    with pytest.raises(ValueError, match="shape"):
        synthetic(shape=(3, 0, 4))


@pytest.mark.parametrize("spec,match", [("imagenet", "unknown data set"),
                                        ("synthetic:x", "positive number"),
                                        ("digits:foo", "no argument")])
def test_load_data_names(spec, match):
    with pytest.raises(ValueError, match=match):
        load_data(spec)


@pytest.mark.parametrize("layout", ["MNIST/raw", "FashionMNIST/raw", "raw"])
def test_mnist_in_torchvisions_download_layout(tmp_path, layout):
    """torchvision.datasets.MNIST(ROOT, download=True) leaves ROOT/MNIST/raw/*-ubyte(.gz):
    --data mnist:ROOT reads them there."""
    raw = tmp_path / layout
    raw.mkdir(parents=True)
    arrays = _mnist_folder(raw, gz=layout == "MNIST/raw")
    (tmp_path / "MNIST" / "processed").mkdir(parents=True, exist_ok=True)  # torchvision's too
    d = load_data(f"mnist:{tmp_path}")
    assert d.x_train.shape == (6, 1, 28, 28) and d.y_test.tolist() == [0, 1, 2, 3]
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_cifar10_in_torchvisions_download_layout(tmp_path):
    """torchvision.datasets.CIFAR10(ROOT, download=True) leaves ROOT/cifar-10-batches-py and the
    archive beside it: --data cifar10:ROOT reads the batches."""
    batches = _cifar_folder(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    d = load_data(f"cifar10:{tmp_path}")
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]
    assert d.x_train.shape == (20, 3, 32, 32)
