"""convert(model): swap a model's torch.nn layers for tritoncnn layers, keeping its weights.

What is replaced, searched through every nested container:

* ``nn.Conv2d`` followed by a ReLU -> ``Conv2dReLU`` (one kernel, ReLU in the epilogue). Found
  between neighbours of an ``nn.Sequential`` (the ReLU becomes ``nn.Identity``, so indices and
  ``state_dict`` keys stay the same), and, through ``torch.fx``, in any traceable ``forward``
  (``nn.ReLU``, ``F.relu``, ``torch.relu`` or ``.relu()`` applied to the conv's only use);
* ``nn.Linear`` followed by a ReLU -> ``LinearReLU``, the same way;
* a lone ``nn.Conv2d`` -> ``Conv2d``, ``nn.MaxPool2d`` -> ``MaxPool2d``,
  ``nn.Linear`` -> ``Linear``.

Parameters move as they are (the same ``nn.Parameter`` objects, on their device and dtype), so the
converted model gives the same outputs within the kernels' rounding, and converting consumes no
random numbers: a model built and converted under one seed has the weights of the unconverted one.

What is left alone is reported: layers of the conv, pool or linear families that the kernels do
not serve (``padding_mode='reflect'``, ``nn.Conv1d``, ``nn.AvgPool2d``, a subclass of
``nn.Conv2d`` with a ``forward`` of its own, ...) and any other layer holding parameters. The
report is returned on the model as ``model.convert_report`` (a :class:`ConvertReport`), logged,
and, when something was kept, issued as a ``UserWarning``.

A pair inside a custom ``forward`` is fused by tracing that module's own forward with
``torch.fx`` (its submodules as leaves), rewriting the two calls into one, and installing the
rewritten code as the ``forward`` of that very instance: classes, attributes, methods and
``state_dict`` keys stay as they were. A forward torch.fx cannot trace (data-dependent control
flow, ...) keeps its code; its layers are converted one by one, unfused, and the report says so.
"""

from __future__ import annotations

import copy
import logging
import types
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .layers import TRITON_LAYERS, Conv2d, Conv2dReLU, Linear, LinearReLU, MaxPool2d

__all__ = ["convert", "ConvertReport"]

log = logging.getLogger(__name__)


@dataclass
class ConvertReport:
    """What convert() did: qualified module names with the classes before and after."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old, new)
    fused: list[tuple[str, str]] = field(default_factory=list)  # (layer, relu) pairs
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (name, class, reason)
    traced: list[str] = field(default_factory=list)  # modules whose forward torch.fx rewrote
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"convert: {len(self.replaced)} layers replaced ({len(self.fused)} fused with a "
            f"ReLU), {len(self.kept)} kept as they were"
        ]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  kept {name} ({cls}): {why}" for name, cls, why in self.kept]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# building one tritoncnn layer from one torch.nn layer, without new random numbers

def _conv_reason(m: nn.Conv2d) -> str | None:
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r} (tritoncnn pads with zeros only)"
    if m.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {m.weight.dtype} (kernels compute in fp32, fp16, bf16)"
    return None


def _linear_reason(m: nn.Linear) -> str | None:
    if m.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {m.weight.dtype} (kernels compute in fp32, fp16, bf16)"
    return None


def _carry(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new`` (built on the meta device) the parameters and mode of ``old``."""
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    return new


def _from_conv(m: nn.Conv2d, relu: bool) -> nn.Module:
    cls = Conv2dReLU if relu else Conv2d
    new = cls(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
        bias=m.bias is not None, padding_mode=m.padding_mode, device="meta",
    )
    return _carry(new, m)


def _from_linear(m: nn.Linear, relu: bool) -> nn.Module:
    cls = LinearReLU if relu else Linear
    new = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
    return _carry(new, m)


def _from_pool(m: nn.MaxPool2d) -> nn.Module:
    new = MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
    new.train(m.training)
    return new


def _fusable(m: nn.Module) -> bool:
    """An exact nn.Conv2d or nn.Linear that a tritoncnn layer can serve (subclasses may have their
    own forward and are left alone)."""
    if type(m) is nn.Conv2d:
        return _conv_reason(m) is None
    if type(m) is nn.Linear:
        return _linear_reason(m) is None
    return False


def _fused(m: nn.Module) -> nn.Module:
    return _from_conv(m, relu=True) if isinstance(m, nn.Conv2d) else _from_linear(m, relu=True)


def _is_relu_module(m: nn.Module) -> bool:
    return type(m) is nn.ReLU


# --------------------------------------------------------------------------------------------
# pass 1: Conv2d/Linear -> ReLU neighbours inside nn.Sequential

def _fuse_sequentials(model: nn.Module, report: ConvertReport) -> None:
    for prefix, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            first, second = seq._modules[a], seq._modules[b]
            if first is None or second is None:
                continue
            if not _fusable(first) or not _is_relu_module(second):
                continue
            if _shared(model, first) or _shared(model, second):
                continue  # a module shared with another container keeps its own behaviour
            new = _fused(first)
            seq._modules[a] = new
            seq._modules[b] = nn.Identity()
            name = f"{prefix}.{a}" if prefix else a
            relu = f"{prefix}.{b}" if prefix else b
            report.replaced.append((name, type(first).__name__, type(new).__name__))
            report.fused.append((name, relu))


def _shared(model: nn.Module, module: nn.Module) -> bool:
    """True when ``module`` is a child in more than one place of ``model``."""
    count = 0
    for parent in model.modules():
        for child in parent._modules.values():
            if child is module:
                count += 1
    return count > 1


# --------------------------------------------------------------------------------------------
# pass 2: Conv2d/Linear -> ReLU in a traced forward()

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_RELU_METHODS = {"relu", "relu_"}


class _ChildrenAreLeaves(torch.fx.Tracer):
    """Traces one module's own forward: every submodule call stays a single call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_relu_node(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return _is_relu_module(modules[node.target])
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return True
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return len(node.args) == 1 and not node.kwargs
    return False


def _traceable_owner(m: nn.Module) -> bool:
    """A module with a forward of its own that may call a fusable layer and then a ReLU."""
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict) + TRITON_LAYERS):
        return False
    if type(m).__module__.startswith("torch.nn") or not m._modules:
        return False  # PyTorch's own layers
    return any(_fusable(c) for c in m.modules())


def _fuse_traced(model: nn.Module, report: ConvertReport) -> None:
    """Fuse Conv2d/Linear -> ReLU calls inside each custom module's forward.

    Each such module's forward is traced with torch.fx (its submodules as leaves), the pair is
    rewritten to call one fused layer, and the rewritten code becomes the forward of that very
    instance: its class, attributes, methods and state_dict stay as they were.
    """
    for prefix, owner in list(model.named_modules()):
        if not _traceable_owner(owner):
            continue
        try:
            graph = _ChildrenAreLeaves().trace(owner)
        except Exception as err:  # noqa: BLE001 - any tracing failure means "not traceable"
            first_line = str(err).splitlines()[0] if str(err) else ""
            report.notes.append(
                f"forward of {prefix or '<model>'} ({type(owner).__name__}) is not torch.fx-"
                f"traceable ({type(err).__name__}: {first_line}); Conv2d/Linear -> ReLU calls "
                "in it were converted without fusing"
            )
            continue
        if _rewrite(model, prefix, owner, graph, report):
            report.traced.append(prefix)


def _rewrite(model: nn.Module, prefix: str, owner: nn.Module, graph: torch.fx.Graph,
             report: ConvertReport) -> bool:
    modules = dict(owner.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module" or not _fusable(modules[node.target]):
            continue
        old = modules[node.target]
        if calls[node.target] != 1 or len(node.users) != 1 or _shared(model, old):
            continue  # called twice, shared, or its output is also used without the ReLU
        (user,) = node.users
        if not _is_relu_node(user, modules) or user.args[0] is not node:
            continue
        new = _fused(old)
        _set_submodule(owner, node.target, new)
        modules[node.target] = new
        user.replace_all_uses_with(node)
        graph.erase_node(user)
        qual = f"{prefix}.{node.target}" if prefix else node.target
        if user.op == "call_module":
            relu = user.target
        else:
            relu = f"{getattr(user.target, '__name__', user.target)}()"
        report.replaced.append((qual, type(old).__name__, type(new).__name__))
        report.fused.append((qual, str(relu)))
        changed = True
    if not changed:
        return False
    graph.lint()
    gm = torch.fx.GraphModule(owner, graph)
    # constants that tracing stored on the GraphModule (get_attr targets the owner lacks)
    for node in graph.nodes:
        if node.op == "get_attr" and not _has_path(owner, node.target):
            setattr(owner, node.target, getattr(gm, node.target))
    owner.forward = types.MethodType(type(gm).forward, owner)
    return True


def _has_path(root: nn.Module, qualname: str) -> bool:
    obj = root
    for part in qualname.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _set_submodule(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


# --------------------------------------------------------------------------------------------
# pass 3: every remaining layer one by one

_FAMILIES = ("Conv", "Pool", "Linear", "Bilinear")


def _replace_lone(model: nn.Module, report: ConvertReport) -> None:
    done: dict[int, nn.Module | None] = {}  # a shared module: one replacement, one report
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            qual = f"{prefix}.{name}" if prefix else name
            if id(child) in done:  # met before under another name
                if done[id(child)] is not None:
                    parent._modules[name] = done[id(child)]
                continue
            new = None
            if type(child) is nn.Conv2d:
                reason = _conv_reason(child)
                if reason is None:
                    new = _from_conv(child, relu=False)
                else:
                    report.kept.append((qual, "Conv2d", reason))
            elif type(child) is nn.Linear:
                reason = _linear_reason(child)
                if reason is None:
                    new = _from_linear(child, relu=False)
                else:
                    report.kept.append((qual, "Linear", reason))
            elif type(child) is nn.MaxPool2d:
                new = _from_pool(child)
            elif isinstance(child, TRITON_LAYERS):
                continue
            elif isinstance(child, (nn.Conv2d, nn.Linear, nn.MaxPool2d)):
                base = next(c for c in (nn.Conv2d, nn.Linear, nn.MaxPool2d)
                            if isinstance(child, c))
                report.kept.append((qual, type(child).__name__,
                                    f"a subclass of nn.{base.__name__} (may have its own forward)"))
            elif not child._modules and (
                any(f in type(child).__name__ for f in _FAMILIES)
                or any(True for _ in child.parameters(recurse=False))
            ):
                report.kept.append((qual, type(child).__name__, "no tritoncnn kernel for it"))
            done[id(child)] = new
            if new is not None:
                parent._modules[name] = new
                report.replaced.append((qual, type(child).__name__, type(new).__name__))


# --------------------------------------------------------------------------------------------

def convert(model: nn.Module, *, inplace: bool = False, fuse: bool = True,
            trace: bool = True, warn: bool = True) -> nn.Module:
    """Return ``model`` with its torch.nn layers replaced by tritoncnn layers.

    Args:
        model: any ``nn.Module``; nested containers are searched.
        inplace: change ``model`` itself (its parameters stay the same objects, so an optimizer
            built on it keeps working) instead of a deep copy.
        fuse: fuse Conv2d -> ReLU and Linear -> ReLU into one layer.
        trace: use ``torch.fx`` to find such pairs in custom ``forward`` methods (the rewritten
            forward is installed on the module instance).
        warn: issue a ``UserWarning`` naming the layers that were left as they were.

    Returns:
        The converted model, with the :class:`ConvertReport` attached as ``convert_report``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() takes an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConvertReport()
    if isinstance(model, TRITON_LAYERS):
        model.convert_report = report
        return model
    if fuse:
        _fuse_sequentials(model, report)
        if trace:
            _fuse_traced(model, report)
    # A top-level layer has no parent to swap it in: wrap, replace, unwrap.
    holder = nn.Sequential(model)
    lone = ConvertReport()
    _replace_lone(holder, lone)
    report.replaced += [(_strip0(n), o, c) for n, o, c in lone.replaced]
    report.kept += [(_strip0(n), c, r) for n, c, r in lone.kept]
    model = holder[0]

    model.convert_report = report
    log.info("%s", report)
    if warn and report.kept:
        names = ", ".join(f"{n or '<model>'} ({c})" for n, c, _ in report.kept)
        warnings.warn(
            f"convert(): {len(report.kept)} layers kept as torch.nn (no tritoncnn kernel serves "
            f"them): {names}; see model.convert_report",
            UserWarning,
            stacklevel=2,
        )
    return model


def _strip0(name: str) -> str:
    """Names from the wrapping holder (``0.features.1``) back to the model's own."""
    if name == "0":
        return ""
    return name[2:] if name.startswith("0.") else name
