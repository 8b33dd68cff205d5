"""The op scaffolding, written once for every op: the eager route, the autograd Functions'
shared parts, the custom ops' autograd and autocast registrations, and the backward routing.

Each op file declares its op with these pieces:

* an autograd Function for the eager path, made by :func:`op_function` from the op's forward,
  setup_context, backward and jvp (plus a vmap rule and an eager twin, which every op shares);
* the ``torch.library`` custom ops (forward and backward, with fake kernels) that torch.compile,
  fake tensors, dispatch modes and ``torch.jit.trace`` see, declared with :func:`kernel_op` (so
  that torch.compile's graphs hold their kernel launches), registered for autograd with
  :func:`register_op_autograd` and, for the conv ops, for autocast with :func:`register_autocast`;
* a backward that :func:`route_backward` sends to PyTorch's differentiable ops (double backward),
  the launchers (plain eager calls) or the backward custom op (everything else).

The functional API calls the Function when :func:`eager_ok` says it may (about half of a small
layer's host time is the dispatcher's Python layers it skips), the custom op otherwise.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.autograd.forward_ad as _forward_ad

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_function_mode = getattr(torch._C, "_is_torch_function_mode_enabled", lambda: True)
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 1)
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_jit_tracing = torch._C._get_tracing_state  # torch.jit.trace: sizes are traced tensors there


def traced_checks_quiet(op):
    """Decorator for the functional ops: under ``torch.jit.trace``, whose sizes are traced
    tensors, the argument checks' ``if`` on sizes raise TracerWarnings ("the trace might not
    generalize"). They only validate the example call; nothing they decide goes into the trace
    (the custom op it records checks the concrete sizes of every later call), so they are
    silenced there. Outside tracing this costs a call and a C check."""

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        if not _jit_tracing():
            return op(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return op(*args, **kwargs)

    return wrapper


# torch.func transforms the ops' autograd Functions take: grad and vjp (setup_context and a
# backward that records itself), vmap (:func:`vmap_rule`), jvp (their ``jvp``)
FUNC_TRANSFORMS = (None, "Grad", "Vmap", "Jvp")


def func_transform() -> str | None:
    """The innermost ``torch.func`` transform active ("Grad" for grad and vjp, "Vmap", "Jvp",
    ...), or None."""
    if not _functorch_active():
        return None
    top = torch._C._functorch.peek_interpreter_stack()
    return None if top is None else top.key().name


def eager_ok(*tensors) -> bool:
    """Whether an op may skip its ``torch.library`` custom op and call its launchers (through
    its autograd Function) directly: the same code without the dispatcher's Python layers, about
    half of a small layer's host time. Only for plain tensors in eager mode (under autocast the
    callers cast the inputs themselves) or under the ``torch.func`` transforms of
    :data:`FUNC_TRANSFORMS` (which the custom op's autograd does not take, and the Functions
    do); under torch.compile, functionalize, a torch-function or dispatch mode (fake tensors,
    the flop counter), torch.jit.trace, for tensor subclasses or for meta tensors the custom op
    runs, which all of them understand."""
    if torch.compiler.is_compiling() or func_transform() not in FUNC_TRANSFORMS or \
            _function_mode() or _dispatch_modes() or _jit_tracing():
        return False
    return all(t is None or type(t) in _PLAIN_TENSORS and not t.is_meta for t in tensors)


def with_eager_twin(function: type) -> type:
    """Class decorator for the ops' new-style autograd Functions (forward without ctx,
    ``setup_context``, which torch.func needs): attaches ``function.eager_twin``, an old-style
    Function with the same forward, setup_context, backward and jvp but without the signature
    binding (``inspect.signature``, tens of microseconds) that ``Function.apply`` does per call
    for a Function with ``setup_context``. :func:`apply_function` picks between them."""

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    function.eager_twin = type(
        f"{function.__name__}Eager", (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
         "jvp": staticmethod(function.jvp),
         "__doc__": f"{function.__name__} for plain eager calls (see with_eager_twin)."})
    # autograd's own apply, without Function.apply's Python layer (its checks for functorch
    # transforms, which apply_function has made): about 2 us less per call
    function.eager_twin.raw_apply = torch._C._FunctionBase.__dict__["apply"].__get__(
        None, function.eager_twin)
    return function


def apply_function(function: type, *args):
    """``function.apply(*args)`` under a torch.func transform, its eager twin's otherwise; with
    nothing for autograd to record (no grad mode or no tensor that requires grad, no forward-mode
    AD level open: inference, evaluation), ``function.forward(*args)`` alone, which skips the
    autograd Function's few microseconds of host time."""
    transform = func_transform()
    if transform is not None:
        return function.apply(*args)
    if _forward_ad._current_level < 0 and (
            not torch.is_grad_enabled()
            or not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
        return function.forward(*args)
    if _functorch_active():
        return function.eager_twin.apply(*args)
    # (what Function.apply does first: a tensor left from a finished transform is unwrapped)
    return function.eager_twin.raw_apply(
        *[_unwrap_if_dead(a) if isinstance(a, torch.Tensor) else a for a in args])


def vmap_rule(function: type, info, in_dims, *args):
    """The ``vmap`` staticmethod of the ops' autograd Functions (``function``, whose leading
    arguments are its tensors and whose outputs are batched like its first input): with only
    the first input batched, the vmapped dimension folds into its leading one (N, or the planes
    of an unbatched max-pool input) for one launch; batched weights or bias run the batch one
    element at a time. Outputs come back batched along dimension 0."""
    if all(d is None for d in in_dims[1:]):
        x = args[0].movedim(in_dims[0], 0)
        batch, lead = x.shape[:2]
        out = function.apply(x.reshape(batch * lead, *x.shape[2:]), *args[1:])
        outs = tuple(o.reshape(batch, lead, *o.shape[1:])
                     for o in (out if isinstance(out, tuple) else (out,)))
    else:
        per = [function.apply(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)))
               for i in range(info.batch_size)]
        outs = tuple(torch.stack(o) for o in zip(*(p if isinstance(p, tuple) else (p,)
                                                   for p in per)))
    return (outs if len(outs) > 1 else outs[0]), ((0,) * len(outs) if len(outs) > 1 else 0)


def op_function(name: str, doc: str, *, forward: Callable, setup_context: Callable,
                backward: Callable, jvp: Callable) -> type:
    """A new-style autograd Function (forward without ctx, then ``setup_context``, as torch.func
    needs) from an op's pieces, with the shared vmap rule (:func:`vmap_rule`) and an eager twin
    (:func:`with_eager_twin`); call it through :func:`apply_function`."""
    function = type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context), "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
        "vmap": staticmethod(lambda info, in_dims, *args: vmap_rule(function, info, in_dims,
                                                                   *args)),
    })
    return with_eager_twin(function)


def route_backward(ctx, grad_output: torch.Tensor, *, differentiable: Callable,
                   launcher: Callable, op: Callable):
    """An op's backward, routed: when autograd records the backward pass (double backward,
    torch.func's grad of grad), ``differentiable()``, PyTorch's own differentiable ops on the
    saved tensors; in plain eager mode (:func:`eager_ok`) or with launch-config overrides (which
    the custom ops do not take), ``launcher()``; otherwise ``op()``, the backward custom op."""
    if torch.is_grad_enabled():
        return differentiable()
    if getattr(ctx, "configs", None) or eager_ok(grad_output):
        return launcher()
    return op()


def grad_mask(ctx) -> list:
    """[dX, dW, db] wanted by autograd of a conv op (db only when the forward had a bias)."""
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.needs_input_grad[2] and ctx.has_bias]


def grads_or_empty(grads, like: torch.Tensor) -> tuple:
    """A backward custom op's results: a custom op cannot return None, so a gradient left out by
    its ``output_mask`` comes back as an empty tensor."""
    return tuple(g if g is not None else like.new_empty(0) for g in grads)


def wanted(computed, mask) -> list:
    """The backward custom op's results with the left-out gradients as None again."""
    return [g if want else None for g, want in zip(computed, mask)]


def fake_conv_grads(input: torch.Tensor, weight: torch.Tensor, output_mask) -> tuple:
    """The fake kernel of a conv backward op: (dX, dW, db) shaped as input, weight and (K,), in
    their formats, empty where ``output_mask`` leaves them out."""
    from ._checks import memory_format_of

    need_dx, need_dw, need_db = output_mask
    return (
        torch.empty_like(input, memory_format=memory_format_of(input)) if need_dx
        else input.new_empty(0),
        torch.empty_like(weight) if need_dw else input.new_empty(0),
        weight.new_empty((weight.shape[0],)) if need_db else input.new_empty(0),
    )


def kernel_op(name: str) -> Callable:
    """Decorator declaring a tritoncnn custom op ``name`` ("tritoncnn::...") whose body launches
    Triton kernels: a ``torch.library.triton_op``, which torch.compile decomposes into its body,
    so that its graph holds the kernel launches themselves (``triton_kernel_wrapper`` nodes,
    which ``_runtime.launch`` records for launches on fake tensors) and Inductor compiles them
    with the rest of the graph. Called eagerly, it runs as any custom op.

    The bodies are host code for static shapes (configs looked up per shape, launches prepared
    per call signature): traced with symbolic sizes (torch.compile's dynamic shapes), the op is
    left whole in the graph, as a plain custom op is, and runs its body at run time. Each op
    registers its own fake kernel after this (which replaces the body as the fake kernel: it
    serves meta tensors and symbolic sizes too)."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def declare(body: Callable):
        op = torch.library.triton_op(name, mutates_args=())(body)
        # triton_op's own rule (private: a torch without it keeps triton_op's behaviour)
        decompose = getattr(op, "_torch_dispatch_fns", {}).get(FunctionalTensorMode)
        if decompose is None:
            return op

        def functional(mode, func, types, args, kwargs):
            if _symbolic(args):
                return mode.__torch_dispatch__(func, types, args, kwargs)
            return decompose(mode, func, types, args, kwargs)

        op.register_torch_dispatch(FunctionalTensorMode, functional)
        return op

    return declare


def _symbolic(args) -> bool:
    """Whether any tensor among ``args`` has a symbolic size or stride."""
    return any(isinstance(a, torch.Tensor) and any(isinstance(n, torch.SymInt)
                                                   for n in (*a.shape, *a.stride()))
               for a in args)


def register_op_autograd(op, backward: Callable, setup_context: Callable, params: int) -> None:
    """Autograd for a forward custom op: ``backward(ctx, grad_output)`` gives the gradients of
    its tensor arguments, which come first; its ``params`` other arguments get None. Extra
    outputs (window offsets) are not differentiable."""

    def op_backward(ctx, grad_output, *_grad_extra):
        return (*backward(ctx, grad_output), *(None,) * params)

    op.register_autograd(op_backward, setup_context=setup_context)


_autocast_lib = torch.library.Library("tritoncnn", "FRAGMENT")


def autocast_inputs(device_type: str, *tensors) -> tuple:
    """The tensors cast to torch.autocast's dtype for ``device_type``, as F.conv2d's are (floating
    tensors on that device but float64, which autocast leaves; None and others as they are): what
    the ops' autocast registrations and the functional API's eager path do under autocast."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point()
                 and t.dtype != torch.float64 and t.device.type == device_type else t
                 for t in tensors)


def register_autocast(name: str, op) -> None:
    """Under torch.autocast (CPU and CUDA), cast the (input, weight, bias) of custom op
    ``tritoncnn::<name>`` to the autocast dtype, as F.conv2d does, then run it with autocast
    off."""
    for device_type, dispatch_key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        def autocast_op(input, weight, bias, *args, device_type=device_type):
            cast = autocast_inputs(device_type, input, weight, bias)
            with torch.autocast(device_type, enabled=False):
                return op(*cast, *args)

        _autocast_lib.impl(name, autocast_op, dispatch_key)
