"""What the network sees: every layer's output for one input, and the lecture's figure of it.

The CS231n lecture shows a trained CNN's activation maps column by column: the input image, then
each CONV, RELU and POOL layer's output maps as small greyscale tiles, then the class scores, so
that one can watch edges become parts become classes. :func:`activation_maps` records those
outputs with forward hooks on any model (zoo, spec-built, converted: either backend);
:func:`plot_activation_maps` draws the figure.

On the triton backend a fused layer is one layer (``Conv2dReLUPool`` outputs after its pool);
the ``nn.Identity`` slots that fusion leaves are not layers and do not appear.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["activation_maps", "plot_activation_maps", "layer_label", "save_training_figure"]

# how the lecture names the layers (a fused layer names each part)
_LABELS = {
    "Conv2d": "CONV", "Conv2dReLU": "CONV+RELU", "Conv2dReLUPool": "CONV+RELU+POOL",
    "ReLU": "RELU", "MaxPool2d": "POOL", "AvgPool2d": "AVGPOOL",
    "AdaptiveAvgPool2d": "AVGPOOL", "Linear": "FC", "LinearReLU": "FC+RELU",
    "Flatten": "FLATTEN", "Dropout": "DROPOUT",
}

CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def layer_label(module: nn.Module) -> str:
    """The lecture's name for a layer (CONV, RELU, POOL, FC, CONV+RELU+POOL, ...), else its
    class name."""
    name = type(module).__name__
    return _LABELS.get(name, name)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer: the modules without children, the model itself
    when it has none; not the ``nn.Identity`` slots that fusion leaves."""
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules]
    return [(name or type(m).__name__, m) for name, m in leaves if type(m) is not nn.Identity]


@torch.no_grad()
def activation_maps(model: nn.Module, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """Every layer's output for the input ``x``, in the order the layers ran.

    Args:
        model: any ``nn.Module`` (a zoo model, one from ``build(spec)``, a converted model;
            either backend).
        x: one image (C, H, W) or a batch (N, C, H, W); moved to the model's device.

    Returns:
        An ordered mapping from layer name (the module's qualified name, as in
        ``named_modules``) to its output, detached, with the batch dimension (1 for one
        image). A layer called more than once appears once per call, as ``name``, ``name#2``,
        ... Layers are the modules without children; fusion's ``nn.Identity`` slots are left
        out.

    The model runs in eval mode under ``torch.no_grad()``; afterwards every module's
    train/eval mode is as it was and the hooks are removed, also when the forward raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"activation_maps() takes an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"activation_maps(): x must be one image (C, H, W) or a batch "
                         f"(N, C, H, W), got {shape}")
    if x.dim() == 3:
        x = x.unsqueeze(0)  # (1, C, H, W)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)

    maps: OrderedDict[str, torch.Tensor] = OrderedDict()

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):  # (output, indices) of return_indices pools
                output = output[0]
            key, n = name, 1
            while key in maps:
                n += 1
                key = f"{name}#{n}"
            maps[key] = output.detach()
        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(record(name)) for name, m in _layers(model)]
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return maps


def _volume(t: torch.Tensor) -> str:
    """The lecture's W x H x D of one image's output (an FC layer's is 1 x 1 x n)."""
    if t.dim() == 4:
        _, d, h, w = t.shape
        return f"{w}x{h}x{d}"
    return f"1x1x{t[0].numel()}"


def _normalised(tile: torch.Tensor) -> torch.Tensor:
    """A map scaled to [0, 1] on its own range (a constant map is black)."""
    tile = tile.float()
    lo, hi = tile.min(), tile.max()
    return (tile - lo) / (hi - lo) if hi > lo else torch.zeros_like(tile)


def _as_tiles(t: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Up to ``count`` 2-D greyscale tiles of one image's output: the first maps of a conv
    volume, or an FC layer's vector folded into one near-square tile."""
    if t.dim() == 4:
        return [_normalised(t[0, i]) for i in range(min(count, t.shape[1]))]
    v = t[0].flatten().float()
    side = math.ceil(math.sqrt(v.numel()))
    grid = torch.full((side * side,), float("nan"))
    grid[:v.numel()] = _normalised(v)
    return [grid.view(side, side)]


def plot_activation_maps(maps: "OrderedDict[str, torch.Tensor]", image: torch.Tensor,
                         path: str | Path | None = None, *, model: nn.Module | None = None,
                         class_names=None, label: int | None = None, max_maps: int = 8,
                         title: str | None = None):
    """The lecture's figure: one column per layer, the input image first and the class scores
    last.

    Args:
        maps: :func:`activation_maps`' result for ``image`` (the first image of its batch is
            drawn). Its last entry is taken as the class scores; FLATTEN layers get no column.
        image: the input, (C, H, W) or (1, C, H, W): greyscale for one channel, RGB for three
            (each scaled to its own range), else its first channel.
        path: where to write the PNG; None writes nothing.
        model: the model the maps came from, to name the layers the lecture's way (CONV, RELU,
            POOL, FC, CONV+RELU+POOL...); without it columns show the layer names only.
        class_names: labels of the score bars (default 0, 1, 2, ...).
        label: the true class, marked in the bar chart.
        max_maps: how many maps of each layer to draw (the first ones).
        title: a line above the figure.

    Returns:
        The matplotlib ``Figure`` (Agg: no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not maps:
        raise ValueError("plot_activation_maps(): no layers to draw (maps is empty)")
    modules = dict(_layers(model)) if model is not None else {}
    names = list(maps)
    scores_name = names[-1]

    def kind(name: str) -> str:
        module = modules.get(name.split("#")[0])
        return layer_label(module) if module is not None else ""

    columns = [n for n in names[:-1] if kind(n) != "FLATTEN"]
    tiles = {n: _as_tiles(maps[n].cpu(), max_maps) for n in columns}
    rows = max([1, *(len(t) for t in tiles.values())])
    ncols = len(columns) + 2  # the input, the layers, the scores

    fig = Figure(figsize=(1.25 * ncols + 1.0, 0.95 * rows + 1.3))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, ncols, width_ratios=[1] * (ncols - 1) + [1.8],
                            hspace=0.08, wspace=0.25)

    def header(ax, text: str) -> None:
        ax.set_title(text, fontsize=7, pad=3)

    # the input image, as large as two tiles
    img = image[0] if image.dim() == 4 else image  # (C, H, W)
    img = img.detach().float().cpu()
    ax = fig.add_subplot(grid[0:min(2, rows), 0])
    if img.shape[0] == 3:
        ax.imshow(_normalised(img).permute(1, 2, 0).numpy(), interpolation="nearest")
    else:
        ax.imshow(_normalised(img[0]).numpy(), cmap="gray", interpolation="nearest")
    c, h, w = img.shape
    header(ax, f"INPUT\n{w}x{h}x{c}")
    ax.set_axis_off()

    for j, name in enumerate(columns, start=1):
        volume = _volume(maps[name])
        for i, tile in enumerate(tiles[name]):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(tile.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                header(ax, f"{kind(name)}\n{name}\n{volume}".lstrip("\n"))

    # the class scores as probabilities, the predicted class dark, the true class outlined
    scores = maps[scores_name][0].detach().float().cpu().flatten()
    probs = torch.softmax(scores, 0).numpy()
    n = len(probs)
    labels = [str(c) for c in (class_names if class_names is not None else range(n))][:n]
    ax = fig.add_subplot(grid[:, -1])
    top = int(probs.argmax())
    colors = ["0.25" if i == top else "0.7" for i in range(n)]
    bars = ax.barh(range(n), probs, color=colors)
    if label is not None and 0 <= label < n:
        bars[label].set_edgecolor("C3")
        bars[label].set_linewidth(1.5)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.yaxis.tick_right()  # clear of the last column of tiles
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("softmax of the scores", fontsize=7)
    header(ax, f"{kind(scores_name) or 'scores'}\n{scores_name}\nclass scores"
           + (f" (true: {labels[label]})" if label is not None and 0 <= label < n else ""))
    if title:
        fig.suptitle(title, fontsize=9)
    width, height = fig.get_size_inches()  # margins in inches: room for the class labels
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.7 / width, bottom=0.45 / height,
                        top=1 - (0.9 if title else 0.6) / height)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def save_training_figure(model: nn.Module, state_dict: dict, data, out: Path,
                         device: torch.device, channels_last: bool = False,
                         index: int = 0) -> Path:
    """``tritoncnn train``'s activations.png: the trained weights ``state_dict`` loaded into
    ``model`` (the run's architecture on the triton backend), drawn for test image ``index``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.load_state_dict(state_dict)
    model.to(device, memory_format=fmt)
    image = data.x_test[index]  # (C, H, W)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), image.dtype)
    x = image.unsqueeze(0).to(device, dtype, memory_format=fmt)   # (1, C, H, W), the weights'
    maps = activation_maps(model, x)
    names = CIFAR10_CLASSES if data.name == "cifar10" and data.num_classes == 10 else None
    label = int(data.y_test[index])
    path = Path(out) / "activations.png"
    plot_activation_maps(maps, image, path, model=model, class_names=names, label=label,
                         title=f"{data.name} test image {index} (class "
                               f"{names[label] if names else label}), tritoncnn kernels")
    return path
