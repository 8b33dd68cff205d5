"""Compile every Triton kernel for a Hopper GPU (sm_90) on a machine without one.

The interpreter proves the algorithms but never runs Triton's compiler, so code that it accepts can
still fail to compile for a GPU. This script runs the public ops in compiled mode with a stand-in
driver that reports an sm_90 target and turns every launch into a compile-only warm-up: each
kernel specialization the ops would launch goes through the real pipeline (TTIR, TTGIR, LLVM, PTX,
ptxas to cubin), and nothing is executed (outputs are left unwritten, values are meaningless).

    python tests/compile_sm90.py        # prints one line per compiled kernel, exits 1 on failure
    python tests/compile_sm90.py --suites   # the bench suites' layers on their heuristic configs
    python tests/compile_sm90.py --loops    # the conv kernels' main loops on a large layer: SASS

It also checks that the channels_last bf16 conv kernels issue Hopper's warpgroup MMA (``wgmma``),
and the float64 ones mma.sync's fp64 MMA;
that tile loads are vectorised (conv: 16-byte ``cp.async`` only, NCHW operands included; NHWC
max-pool and the NCHW non-overlapping forward: vector loads only);
that the configs the autotuner's pruning keeps use no more registers than sm_90 has (the configs
with the most accumulator values per thread, of every conv kernel, in bf16 and fp32, assembled
with ``ptxas -v``: no spill stores); that every kernel it compiled, and the configs the tuner's
shared-memory model rates the largest, fit sm_90's shared memory as compiled; and that the
tuner's parallel pre-compilation
(``autotune.tuner.precompile``) compiles every config of a real tuning problem on worker threads,
so that the timed pass compiles nothing; and that the copy of every kernel Inductor makes for
torch.compile's graphs (the kernel's source with the helpers and globals it reaches) compiles.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
import types

os.environ["TRITONCNN_MODE"] = "compiled"
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SMS = 132  # H100 SXM


class _Sm90Driver:
    """Just enough of a CUDA driver for JITFunction to compile for TARGET."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED: list[tuple[str, dict, object]] = []  # (kernel name, constexprs, kernel or its future)
# The conv backward's element-wise helpers (no GEMM: no wgmma, no tile loads to check)
NOT_GEMM = frozenset({"_sum_splits_kernel", "_grad_z_kernel", "_dx_weight_kernel"})


FIRST_CALLS: dict = {}  # kernel -> (args, grid, kwargs) of its first compiled specialization


def _compile_only(self, *args, grid, warmup, **kwargs):
    FIRST_CALLS.setdefault(self, (args, grid, kwargs))
    # under AsyncCompileMode this is a future: resolved (ptx) only once every compile is done
    kernel = _jit_run(self, *args, grid=grid, warmup=True, **kwargs)
    consts = {k: v for k, v in kwargs.items() if k.isupper() or k.startswith("num_")}
    COMPILED.append((self.__name__, consts, kernel))
    return kernel


PREPARED: dict[str, str | None] = {}  # kernel name -> a prepared launch's argument mismatch


def _check_prepared(prepared, **tensors):
    """A prepared launch (``KernelLaunch``) hands the compiled kernel its arguments itself, in
    the kernel's order: they must be what Triton's own binder passes for the same call."""
    result = _prepared_call(prepared, **tensors)
    binder = prepared.kernel.device_caches[0][4]
    bound, _, _ = binder(**prepared.fixed, **tensors)
    ours = prepared.arguments(tensors)
    theirs = list(bound.values())
    same = len(ours) == len(theirs) and all(
        a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(ours, theirs))
    name = prepared.kernel.__name__
    if not same:
        PREPARED[name] = f"prepared {ours} vs Triton's {theirs}"
    else:
        PREPARED.setdefault(name, None)
    return result


def _ptx(kernel) -> str:
    return (kernel.result() if hasattr(kernel, "result") else kernel).asm["ptx"]


def install() -> None:
    triton.runtime.driver.set_active(_Sm90Driver())
    global _jit_run
    _jit_run = JITFunction.run
    JITFunction.run = _compile_only
    from tritoncnn import _runtime

    global _prepared_call
    _prepared_call = _runtime.KernelLaunch.__call__
    _runtime.KernelLaunch.__call__ = _check_prepared
    # Launchers read the SM count for split heuristics; kernels need no real device otherwise.
    torch.cuda.get_device_properties = lambda *_: types.SimpleNamespace(
        multi_processor_count=SMS, name="sm90-compile-check")
    _runtime.check_device = lambda name, tensor, meta_ok=False: None  # CPU tensors stand in for CUDA ones


def exercise() -> None:
    """Every op, forward and backward, over the dtypes, layouts and epilogues the kernels have."""
    from tritoncnn import kernels

    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        for channels_last in (True, False):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x = torch.randn(2, 64, 20, 20, dtype=dtype).contiguous(memory_format=fmt)
            w = torch.randn(64, 64, 3, 3, dtype=dtype).contiguous(memory_format=fmt)
            b = torch.randn(64, dtype=dtype)
            for relu in (True, False):
                xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
                y = kernels.conv2d(xs, ws, bs, padding=1, activation="relu" if relu else None)
                y.backward(torch.ones_like(y))
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            kernels.conv2d_relu(xs, ws, None, stride=2, padding=1).sum().backward()
            xs = x.clone().requires_grad_()
            kernels.max_pool2d(xs, 2).sum().backward()
            xs = x.clone().requires_grad_()
            kernels.max_pool2d(xs, 3, 2, 1).sum().backward()
            for args, kw in (((2,), {}), ((3, 2, 1), dict(count_include_pad=False))):
                xs = x.clone().requires_grad_()
                kernels.avg_pool2d(xs, *args, **kw).sum().backward()
            if hasattr(kernels, "conv2d_relu_pool"):
                for pool in (2, 3):
                    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
                    kernels.conv2d_relu_pool(xs, ws, bs, padding=1, pool=pool).sum().backward()
        h = torch.randn(8, 256, dtype=dtype, requires_grad=True)
        fc = torch.randn(128, 256, dtype=dtype, requires_grad=True)
        kernels.linear(h, fc, None, activation="relu").sum().backward()


SERIALIZED: set[str] = set()  # PTX of kernels whose wgmma ptxas serialized (C7515)


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) of one kernel, from ``ptxas -v`` for sm_90a.
    A kernel whose ``wgmma`` ptxas had to serialize (its warning C7515: something other than a
    wgmma writes an accumulator register while one is in flight, so MMAs no longer overlap) goes
    into :data:`SERIALIZED`."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, check=True).stderr
    if "C7515" in log:
        SERIALIZED.add(ptx)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


SPILL_TOLERANCE = 16  # bytes: a few spilled outside the main loop cost nothing measurable


def main_loops(ptx: str) -> list[list[str]]:
    """The loops that issue the kernel's ``HGMMA`` (its main loops), each as its SASS instruction
    lines, in what ``nvdisasm`` makes of the sm_90a cubin: the code that runs every iteration."""
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", src, "-o", cubin],
                       capture_output=True, check=True)
        sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cubin],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    labels = {m.group(1): i for i, line in enumerate(sass)
              if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    loops = []
    for i, line in enumerate(sass):  # a backward branch closes a loop
        m = re.search(r"BRA\s+`?\(?\.(L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            body = [b for b in sass[labels[m.group(1)]:i + 1] if re.search(r"/\*[0-9a-f]{4}\*/", b)]
            if any("HGMMA" in b for b in body):
                loops.append(body)
    return loops


def main_loop_spills(ptx: str) -> int:
    """Local-memory loads and stores (``LDL``/``STL``) inside the main loops
    (:func:`main_loops`): the spills that cost every iteration, where ones before or after the
    loop cost once."""
    return sum(bool(re.search(r"\b(LDL|STL)\b", b)) for body in main_loops(ptx) for b in body)


def scan_loops() -> int:
    """A static profile of the conv kernels' main loops on a large layer (VGG-16 conv3_2: 64 x
    256 x 56 x 56, 256 3x3 filters, bf16, channels_last), forward and backward, plain and fused
    with a 2x2 pool, on the launchers' heuristic configs: SASS instructions per iteration, the
    ``HGMMA`` among them, and the warp-instructions an SM issues per 1000 bf16 FLOPs of MMA (an
    H100 SM issues 4 a clock and does about 2048 bf16 FLOPs: above ~2 the loop waits on issue, not
    on its tensor cores), with the kernels whose wgmma ptxas serialized (C7515). Run by hand to
    compare kernel variants without a GPU, ``python tests/compile_sm90.py --loops``."""
    from tritoncnn import kernels

    x = torch.empty(64, 256, 56, 56, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    w = torch.empty(256, 256, 3, 3, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    b = torch.empty(256, dtype=torch.bfloat16)
    for pool in (None, 2):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        start = len(COMPILED)
        if pool:
            y = kernels.conv2d_relu_pool(xs, ws, bs, padding=1, pool=pool)
        else:
            y = kernels.conv2d_relu(xs, ws, bs, padding=1)
        backward = len(COMPILED)
        y.backward(torch.empty_like(y))
        for i, (name, consts, k) in enumerate(COMPILED[start:], start):
            loops = main_loops(_ptx(k))
            if not loops:
                continue
            if i >= backward and name == "_conv_fwd_kernel":  # the stride-1 dX runs on it
                name = "dx on _conv_fwd_kernel"
            body = max(loops, key=len)
            mma = sum("HGMMA" in line for line in body)
            ptxas_usage(_ptx(k))  # (fills SERIALIZED)
            tile = [consts[v] for v in ("BLOCK_M", "BLOCK_N", "BLOCK_K")]
            flop = 2 * tile[0] * tile[1] * tile[2]
            issue = consts["num_warps"] * len(body) / flop * 1000
            print(f"pool={pool or 1} {name:24s} {'x'.join(map(str, tile))} w{consts['num_warps']}: "
                  f"{len(body)} SASS an iteration, {mma} HGMMA, {issue:.2f} warp-instructions "
                  f"per 1000 FLOPs{', wgmma serialized' if _ptx(k) in SERIALIZED else ''}")
    return 0


def check_registers(top: int = 2) -> str | None:
    """Per conv kernel (the fused pool one with pool 2 and 3) and dtype (bf16, fp32), the ``top``
    pruned configs with the most accumulator values per thread, and every kernel on its
    launcher's heuristic config (the max-pools over windows up to 8x8), must assemble without
    spilling (more than
    :data:`SPILL_TOLERANCE` bytes); the heuristic ones must also issue wgmma (bf16, and fp32 as
    TF32, PyTorch's default for convolutions). Returns what went wrong, or None."""
    from tritoncnn import _runtime, autotune
    from tritoncnn.autotune import spaces

    _runtime.device_type = lambda: "cpu"
    base = autotune.conv_shape((2, 128, 16, 16), (128, 128, 3, 3), 1, 1, 1, 1)
    cases = [(k, base) for k in ("conv_fwd", "conv_dx", "conv_dw")]
    cases += [("conv_pool_fwd", dict(base, pool=2)), ("conv_pool_fwd", dict(base, pool=3))]
    bad, lines = [], []
    for kernel, shape in cases:
        for dtype in (torch.bfloat16, torch.float32):
            found = spaces.candidates(kernel, shape, dtype, smem_budget=spaces.DEFAULT_SMEM_BYTES,
                                      num_sms=SMS)
            found.sort(key=lambda c: -c["BLOCK_M"] * c["BLOCK_N"] / c["num_warps"])
            problem = autotune.make_problem(kernel, shape, dtype, "nhwc")
            for cfg in found[:top]:
                start = len(COMPILED)
                problem.run(cfg)
                for name, _, k in COMPILED[start:]:
                    if name in NOT_GEMM:
                        continue
                    regs, spills = ptxas_usage(_ptx(k))
                    tile = "x".join(str(cfg[x]) for x in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    line = (f"{kernel} pool={shape.get('pool', 1)} {str(dtype)[6:]} {tile} "
                            f"w{cfg['num_warps']} s{cfg['num_stages']}: {regs} registers, "
                            f"{spills} B spilled")
                    lines.append(line)
                    if spills > SPILL_TOLERANCE:
                        bad.append(line)
    # the launchers' own heuristic configs on the same layer, forward and backward
    from tritoncnn import kernels

    # (float32 as TF32, PyTorch's default for convolutions, and as IEEE float32 on the FMA
    # units, with TF32 off: no wgmma there, and smaller tiles; a 3-channel layer too; float64,
    # on mma.sync's fp64 shapes (no wgmma either); and bf16 layers whose channel counts are no
    # multiples of 16, as airbench's and LeNet-5's: their tiles load element by element)
    for dtype, tf32, channels, filters, size in (
            (torch.bfloat16, None, 128, 128, 3), (torch.float32, True, 128, 128, 3),
            (torch.float32, False, 128, 128, 3), (torch.float32, False, 3, 64, 3),
            (torch.float32, False, 64, 64, 3), (torch.float64, None, 128, 128, 3),
            (torch.float64, None, 3, 64, 3), (torch.bfloat16, None, 24, 64, 3),
            (torch.bfloat16, None, 6, 16, 5), (torch.bfloat16, None, 16, 120, 5)):
        x = torch.randn(8, channels, 16, 16, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(filters, channels, size, size, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        b = torch.randn(w.shape[0], dtype=dtype)
        for pool in (1, 2, 3):
            xs, ws, bs = (v.clone().requires_grad_() for v in (x, w, b))
            start = len(COMPILED)
            if pool == 1:
                kernels.conv2d_relu(xs, ws, bs, padding=1, allow_tf32=tf32).sum().backward()
            else:
                kernels.conv2d_relu_pool(xs, ws, bs, padding=1, pool=pool,
                                         allow_tf32=tf32).sum().backward()
            for name, consts, k in COMPILED[start:]:
                if name in NOT_GEMM:
                    continue
                ptx = _ptx(k)
                regs, spills = ptxas_usage(ptx)
                tile = "x".join(str(consts[x]) for x in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                fp64 = dtype == torch.float64  # no wgmma: mma.sync's fp64 shapes (DMMA)
                mma = ("f64 mma" if ".f64.f64.f64.f64" in ptx else "NO f64 mma") if fp64 else \
                    ("wgmma" if "wgmma" in ptx else "NO wgmma")
                line = (f"heuristic {name} pool={pool} {str(dtype)[6:]} {consts['PRECISION']} "
                        f"C={channels} K={filters} {size}x{size} {tile} w{consts['num_warps']}: "
                        f"{regs} registers, {spills} B spilled, {mma}")
                lines.append(line)
                # wgmma takes 64-row tiles: a dW tile of 16 filters (LeNet's c3) cannot
                wgmma_possible = tf32 is not False and not fp64 and consts["BLOCK_M"] >= 64
                if spills > SPILL_TOLERANCE or mma.startswith("NO") and (fp64 or wgmma_possible):
                    bad.append(line)
    # the max-pools, forward and backward, on their heuristic tiles: windows up to 8x8,
    # overlapping or not, both layouts, an odd width (scalar loads) and an aligned one
    pools = [(args, torch.bfloat16) for args in
             ((2,), (3, 2, 1), (3, 1, 1), (5, 2, 2, 2), (7, 1, 3), (8, 1), ((1, 8),), (8,))]
    for args, dtype in pools + [((2,), torch.float64), ((3, 2, 1), torch.float64)]:
        for width, layout in ((41, "nchw"), (41, "nhwc"), (64, "nchw")):
            x = torch.randn(4, 16, 37, width, dtype=dtype)
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            start = len(COMPILED)
            kernels.max_pool2d(x.clone().requires_grad_(), *args).sum().backward()
            if len(args) <= 3:  # (average pooling has no dilation)
                kernels.avg_pool2d(x.clone().requires_grad_(), *args,
                                   count_include_pad=False).sum().backward()
            for name, consts, k in COMPILED[start:]:
                regs, spills = ptxas_usage(_ptx(k))
                tile = consts.get("BLOCK") or f"{consts['BLOCK_R']}x{consts['BLOCK_OW']}"
                line = (f"heuristic {name} {args} {str(dtype)[6:]} {layout} W={width} {tile} "
                        f"w{consts['num_warps']}: {regs} registers, {spills} B spilled")
                lines.append(line)
                if spills > SPILL_TOLERANCE:
                    bad.append(line)
    print("\n".join(["registers (ptxas -v, sm_90a):", *lines]))
    return f"{len(bad)} kernels spill or miss their MMA: {'; '.join(bad)}" if bad else None


def _shared(kernel) -> int:
    return (kernel.result() if hasattr(kernel, "result") else kernel).metadata.shared


def check_shared_memory(top: int = 3) -> str | None:
    """Shared memory as compiled (``metadata.shared``) within sm_90's per-block opt-in limit: every
    kernel compiled so far (the ops' heuristic configs over the dtypes and layouts, the register
    check's configs) and, per conv kernel and dtype, the ``top`` pruned configs the tuner's model
    (``spaces.conv_smem_bytes``) says need the most, whose need must not exceed the model's.
    Past the limit a launch fails on the GPU (OutOfResources) after compiling fine. Returns what
    went wrong, or None."""
    from tritoncnn import _runtime, autotune
    from tritoncnn.autotune import spaces

    limit = spaces.DEFAULT_SMEM_BYTES
    bad = [f"{name} {consts}: {_shared(k)} B" for name, consts, k in COMPILED
           if _shared(k) > limit]
    _runtime.device_type = lambda: "cpu"
    base = autotune.conv_shape((8, 256, 32, 32), (256, 256, 3, 3), 1, 1, 1, 1)
    lines = []
    for kernel, shape in [(k, base) for k in ("conv_fwd", "conv_dx", "conv_dw")] + [
            ("conv_pool_fwd", dict(base, pool=2)), ("conv_pool_fwd", dict(base, pool=3))]:
        for dtype in (torch.bfloat16, torch.float32):
            found = spaces.candidates(kernel, shape, dtype, smem_budget=limit, num_sms=SMS)
            found.sort(key=lambda c: -spaces.conv_smem_bytes(c, dtype, kernel))
            tiles = {tuple(c[x] for x in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages",
                                          "num_warps")): c for c in reversed(found)}
            problem = autotune.make_problem(kernel, shape, dtype, "nhwc")
            for cfg in list(tiles.values())[::-1][:top]:  # one per tile (not per SPLIT)
                start = len(COMPILED)
                problem.run(cfg)
                for name, _, k in COMPILED[start:]:
                    if name in NOT_GEMM:
                        continue
                    tile = "x".join(str(cfg[x]) for x in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    line = (f"{kernel} pool={shape.get('pool', 1)} {str(dtype)[6:]} {tile} "
                            f"s{cfg['num_stages']}: {_shared(k)} B (model "
                            f"{spaces.conv_smem_bytes(cfg, dtype, kernel)} B)")
                    lines.append(line)
                    # past the limit, or past the model (which must bound it, or the tuner
                    # keeps configs that cannot launch)
                    if _shared(k) > min(limit, spaces.conv_smem_bytes(cfg, dtype, kernel)):
                        bad.append(line)
    print("\n".join([f"shared memory (limit {limit} B):", *lines]))
    return f"{len(bad)} kernels need more shared memory than sm_90 has: {'; '.join(bad)}" \
        if bad else None


def _scalar_load_lines(ptx: str) -> list[tuple[str, int]]:
    """Source places (file name, line: ``.file`` / ``.loc``) of the scalar 1- and 2-byte global
    loads in ``ptx``."""
    files = {m.group(1): os.path.basename(m.group(2))
             for m in re.finditer(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M)}
    lines, where = [], ("", 0)
    for text in ptx.splitlines():
        loc = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)", text)
        if loc:
            where = (files.get(loc.group(1), ""), int(loc.group(2)))
        elif re.search(r"ld\.global\.b(?:8|16)\b", text):
            lines.append(where)
    return lines


def check_vector_loads() -> str | None:
    """Tile loads stay vectorised (bf16, a 128-channel layer): the conv kernels, given NCHW
    input and weight (read through channels_last copies), load every tile with 16-byte
    ``cp.async`` and nothing with scalar ``ld.global``, and so do they with 24 channels; the channels_last max-pools load inputs
    and gradients with vector loads only, and so does the NCHW non-overlapping forward; NCHW conv
    outputs (plain and pooled) and their dX are stored as vectors. Returns what went wrong, or
    None."""
    from tritoncnn import _runtime, autotune, kernels

    _runtime.device_type = lambda: "cpu"
    bad = []
    # the epilogue's bias load (one value per column) is not a tile load
    from tritoncnn.kernels import _gemm

    source = inspect.getsource(_gemm).splitlines()
    bias_line = ("_gemm.py",
                 next(i for i, s in enumerate(source, 1) if "bias = tl.load(b_ptr" in s))

    def conv_tiles_16_bytes(start: int, what: str, also: tuple = ()) -> None:
        """The conv kernels compiled since ``start`` load their tiles with 16-byte cp.async
        only (or sizes in ``also``), and nothing with scalar loads."""
        for name, _, k in COMPILED[start:]:
            if name in NOT_GEMM:
                continue
            ptx = _ptx(k)
            sizes = re.findall(r"cp\.async\.c[ag]\.shared\.global[^;]*,\s*(0x[0-9a-f]+)", ptx)
            scalar = [line for line in _scalar_load_lines(ptx) if line != bias_line]
            if "0x10" not in sizes or not set(sizes) <= {"0x10", *also} or scalar:
                bad.append(f"{what}{name}: cp.async sizes {sorted(set(sizes))}, "
                           f"{len(scalar)} scalar loads")

    shape = autotune.conv_shape((8, 128, 16, 16), (128, 128, 3, 3), 1, 1, 1, 1)
    for kernel in ("conv_fwd", "conv_dx", "conv_dw"):
        start = len(COMPILED)
        autotune.make_problem(kernel, shape, torch.bfloat16, "nchw").run(None)
        conv_tiles_16_bytes(start, "")
    # 24 channels in and out (not a multiple of 16: Triton's specialization knows nothing of
    # their alignment): the channel vector widths (CV, KV = 8) keep every tile load 16 bytes,
    # in the plain conv's and the fused pool's forward and backward
    x = torch.randn(8, 24, 16, 16, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(24, 24, 3, 3, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    for op in (kernels.conv2d_relu, kernels.conv2d_relu_pool):
        start = len(COMPILED)
        y = op(x, w, None, padding=1)
        y.backward(torch.ones_like(y))
        # (the fused pool's backward also loads its int8 window offsets: 8 channels, 8 bytes)
        conv_tiles_16_bytes(start, f"24 channels, {op.__name__} ",
                            ("0x8",) if op is kernels.conv2d_relu_pool else ())
    # a linear layer: its (B, C, 1, 1) operands have size-1 dimensions that PyTorch gives
    # stride 1, which hid their alignment (scalar loads, no cp.async) until they went in as 0
    h = torch.randn(256, 1024, dtype=torch.bfloat16, requires_grad=True)
    fc = torch.randn(1024, 1024, dtype=torch.bfloat16, requires_grad=True)
    start = len(COMPILED)
    kernels.linear(h, fc, None).sum().backward()
    conv_tiles_16_bytes(start, "linear ")
    x = torch.randn(8, 64, 32, 32, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    for args in ((2,), (3, 2, 1)):
        start = len(COMPILED)
        y = kernels.max_pool2d(x, *args)
        y.backward(torch.randn_like(y))
        for name, _, k in COMPILED[start:]:
            scalar = re.findall(r"ld\.global\.b16\b", _ptx(k))
            if scalar:
                bad.append(f"{name} {args}: {len(scalar)} scalar bf16 loads")
    # NCHW non-overlapping forward: whole window rows, 16-byte vectors where the row width holds
    # 8 bf16 (W = 32, 56), 8-byte ones where it holds 4 (W = 28)
    for width, vector in ((32, "v4.b32"), (56, "v4.b32"), (28, "v2.b32")):
        start = len(COMPILED)
        kernels.max_pool2d(torch.randn(8, 64, width, width, dtype=torch.bfloat16), 2)
        for name, _, k in COMPILED[start:]:
            loads = set(re.findall(r"ld\.global\.([.a-z0-9]+)", _ptx(k)))
            if name != "_max_pool_fwd_rows_kernel" or loads != {vector}:
                bad.append(f"{name} NCHW W={width}: loads {sorted(loads)}, not {vector} only")
    # NCHW conv outputs: runs of pixels stored as vectors (16 bytes of bf16 for 56 pixels a row,
    # 8 for 28), the fused pool's pooled outputs too (28 a row: 8 bytes of bf16), and dX of both
    # (stride 1) like the plain output
    for width, fwd_store, pool_store in ((56, "v4.b32", "v2.b32"), (28, "v2.b32", "b32")):
        x = torch.randn(2, 64, width, width, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(64, 64, 3, 3, dtype=torch.bfloat16)
        forward = []  # (the stride-1 dX runs on the forward kernel, into a channels_last dX)
        for op in (kernels.conv2d_relu, kernels.conv2d_relu_pool):
            start = len(COMPILED)
            y = op(x, w, None, padding=1)
            forward += COMPILED[start:]
            y.backward(torch.ones_like(y))
        for name, _, k in forward:
            stores = set(re.findall(r"st\.global\.([.a-z0-9]+)", _ptx(k)))
            want = pool_store if name == "_conv_pool_fwd_kernel" else fwd_store
            # (the pooled kernel's int8 offsets: half the y store's width, b16 for 28)
            if want not in stores or name != "_conv_pool_fwd_kernel" and "b16" in stores:
                bad.append(f"{name} NCHW {width}x{width}: stores {sorted(stores)}, not {want}")
    print("vector loads: " + ("; ".join(bad) if bad else "conv cp.async 16 B only, max-pool "
                              "vector loads only (NCHW forward too), NCHW conv outputs "
                              "stored as vectors"))
    return f"scalar tile loads: {'; '.join(bad)}" if bad else None


def check_precompile(workers: int = 2) -> str | None:
    """The tuner's parallel pre-compilation on a real problem (conv_fwd, bf16, channels_last):
    every config compiled on ``workers`` threads, and a second pass over the configs finds them all
    compiled. Returns what went wrong, or None."""
    from tritoncnn import _runtime, autotune
    from tritoncnn.autotune import tuner
    from tritoncnn.kernels.conv import _conv_fwd_kernel

    _runtime.device_type = lambda: "cpu"  # the problem's inputs: CPU tensors stand in
    shape = autotune.conv_shape((4, 32, 12, 12), (48, 32, 3, 3), 1, 1, 1, 1)
    problem = autotune.make_problem("conv_fwd", shape, torch.bfloat16, "nhwc")
    configs = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=4, num_stages=st)
               for bm, bn, bk, st in ((64, 32, 32, 2), (64, 64, 32, 3), (128, 32, 32, 2),
                                      (32, 64, 32, 3), (64, 16, 32, 2), (16, 64, 32, 3))]
    cache = _conv_fwd_kernel.device_caches[0][0]
    before = len(cache)
    seconds = tuner.precompile(problem, configs, workers=workers)
    added = len(cache) - before
    if added != len(configs):
        return f"precompile compiled {added} of {len(configs)} configs"
    start = time.perf_counter()
    for cfg in configs:
        problem.run(cfg)
    again = time.perf_counter() - start
    if len(cache) != before + added:
        return "the pass after precompile compiled again"
    print(f"precompile: {len(configs)} conv_fwd configs in {seconds:.1f}s on {workers} threads; "
          f"the pass after it took {again:.2f}s")
    return None


def scan_suites(nchw: bool = False) -> int:
    """Every conv layer of the bench suites (reports/bench_suite.csv), forward and backward, bf16
    and TF32, channels_last (NCHW with ``nchw``: the outputs and dX stored through the YV / XV
    hints), plain and fused with its pool, on the launchers' heuristic configs: the kernels that
    spill more than :data:`SPILL_TOLERANCE` bytes, with the local-memory accesses in their main
    loops (:func:`main_loop_spills`). Slow (minutes): run by hand after changing a
    heuristic, ``python tests/compile_sm90.py --suites [--nchw]``. Also lists the kernels whose
    wgmma ptxas serialized (C7515)."""
    from tritoncnn import kernels
    from tritoncnn.reports import suites

    bad = 0
    serialized = []
    for sh in suites.load_conv_suite():
        for dtype, tf32 in ((torch.bfloat16, None), (torch.float32, True)):
            fmt = torch.contiguous_format if nchw else torch.channels_last
            x = torch.empty(sh.N, sh.C, sh.H, sh.W, dtype=dtype).contiguous(memory_format=fmt)
            w = torch.empty(sh.K, sh.C, sh.R, sh.S, dtype=dtype).contiguous(memory_format=fmt)
            b = torch.empty(sh.K, dtype=dtype)
            for pool in (None, sh.pool) if sh.fused_pool else (None,):
                xs, ws, bs = (t.requires_grad_() for t in (x.clone(), w.clone(), b.clone()))
                start = len(COMPILED)
                if pool:
                    y = kernels.conv2d_relu_pool(xs, ws, bs, stride=sh.stride, padding=sh.pad,
                                                 pool=pool, allow_tf32=tf32)
                else:
                    y = kernels.conv2d_relu(xs, ws, bs, stride=sh.stride, padding=sh.pad,
                                            allow_tf32=tf32)
                y.backward(torch.empty_like(y))
                for name, consts, k in COMPILED[start:]:
                    regs, spills = ptxas_usage(_ptx(k))
                    if _ptx(k) in SERIALIZED:
                        serialized.append(f"{sh.layer}{'+pool' if pool else ''} "
                                          f"{str(dtype)[6:]} {name[1:-7]}")
                    if spills > SPILL_TOLERANCE:
                        bad += 1
                        tile = "x".join(str(consts.get(v, "-"))
                                        for v in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                        in_loop = main_loop_spills(_ptx(k))
                        print(f"{sh.suite}/{sh.layer} {'nchw' if nchw else 'nhwc'} "
                              f"pool={pool or 1} {str(dtype)[6:]} {name} "
                              f"{tile} w{consts.get('num_warps')}: {regs} registers, {spills} B "
                              f"spilled, {in_loop or 'no'} LDL/STL in the main loop")
    # not a failure: a measurement decides what serialized MMAs cost; the GPU run's tuning
    # tables and these names together say where to look
    print(f"wgmma serialized by ptxas (C7515), {len(serialized)} kernels: "
          + ", ".join(serialized))
    print(f"suites: {len(COMPILED)} kernels compiled, {bad} spill")
    return 1 if bad else 0


def check_inductor_copies() -> str | None:
    """torch.compile's graphs launch the ops' kernels through Inductor, which copies each kernel's
    source, with the jitted helpers and globals it reaches, into a module of its own and compiles
    that copy: every kernel's copy, as Inductor writes it, must compile for sm_90 (a helper or
    global the copy misses fails here, not on the GPU)."""
    import importlib.util

    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.codegen.wrapper import (
        user_defined_triton_kernel_transitive_closure_source_code as closure)

    folder = tempfile.mkdtemp()
    failed = []
    for kernel, (args, grid, kwargs) in FIRST_CALLS.items():
        name = kernel.__name__
        source = (TritonKernel.gen_common_triton_imports() + "\n@triton.jit\n"
                  + closure(kernel))
        path = os.path.join(folder, f"inductor_copy_{name}.py")
        with open(path, "w") as f:
            f.write(source)
        try:
            spec = importlib.util.spec_from_file_location(f"inductor_copy_{name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            copy = getattr(module, name)
            compiled = _jit_run(copy, *args, grid=grid, warmup=True, **kwargs)
            _ptx(compiled)
        except Exception as err:  # noqa: BLE001 (any failure of the copy is the finding)
            failed.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
    if failed or not FIRST_CALLS:
        return "Inductor's copies of the kernels do not compile: " + "; ".join(failed) \
            if failed else "no kernel was compiled to copy"
    print(f"Inductor's copies of {len(FIRST_CALLS)} kernels compile for sm_90")
    return None


def main() -> int:
    install()
    if "--suites" in sys.argv[1:]:
        return scan_suites(nchw="--nchw" in sys.argv[1:])
    if "--loops" in sys.argv[1:]:
        return scan_loops()
    try:
        exercise()
    except Exception as err:  # a compile error: report it and the kernels that did compile
        print(f"compile failed after {len(COMPILED)} kernels: {type(err).__name__}: {err}")
        return 1
    names = sorted({name for name, _, _ in COMPILED})
    for name in names:
        ptx = [_ptx(k) for n, _, k in COMPILED if n == name]
        print(f"{name:28s} {len(ptx):3d} specializations, wgmma in {sum('wgmma' in p for p in ptx)}")
    fast = [_ptx(k) for n, c, k in COMPILED
            if n == "_conv_fwd_kernel" and c.get("PRECISION") == "ieee"]
    if not any("wgmma" in p for p in fast):
        print("no conv forward specialization uses wgmma")
        return 1
    for name, switch, values in (("_grad_z_kernel", "DY", {"plain", "relu", "pool"}),
                                 ("_grad_z_kernel", "STORE", {False, True})):
        seen = {c.get(switch) for n, c, _ in COMPILED if n == name}
        if seen != values:
            print(f"{name} compiled with {switch} in {sorted(map(str, seen))}, not "
                  f"{sorted(values)}")
            return 1
    print(f"{len(COMPILED)} kernels compiled for sm_90")
    wrong = {name: why for name, why in PREPARED.items() if why is not None}
    if wrong or not PREPARED:
        print(f"prepared launches' arguments differ from Triton's binding: {wrong}" if wrong
              else "no prepared launch was made")
        return 1
    print(f"prepared launches of {', '.join(sorted(PREPARED))}: arguments as Triton binds them")
    for check in (check_registers, check_shared_memory, check_vector_loads, check_precompile,
                  check_inductor_copies):
        problem = check()
        if problem is not None:
            print(problem)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
