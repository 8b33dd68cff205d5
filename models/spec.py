"""build(spec): a CNN from the lecture's pattern string.

The CS231n lecture draws the classic convolutional network as

    INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC

and this module takes that pattern, with the sizes filled in, as a string::

    [(CONV3-32-RELU)*2-POOL2]*3-(FC256-RELU)*1-FC10

Grammar (keywords are case-insensitive; spaces between items are ignored, spaces inside a layer
are an error: ``CONV3-8``, not ``CONV3 -8`` or ``CONV3- 8``; numbers are ASCII digits 0-9)::

    spec     :=  [ "INPUT" "-" ]  sequence  [ "-" "SOFTMAX" ]
    sequence :=  item ( "-" item )*
    item     :=  "(" sequence ")" [ "*" count ]      a group, repeated count times (default 1)
              |  "[" sequence "]" [ "*" count ]      the same; ( ) and [ ] nest freely
              |  layer
    layer    :=  "CONV" k [ "S" stride ] [ "P" pad ] "-" n       (S and P in either order)
                                    n filters of k x k, stride 1 and pad (k-1)//2 unless given:
                                    CONV3-32 keeps H and W; CONV5P0-16 shrinks them by 4
              |  "POOL" k [ "S" stride ]
                                    k x k max-pool, stride k unless given: POOL2 halves H and W
              |  "AVGPOOL" k [ "S" stride ]
                                    k x k average pool, the same way (never fused)
              |  "FC" n             fully connected layer with n outputs; the first FC after a
                                    conv or pool flattens (C, H, W) to C*H*W
              |  "RELU"             ReLU (after a CONV or FC it is fused into the layer on the
                                    triton backend; CONV-RELU-POOLk with stride k is one
                                    fused layer there, Conv2dReLUPool)
    k, n, stride, count := a positive integer;   pad := a non-negative integer
    (each at most 2**31 - 1)

``INPUT`` and ``SOFTMAX`` are accepted for fidelity to the lecture and add nothing: the model
returns logits, and the softmax belongs to the loss (``F.cross_entropy``).

So ``(CONV3-8-RELU)*2`` is two conv layers of 8 filters, each followed by a ReLU, and
``[(CONV3-32-RELU)*2-POOL2]*3`` is the lecture's ``[[CONV -> RELU]*2 -> POOL]*3``.

A malformed spec raises :class:`SpecError` (a ``ValueError``) that shows the spec with a caret
under the mistake::

    SpecError: expected the number of filters after 'CONV3-', found 'x' at index 8
      [(CONV3-x-RELU)*2-POOL2]*3-FC10
              ^

Layers that do not fit the input (a pool that shrinks 1x1 to 0x0, a CONV after an FC) are
reported the same way, at the layer that fails, and so are specs that would exhaust the machine:
one that expands to more than :data:`MAX_LAYERS` layers (refused before the repeats are
expanded), groups nested more than :data:`MAX_DEPTH` deep, and a layer whose weight would hold
more than 2**31 elements. ``build`` refuses an ``in_channels`` or ``input_size`` that is not a
positive int with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch.nn as nn

__all__ = ["build", "parse", "LayerSpec", "SpecError", "MAX_LAYERS", "MAX_DEPTH", "MAX_NUMBER"]

# Bounds that keep a hostile or mistyped spec from exhausting memory, time or the stack: a
# repeated group is refused before it is expanded past MAX_LAYERS layers.
MAX_LAYERS = 10_000  # layers a spec may expand to (VGG-16 has 37)
MAX_DEPTH = 100  # groups nested inside one another
MAX_NUMBER = 2**31 - 1  # any size, count, stride or padding
MAX_WEIGHT = 2**31  # elements of one layer's weight


class SpecError(ValueError):
    """A malformed spec: ``message``, the ``spec`` and the 0-based ``position`` of the mistake."""

    def __init__(self, message: str, spec: str, position: int) -> None:
        self.message, self.spec, self.position = message, spec, position
        super().__init__(f"{message} at index {position}\n  {spec}\n  {' ' * position}^")


@dataclass(frozen=True)
class LayerSpec:
    kind: str  # "conv", "pool", "avgpool", "fc" or "relu"
    size: int = 0  # conv and pools: kernel size k; fc: output features n
    channels: int = 0  # conv: number of filters n
    stride: int = 1
    pad: int = 0
    position: int = 0  # index of the layer's keyword in the spec, for error messages


_KEYWORDS = ("CONV", "POOL", "AVGPOOL", "FC", "RELU", "INPUT", "SOFTMAX")
_DIGITS = "0123456789"  # str.isdigit() also takes '²' and other digits int() cannot read


def _show(ch: str) -> str:
    """A character for an error message; a digit other than 0-9 ('²', '٣', ...) says so."""
    if ch.isdigit() and ch not in _DIGITS:
        return f"{ch!r} (numbers are written with the ASCII digits 0-9)"
    return repr(ch)


class _Parser:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.pos = 0
        self.depth = 0  # groups open at pos

    # -- characters ---------------------------------------------------------------------------

    def error(self, message: str, position: int | None = None) -> SpecError:
        return SpecError(message, self.spec, self.pos if position is None else position)

    def skip_space(self) -> None:
        while self.pos < len(self.spec) and self.spec[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.spec[self.pos] if self.pos < len(self.spec) else ""

    def describe_here(self) -> str:
        self.skip_space()
        if self.pos >= len(self.spec):
            return "the end of the spec"
        return repr(self.spec[self.pos])

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.spec) and self.spec[self.pos].isalpha():
            self.pos += 1
        return self.spec[start:self.pos]

    def at_space(self) -> bool:
        return self.pos < len(self.spec) and self.spec[self.pos].isspace()

    def number(self, what: str, after: str, minimum: int = 1) -> int:
        """ASCII digits 0-9 right here (no space before them)."""
        start = self.pos
        while self.pos < len(self.spec) and self.spec[self.pos] in _DIGITS:
            self.pos += 1
        if start == self.pos:
            if self.at_space():
                raise self.error(f"spaces are not allowed inside a layer: expected {what} right "
                                 f"after {after!r}", start)
            if self.pos >= len(self.spec):
                found = "the end of the spec"
            else:
                found = _show(self.spec[self.pos])
            raise self.error(f"expected {what} after {after!r}, found {found}", start)
        digits = self.spec[start:self.pos]
        # the length first: int() of thousands of digits is slow, and refused past 4300
        if len(digits) > len(str(MAX_NUMBER)) or int(digits) > MAX_NUMBER:
            shown = digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits)} digits)"
            raise self.error(f"{what} must be at most {MAX_NUMBER}, got {shown}", start)
        value = int(digits)
        if value < minimum:
            raise self.error(f"{what} must be at least {minimum}, got {value}", start)
        return value

    # -- grammar ------------------------------------------------------------------------------

    def parse(self) -> list[LayerSpec]:
        if not self.spec.strip():
            raise self.error("empty spec: expected a layer such as CONV3-16, POOL2 or FC10", 0)
        self.skip_space()
        start = self.pos
        if self.word().upper() == "INPUT":
            if self.peek() != "-":
                raise self.error(f"expected '-' after INPUT, found {self.describe_here()}")
            self.pos += 1
        else:
            self.pos = start
        layers = self.sequence(closer=None)
        if self.pos < len(self.spec):
            ch = self.spec[self.pos]
            if ch in ")]":
                raise self.error(f"{ch!r} closes nothing: no group is open here")
            raise self.error(f"expected '-' between layers, found {_show(ch)}")
        if not layers:
            raise self.error("the spec has no layers (INPUT and SOFTMAX add none)", 0)
        return layers

    def sequence(self, closer: str | None) -> list[LayerSpec]:
        layers: list[LayerSpec] = []
        while True:
            start = self.pos
            more = self.item(closer)
            if len(layers) + len(more) > MAX_LAYERS:
                raise self.error(f"the spec expands to more than {MAX_LAYERS} layers", start)
            layers += more
            ch = self.peek()
            if ch == "-":
                self.pos += 1
                continue
            return layers

    def item(self, closer: str | None) -> list[LayerSpec]:
        ch = self.peek()
        start = self.pos
        if ch == "":
            raise self.error("expected a layer (CONV, POOL, FC, RELU) or a group, found the end "
                             "of the spec")
        if ch in "([":
            close = ")" if ch == "(" else "]"
            if self.depth >= MAX_DEPTH:
                raise self.error(f"groups nested more than {MAX_DEPTH} deep")
            self.pos += 1
            if self.peek() == close:
                raise self.error(f"empty group {ch}{close}")
            self.depth += 1
            inner = self.sequence(closer=close)
            self.depth -= 1
            got = self.peek()
            if got != close:
                if got and got in ")]":
                    raise self.error(
                        f"{got!r} cannot close the {ch!r} opened at index {start} "
                        f"(expected {close!r})"
                    )
                if got == "":
                    raise self.error(f"{ch!r} is never closed (expected {close!r})", start)
                raise self.error(f"expected '-' or {close!r}, found {_show(got)}")
            self.pos += 1
            count = 1
            if self.peek() == "*":
                self.pos += 1
                self.skip_space()
                count_at = self.pos
                count = self.number("a repeat count", f"{ch}...{close}*")
                if len(inner) * count > MAX_LAYERS:
                    raise self.error(f"{ch}...{close}*{count} repeats {len(inner)} layers "
                                     f"{count} times: more than {MAX_LAYERS} layers", count_at)
            return inner * count
        if ch.isalpha():
            return self.layer()
        if ch in ")]":
            if closer is None:
                raise self.error(f"{ch!r} closes nothing: no group is open here")
            raise self.error(f"expected a layer before {ch!r}")
        if ch == "-":
            raise self.error("expected a layer between two '-'")
        raise self.error(f"expected a layer (CONV, POOL, FC, RELU) or a group, found {ch!r}")

    def layer(self) -> list[LayerSpec]:
        start = self.pos
        word = self.word()
        kw = word.upper()
        if kw == "CONV":
            k = self.number("the kernel size", self.spec[start:self.pos])
            stride, pad = 1, (k - 1) // 2
            stride, pad = self.modifiers(start, {"S": stride, "P": pad})
            if self.at_space():
                raise self.error(
                    f"spaces are not allowed inside a layer: expected '-' and the number of "
                    f"filters right after {self.spec[start:self.pos]!r} (for example CONV3-32)"
                )
            if self.pos >= len(self.spec) or self.spec[self.pos] != "-":
                raise self.error(
                    f"expected '-' and the number of filters after "
                    f"{self.spec[start:self.pos]!r} (for example CONV3-32), found "
                    f"{self.describe_here()}"
                )
            self.pos += 1
            n = self.number("the number of filters", self.spec[start:self.pos])
            return [LayerSpec("conv", k, n, stride, pad, start)]
        if kw in ("POOL", "AVGPOOL"):
            k = self.number("the window size", self.spec[start:self.pos])
            (stride,) = self.modifiers(start, {"S": k})
            return [LayerSpec(kw.lower(), k, 0, stride, 0, start)]
        if kw == "FC":
            n = self.number("the number of outputs", self.spec[start:self.pos])
            return [LayerSpec("fc", n, 0, 1, 0, start)]
        if kw == "RELU":
            return [LayerSpec("relu", position=start)]
        if kw == "SOFTMAX":
            if self.peek() != "":
                raise self.error("SOFTMAX must be the last item", start)
            return []
        if kw == "INPUT":
            raise self.error("INPUT must be the first item", start)
        raise self.error(f"unknown layer {word!r}; expected one of {', '.join(_KEYWORDS)}", start)

    def modifiers(self, start: int, defaults: dict[str, int]) -> tuple[int, ...]:
        """Optional ``S<stride>`` / ``P<pad>`` right after the kernel size, in either order."""
        values = dict(defaults)
        seen: set[str] = set()
        while self.pos < len(self.spec) and self.spec[self.pos].isalpha():
            letter = self.spec[self.pos].upper()
            if letter not in defaults:
                allowed = " or ".join(f"{m}<int>" for m in defaults)
                raise self.error(f"unexpected {self.spec[self.pos]!r}; the kernel size may be "
                                 f"followed by {allowed}")
            if letter in seen:
                raise self.error(f"{letter} given twice")
            seen.add(letter)
            self.pos += 1
            what = "a stride" if letter == "S" else "a padding"
            values[letter] = self.number(what, self.spec[start:self.pos],
                                         minimum=0 if letter == "P" else 1)
        return tuple(values[m] for m in defaults)


def parse(spec: str) -> list[LayerSpec]:
    """The flat list of layers a spec stands for (groups expanded); raises :class:`SpecError`."""
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string, got {type(spec).__name__}")
    return _Parser(spec).parse()


def _positive_int(value) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and 1 <= value <= MAX_NUMBER)


def _size_pair(input_size) -> tuple[int, int]:
    pair = (input_size, input_size) if not isinstance(input_size, (tuple, list)) else input_size
    if len(pair) != 2 or not all(_positive_int(v) for v in pair):
        raise ValueError(f"input_size must be a positive int or a pair (H, W) of them, got "
                         f"{input_size!r}")
    return int(pair[0]), int(pair[1])


def build(spec: str, backend: str = "triton", in_channels: int = 3, input_size=32) -> nn.Module:
    """The ``nn.Sequential`` a spec describes, for (in_channels, input_size, input_size) images.

    ``backend="torch"`` gives plain torch.nn layers; ``"triton"`` the same model converted to
    tritoncnn layers (same weights under the same seed).
    """
    from .zoo import to_backend

    if not _positive_int(in_channels):
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    h, w = _size_pair(input_size)
    layers = parse(spec)
    c = int(in_channels)
    flat: int | None = None  # features once flattened
    modules: list[nn.Module] = []
    for layer in layers:
        err = lambda msg: SpecError(msg, spec, layer.position)  # noqa: E731
        if layer.kind == "conv":
            if flat is not None:
                raise err("CONV after FC: a convolution needs a (C, H, W) volume")
            h2 = (h + 2 * layer.pad - layer.size) // layer.stride + 1
            w2 = (w + 2 * layer.pad - layer.size) // layer.stride + 1
            if h2 < 1 or w2 < 1:
                raise err(f"CONV{layer.size} with pad {layer.pad} does not fit a {h}x{w} input")
            if layer.channels * c * layer.size ** 2 > MAX_WEIGHT:
                raise err(f"CONV{layer.size}-{layer.channels} over {c} channels has a weight of "
                          f"more than {MAX_WEIGHT} elements")
            modules.append(nn.Conv2d(c, layer.channels, layer.size, layer.stride, layer.pad))
            c, h, w = layer.channels, h2, w2  # (N, n, H2, W2)
        elif layer.kind in ("pool", "avgpool"):
            name = layer.kind.upper()
            if flat is not None:
                raise err(f"{name} after FC: pooling needs a (C, H, W) volume")
            h2 = (h - layer.size) // layer.stride + 1
            w2 = (w - layer.size) // layer.stride + 1
            if h2 < 1 or w2 < 1:
                raise err(f"{name}{layer.size} does not fit a {h}x{w} input")
            pool = nn.MaxPool2d if layer.kind == "pool" else nn.AvgPool2d
            modules.append(pool(layer.size, layer.stride))
            h, w = h2, w2  # (N, C, H2, W2)
        elif layer.kind == "fc":
            if flat is None:
                modules.append(nn.Flatten())  # (N, C*H*W)
                flat = c * h * w
            if flat * layer.size > MAX_WEIGHT:
                raise err(f"FC{layer.size} over {flat} features has a weight of more than "
                          f"{MAX_WEIGHT} elements")
            modules.append(nn.Linear(flat, layer.size))
            flat = layer.size  # (N, n)
        else:
            modules.append(nn.ReLU())
    return to_backend(nn.Sequential(*modules), backend)

