"""torch.compile sees tritoncnn's kernels: the custom ops are triton_ops, so a compiled graph holds
their kernel launches (``triton_kernel_wrapper`` nodes) where an opaque op would stand, with the
values and gradients of eager calls. On the CPU the graphs run through aot_eager and Triton's
interpreter; a GPU checks what Inductor generates from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import AotEagerAndRecordGraphs
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

from tritoncnn import _runtime
from tritoncnn.kernels import avg_pool2d, conv2d, conv2d_relu, conv2d_relu_pool, linear, max_pool2d

from conftest import DEVICE, TOL, compare, ieee_fp32

# name: (ours(x, w, b), float64 reference(x, w, b), x shape, w shape or None, reduction length);
# FORWARD_KERNEL[name]: how the names of its forward kernels begin
CASES = {
    "conv2d-stride2": (lambda x, w, b: conv2d(x, w, b, stride=2, padding=1),
                       lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                       (2, 3, 7, 6), (5, 3, 3, 3), 27),
    "conv2d_relu-same": (lambda x, w, b: conv2d_relu(x, w, b, padding="same"),
                         lambda x, w, b: F.relu(F.conv2d(x, w, b, padding="same")),
                         (2, 4, 5, 5), (3, 4, 3, 3), 36),
    "conv2d_relu_pool": (lambda x, w, b: conv2d_relu_pool(x, w, b, padding=1),
                         lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2),
                         (2, 3, 6, 6), (4, 3, 3, 3), 27),
    "linear": (lambda x, w, b: linear(x, w, b, activation="relu"),
               lambda x, w, b: F.relu(F.linear(x, w, b)), (3, 7), (5, 7), 7),
    "max_pool2d": (lambda x, w, b: max_pool2d(x, 3, 2, 1),
                   lambda x, w, b: F.max_pool2d(x, 3, 2, 1), (2, 3, 7, 7), None, 1),
    "avg_pool2d": (lambda x, w, b: avg_pool2d(x, 2),
                   lambda x, w, b: F.avg_pool2d(x, 2), (2, 3, 6, 5), None, 4),
}


FORWARD_KERNEL = {"conv2d-stride2": "_conv_fwd", "conv2d_relu-same": "_conv_fwd",
                  "conv2d_relu_pool": "_conv_pool_fwd", "linear": "_conv_fwd",
                  "max_pool2d": "_max_pool_fwd", "avg_pool2d": "_avg_pool_fwd"}


def _inputs(case: str, channels_last: bool = False) -> list[torch.Tensor]:
    _, _, x_shape, w_shape, _ = CASES[case]
    x = torch.randn(x_shape, device=DEVICE)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    tensors = [x]
    if w_shape is not None:
        tensors += [torch.randn(w_shape, device=DEVICE), torch.randn(w_shape[0], device=DEVICE)]
    return [t.requires_grad_() for t in tensors]


def _call(fn, tensors):
    x, w, b = (*tensors, None, None)[:3]
    return fn(x, w, b)


def _targets(graphs) -> list[str]:
    return [str(node.target) for g in graphs for node in g.graph.nodes
            if node.op == "call_function"]


def _kernel_nodes(graphs):
    return [node for g in graphs for node in g.graph.nodes
            if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_graph_launches_the_kernels(case, channels_last):
    """torch.compile of the op, forward and backward: both graphs hold the op's kernel launches
    and no opaque tritoncnn op; values and every gradient (one shared upstream gradient) equal
    the eager call's bit for bit (the same kernels, configs and arguments) and the float64
    reference's within the tolerance."""
    ours, reference, _, _, reduce_len = CASES[case]
    torch._dynamo.reset()
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(lambda *t: _call(ours, t), backend=backend, fullgraph=True,
                             dynamic=False)
    tensors = _inputs(case, channels_last)
    with ieee_fp32():
        y = compiled(*tensors)
        grad = torch.randn_like(y)
        y.backward(grad)
        eager_in = [t.detach().clone().requires_grad_() for t in tensors]
        y_eager = _call(ours, eager_in)
        y_eager.backward(grad)
    fw, bw = backend.fw_graphs, backend.bw_graphs
    names = {kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__
             for node in _kernel_nodes(fw)}  # (before the reset, which empties the table)
    torch._dynamo.reset()

    assert len(fw) == len(bw) == 1
    for graphs, what in ((fw, "forward"), (bw, "backward")):
        targets = _targets(graphs)
        assert _kernel_nodes(graphs), f"{what} graph launches no kernel: {targets}"
        assert not [t for t in targets if "tritoncnn" in t], f"{what}: opaque op in {targets}"

    assert names and all(n.startswith(FORWARD_KERNEL[case]) for n in names), names
    assert torch.equal(y, y_eager)
    for i, (a, b) in enumerate(zip(tensors, eager_in)):
        assert torch.equal(a.grad, b.grad), f"gradient {i} differs from eager"
    ref_in = [t.detach().double().requires_grad_() for t in tensors]
    want = _call(reference, ref_in)
    want.backward(grad.double())
    base, rtol = TOL[torch.float32]
    compare("y", y, want, base, rtol, reduce_len)
    for i, (a, r) in enumerate(zip(tensors, ref_in)):
        # a gradient sums over the output positions a value feeds, up to reduce_len * outputs
        compare(f"grad {i}", a.grad, r.grad, base, rtol, reduce_len * y[0].numel())


def test_symbolic_sizes_keep_the_op_whole():
    """Traced with dynamic shapes the op stays one opaque node (its host code is for static
    shapes) and runs at run time, with the eager values."""
    torch._dynamo.reset()
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(lambda x, w: conv2d_relu(x, w, None, padding=1), backend=backend,
                             fullgraph=True, dynamic=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    for n in (2, 3):
        x = torch.randn(n, 3, 5, 5, device=DEVICE)
        assert torch.equal(compiled(x, w), conv2d_relu(x, w, None, padding=1))
    torch._dynamo.reset()
    targets = _targets(backend.fw_graphs)
    assert "tritoncnn.conv2d.default" in targets and not _kernel_nodes(backend.fw_graphs)


def test_eager_calls_launch_without_tracing(monkeypatch):
    """Plain calls, through the functional API or the custom op itself, launch the kernels
    directly: never through wrap_triton's traced launch (about a millisecond of dispatch)."""

    def refuse(kernel):
        raise AssertionError(f"an eager launch of {kernel} went through wrap_triton")

    monkeypatch.setattr(_runtime, "traceable", refuse)
    x = torch.randn(2, 3, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    conv2d_relu_pool(x, w, None, padding=1).sum().backward()
    y, offsets = torch.ops.tritoncnn.conv2d_relu_pool(x.detach(), w.detach(), None, [1, 1],
                                                     [1, 1, 1, 1], [1, 1], 1, 2, False)
    assert y.shape == offsets.shape == (2, 4, 3, 3)
    max_pool2d(x.detach(), 2)


@pytest.mark.gpu
def test_gpu_inductor_code_launches_the_kernels():
    """Inductor's generated code for the forward and backward launches tritoncnn's kernels
    itself, and the graphs copy no input of a kernel (Triton's mutation analysis sees which
    arguments each kernel writes)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x = torch.randn(4, 8, 12, 12, device="cuda", requires_grad=True)
    w = torch.randn(16, 8, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(16, device="cuda", requires_grad=True)
    compiled = torch.compile(lambda x, w, b: conv2d_relu_pool(x, w, b, padding=1).square().sum(),
                             fullgraph=True, dynamic=False)
    _, code = run_and_get_code(lambda: compiled(x, w, b).backward())
    code = "\n".join(code)
    for kernel in ("_conv_pool_fwd_kernel", "_grad_z_kernel", "_conv_dw_kernel"):
        assert kernel in code, kernel
    torch._dynamo.reset()
    backend = AotEagerAndRecordGraphs()
    torch.compile(lambda x, w: conv2d_relu(x, w, None, padding=1).sum(), backend=backend,
                  fullgraph=True, dynamic=False)(x, w).backward()
    torch._dynamo.reset()
    for node in _kernel_nodes(backend.fw_graphs):
        assert node.kwargs["tensors_to_clone"] == ["y_ptr"], node.kwargs["tensors_to_clone"]
