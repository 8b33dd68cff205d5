"""tritoncnn.models.activations: every layer's output through forward hooks on both backends,
the model left as it was, the lecture's figure, and ``tritoncnn train`` writing it."""

from __future__ import annotations

import struct

import pytest
import torch
import torch.nn as nn

from tritoncnn.cli import main as cli_main
from tritoncnn.models import activation_maps, build, plot_activation_maps
from tritoncnn.models.activations import CIFAR10_CLASSES

from conftest import DEVICE

SPEC = "CONV3-4-RELU-POOL2-CONV3-6-RELU-AVGPOOL2-FC12-RELU-FC10"
# (name, output shape) of every layer of SPEC on 1x8x8 images; on triton the fused layers'
# nn.Identity slots are no layers
LAYERS = {
    "torch": [("0", (1, 4, 8, 8)), ("1", (1, 4, 8, 8)), ("2", (1, 4, 4, 4)),
              ("3", (1, 6, 4, 4)), ("4", (1, 6, 4, 4)), ("5", (1, 6, 2, 2)), ("6", (1, 24)),
              ("7", (1, 12)), ("8", (1, 12)), ("9", (1, 10))],
    "triton": [("0", (1, 4, 4, 4)), ("3", (1, 6, 4, 4)), ("5", (1, 6, 2, 2)), ("6", (1, 24)),
               ("7", (1, 12)), ("9", (1, 10))],
}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_activation_maps_lists_every_layer_and_leaves_the_model_unchanged(backend):
    torch.manual_seed(0)
    model = build(SPEC, backend=backend, in_channels=1, input_size=8).to(DEVICE)
    model.train()
    model[0].eval()  # a mixed state, which must come back as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 8, 8, device=DEVICE)

    maps = activation_maps(model, x)

    assert [(n, tuple(t.shape)) for n, t in maps.items()] == LAYERS[backend]
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(t.requires_grad for t in maps.values())
    # the last map is the model's output, in eval mode
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(maps["9"], model(x.unsqueeze(0)))


def test_activation_maps_agree_across_backends_where_layers_meet():
    """The triton model's fused CONV+RELU+POOL output is the torch model's POOL output."""
    torch.manual_seed(0)
    ref = build(SPEC, backend="torch", in_channels=1, input_size=8)
    torch.manual_seed(0)
    ours = build(SPEC, backend="triton", in_channels=1, input_size=8).to(DEVICE)
    x = torch.randn(1, 1, 8, 8)
    a, b = activation_maps(ours, x.to(DEVICE)), activation_maps(ref.double(), x.double())
    for name_ours, name_ref in [("0", "2"), ("5", "5"), ("9", "9")]:
        torch.testing.assert_close(a[name_ours].cpu().double(), b[name_ref], rtol=1e-5,
                                   atol=1e-5)


def test_activation_maps_restores_the_model_when_the_forward_fails():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(3, 2)).train()
    with pytest.raises(RuntimeError):
        activation_maps(model, torch.randn(1, 6, 6))  # Linear gets 32 features, wants 3
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_maps_names_repeated_calls_and_rejects_bad_input():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), relu, nn.Conv2d(2, 2, 1), relu)
    maps = activation_maps(model, torch.randn(1, 5, 5))
    assert list(maps) == ["0", "1", "2", "1#2"]
    with pytest.raises(ValueError, match="x must be"):
        activation_maps(model, torch.randn(5, 5))
    with pytest.raises(TypeError, match="nn.Module"):
        activation_maps(lambda t: t, torch.randn(1, 5, 5))


@pytest.mark.parametrize("channels, size, names", [(1, 8, None), (3, 32, CIFAR10_CLASSES)])
def test_figure_for_digits_and_cifar_sizes(tmp_path, channels, size, names):
    torch.manual_seed(0)
    spec = "CONV3-4-RELU-POOL2-AVGPOOL2-FC10" if size == 8 else \
        "(CONV3-8-RELU-POOL2)*2-CONV3-8-RELU-FC16-RELU-FC10"
    model = build(spec, backend="torch", in_channels=channels, input_size=size)
    image = torch.randn(channels, size, size)
    maps = activation_maps(model, image)
    path = tmp_path / "a.png"
    fig = plot_activation_maps(maps, image, path, model=model, class_names=names, label=3)
    width, height = _png_size(path)
    assert 400 <= width <= 2500 and 400 <= height <= 1600, (width, height)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"INPUT\n{size}x{size}x{channels}"
    assert titles[1] == f"CONV\n0\n{size}x{size}x{4 if size == 8 else 8}"
    assert "class scores" in titles[-1] and not any("FLATTEN" in t for t in titles)
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels == [str(n) for n in (names or range(10))]


def test_train_command_writes_the_figure(tmp_path):
    out = tmp_path / "run"
    rc = cli_main(["train", "--backend", "triton", "--data", "synthetic:32", "--spec",
                   "CONV3-4-RELU-POOL2-CONV3-8-RELU-POOL2-FC10", "--input-size", "8",
                   "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    width, height = _png_size(out / "activations.png")
    assert 400 <= width <= 2500 and 400 <= height <= 1600, (width, height)


def test_train_command_writes_no_figure_without_the_triton_backend(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "activations.png").write_bytes(b"stale")  # a fresh run removes an old one
    rc = cli_main(["train", "--backend", "torch", "--data", "synthetic:32", "--spec",
                   "CONV3-4-RELU-POOL2-FC10", "--input-size", "8", "--epochs", "1",
                   "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert not (out / "activations.png").exists()
