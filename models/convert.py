"""convert(model): swap a model's torch.nn layers for tritoncnn layers, keeping its weights.

What is replaced, searched through every nested container:

* ``nn.Conv2d`` -> ``nn.ReLU`` -> ``nn.MaxPool2d(F)`` with stride F (no padding, dilation,
  ceil_mode or return_indices) -> ``Conv2dReLUPool`` (one kernel that writes only the pooled
  output);
* ``nn.Conv2d`` -> ``nn.ReLU`` -> ``Conv2dReLU`` (one kernel, ReLU in the epilogue);
* ``nn.Linear`` -> ``nn.ReLU`` -> ``LinearReLU``, the same way;
* a lone ``nn.Conv2d`` -> ``Conv2d``, ``nn.MaxPool2d`` -> ``MaxPool2d``,
  ``nn.Linear`` -> ``Linear``, ``nn.AvgPool2d`` -> ``AvgPool2d``, ``nn.AdaptiveAvgPool2d`` ->
  ``AdaptiveAvgPool2d`` (on the kernel where the output size divides the input's, on
  ``F.adaptive_avg_pool2d`` elsewhere).

Converting only swaps modules; it never replaces a ``forward``. Fusion is found in two places:

* between neighbours of an ``nn.Sequential``: the fused layer takes the first slot and the ReLU
  (and pool) slots become ``nn.Identity``, so indices and ``state_dict`` keys stay the same;
* in a custom module's ``forward``, found by tracing it with ``torch.fx`` (its submodules as
  leaves) as an analysis only. It is traced in train and in eval mode, and once more with the
  arguments that have defaults fixed at their defaults (``scale=None`` takes the ``None`` branch),
  so Python branches on ``self.training`` or on optional arguments are seen. A conv is fused
  when, in every trace, each of its calls has a single user, a call of an ``nn.ReLU`` module
  (for the pooled form: whose single user is a call of an eligible ``nn.MaxPool2d`` module), and
  the pattern is found in both modes. A ReLU or pool module becomes ``nn.Identity`` only when every
  one of its calls consumes a fused output; otherwise it stays (relu(relu(x)) is relu(x)), and a
  conv whose pool must stay is fused with its ReLU only. A ReLU called as a function
  (``self.pool(F.relu(self.conv(x)))``, ``torch.relu``, ``.relu()``, in place or not) counts
  as the ReLU when an eligible pool module follows it: the conv becomes ``Conv2dReLUPool``, the
  pool ``nn.Identity``, and the call stays in the forward, where it leaves the pooled output
  (already >= 0) unchanged; without such a pool, a conv followed by a ReLU function is converted
  on its own (fusing would save nothing while the call stays). A module
  whose calls are not all visible (below a custom forward torch.fx cannot trace, called by a
  torch.nn container other than nn.Sequential, or registered in two places) is never fused there.

Below a forward torch.fx cannot trace (data-dependent control flow, ...) only nn.Sequential
neighbours are fused; the other layers there are converted one for one, and the report says so.
Python attributes read in ``forward`` (``if self.use_pool:``) are taken at their values at
conversion time.

A layer with hooks of its own (``register_forward_hook`` and the like) is converted alone, never
fused, and the new layer takes its hooks over (with ``inplace=True``, the hook handles taken
before converting still remove them);
a ReLU or max-pool module with hooks is never fused into a layer before it.

Parameters move as they are (the same ``nn.Parameter`` objects, on their device and dtype), so the
converted model gives the same outputs within the kernels' rounding, and converting consumes no
random numbers: a model built and converted under one seed has the weights of the unconverted one.

What is left alone is reported: layers of the conv, pool or linear families that the kernels do
not serve (integer dtypes, ``nn.Conv1d``, ``nn.AvgPool1d``, a subclass of
``nn.Conv2d`` with a ``forward`` of its own, ...) and any other layer holding parameters. The
report is returned on the model as ``model.convert_report`` (a :class:`ConvertReport`), logged,
and, when something was kept, issued as a ``UserWarning``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from tritoncnn._shapes import FLOAT_DTYPES

from .layers import (
    TRITON_LAYERS, AdaptiveAvgPool2d, AvgPool2d, Conv2d, Conv2dReLU, Conv2dReLUPool, Linear,
    LinearReLU, MaxPool2d,
)

__all__ = ["convert", "ConvertReport"]

log = logging.getLogger(__name__)


@dataclass
class ConvertReport:
    """What convert() did: qualified module names with the classes before and after."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old, new)
    # (layer, relu) or (layer, relu, pool): the modules fused into the layer
    fused: list[tuple[str, ...]] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (name, class, reason)
    traced: list[str] = field(default_factory=list)  # custom modules torch.fx analysed
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"convert: {len(self.replaced)} layers replaced ({len(self.fused)} fused with a "
            f"ReLU, {sum(len(f) == 3 for f in self.fused)} of them also with a max-pool), "
            f"{len(self.kept)} kept as they were"
        ]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  kept {name} ({cls}): {why}" for name, cls, why in self.kept]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# building one tritoncnn layer from one torch.nn layer, without new random numbers

def _conv_reason(m: nn.Conv2d) -> str | None:
    if m.weight.dtype not in FLOAT_DTYPES:
        return f"dtype {m.weight.dtype} (kernels compute in fp32, fp16, bf16, fp64)"
    return None


def _linear_reason(m: nn.Linear) -> str | None:
    if m.weight.dtype not in FLOAT_DTYPES:
        return f"dtype {m.weight.dtype} (kernels compute in fp32, fp16, bf16, fp64)"
    return None


# A module's own hooks, registered on it with register_*_hook: a converted layer takes them
# over (the same dicts, so the handles of a model converted in place still remove them).
_HOOK_ATTRS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _hooked(m: nn.Module) -> bool:
    """Whether ``m`` has forward, forward-pre or backward hooks of its own: they see its input and
    output, which fusing would change (a fused conv outputs after the ReLU; a fused ReLU or pool
    is not called at all), so such a module is never fused."""
    return bool(m._forward_pre_hooks or m._forward_hooks or m._backward_pre_hooks
                or m._backward_hooks)


def _carry(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new`` (built on the meta device) the parameters, mode and hooks of ``old``."""
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    return _carry_hooks(new, old)


def _carry_hooks(new: nn.Module, old: nn.Module) -> nn.Module:
    for attr in _HOOK_ATTRS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    return new


def _from_conv(m: nn.Conv2d, relu: bool, pool: int | None = None) -> nn.Module:
    args = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
            m.groups)
    kw = dict(bias=m.bias is not None, padding_mode=m.padding_mode, device="meta")
    if pool is not None:
        new = Conv2dReLUPool(*args, **kw, pool=pool)
    else:
        new = (Conv2dReLU if relu else Conv2d)(*args, **kw)
    return _carry(new, m)


def _from_linear(m: nn.Linear, relu: bool) -> nn.Module:
    cls = LinearReLU if relu else Linear
    new = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
    return _carry(new, m)


def _from_pool(m: nn.MaxPool2d) -> nn.Module:
    new = MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
    new.train(m.training)
    return _carry_hooks(new, m)


def _from_avg_pool(m: nn.Module) -> nn.Module:
    if type(m) is nn.AdaptiveAvgPool2d:
        new = AdaptiveAvgPool2d(m.output_size)
    else:
        new = AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                        m.divisor_override)
    new.train(m.training)
    return _carry_hooks(new, m)


def _fusable(m: nn.Module) -> bool:
    """An exact nn.Conv2d or nn.Linear that a tritoncnn layer can serve (subclasses may have their
    own forward and are left alone), without hooks of its own."""
    if _hooked(m):
        return False
    if type(m) is nn.Conv2d:
        return _conv_reason(m) is None
    if type(m) is nn.Linear:
        return _linear_reason(m) is None
    return False


def _fused(m: nn.Module, pool: int | None = None) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        return _from_conv(m, relu=True, pool=pool)
    return _from_linear(m, relu=True)


def _is_relu_module(m: nn.Module) -> bool:
    return type(m) is nn.ReLU and not _hooked(m)


# ReLU as a function call in a forward: F.relu(x), F.relu(x, inplace=True), torch.relu(x),
# x.relu() and their in-place forms
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


def _call_label(node: torch.fx.Node) -> str:
    """How a ReLU call reads in the report: ``relu()`` (a function) or ``.relu()`` (a method)."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    return f".{name}()" if node.op == "call_method" else f"{name}()"


def _is_relu_call(node: torch.fx.Node, arg: torch.fx.Node) -> bool:
    """``node`` applies ReLU to ``arg`` and nothing else, as a function or method call."""
    if node.op == "call_function":
        known = any(node.target is f for f in _RELU_FUNCTIONS)
    else:
        known = node.op == "call_method" and node.target in _RELU_METHODS
    return known and tuple(node.args) == (arg,) and set(node.kwargs) <= {"inplace"}


def _pool_window(m: nn.Module) -> int | None:
    """F when ``m`` is an ``nn.MaxPool2d`` with square F x F windows at stride F and no padding,
    dilation, ceil_mode or indices (what the fused conv + ReLU + pool kernel serves) and no hooks,
    else None."""
    if type(m) is not nn.MaxPool2d or m.return_indices or m.ceil_mode or _hooked(m):
        return None
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    if k[0] != k[1] or s != k or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1):
        return None
    return k[0]


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# --------------------------------------------------------------------------------------------
# pass 1: Conv2d/Linear -> ReLU (-> MaxPool2d) neighbours inside nn.Sequential

def _registrations(model: nn.Module) -> dict[int, int]:
    """How many parents (or slots of one parent) each module of ``model`` is registered in, by
    id. A module inside a shared block counts once: the block computes the same everywhere."""
    counts: dict[int, int] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            if child is not None:
                counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def _fuse_sequentials(model: nn.Module, report: ConvertReport) -> None:
    counts = _registrations(model)
    for prefix, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue

        def qual(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        names = list(seq._modules)
        i = 0
        while i + 1 < len(names):
            a, b = names[i], names[i + 1]
            first, second = seq._modules[a], seq._modules[b]
            if (first is None or second is None or not _fusable(first)
                    or not _is_relu_module(second)
                    or counts[id(first)] > 1 or counts[id(second)] > 1):
                i += 1  # a module shared with another place keeps its own behaviour
                continue
            window = None
            if isinstance(first, nn.Conv2d) and i + 2 < len(names):
                third = seq._modules[names[i + 2]]
                if third is not None and counts[id(third)] == 1:
                    window = _pool_window(third)
            new = _fused(first, window)
            seq._modules[a] = new
            seq._modules[b] = nn.Identity()
            report.replaced.append((qual(a), type(first).__name__, type(new).__name__))
            if window is not None:
                c = names[i + 2]
                seq._modules[c] = nn.Identity()
                report.fused.append((qual(a), qual(b), qual(c)))
                i += 3
            else:
                report.fused.append((qual(a), qual(b)))
                i += 2


# --------------------------------------------------------------------------------------------
# pass 2: Conv2d/Linear -> ReLU (-> MaxPool2d) module calls in custom forward()s, found by
# torch.fx as an analysis; modules are swapped, forwards are left as they are

class _ChildrenAreLeaves(torch.fx.Tracer):
    """Traces one module's own forward: every submodule call stays a single call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _custom_owner(m: nn.Module) -> bool:
    """A module with submodules and a forward of its own (not PyTorch's, not tritoncnn's): a
    user's class, or a torch.fx GraphModule (``symbolic_trace``, or
    ``torch.fx.experimental.optimization.fuse`` after folding batch norms into the convs)."""
    if isinstance(m, TRITON_LAYERS) or not m._modules:
        return False
    return isinstance(m, torch.fx.GraphModule) or type(m).__module__.split(".")[0] != "torch"


def _trace_variants(owner: nn.Module) -> list[tuple[bool, torch.fx.Graph]]:
    """(training, graph) of ``owner``'s forward in train and eval mode, each traced with every
    argument symbolic and, when some have defaults, again with those fixed at their defaults."""
    params = inspect.signature(owner.forward).parameters.values()
    defaults = {p.name: p.default for p in params
                if p.default is not inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    saved = [(m, m.training) for m in owner.modules()]
    graphs = []
    try:
        for mode in (True, False):
            owner.train(mode)
            graphs.append((mode, _ChildrenAreLeaves().trace(owner)))
            if defaults:
                graphs.append((mode, _ChildrenAreLeaves().trace(owner,
                                                                concrete_args=dict(defaults))))
    finally:
        for m, training in saved:
            m.training = training
    return graphs


@dataclass
class _Call:
    """One call_module node of a traced forward."""

    training: bool
    node: torch.fx.Node
    owner: str  # qualified name of the module whose forward holds the call


class _CallSites:
    """Every call of a module in the traced forwards, where all of them can be seen."""

    def __init__(self, model: nn.Module, report: ConvertReport) -> None:
        self.modules = dict(model.named_modules())
        self.counts = _registrations(model)
        self.traces: dict[str, list[tuple[bool, torch.fx.Graph]]] = {}
        for qual, owner in self.modules.items():
            if not _custom_owner(owner):
                continue
            try:
                self.traces[qual] = _trace_variants(owner)
            except Exception as err:  # noqa: BLE001 - any tracing failure means "not traceable"
                first_line = str(err).splitlines()[0] if str(err) else ""
                report.notes.append(
                    f"forward of {qual or '<model>'} ({type(owner).__name__}) is not torch.fx-"
                    f"traceable ({type(err).__name__}: {first_line}); its layers were converted "
                    "without fusing"
                )
        report.traced += list(self.traces)

    def qual(self, call: _Call, target: str) -> str:
        return f"{call.owner}.{target}" if call.owner else target

    def of(self, qual: str) -> list[_Call] | None:
        """The calls of module ``qual`` in every trace; None when some caller may be unseen:
        the module is registered twice, its caller is not a traced custom forward (an
        nn.Sequential, say), or a custom forward above it could not be traced."""
        if not qual or self.counts.get(id(self.modules[qual]), 0) != 1:
            return None
        parts = qual.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts))]  # "", "a", "a.b", ...
        caller = next(a for a in reversed(ancestors)  # ModuleList/ModuleDict call nothing
                      if type(self.modules[a]) not in (nn.ModuleList, nn.ModuleDict))
        if caller not in self.traces:
            return None
        calls = []
        for a in ancestors:
            if not _custom_owner(self.modules[a]):
                continue  # PyTorch's containers call their own children only
            if a not in self.traces:
                return None
            rel = qual[len(a) + 1:] if a else qual
            calls += [_Call(mode, n, a) for mode, g in self.traces[a] for n in g.nodes
                      if n.op == "call_module" and n.target == rel]
        return calls

    def sole_user(self, call: _Call, node: torch.fx.Node,
                  accept) -> tuple[str, torch.fx.Node] | None:
        """(name, node) of the module call that is ``node``'s only user, taking ``node`` as its
        only argument, when ``accept(module)``."""
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op != "call_module" or tuple(user.args) != (node,) or user.kwargs:
            return None
        qual = self.qual(call, user.target)
        module = self.modules.get(qual)
        if module is None or not accept(module):
            return None
        return qual, user

    @staticmethod
    def sole_relu_call(node: torch.fx.Node) -> tuple[None, torch.fx.Node] | None:
        """(None, node) of the ReLU function or method call that is ``node``'s only user."""
        if len(node.users) != 1:
            return None
        (user,) = node.users
        return (None, user) if _is_relu_call(user, node) else None


def _fuse_traced(model: nn.Module, report: ConvertReport) -> None:
    """Fuse Conv2d/Linear -> nn.ReLU (-> nn.MaxPool2d) module calls inside custom forwards."""
    sites = _CallSites(model, report)
    if not sites.traces:
        return
    # classify every candidate layer from all of its calls
    pairs: dict[str, list[tuple[str, torch.fx.Node]]] = {}  # layer -> its ReLU calls
    triples: dict[str, tuple[int, list[tuple[str, torch.fx.Node]]]] = {}  # -> F, pool calls
    for qual, m in sites.modules.items():
        if not _fusable(m):
            continue
        calls = sites.of(qual)
        if not calls or {c.training for c in calls} != {True, False}:
            continue  # not seen in both modes
        relus = [sites.sole_user(c, c.node, _is_relu_module) or sites.sole_relu_call(c.node)
                 for c in calls]
        if any(r is None for r in relus):
            continue
        pairs[qual] = relus
        if isinstance(m, nn.Conv2d):
            pools = [sites.sole_user(c, r[1], lambda p: _pool_window(p) is not None)
                     for c, r in zip(calls, relus)]
            windows = {_pool_window(sites.modules[p[0]]) for p in pools if p is not None}
            if all(p is not None for p in pools) and len(windows) == 1:
                triples[qual] = (windows.pop(), pools)

    def replaceable(qual: str, fused_nodes: set[int]) -> bool:
        """Every call of module ``qual`` consumes a fused output."""
        calls = sites.of(qual)
        return bool(calls) and all(id(c.node) in fused_nodes for c in calls)

    # a pool that must stay (it also pools something else) keeps its convs at Conv2dReLU
    changed = True
    while changed:
        fused_pools = {id(n) for _, pools in triples.values() for _, n in pools}
        bad = {q for q, (_, pools) in triples.items()
               if not all(replaceable(p, fused_pools) for p, _ in pools)}
        changed = bool(bad)
        for q in bad:
            del triples[q]

    # A ReLU called as a function stays in the forward: it then runs on the fused layer's
    # output, where it changes nothing (relu(relu(x)) is relu(x), and a max-pool of ReLU outputs
    # is >= 0). That is worth it only when a pool module fuses too.
    pairs = {q: relus for q, relus in pairs.items()
             if q in triples or all(name is not None for name, _ in relus)}
    fused_relus = {id(n) for relus in pairs.values() for name, n in relus if name is not None}
    for qual, relus in pairs.items():
        old = sites.modules[qual]
        window, pools = triples.get(qual, (None, []))
        new = _fused(old, window)
        _set_submodule(model, qual, new)
        relu_names = list(dict.fromkeys(r if r is not None else _call_label(n) for r, n in relus))
        pool_names = list(dict.fromkeys(p for p, _ in pools))
        for r in relu_names:
            if r in sites.modules and replaceable(r, fused_relus):
                _set_submodule(model, r, nn.Identity())
        for p in pool_names:  # every call of these pools consumes a fused output
            _set_submodule(model, p, nn.Identity())
        report.replaced.append((qual, type(old).__name__, type(new).__name__))
        report.fused.append((qual, "+".join(relu_names),
                             *(["+".join(pool_names)] if pools else [])))


def _set_submodule(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


# --------------------------------------------------------------------------------------------
# pass 3: every remaining layer one by one

_FAMILIES = ("Conv", "Pool", "Linear", "Bilinear")
# the torch.nn classes a tritoncnn layer replaces (their subclasses are reported, not replaced)
_SERVED = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _replace_lone(model: nn.Module, report: ConvertReport) -> list[str]:
    """Convert every remaining layer on its own; return the names of those with hooks."""
    done: dict[int, nn.Module | None] = {}  # a shared module: one replacement, one report
    hooked: list[str] = []
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
            elif type(child) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
                new = _from_avg_pool(child)
            elif isinstance(child, TRITON_LAYERS):
                continue
            elif isinstance(child, nn.modules.lazy.LazyModuleMixin) and \
                    child.has_uninitialized_params():
                report.kept.append((qual, type(child).__name__, "a lazy module not initialized "
                                    "yet: run one forward pass, then convert()"))
            elif isinstance(child, _SERVED):
                base = next(c for c in _SERVED if isinstance(child, c))
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
                if _hooked(child):
                    hooked.append(qual)
    return hooked


# --------------------------------------------------------------------------------------------

def convert(model: nn.Module, *, inplace: bool = False, fuse: bool = True,
            trace: bool = True, warn: bool = True) -> nn.Module:
    """Return ``model`` with its torch.nn layers replaced by tritoncnn layers.

    Args:
        model: any ``nn.Module``; nested containers are searched.
        inplace: change ``model`` itself (its parameters stay the same objects, so an optimizer
            built on it keeps working) instead of a deep copy.
        fuse: fuse Conv2d -> ReLU (-> MaxPool2d) and Linear -> ReLU into one layer.
        trace: use ``torch.fx`` to find such calls in custom ``forward`` methods (an analysis
            only: no forward is replaced).
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
    hooked = _replace_lone(holder, lone)
    report.replaced += [(_strip0(n), o, c) for n, o, c in lone.replaced]
    report.kept += [(_strip0(n), c, r) for n, c, r in lone.kept]
    report.notes += [f"{_strip0(n) or '<model>'}: its hooks carried over (a layer with hooks is "
                     "not fused: they see the unfused layer's input and output)" for n in hooked]
    model = holder[0]

    model.convert_report = report
    log.info("%s", report)
    if warn and report.kept:
        names = "; ".join(f"{n or '<model>'} ({c}): {why}" for n, c, why in report.kept)
        warnings.warn(
            f"convert(): {len(report.kept)} layers kept as torch.nn: {names} "
            "(model.convert_report lists every change)",
            UserWarning,
            stacklevel=2,
        )
    return model


def _strip0(name: str) -> str:
    """Names from the wrapping holder (``0.features.1``) back to the model's own."""
    if name == "0":
        return ""
    return name[2:] if name.startswith("0.") else name
