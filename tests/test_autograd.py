"""Higher-order and functional autograd of every op (conv2d_relu, conv2d_relu_pool, max_pool2d):
double backward (create_graph=True), torch.func's reverse-mode, vmap and forward-mode transforms,
torch.autograd.forward_ad and functionalize, against PyTorch's float64 ops; and the plain eager
path's old-style autograd Functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tritoncnn.kernels import (Conv2dFunction, Conv2dReLUPoolFunction, MaxPool2dFunction,
                               conv2d_relu, conv2d_relu_pool, linear, max_pool2d)

from conftest import DEVICE, ieee_fp32 as _ieee_fp32


OPS = {  # name: (op on tritoncnn's kernels, the same on PyTorch's, its tensors' shapes)
    "conv2d_relu": (lambda x, w, b: conv2d_relu(x, w, b, padding="same", groups=2),
                    lambda x, w, b: F.relu(F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, groups=2)),
                    ((2, 4, 7, 6), (6, 2, 2, 2), (6,))),
    "conv2d_relu_pool": (lambda x, w, b: conv2d_relu_pool(x, w, b, padding=1),
                         lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2),
                         ((2, 3, 6, 5), (4, 3, 3, 3), (4,))),
    "max_pool2d": (lambda x: max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   ((2, 3, 7, 6),)),
}


def _penalized(op, tensors, channels_last=False):
    """The gradients of loss + |d loss / d tensors|^2 (a gradient penalty), loss = |op(...)|^2:
    the penalty's part goes through the backward pass of the backward pass."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    leaves = [t.clone().contiguous(memory_format=fmt) if t.dim() == 4 else t.clone()
              for t in tensors]
    leaves = [t.requires_grad_() for t in leaves]
    loss = op(*leaves).square().sum()
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    assert all(g.requires_grad for g in grads)  # they can be differentiated again
    (loss + sum(g.square().sum() for g in grads)).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("name", sorted(OPS))
def test_func_grad_vjp_and_jacrev_match_pytorch(name):
    """torch.func.grad (nested too: a gradient penalty), vjp and jacrev run the ops' autograd
    Functions and match PyTorch's float64 ops."""
    ours, theirs, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    rest, rest64 = tensors[1:], [t.double() for t in tensors[1:]]

    def loss(op, rest):
        return lambda x: op(x, *rest).square().sum()

    def penalty(op, rest):
        return lambda x: torch.func.grad(loss(op, rest))(x).square().sum()

    x = tensors[0]
    with _ieee_fp32():
        got = [torch.func.grad(loss(ours, rest))(x), torch.func.grad(penalty(ours, rest))(x),
               torch.func.vjp(lambda x: ours(x, *rest), x)[1](ours(x, *rest))[0],
               torch.func.jacrev(lambda x: ours(x, *rest).sum((0, 2, 3)))(x)]
    x64 = x.double()
    want = [torch.func.grad(loss(theirs, rest64))(x64),
            torch.func.grad(penalty(theirs, rest64))(x64),
            torch.func.vjp(lambda x: theirs(x, *rest64), x64)[1](theirs(x64, *rest64))[0],
            torch.func.jacrev(lambda x: theirs(x, *rest64).sum((0, 2, 3)))(x64)]
    for what, g, r in zip(("grad", "grad of grad", "vjp", "jacrev"), got, want):
        assert r.abs().max() > 0, what
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item(),
                                   msg=f"{name}: {what}")


def test_plain_eager_calls_run_the_old_style_twins():
    """Plain eager calls run the eager twins of the ops' autograd Functions: a Function with
    setup_context (what torch.func needs) costs an inspect.signature binding per call."""
    x = torch.randn(1, 3, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    names = [type(y.grad_fn).__name__ for y in (conv2d_relu(x, w, None, padding=1),
                                                 conv2d_relu_pool(x, w, None, padding=1),
                                                 max_pool2d(x, 2))]
    assert names == ["_Conv2dCheckedEagerBackward", "_Conv2dReLUPoolCheckedEagerBackward",
                     "_MaxPool2dCheckedEagerBackward"]


@pytest.mark.parametrize("name", sorted(OPS))
def test_func_vmap_per_sample_gradients_and_batched_weights_match_pytorch(name):
    """torch.func.vmap: per-sample gradients (vmap of grad over the batch, as torch.func's
    tutorial does it) fold the vmapped dimension into N; vmapped weights (an ensemble) run one
    member at a time. Both match PyTorch's float64 ops."""
    ours, theirs, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    x, rest = tensors[0], tensors[1:]

    def per_sample(op, x, rest):
        def loss(xi, *rest):
            return op(xi.unsqueeze(0), *rest).square().sum()
        argnums = tuple(range(len(rest) + 1))
        return torch.func.vmap(torch.func.grad(loss, argnums=argnums),
                               in_dims=(0, *[None] * len(rest)))(x, *rest)

    with _ieee_fp32():
        got = list(per_sample(ours, x, rest))
    want = list(per_sample(theirs, x.double(), [t.double() for t in rest]))
    if rest:  # an ensemble of 3: every weight and bias vmapped, the input shared
        members = [torch.stack([t, 2 * t, -t]) for t in rest]
        with _ieee_fp32():
            got.append(torch.func.vmap(lambda *r: ours(x, *r))(*members))
        want.append(torch.func.vmap(lambda *r: theirs(x.double(), *r))(
            *[m.double() for m in members]))
    for i, (g, r) in enumerate(zip(got, want)):
        assert g.shape == r.shape and r.abs().max() > 0, i
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item(),
                                   msg=f"{name}: result {i}")


@pytest.mark.parametrize("name", sorted(OPS))
def test_forward_mode_jvp_jacfwd_and_hessian_match_pytorch(name):
    """Forward mode: torch.func.jvp (tangents on every tensor), jacfwd, hessian (forward over
    reverse) and torch.autograd.forward_ad all match PyTorch's float64 ops;
    torch.func.functionalize runs the custom op."""
    import torch.autograd.forward_ad as fwAD

    ours, theirs, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    tangents = [torch.randn_like(t) for t in tensors]
    x, rest = tensors[0], tensors[1:]
    small = x[:1]

    def results(op, tensors, tangents):
        x, rest = tensors[0], tensors[1:]
        out = [torch.func.jvp(op, tuple(tensors), tuple(tangents))[1],
               torch.func.jacfwd(lambda x: op(x, *rest).sum((0, 2, 3)))(x[:1]),
               torch.func.hessian(lambda x: op(x, *rest).square().sum())(x[:1, :, :4, :4])]
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, tangents[0])
            out.append(fwAD.unpack_dual(op(dual, *rest)).tangent)
        return out

    with _ieee_fp32():
        got = results(ours, tensors, tangents)
        got.append(torch.func.functionalize(lambda x: ours(x, *rest))(small))
    want = results(theirs, [t.double() for t in tensors], [t.double() for t in tangents])
    want.append(theirs(small.double(), *[t.double() for t in rest]))
    for what, g, r in zip(("jvp", "jacfwd", "hessian", "forward_ad", "functionalize"), got, want):
        assert g.shape == r.shape and r.abs().max() > 0, what
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item(),
                                   msg=f"{name}: {what}")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(OPS))
def test_double_backward_matches_pytorch(name, channels_last):
    ours, theirs, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    with _ieee_fp32():
        got = _penalized(ours, tensors, channels_last)
    want = _penalized(theirs, [t.double() for t in tensors], channels_last)
    for i, (g, r) in enumerate(zip(got, want)):
        assert g is not None and r.abs().max() > 0, i
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item(),
                                   msg=f"{name}: gradient {i}")


# the public autograd Function classes, beside the functional API they share their Functions with
FUNCTIONS = {
    "conv2d_relu": lambda x, w, b: Conv2dFunction.apply(x, w, b, 1, "same", 1, 2, "relu"),
    "conv2d_relu_pool": lambda x, w, b: Conv2dReLUPoolFunction.apply(x, w, b, 1, 1),
    "max_pool2d": lambda x: MaxPool2dFunction.apply(x, 3, 2, 1, 1, True),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_public_functions_take_the_same_transforms(name):
    """Conv2dFunction, Conv2dReLUPoolFunction and MaxPool2dFunction give the functional API's
    results under double backward, torch.func.grad, vmap and jvp."""
    ours, public = OPS[name][0], FUNCTIONS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in OPS[name][2]]
    x, rest = tensors[0], tensors[1:]

    def results(op):
        return [*_penalized(op, tensors),
                torch.func.grad(lambda x: op(x, *rest).square().sum())(x),
                torch.func.vmap(lambda xi: op(xi.unsqueeze(0), *rest))(x),
                torch.func.jvp(lambda x: op(x, *rest), (x,), (torch.ones_like(x),))[1]]

    for i, (got, want) in enumerate(zip(results(public), results(ours))):
        torch.testing.assert_close(got, want, msg=f"{name}: result {i}")


@pytest.mark.parametrize("name", sorted(OPS))
def test_checkpointing_and_inference_mode(name):
    """Activation checkpointing (reentrant or not) recomputes the forward and gives the same
    gradients; under torch.inference_mode the ops run and return inference tensors."""
    op, _, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    grads = []
    for how in (None, True, False):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = op(*leaves) if how is None else \
            torch.utils.checkpoint.checkpoint(op, *leaves, use_reentrant=how)
        out.square().sum().backward()
        grads.append([t.grad for t in leaves])
    for checkpointed in grads[1:]:
        for got, want in zip(checkpointed, grads[0]):
            torch.testing.assert_close(got, want)
    with torch.inference_mode():
        out = op(*tensors)
    assert out.is_inference()
    torch.testing.assert_close(out, op(*tensors).detach())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(OPS))
def test_meta_tensors_give_pytorchs_shapes(name, channels_last):
    """On the meta device (a model built or traced for its shapes) the functional API runs its
    custom op's fake kernel: PyTorch's output shape, dtype and memory format, gradients of the
    inputs' shapes, and nothing launched; so do the autograd Functions. (PyTorch's meta conv
    ignores channels_last; ours keeps the input's format, as the op does on a real device.)"""
    ours, torchs, shapes = OPS[name]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tensors = [torch.empty(s, device="meta").contiguous(memory_format=fmt) if len(s) == 4
               else torch.empty(s, device="meta") for s in shapes]
    tensors = [t.requires_grad_() for t in tensors]
    got, want = ours(*tensors), torchs(*tensors)
    assert got.is_meta
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert got.is_contiguous(memory_format=fmt)
    got.sum().backward()
    assert [t.grad.shape for t in tensors] == [t.shape for t in tensors]
    public = FUNCTIONS[name](*tensors)
    assert public.is_meta and (public.shape, public.stride()) == (got.shape, got.stride())


def test_meta_linear_and_a_model_on_meta():
    """linear and a model whose parameters were made on the meta device (``torch.device('meta')``
    as the default device) work for shapes, as PyTorch's own layers do."""
    from tritoncnn import models
    x, w = torch.empty(5, 2, 20, device="meta"), torch.empty(7, 20, device="meta")
    assert linear(x, w, activation="relu").shape == F.linear(x, w).shape
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                  torch.nn.Linear(8 * 4 * 4, 10))
    ours = models.convert(net)
    assert isinstance(ours[0], models.Conv2dReLUPool)
    out = ours(torch.empty(4, 3, 8, 8, device="meta"))
    assert out.is_meta and out.shape == (4, 10)


_CHECKED = {"conv2d_relu": "conv._Conv2dChecked",
            "conv2d_relu_pool": "conv_pool._Conv2dReLUPoolChecked",
            "max_pool2d": "max_pool._MaxPool2dChecked"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_calls_with_nothing_to_record_skip_the_autograd_function(name, monkeypatch):
    """Under no_grad, or with no input that requires grad, the functional API runs its launcher
    without an autograd Function (host time); with an input that requires grad, or a forward-mode
    AD level open (dual tensors need not require grad), the Function runs and records."""
    import importlib
    import torch.autograd.forward_ad as fwAD
    module, cls = _CHECKED[name].split(".")
    twin = getattr(importlib.import_module(f"tritoncnn.kernels.{module}"), cls).eager_twin
    applied = []
    for apply in ("apply", "raw_apply"):  # (raw_apply: autograd's C apply, in plain eager mode)
        monkeypatch.setattr(twin, apply, lambda *args, _real=getattr(twin, apply):
                            applied.append(1) or _real(*args))
    ours, torchs, shapes = OPS[name]
    tensors = [torch.randn(s, device=DEVICE) for s in shapes]
    with _ieee_fp32():  # float32 compared in IEEE on both sides (no TF32 on a GPU)
        with torch.no_grad():
            plain = ours(*tensors)
        assert ours(*tensors).grad_fn is None and not applied  # nor when nothing requires grad
        torch.testing.assert_close(plain, torchs(*tensors))
        leaf = tensors[0].clone().requires_grad_()
        out = ours(leaf, *tensors[1:])
        assert out.grad_fn is not None and len(applied) == 1
        tangent = torch.randn_like(tensors[0])
        with fwAD.dual_level():
            dual = fwAD.make_dual(tensors[0], tangent)
            got = fwAD.unpack_dual(ours(dual, *tensors[1:])).tangent
            want = fwAD.unpack_dual(torchs(dual, *tensors[1:])).tangent
        assert len(applied) == 2
        torch.testing.assert_close(got, want)


GRADCHECK = {  # small float64 cases: torch.autograd.gradcheck differentiates numerically
    "conv2d_relu": (lambda x, w, b: conv2d_relu(x, w, b, stride=(1, 2), padding=1),
                    ((1, 2, 4, 5), (3, 2, 3, 3), (3,))),
    "conv2d_relu_pool": (lambda x, w, b: conv2d_relu_pool(x, w, b, padding=1),
                         ((1, 2, 5, 5), (2, 2, 3, 3), (2,))),
    "max_pool2d": (lambda x: max_pool2d(x, 3, 2, 1, ceil_mode=True), ((1, 2, 5, 6),)),
    "linear": (lambda x, w, b: linear(x, w, b, activation="relu"), ((3, 4), (2, 4), (2,))),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_float64_passes_gradcheck(name):
    """float64 runs on the kernels too (fp64 accumulators), so torch.autograd.gradcheck and
    gradgradcheck hold for every op (their fast mode: the numerical derivative along random
    directions, which any wrong gradient fails but in a few evaluations)."""
    op, shapes = GRADCHECK[name]
    torch.manual_seed(0)
    tensors = [torch.randn(s, device=DEVICE, dtype=torch.float64, requires_grad=True)
               for s in shapes]
    assert op(*tensors).dtype == torch.float64
    assert torch.autograd.gradcheck(op, tensors, fast_mode=True)
    assert torch.autograd.gradgradcheck(op, tensors, fast_mode=True)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(OPS))
def test_float64_matches_pytorch_to_its_rounding(name, channels_last):
    """float64 outputs and gradients within float64 rounding of PyTorch's; under torch.autocast
    float64 stays float64, as it does for F.conv2d."""
    ours, torchs, shapes = OPS[name]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    tensors = [torch.randn(s, device=DEVICE, dtype=torch.float64) for s in shapes]
    tensors = [t.contiguous(memory_format=fmt) if t.dim() == 4 else t for t in tensors]
    a = [t.clone().requires_grad_() for t in tensors]
    b = [t.clone().requires_grad_() for t in tensors]
    got, want = ours(*a), torchs(*b)
    # the input's layout, as PyTorch keeps it (but for its CUDA float64 convolutions, which
    # return NCHW: cuDNN has no channels_last float64 kernels)
    assert got.dtype == torch.float64 and got.is_contiguous(memory_format=fmt)
    if not (DEVICE == "cuda" and name != "max_pool2d"):
        assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    got.backward(grad)
    want.backward(grad)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert ours(*tensors).dtype == torch.float64


@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_linear_takes_every_transform(lead):
    """linear's eager path is one autograd Function on (rows, in_features) (the 1x1 conv's views
    made inside it): backward, double backward, torch.func grad, vjp, jacrev, per-sample vmap and
    ensembles, jvp, jacfwd, hessian and forward_ad all match F.linear + ReLU in float64; a call
    with nothing to record runs no Function."""
    import torch.autograd.forward_ad as fwAD

    def ours(x, w, b):
        return linear(x, w, b, activation="relu")

    def theirs(x, w, b):
        return F.relu(F.linear(x, w, b))

    torch.manual_seed(0)
    tensors = [torch.randn(*lead, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE),
               torch.randn(3, device=DEVICE)]
    tangents = [torch.randn_like(t) for t in tensors]

    def results(op, tensors, tangents):
        x, w, b = tensors
        rows = x.reshape(-1, 4)
        out = [op(*tensors), *_penalized(op, tensors),
               torch.func.grad(lambda x: op(x, w, b).square().sum())(x),
               torch.func.grad(lambda x: torch.func.grad(
                   lambda x: op(x, w, b).square().sum())(x).square().sum())(x),
               torch.func.vjp(lambda x: op(x, w, b), x)[1](op(x, w, b))[0],
               torch.func.jacrev(lambda x: op(x, w, b).sum(0))(rows),
               *torch.func.vmap(torch.func.grad(lambda xi, w, b: op(xi[None], w, b).square()
                                                .sum(), argnums=(0, 1, 2)),
                                in_dims=(0, None, None))(rows, w, b),
               torch.func.vmap(lambda w, b: op(x, w, b))(torch.stack([w, -w]),
                                                        torch.stack([b, 2 * b])),
               torch.func.jvp(op, tuple(tensors), tuple(tangents))[1],
               torch.func.jacfwd(lambda x: op(x, w, b).sum(0))(rows),
               torch.func.hessian(lambda x: op(x, w, b).square().sum())(rows[:2])]
        with fwAD.dual_level():
            out.append(fwAD.unpack_dual(op(fwAD.make_dual(x, tangents[0]), w, b)).tangent)
        return out

    with _ieee_fp32():
        got = results(ours, tensors, tangents)
    want = results(theirs, [t.double() for t in tensors], [t.double() for t in tangents])
    for i, (g, r) in enumerate(zip(got, want)):
        assert g.shape == r.shape and r.abs().max() > 0, i
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item(),
                                   msg=f"linear: result {i}")
    with torch.no_grad():
        assert ours(*tensors).grad_fn is None
    leaf = tensors[0].clone().requires_grad_()
    assert type(ours(leaf, *tensors[1:]).grad_fn).__name__.startswith(
        "_LinearChecked" if len(lead) == 1 else "View")


def test_linear_output_can_be_modified_in_place():
    """linear's output is no view of a tensor made inside its autograd Function (which autograd
    forbids modifying in place): an in-place op on it keeps the right gradients. (With ReLU the
    output is saved for the backward, as F.relu's is: autograd refuses it there, as for F.relu.)"""
    torch.manual_seed(0)
    tensors = [torch.randn(5, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE),
               torch.randn(3, device=DEVICE)]

    def grads(op, tensors):
        leaves = [t.clone().requires_grad_() for t in tensors]
        y = op(*leaves)
        y.mul_(2).add_(1)
        y.square().sum().backward()
        return [t.grad for t in leaves]

    with _ieee_fp32():
        got = grads(linear, tensors)
    want = grads(F.linear, [t.double() for t in tensors])
    for g, r in zip(got, want):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
