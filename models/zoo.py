"""The model zoo: LeNet-5, the ConvNetJS CIFAR-10 net, VGG-11 and VGG-16 (no batch norm).

Every model is plain torch.nn (``nn.Sequential`` stacks of Conv2d, ReLU, MaxPool2d, Linear), so
``backend="torch"`` runs it on cuDNN on a GPU; ``backend="triton"`` is the same model passed
through :func:`tritoncnn.models.convert`, which swaps the layers for tritoncnn's (every
CONV -> RELU -> POOL 2 block becomes one ``Conv2dReLUPool``, every other CONV -> RELU a
``Conv2dReLU``, the ReLU and pool slots ``nn.Identity``, so the ``state_dict`` keys stay the same)
and consumes no random numbers: under one seed both backends start from the same weights.

    >>> torch.manual_seed(0); a = get_model("vgg11", backend="torch", input_size=32, width=0.25)
    >>> torch.manual_seed(0); b = get_model("vgg11", backend="triton", input_size=32, width=0.25)
    >>> all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    True
"""

from __future__ import annotations

import math
import numbers

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

__all__ = [
    "LeNet5Config", "LeNet5", "ConvNetJSConfig", "ConvNetJS", "VGGConfig", "VGG",
    "lenet5", "convnetjs_cifar10", "vgg11", "vgg16", "get_model", "MODELS", "to_backend",
]

BACKENDS = ("triton", "torch")


def _conv_out(size: int, k: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - k) // stride + 1


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------------------------
# LeNet-5 (LeCun et al. 1998), with ReLU and max-pool in place of tanh and average pooling

@dataclass
class LeNet5Config:
    in_channels: int = 1  # grayscale digits
    num_classes: int = 10
    input_size: int = 32  # 32x32: MNIST's 28x28 padded by 2, as in the paper
    width: float = 1.0  # multiplies every channel and hidden count (6, 16, 120, 84)


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        self.config = config
        c1, c2 = _scaled(6, config.width), _scaled(16, config.width)
        h1, h2 = _scaled(120, config.width), _scaled(84, config.width)
        s = _conv_out(config.input_size, 5) // 2  # conv 5x5 then pool 2
        s = _conv_out(s, 5) // 2
        if s < 1:
            raise ValueError(f"LeNet5 needs input_size >= 16, got {config.input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, c1, 5),  # (N, 6, 28, 28) at 32x32
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 6, 14, 14)
            nn.Conv2d(c1, c2, 5),  # (N, 16, 10, 10)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * s * s, h1),  # (N, 120)
            nn.ReLU(),
            nn.Linear(h1, h2),  # (N, 84)
            nn.ReLU(),
            nn.Linear(h2, config.num_classes),  # (N, num_classes) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        x = self.features(x)
        x = torch.flatten(x, 1)  # (N, 16 * 5 * 5)
        return self.classifier(x)


# --------------------------------------------------------------------------------------------
# The ConvNetJS CIFAR-10 demo network (Karpathy): three conv 5x5 pad 2 -> ReLU -> pool 2 stages

@dataclass
class ConvNetJSConfig:
    in_channels: int = 3  # RGB
    num_classes: int = 10
    input_size: int = 32  # CIFAR-10 images
    width: float = 1.0  # multiplies the channel counts (16, 20, 20)


class ConvNetJS(nn.Module):
    def __init__(self, config: ConvNetJSConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = (_scaled(c, config.width) for c in (16, 20, 20))
        s = config.input_size // 8  # each 5x5 pad 2 conv keeps the size, each pool halves it
        if s < 1:
            raise ValueError(f"ConvNetJS needs input_size >= 8, got {config.input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, c1, 5, padding=2),  # (N, 16, 32, 32)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 16, 16, 16)
            nn.Conv2d(c1, c2, 5, padding=2),  # (N, 20, 16, 16)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 20, 8, 8)
            nn.Conv2d(c2, c3, 5, padding=2),  # (N, 20, 8, 8)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 20, 4, 4)
        )
        self.classifier = nn.Sequential(nn.Linear(c3 * s * s, config.num_classes))  # (N, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        x = self.features(x)
        x = torch.flatten(x, 1)  # (N, 20 * 4 * 4)
        return self.classifier(x)


# --------------------------------------------------------------------------------------------
# VGG (Simonyan & Zisserman 2014), configurations A (11 layers) and D (16 layers), no batch norm

VGG_LAYERS = {
    # numbers: 3x3 pad 1 conv -> ReLU with that many output channels; "M": 2x2 max-pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


@dataclass
class VGGConfig:
    depth: int = 11  # 11 or 16
    in_channels: int = 3  # RGB
    num_classes: int = 10  # CIFAR-10; 1000 for ImageNet
    input_size: int = 32  # 32 (CIFAR) or 224 (ImageNet); any size >= 32
    width: float = 1.0  # multiplies every conv channel count (64 ... 512) and the FC width
    fc_width: int | None = None  # hidden FC units; None: 4096 at input >= 224, else 512 (x width)
    dropout: float = 0.5  # before each hidden FC, as in the paper; 0 turns it off


class VGG(nn.Module):
    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        key = f"vgg{config.depth}"
        if key not in VGG_LAYERS:
            raise ValueError(f"VGG depth must be 11 or 16, got {config.depth}")
        if config.input_size < 32:
            raise ValueError(
                f"VGG needs input_size >= 32 (five 2x2 pools), got {config.input_size}"
            )
        self.config = config
        layers: list[nn.Module] = []
        c, s = config.in_channels, config.input_size
        for v in VGG_LAYERS[key]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))  # halves H and W
                s //= 2
            else:
                out = _scaled(v, config.width)
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]  # keeps H and W
                c = out
        self.features = nn.Sequential(*layers)  # (N, 512, 7, 7) at 224, (N, 512, 1, 1) at 32
        hidden = config.fc_width or _scaled(4096 if config.input_size >= 224 else 512, config.width)
        self.classifier = nn.Sequential(
            nn.Linear(c * s * s, hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, config.num_classes),  # (N, num_classes) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        x = self.features(x)
        x = torch.flatten(x, 1)  # (N, 512 * s * s)
        return self.classifier(x)


# --------------------------------------------------------------------------------------------

def to_backend(model: nn.Module, backend: str) -> nn.Module:
    """``model`` itself for ``"torch"``; converted to tritoncnn layers for ``"triton"``."""
    if backend == "torch":
        return model
    if backend == "triton":
        from .convert import convert

        return convert(model, inplace=True)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _make(cls, config_cls, backend: str, kw: dict, **fixed) -> nn.Module:
    names = {f.name for f in fields(config_cls)} - set(fixed)
    unknown = set(kw) - names
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(sorted(unknown))} for {cls.__name__}; "
            f"it takes {', '.join(sorted(names))}"
        )
    for name in ("in_channels", "num_classes", "input_size"):
        value = kw.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return to_backend(cls(config_cls(**fixed, **kw)), backend)


def lenet5(backend: str = "triton", **kw) -> nn.Module:
    """LeNet-5 on 32x32x1 inputs (options: see :class:`LeNet5Config`)."""
    return _make(LeNet5, LeNet5Config, backend, kw)


def convnetjs_cifar10(backend: str = "triton", **kw) -> nn.Module:
    """The ConvNetJS CIFAR-10 net (options: see :class:`ConvNetJSConfig`)."""
    return _make(ConvNetJS, ConvNetJSConfig, backend, kw)


def vgg11(backend: str = "triton", **kw) -> nn.Module:
    """VGG-11 without batch norm (options: see :class:`VGGConfig`)."""
    return _make(VGG, VGGConfig, backend, kw, depth=11)


def vgg16(backend: str = "triton", **kw) -> nn.Module:
    """VGG-16 without batch norm (options: see :class:`VGGConfig`)."""
    return _make(VGG, VGGConfig, backend, kw, depth=16)


MODELS = {
    "lenet5": lenet5,
    "convnetjs": convnetjs_cifar10,
    "convnetjs_cifar10": convnetjs_cifar10,
    "vgg11": vgg11,
    "vgg16": vgg16,
}


def get_model(name: str, backend: str = "triton", **kw) -> nn.Module:
    """A zoo model by name (``lenet5``, ``convnetjs``, ``vgg11``, ``vgg16``) on ``backend``.

    Keyword options go to the model's config (``in_channels``, ``num_classes``, ``input_size``,
    ``width``, ...). The caller seeds: the same seed gives the same weights on both backends.
    """
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(MODELS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    width = kw.get("width", 1.0)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    return MODELS[key](backend=backend, **kw)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

