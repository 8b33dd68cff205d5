"""Benchmark shapes and their work: FLOPs and the fewest bytes each layer must move.

The conv shapes come from ``bench_suite.csv`` beside this file (VGG-16 at 224, ResNet 56x56, a CIFAR
ResNet-9, airbench94, LeNet-5, the 32x32 vgg11 of the training step at batch 256); the pool-only
shapes are listed here. Counting rules:

* conv FLOPs = 2 * N * K * P * Q * (C / groups) * R * S (a multiply and an add per MAC);
  backward does two such products (dX and dW), ``backward-dx`` and ``backward-dw`` one each,
  forward+backward three;
* minimum bytes: every tensor the op must read once plus every tensor it must write once, at the
  benchmark's element size. Forward conv reads X, W, b and writes Y (the pooled Y when a 2x2 pool is
  fused). Backward reads X, W, dY and the saved output Y (the ReLU mask) and writes dX, dW, db;
  dX alone reads W, dY, Y and writes dX; dW alone reads X, dY, Y and writes dW;
* pool: forward reads X and writes Y; backward reads dY and writes dX. Whatever an implementation
  keeps for its backward (tritoncnn's int8 offsets, PyTorch's int64 indices) is its own overhead and
  not counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

SUITE_CSV = Path(__file__).with_name("bench_suite.csv")

#: forward; backward (dX, dW and db); dX alone; dW alone; forward and backward together
DIRECTIONS = ("forward", "backward", "backward-dx", "backward-dw", "forward+backward")
#: a max-pool has no weight: its backward is dX alone
POOL_DIRECTIONS = ("forward", "backward", "forward+backward")

#: bytes per element of each benchmark dtype name
ELEMENT_SIZE = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


def conv_out_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution (or pooling window sweep) along one axis, floored."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvShape:
    """One conv layer: input (N, C, H, W), K filters of R x S, and an optional fused F x F pool."""

    suite: str
    layer: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1
    fused_pool: bool = False  # a 2x2 max-pool follows this conv + ReLU in the network
    pool: int = 2

    @property
    def P(self) -> int:
        return conv_out_size(self.H, self.R, self.stride, self.pad, self.dilation)

    @property
    def Q(self) -> int:
        return conv_out_size(self.W, self.S, self.stride, self.pad, self.dilation)

    def describe(self) -> str:
        return (f"{self.N}x{self.C}x{self.H}x{self.W} k{self.K} {self.R}x{self.S} "
                f"s{self.stride} p{self.pad}" + (f" d{self.dilation}" if self.dilation != 1 else "")
                + (f" g{self.groups}" if self.groups != 1 else "")
                + f" -> {self.P}x{self.Q}")


@dataclass(frozen=True)
class PoolShape:
    """One max-pool layer over an (N, C, H, W) input."""

    suite: str
    layer: str
    N: int
    C: int
    H: int
    W: int
    kernel: int = 2
    stride: int = 2
    pad: int = 0

    @property
    def P(self) -> int:
        return conv_out_size(self.H, self.kernel, self.stride, self.pad)

    @property
    def Q(self) -> int:
        return conv_out_size(self.W, self.kernel, self.stride, self.pad)

    def describe(self) -> str:
        return (f"{self.N}x{self.C}x{self.H}x{self.W} k{self.kernel} s{self.stride} p{self.pad} "
                f"-> {self.P}x{self.Q}")


# ---------------------------------------------------------------------------------------------
# Counts


def conv_flops(N: int, C: int, H: int, W: int, K: int, R: int, S: int, stride: int = 1,
               pad: int = 0, dilation: int = 1, groups: int = 1,
               direction: str = "forward") -> int:
    """FLOPs of a conv layer: 2*N*K*P*Q*(C/groups)*R*S forward, dX alone or dW alone; twice that
    backward (dX and dW)."""
    P = conv_out_size(H, R, stride, pad, dilation)
    Q = conv_out_size(W, S, stride, pad, dilation)
    forward = 2 * N * K * P * Q * (C // groups) * R * S
    return forward * _passes(direction)


def conv_min_bytes(N: int, C: int, H: int, W: int, K: int, R: int, S: int, stride: int = 1,
                   pad: int = 0, dilation: int = 1, groups: int = 1, element_size: int = 2,
                   fused_pool: int = 0, bias: bool = True, direction: str = "forward") -> int:
    """Fewest bytes a conv (+ bias + ReLU, + an F x F pool when ``fused_pool`` = F) moves.

    Forward: read X, W, b; write Y (pooled when fused). Backward: read X, W, dY, Y; write dX, dW,
    db. dX alone: read W, dY, Y; write dX. dW alone: read X, dY, Y; write dW.
    """
    P = conv_out_size(H, R, stride, pad, dilation)
    Q = conv_out_size(W, S, stride, pad, dilation)
    if fused_pool:
        P, Q = P // fused_pool, Q // fused_pool
    x = N * C * H * W
    w = K * (C // groups) * R * S
    b = K if bias else 0
    y = N * K * P * Q
    fwd = x + w + b + y
    bwd = (x + w + y + y) + (x + w + b)
    return element_size * {"forward": fwd, "backward": bwd, "backward-dx": w + y + y + x,
                           "backward-dw": x + y + y + w, "forward+backward": fwd + bwd}[
        _check_direction(direction)]


def pool_min_bytes(N: int, C: int, H: int, W: int, kernel: int = 2, stride: int | None = None,
                   pad: int = 0, element_size: int = 2, direction: str = "forward") -> int:
    """Fewest bytes a max-pool moves: forward reads X and writes Y; backward reads dY, writes dX."""
    stride = kernel if stride is None else stride
    P = conv_out_size(H, kernel, stride, pad)
    Q = conv_out_size(W, kernel, stride, pad)
    x, y = N * C * H * W, N * C * P * Q
    return element_size * {"forward": x + y, "backward": y + x, "forward+backward": 2 * (x + y)}[
        _check_direction(direction, POOL_DIRECTIONS)]


def matmul_flops(M: int, N: int, K: int) -> int:
    return 2 * M * N * K


def copy_bytes(numel: int, element_size: int) -> int:
    """A device-to-device copy reads and writes every byte once."""
    return 2 * numel * element_size


def _check_direction(direction: str, known: tuple[str, ...] = DIRECTIONS) -> str:
    if direction not in known:
        raise ValueError(f"direction must be one of {known}, got {direction!r}")
    return direction


def _passes(direction: str) -> int:
    """Forward-sized GEMMs a conv direction computes."""
    return {"forward": 1, "backward": 2, "backward-dx": 1, "backward-dw": 1,
            "forward+backward": 3}[_check_direction(direction)]


def directions_for(shape: ConvShape | PoolShape) -> tuple[str, ...]:
    return POOL_DIRECTIONS if isinstance(shape, PoolShape) else DIRECTIONS


def shape_flops(shape: ConvShape | PoolShape, direction: str) -> int:
    if isinstance(shape, PoolShape):
        return 0
    s = shape
    return conv_flops(s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.stride, s.pad, s.dilation, s.groups,
                      direction)


def shape_bytes(shape: ConvShape | PoolShape, direction: str, element_size: int,
                fused: bool = False) -> int:
    s = shape
    if isinstance(s, PoolShape):
        return pool_min_bytes(s.N, s.C, s.H, s.W, s.kernel, s.stride, s.pad, element_size,
                              direction)
    return conv_min_bytes(s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.stride, s.pad, s.dilation,
                          s.groups, element_size, s.pool if fused else 0, True, direction)


# ---------------------------------------------------------------------------------------------
# Suites


def load_conv_suite(path: str | Path = SUITE_CSV) -> list[ConvShape]:
    """The conv layers of ``bench_suite.csv`` (columns suite, layer, N, C, H, W, K, R, S, stride,
    pad, fused_pool2x2; the derived columns are ignored: they are recomputed)."""
    shapes = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            shapes.append(ConvShape(
                suite=row["suite"], layer=row["layer"],
                N=int(row["N"]), C=int(row["C"]), H=int(row["H"]), W=int(row["W"]),
                K=int(row["K"]), R=int(row["R"]), S=int(row["S"]),
                stride=int(row["stride"]), pad=int(row["pad"]),
                fused_pool=row.get("fused_pool2x2", "False").strip().lower() == "true",
            ))
    return shapes


#: max-pool layers on their own: the VGG-16 pools at 224 (the F = S = 2 fast path), the
#: overlapping 3x3/2 ResNet stem pool, and the CIFAR-sized pools.
POOL_SHAPES: tuple[PoolShape, ...] = (
    PoolShape("Pool", "vgg_pool1", 64, 64, 224, 224),
    PoolShape("Pool", "vgg_pool2", 64, 128, 112, 112),
    PoolShape("Pool", "vgg_pool3", 64, 256, 56, 56),
    PoolShape("Pool", "vgg_pool4", 64, 512, 28, 28),
    PoolShape("Pool", "vgg_pool5", 64, 512, 14, 14),
    PoolShape("Pool", "resnet_stem_3x3s2", 64, 64, 112, 112, kernel=3, stride=2, pad=1),
    PoolShape("Pool", "resnet9_pool1", 512, 128, 32, 32),
    PoolShape("Pool", "resnet9_pool3", 512, 512, 8, 8),
)

#: a few tiny shapes for CPU smoke runs of the harness itself
TINY_SHAPES: tuple[ConvShape | PoolShape, ...] = (
    ConvShape("Tiny", "conv3x3", 2, 3, 8, 8, 4, 3, 3, 1, 1, fused_pool=True),
    ConvShape("Tiny", "conv1x1_s2", 2, 4, 6, 6, 8, 1, 1, 2, 0),
    PoolShape("Tiny", "pool2", 2, 4, 8, 8),
)

#: per suite, the layers ``--quick`` keeps (a spread of sizes, two with a fused pool)
QUICK_LAYERS = {
    "VGG16_224_N64": ("conv1_2", "conv3_2", "conv4_3", "conv5_1"),
    "ResNet9_CIFAR_N512": ("layer1", "res1a"),
    "Pool": ("vgg_pool1", "resnet_stem_3x3s2"),
    "Tiny": ("conv3x3", "pool2"),
}


def all_shapes() -> list[ConvShape | PoolShape]:
    return [*load_conv_suite(), *POOL_SHAPES, *TINY_SHAPES]


def select(suites: list[str] | None = None, quick: bool = False,
           layers: list[str] | None = None) -> list[ConvShape | PoolShape]:
    """Shapes of the named suites (all but "Tiny" when none are named), in suite-file order.

    ``quick`` keeps the layers of :data:`QUICK_LAYERS` only; ``layers`` keeps the named layers.
    """
    shapes = all_shapes()
    known = list(dict.fromkeys(s.suite for s in shapes))
    if suites:
        unknown = [s for s in suites if s not in known]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; known: {', '.join(known)}")
        shapes = [s for s in shapes if s.suite in suites]
    else:
        shapes = [s for s in shapes if s.suite != "Tiny"]
    if quick:
        shapes = [s for s in shapes if s.layer in QUICK_LAYERS.get(s.suite, ())]
    if layers:
        shapes = [s for s in shapes if s.layer in layers]
    return shapes


def suite_names() -> list[str]:
    return list(dict.fromkeys(s.suite for s in all_shapes()))
