"""One conv layer's forward and backward, run a few times on the GPU, for a profiler to watch:

    ncu --clock-control none --kernel-name regex:'^_(conv|grad_z|dx_weight|sum_splits)' \\
        --launch-skip 12 --launch-count 6 --section SpeedOfLight --section WarpStateStats \\
        --csv python3 reports/profile_layer.py

runs conv2d_relu (bf16, channels_last) on VGG-16's conv3_2 (64 x 256 x 56 x 56, 256 3x3 filters)
forward and backward ``--iters`` times (default 3); the first iteration compiles the kernels, so
a profiler skips its launches (6 an iteration here: the forward, the dZ pass, the flipped weight,
dX on the forward kernel, dW and its split sum). ``--layer N,C,H,W,K,R,pad`` picks another one.
"""

from __future__ import annotations

import argparse

import torch

from tritoncnn import kernels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="64,256,56,56,256,3,1",
                        help="N,C,H,W,K,R,pad (default: VGG-16 conv3_2)")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    n, c, h, w, k, r, pad = (int(v) for v in args.layer.split(","))
    fmt = torch.channels_last
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16).to(memory_format=fmt)
    wt = (torch.randn(k, c, r, r, device="cuda", dtype=torch.bfloat16) / (c * r * r) ** 0.5)
    wt = wt.to(memory_format=fmt)
    b = torch.zeros(k, device="cuda", dtype=torch.bfloat16)
    leaves = [t.requires_grad_() for t in (x, wt, b)]
    grad = None
    for _ in range(args.iters):
        y = kernels.conv2d_relu(*leaves, padding=pad)
        grad = torch.randn_like(y) if grad is None else grad
        torch.autograd.grad(y, leaves, grad)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
