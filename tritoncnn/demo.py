"""``tritoncnn demo``: run each kernel on random data and check it against PyTorch."""

from __future__ import annotations

import time

HELP = "run every tritoncnn kernel on random data, forward and backward, and compare with PyTorch"


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _cases():
    """(name, tritoncnn fn, torch reference fn, input shapes) for every op of the package."""
    import torch.nn.functional as F

    from tritoncnn import kernels

    conv_shapes = [(2, 3, 10, 10), (8, 3, 3, 3), (8,)]
    return [
        ("max_pool2d 2x2", lambda x: kernels.max_pool2d(x, 2),
         lambda x: F.max_pool2d(x, 2), [(2, 4, 12, 12)]),
        ("max_pool2d 3x3 s2 p1", lambda x: kernels.max_pool2d(x, 3, 2, 1),
         lambda x: F.max_pool2d(x, 3, 2, 1), [(2, 4, 11, 11)]),
        ("conv2d_relu 3x3 p1", lambda x, w, b: kernels.conv2d_relu(x, w, b, padding=1),
         lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), conv_shapes),
        ("linear", lambda x, w, b: kernels.linear(x, w, b),
         lambda x, w, b: F.linear(x, w, b), [(4, 20), (10, 20), (10,)]),
        ("conv2d_relu_pool 2x2",
         lambda x, w, b: kernels.conv2d_relu_pool(x, w, b, padding=1, pool=2),
         lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2), conv_shapes),
    ]


def main(args) -> int:
    import torch

    from tritoncnn import _runtime

    torch.manual_seed(args.seed)
    device = _runtime.device_type()
    # IEEE float32 against the float64 reference: the kernels (and PyTorch) follow
    # torch.backends.cudnn.allow_tf32, which a GPU has on, and TF32's error is above the 1e-3 bar
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return _compare_all(device)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _compare_all(device) -> int:
    import torch

    from tritoncnn import _runtime

    print(f"kernels run {'interpreted on the CPU' if _runtime.INTERPRET else 'compiled on ' + device}")
    print(f"{'op':<24} {'max |fwd err|':>14} {'max |grad err|':>15} {'seconds':>8}  ok")
    failures = 0
    for name, ours, ref, shapes in _cases():
        inputs = [torch.randn(s, device=device, dtype=torch.float32) for s in shapes]
        mine = [t.clone().requires_grad_() for t in inputs]
        theirs = [t.double().clone().requires_grad_() for t in inputs]
        start = time.perf_counter()
        out = ours(*mine)
        grad = torch.randn_like(out)
        out.backward(grad)
        seconds = time.perf_counter() - start
        expect = ref(*theirs)
        expect.backward(grad.double())
        fwd_err = (out.double() - expect).abs().max().item() if out.numel() else 0.0
        grad_err = max((a.grad.double() - b.grad).abs().max().item() for a, b in zip(mine, theirs))
        ok = fwd_err < 1e-3 and grad_err < 1e-3
        failures += not ok
        print(f"{name:<24} {fwd_err:>14.2e} {grad_err:>15.2e} {seconds:>8.2f}  {'yes' if ok else 'NO'}")
    print("all kernels match PyTorch" if not failures else f"{failures} kernel(s) differ from PyTorch")
    return 1 if failures else 0
