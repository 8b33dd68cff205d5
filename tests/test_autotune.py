"""tritoncnn.autotune on the CPU: config spaces and pruning, the tuner with fake kernels and a fake
timer, the cache file (round trip, corrupt and stale files, concurrent writers), the lookup
launchers use. The ``tritoncnn tune`` command is tested in test_tune.py."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings

import pytest
import torch
from torch import nn

from tritoncnn import _runtime, autotune, cli
from tritoncnn.autotune import cache as cache_mod
from tritoncnn.autotune import heuristics, spaces, tuner

INTERPRET_MODE = _runtime.INTERPRET
HEURISTIC = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh process-wide cache under tmp_path; lookups behave as on a GPU (not interpreted)."""
    monkeypatch.setenv(cache_mod.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(autotune, "INTERPRET", False)
    monkeypatch.setattr(autotune, "_autotune", None)
    monkeypatch.delenv(autotune.ENV_AUTOTUNE, raising=False)
    autotune._tried.clear()
    autotune.set_default_cache(None)
    yield autotune.default_cache()
    autotune.set_default_cache(None)


def conv(n=8, c=16, h=32, w=32, k=32, r=3, stride=1, pad=1):
    return spaces.conv_shape((n, c, h, w), (k, c, r, r), stride, pad)


# Spaces and pruning ------------------------------------------------------------------------------

def test_every_kernel_has_a_space():
    for kernel in ("conv_fwd", "conv_dx", "conv_dw", "conv_pool_fwd", "max_pool_fwd",
                   "max_pool_bwd"):
        assert spaces.SPACES[kernel], kernel
    assert all("SPLIT" in c for c in spaces.SPACES["conv_dw"])


@pytest.mark.parametrize("kernel", ["conv_fwd", "conv_dx", "conv_dw", "conv_pool_fwd"])
def test_conv_pruning_rules(kernel):
    shape = conv(n=2, c=3, h=9, w=9, k=16)  # RGB stem, 16 filters: M=162, N=16, reduction=27
    found = spaces.candidates(kernel, shape, torch.bfloat16)
    m, n, red = spaces.gemm_dims(kernel, shape)
    assert found and len(found) <= len(spaces.SPACES[kernel])
    assert len({json.dumps(c, sort_keys=True) for c in found}) == len(found)  # merged duplicates
    for c in found:
        assert min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) >= 16  # tl.dot's minimum
        assert c["BLOCK_M"] <= max(16, spaces.next_pow2(m))
        assert c["BLOCK_N"] <= max(16, spaces.next_pow2(n))  # no 128-wide tile for 16 channels
        assert c["BLOCK_K"] <= max(16, spaces.next_pow2(red))
        assert c["num_warps"] <= (spaces.max_warps(kernel, shape) or 8)
        assert spaces.conv_smem_bytes(c, torch.bfloat16, kernel) <= spaces.DEFAULT_SMEM_BYTES


def test_big_layer_keeps_big_tiles():
    """The conv main loop unrolls its taps (no flattened loop, pytorch/pytorch#173068): 8-warp
    tiles up to 128x256 are candidates, at no more accumulator values per thread than 128."""
    found = spaces.candidates("conv_fwd", conv(n=64, c=256, h=56, w=56, k=256), torch.float16)
    assert max(c["BLOCK_M"] for c in found) >= 128 and max(c["BLOCK_N"] for c in found) >= 128
    assert any((c["BLOCK_M"], c["BLOCK_N"], c["num_warps"]) == (128, 256, 8) for c in found)
    assert all(c["BLOCK_M"] * c["BLOCK_N"] <= 128 * 32 * c["num_warps"] for c in found)


def test_fused_pool_space_follows_its_row_mapping():
    """pool 2: rows are the conv pixels of whole windows (4 per pooled pixel), reduced in place:
    one register tile, as the plain conv (128x128 at 4 warps); pool 3: rows are pooled pixels,
    three tiles (64x64 at most) and runtime taps (4 warps at most)."""
    base = conv(n=8, c=64, h=32, w=32, k=128)  # conv output 32x32
    kw = dict(smem_budget=spaces.DEFAULT_SMEM_BYTES, num_sms=132)
    assert spaces.gemm_dims("conv_pool_fwd", dict(base, pool=2))[0] == 8 * 16 * 16 * 4
    assert spaces.gemm_dims("conv_pool_fwd", dict(base, pool=3))[0] == 8 * 10 * 10
    assert spaces.gemm_dims("conv_pool_fwd", dict(base, pool=4))[0] == 8 * 8 * 8 * 16
    two = spaces.candidates("conv_pool_fwd", dict(base, pool=2), torch.bfloat16, **kw)
    three = spaces.candidates("conv_pool_fwd", dict(base, pool=3), torch.bfloat16, **kw)
    area = [c["BLOCK_M"] * c["BLOCK_N"] // c["num_warps"] for c in two]
    assert max(area) == 128 * 128 // 4  # 128x128 over 4 warps, as conv_fwd
    assert max(c["BLOCK_M"] * c["BLOCK_N"] // c["num_warps"] for c in three) == 64 * 64 // 4
    assert max(c["num_warps"] for c in three) == spaces.max_warps("conv_pool_fwd",
                                                                  dict(base, pool=3)) == 4
    assert spaces.acc_tiles("conv_pool_fwd", dict(base, pool=2)) == 1
    assert spaces.acc_tiles("conv_pool_fwd", dict(base, pool=3)) == 3
    assert spaces.acc_tiles("conv_fwd", base) == 1


def test_shared_memory_budget_prunes():
    shape = conv(n=64, c=256, h=56, w=56, k=256)
    full = spaces.candidates("conv_fwd", shape, torch.float32)
    small = spaces.candidates("conv_fwd", shape, torch.float32, smem_budget=48 * 1024)
    assert 0 < len(small) < len(full)
    assert all(spaces.conv_smem_bytes(c, torch.float32) <= 48 * 1024 for c in small)
    assert any(spaces.conv_smem_bytes(c, torch.float32) > 48 * 1024 for c in full)


def test_configs_that_spill_on_sm90_are_pruned():
    """Measured with ptxas -v (tests/compile_sm90.py): float32 dW at 128x128x64 on 4 warps and the
    looping fused pool kernel (pool 3) with 2 warps spill registers; neither is a candidate. dX
    runs on the forward kernel, any stride: its steps go 64 deep too."""
    shape = conv(n=8, c=128, h=16, w=16, k=128)
    strided = spaces.conv_shape((8, 128, 16, 16), (128, 128, 3, 3), 2, 1)
    kw = dict(smem_budget=spaces.DEFAULT_SMEM_BYTES, num_sms=132)
    for dtype in (torch.bfloat16, torch.float32):
        for sh in (shape, strided):
            assert max(c["BLOCK_K"] for c in spaces.candidates("conv_dx", sh, dtype, **kw)) == 64
        dw = [(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["num_warps"])
              for c in spaces.candidates("conv_dw", shape, dtype, **kw)]
        assert ((128, 128, 64, 4) in dw) == (dtype == torch.bfloat16)
        assert max(c["BLOCK_K"] for c in spaces.candidates("conv_fwd", shape, dtype, **kw)) == 64
        looped = spaces.candidates("conv_pool_fwd", dict(shape, pool=3), dtype, **kw)
        assert looped and min(c["num_warps"] for c in looped) == 4
        window = spaces.candidates("conv_pool_fwd", dict(shape, pool=2), dtype, **kw)
        assert min(c["num_warps"] for c in window) < 4  # small tiles keep few warps there


def test_ieee_float32_space_is_capped():
    """float32 with TF32 off (``ieee`` in the shape) runs tl.dot on the FMA units: its space is
    the tensor-core space capped by IEEE_CAPS, so tuning times only tiles that do not spill."""
    kw = dict(smem_budget=spaces.DEFAULT_SMEM_BYTES, num_sms=132)
    shape = conv(n=8, c=128, h=16, w=16, k=128)
    for kernel, pooled in (("conv_fwd", False), ("conv_dx", False), ("conv_pool_fwd", True),
                           ("conv_dw", False), ("conv_dw", True)):
        sh = dict(shape, pool=2) if pooled else shape
        tf32 = spaces.candidates(kernel, sh, torch.float32, **kw)
        ieee = spaces.candidates(kernel, dict(sh, ieee=1), torch.float32, **kw)
        caps = spaces.IEEE_CAPS[(kernel, pooled)]
        assert ieee and len(ieee) < len(tf32), kernel
        for c in ieee:
            tile = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["num_warps"])
            assert all(v <= cap for v, cap in zip(tile, caps)), (kernel, c)
        assert max(c["BLOCK_M"] for c in tf32) > caps[0], kernel


def test_float64_space_is_capped_and_tuned_as_ieee():
    """float64 (``ieee`` in its shapes too) gets the FP64_CAPS tiles, which ptxas compiles without
    spilling, in the tuner's space and on the launchers' configs; `tune --dtype fp64` marks its
    conv shapes ``ieee`` as the launches do."""
    from tritoncnn import tune
    from tritoncnn.autotune import heuristics
    kw = dict(smem_budget=spaces.DEFAULT_SMEM_BYTES, num_sms=132)
    shape = dict(conv(n=8, c=128, h=16, w=16, k=128), ieee=1)
    for kernel, sh, caps in (("conv_fwd", shape, spaces.FP64_DEFAULT_CAPS),
                             ("conv_dw", shape, spaces.FP64_DEFAULT_CAPS),
                             ("conv_pool_fwd", dict(shape, pool=3),
                              spaces.FP64_CAPS[("conv_pool_fwd_loop", True)])):
        found = spaces.candidates(kernel, sh, torch.float64, **kw)
        assert found, kernel
        for c in found:
            tile = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["num_warps"])
            assert all(v <= cap for v, cap in zip(tile, caps)), (kernel, c)
    big = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    assert heuristics.conv_config("conv_dw", shape, torch.float64, "nhwc", big, None, True) == \
        dict(big, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4)
    layer = dict(type="conv", name="c1", first=True, input=(8, 3, 16, 16), weight=(8, 3, 3, 3),
                 stride=1, padding=1, dilation=1, groups=1)
    assert all(k["shape"].get("ieee") == 1
               for k in tune.layer_kernels([layer], torch.float64, "nhwc"))
    assert tune.DTYPES["fp64"] is torch.float64


def test_ieee_launches_have_their_own_cache_entries(store, monkeypatch):
    """An IEEE float32 launch looks up the entry tuned in IEEE (``ieee`` in its shape), never the
    TF32 winner of the same layer; an entry over the caps (written before the caps) is capped."""
    from tritoncnn.autotune import heuristics

    shape = conv(n=8, c=64, h=16, w=16, k=64)
    big = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
    small = dict(big, BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_stages=4)
    store.put("conv_fwd", shape, torch.float32, "nhwc", big)
    assert heuristics.conv_config("conv_fwd", shape, torch.float32, "nhwc", HEURISTIC, None) == big
    capped = heuristics.conv_config("conv_fwd", shape, torch.float32, "nhwc", dict(big), None, True)
    assert capped == dict(big, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)  # a miss: the heuristic, capped
    store.put("conv_fwd", dict(shape, ieee=1), torch.float32, "nhwc", small)
    with autotune.record_calls() as calls:
        assert heuristics.conv_config("conv_fwd", shape, torch.float32, "nhwc", HEURISTIC,
                                      None, True) == small
        assert heuristics.conv_config("conv_fwd", shape, torch.float32, "nhwc", HEURISTIC,
                                      None) == big
    assert [c.shape.get("ieee") for c in calls] == [1, None]  # what `tune` then tunes
    store.put("conv_fwd", dict(shape, ieee=1), torch.float32, "nhwc", big)
    assert heuristics.conv_config("conv_fwd", shape, torch.float32, "nhwc", HEURISTIC, None,
                                  True) == dict(big, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)


@pytest.mark.parametrize("kernel", ["conv_fwd", "conv_dx", "conv_dw", "conv_pool_fwd"])
def test_tuning_problems_run_at_the_shapes_precision(monkeypatch, kernel):
    """A problem for an ``ieee`` shape runs its launches with TF32 off, any other float32 one
    with TF32 on, whatever torch.backends says at tuning time: the winner is timed as the
    launches that look it up run."""
    from tritoncnn.kernels import problems

    seen = []

    def spy(name, module, fn):
        def wrapped(*args, **kw):
            seen.append(kw.get("allow_tf32", args[5] if len(args) > 5 else None))
            return fn(*args, **kw)
        monkeypatch.setattr(module, name, wrapped)

    spy("conv2d_forward", problems, problems.conv2d_forward)
    spy("conv2d_relu_pool_forward", problems, problems.conv2d_relu_pool_forward)
    real_bwd = problems.conv_grads
    monkeypatch.setattr(problems, "conv_grads",
                        lambda *a, **kw: seen.append(kw["allow_tf32"]) or real_bwd(*a, **kw))
    shape = conv(n=1, c=4, h=4, w=4, k=4)
    if kernel == "conv_pool_fwd":
        shape["pool"] = 2
    for ieee in (False, True):
        sh = dict(shape, ieee=1) if ieee else shape
        problem = autotune.make_problem(kernel, sh, torch.float32, "nhwc")
        problem.run(dict(HEURISTIC, SPLIT=1) if kernel == "conv_dw" else HEURISTIC)
    assert seen == [True, False]


def test_conv_dw_splits_leave_work_for_each_split():
    shape = conv(n=4, c=16, h=8, w=8, k=32)  # reduction N*P*Q = 256
    found = spaces.candidates("conv_dw", shape, torch.float16)
    assert any(c["SPLIT"] == 1 for c in found) and any(c["SPLIT"] > 1 for c in found)
    for c in found:
        assert c["SPLIT"] * c["BLOCK_K"] <= 256 or c["SPLIT"] == 1


def test_pool_pruning_caps_block():
    tiny = spaces.pool_shape((1, 2, 8, 8), 2)  # 32 outputs
    found = spaces.candidates("max_pool_fwd", tiny)
    assert found == [dict(BLOCK=32, num_warps=1)]
    big = spaces.candidates("max_pool_bwd", spaces.pool_shape((64, 64, 112, 112), 2))
    assert len(big) == len(spaces.SPACES["max_pool_bwd"])


def test_shape_helpers_match_torch():
    x = torch.empty(2, 3, 17, 11, device="meta")
    w = torch.empty(8, 3, 5, 3, device="meta")
    for stride, pad, dil in [(1, 0, 1), (2, 2, 1), (3, 1, 2), (1, "same", 1), (1, "valid", 1)]:
        y = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad, dilation=dil)
        s = spaces.conv_shape(x.shape, w.shape, stride, pad, dil)
        assert (s["P"], s["Q"]) == tuple(y.shape[2:]), (stride, pad, dil)
    pools = [(2, None, 0, False), (3, 2, 1, True), (3, 2, 0, True), (2, 1, 1, False)]
    for k, st, pad, ceil in pools:
        y = torch.nn.functional.max_pool2d(x, k, st, pad, ceil_mode=ceil)
        s = spaces.pool_shape(x.shape, k, st, pad, 1, ceil)
        assert (s["OH"], s["OW"]) == tuple(y.shape[2:]), (k, st, pad, ceil)


# Bucketing ---------------------------------------------------------------------------------------

def test_bucketing_rounds_sizes_and_keeps_structure():
    b = autotune.bucket_shape(conv(n=48, c=3, h=224, w=224, k=64, r=7, stride=2, pad=3))
    assert (b["N"], b["C"], b["H"], b["W"], b["K"]) == (64, 4, 256, 256, 64)
    assert (b["R"], b["S"], b["stride_h"], b["pad_h"], b["groups"]) == (7, 7, 2, 3, 1)
    same = autotune.shape_key(conv(n=33)) == autotune.shape_key(conv(n=64))
    assert same and autotune.shape_key(conv(n=32)) != autotune.shape_key(conv(n=33))
    assert autotune.shape_key(conv(r=3)) != autotune.shape_key(conv(r=5, pad=1))
    assert autotune.shape_key(dict(N=2, H=3)) == autotune.shape_key(dict(H=3, N=2))
    assert autotune.shape_key(dict(N=1, H=0)) == "H=0,N=1"


def test_entry_key_names_gpu_triton_kernel_dtype_layout():
    key = autotune.entry_key("conv_fwd", conv(), torch.bfloat16, "NHWC", device="H100|triton-3.6.0")
    assert key.startswith("H100|triton-3.6.0|conv_fwd|bfloat16|nhwc|")
    assert autotune.entry_key("conv_fwd", conv(), torch.float16, "nhwc") != autotune.entry_key(
        "conv_fwd", conv(), torch.bfloat16, "nhwc")


# The tuner ---------------------------------------------------------------------------------------

class FakeTimer:
    """Reports the time a config's fake kernel claims; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        self.calls += 1
        out = fn()
        return out.ms, out.ms * 0.9, out.ms * 1.1


class FakeConstantTimer:
    """Runs the kernel once and reports 0.5 ms."""

    def __call__(self, fn):
        fn()
        return 0.5, 0.5, 0.5


class FakeOutput(torch.Tensor):
    pass


def fake_kernel(ref, times, wrong=(), broken=()):
    """A launcher: BLOCK_M picks a time; ``wrong`` configs return garbage, ``broken`` ones raise."""
    from triton.runtime.errors import OutOfResources

    def run(cfg):
        bm = cfg["BLOCK_M"]
        if bm in broken:
            raise OutOfResources(300_000, 232_448, "shared memory")
        out = (ref + 1.0 if bm in wrong else ref.clone()).as_subclass(FakeOutput)
        out.ms = times[bm]
        return out

    return run


def configs(*bms):
    return [dict(HEURISTIC, BLOCK_M=bm) for bm in bms]


def test_tuner_times_every_config_and_picks_the_fastest():
    ref = torch.randn(4, 4)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 3.0, 32: 1.0, 64: 2.0}),
                               reference=ref, configs=configs(16, 32, 64), kernel="conv_fwd")
    timer = FakeTimer()
    table = autotune.tune_problem(problem, timer=timer)
    assert timer.calls == 3 and len(table) == 3
    assert list(table["status"]) == ["ok"] * 3
    assert list(table["ms"]) == [3.0, 1.0, 2.0] and list(table["p20_ms"]) == pytest.approx(
        [2.7, 0.9, 1.8])
    assert autotune.best_config(table)["BLOCK_M"] == 32
    assert {"kernel", "config", "cfg_BLOCK_M", "max_error", "best", "heuristic"} <= set(table)


def test_failed_configs_are_recorded_and_tuning_goes_on():
    ref = torch.randn(4, 4)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 3.0, 32: 1.0, 64: 2.0}, broken=(32,)),
                               reference=ref, configs=configs(16, 32, 64))
    table = autotune.tune_problem(problem, timer=FakeTimer())
    row = table.set_index("cfg_BLOCK_M").loc[32]
    assert row["status"] == "failed" and "OutOfResources" in row["error"]
    assert autotune.best_config(table)["BLOCK_M"] == 64


def test_a_fast_wrong_config_never_wins():
    ref = torch.randn(8, 8)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 0.01, 32: 1.0, 64: 2.0}, wrong=(16,)),
                               reference=lambda: ref, configs=configs(16, 32, 64))
    table = autotune.tune_problem(problem, timer=FakeTimer())
    row = table.set_index("cfg_BLOCK_M").loc[16]
    assert row["status"] == "wrong" and row["max_error"] == pytest.approx(1.0)
    assert not row["best"]
    assert autotune.best_config(table)["BLOCK_M"] == 32


def test_no_correct_config_means_no_winner(tmp_path):
    ref = torch.randn(3)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 1.0, 32: 1.0}, wrong=(16,), broken=(32,)),
                               reference=ref, configs=configs(16, 32), kernel="conv_fwd",
                               shape=conv())
    store = autotune.ConfigCache(tmp_path / "c.json")
    table, winner = autotune.tune_and_store(problem, store, timer=FakeTimer())
    assert winner is None and not table["best"].any() and not store.entries


def test_heuristic_is_timed_too_and_stored_with_the_winner(tmp_path):
    ref = torch.randn(3)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 1.0, 32: 4.0, 64: 2.0}), reference=ref,
                               configs=configs(16, 64), heuristic=dict(HEURISTIC, BLOCK_M=32),
                               kernel="conv_fwd", shape=conv(), dtype=torch.float16, layout="nhwc")
    store = autotune.ConfigCache(tmp_path / "c.json")
    table, winner = autotune.tune_and_store(problem, store, timer=FakeTimer())
    assert len(table) == 3 and table["heuristic"].sum() == 1 and winner["BLOCK_M"] == 16
    entry = autotune.ConfigCache(tmp_path / "c.json").get(
        autotune.entry_key("conv_fwd", conv(), torch.float16, "nhwc"))
    assert entry["config"] == winner and entry["ms"] == 1.0 and entry["heuristic_ms"] == 4.0


def test_launch_turns_into_a_compile_only_warmup_inside_compile_only():
    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append(("run", grid, args, kw))

        def warmup(self, *args, grid, **kw):
            calls.append(("warmup", grid, args, kw))

    k = Kernel()
    _runtime.launch(k, (3,), 1, 2, BLOCK=16)
    with _runtime.compile_only():
        _runtime.launch(k, (3, 2), 1, BLOCK=32)
    with pytest.raises(ValueError), _runtime.compile_only():
        raise ValueError("the flag is reset however the block ends")
    _runtime.launch(k, (1,), BLOCK=8)
    assert calls == [("run", (3,), (1, 2), {"BLOCK": 16}), ("warmup", (3, 2), (1,), {"BLOCK": 32}),
                     ("run", (1,), (), {"BLOCK": 8})]


def test_launch_runs_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device; a launch whose tensors live on another one
    makes theirs current for the launch (and only then), as PyTorch's ops do."""
    current, entered = [0], []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)
            current.insert(0, self.device.index)

        def __exit__(self, *exc):
            current.pop(0)

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append(current[0])

    class OnDevice:  # stands in for a CUDA tensor
        def __init__(self, index):
            self.device = torch.device("cuda", index)

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", Guard)
    for index in (0, 1, 0, 2):
        _runtime.launch(Kernel(), (1,), OnDevice(index), 3, BLOCK=8)
    _runtime.launch(Kernel(), (1,), torch.zeros(1), BLOCK=8)  # CPU (interpreted): no guard
    assert calls == [0, 1, 0, 2, 0]
    assert entered == [torch.device("cuda", 1), torch.device("cuda", 2)] and current == [0]


def test_precompile_runs_each_config_compile_only_under_async_compile(monkeypatch):
    from triton.runtime import _async_compile

    seen = []

    def run(cfg):
        seen.append((cfg["BLOCK_M"], _runtime._COMPILE_ONLY.get(),
                     _async_compile.active_mode.get() is not None))
        if cfg["BLOCK_M"] == 32:
            raise RuntimeError("a compile error: the timed pass records it")

    problem = autotune.Problem(run=run, reference=None, configs=configs(16, 32, 64))
    monkeypatch.setattr(tuner._runtime, "INTERPRET", False)
    assert tuner.precompile(problem, problem.configs, workers=1) == 0.0  # one thread: nothing
    assert seen == []
    assert tuner.precompile(problem, problem.configs, workers=4) > 0.0
    assert seen == [(16, True, True), (32, True, True), (64, True, True)]
    assert not _runtime._COMPILE_ONLY.get() and _async_compile.active_mode.get() is None
    monkeypatch.setattr(tuner._runtime, "INTERPRET", True)  # the interpreter compiles nothing
    assert tuner.precompile(problem, problem.configs, workers=4) == 0.0 and len(seen) == 3


def test_tuning_table_records_the_precompile_time(monkeypatch):
    ref = torch.randn(4, 4)
    problem = autotune.Problem(run=fake_kernel(ref, {16: 3.0, 32: 1.0}), reference=ref,
                               configs=configs(16, 32))
    monkeypatch.setattr(tuner, "precompile", lambda problem, configs: 1.25)
    table = autotune.tune_problem(problem, timer=FakeTimer())
    assert list(table["compile_s"]) == [1.25, 1.25]


def test_correctness_check_covers_tuples_ints_and_nans():
    a = torch.tensor([1.0, float("nan"), 3.0])
    off = torch.tensor([0, 1, 3], dtype=torch.int8)
    assert tuner.max_error((a, off), (a.clone(), off.clone()), 1e-3, 1e-3)[1]
    assert not tuner.max_error((a, off), (a, off + 1), 1e-3, 1e-3)[1]  # offsets must be exact
    assert not tuner.max_error(torch.tensor([1.0, 2.0, 3.0]), a, 1e-3, 1e-3)[1]  # NaN placement
    assert not tuner.max_error(a[:2], a, 1e-3, 1e-3)[1]  # shape
    assert tuner.max_error(torch.tensor([100.5]), torch.tensor([100.0]), 0.0, 1e-2)[1]  # relative


# The cache ---------------------------------------------------------------------------------------

def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(cache_mod.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_path() == tmp_path / "xdg" / "tritoncnn" / "autotune.json"
    monkeypatch.setenv(cache_mod.ENV_DIR, str(tmp_path / "mine"))
    assert autotune.cache_path() == tmp_path / "mine" / "autotune.json"


def test_cache_round_trip_with_bucketed_shapes(tmp_path):
    path = tmp_path / "sub" / "autotune.json"
    winner = dict(HEURISTIC, BLOCK_M=128)
    autotune.ConfigCache(path).put("conv_fwd", conv(n=64), torch.bfloat16, "nhwc", winner, ms=0.5)
    data = json.loads(path.read_text())
    assert data["format"] == cache_mod.FORMAT_VERSION and len(data["entries"]) == 1
    fresh = autotune.ConfigCache(path)
    assert fresh.lookup("conv_fwd", conv(n=64), torch.bfloat16, "nhwc") == winner
    assert fresh.lookup("conv_fwd", conv(n=40), torch.bfloat16, "nhwc") == winner  # same bucket
    assert fresh.lookup("conv_fwd", conv(n=65), torch.bfloat16, "nhwc") is None
    assert fresh.lookup("conv_fwd", conv(n=64), torch.float16, "nhwc") is None
    assert fresh.lookup("conv_fwd", conv(n=64), torch.bfloat16, "nchw") is None
    assert fresh.lookup("conv_dx", conv(n=64), torch.bfloat16, "nhwc") is None
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was moved into place


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 999, "entries": {}}),
                                     json.dumps([1, 2]), ""])
def test_corrupt_or_stale_cache_warns_once_and_is_replaced(tmp_path, content):
    path = tmp_path / "autotune.json"
    path.write_text(content)
    store = autotune.ConfigCache(path)
    with pytest.warns(UserWarning, match="ignoring it"):
        assert store.lookup("conv_fwd", conv(), torch.float16, "nhwc") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.lookup("conv_fwd", conv(n=2), torch.float16, "nhwc") is None
        store.put("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC)  # rewrites the file
    assert autotune.ConfigCache(path).lookup("conv_fwd", conv(), torch.float16, "nhwc") == HEURISTIC


def _writer(path, tag, count, barrier):
    store = cache_mod.ConfigCache(path)
    barrier.wait()
    for i in range(count):
        store.update({f"{tag}-{i}": dict(config=dict(BLOCK_M=i), shape=dict(N=2 ** i, tag=tag))})


def test_two_processes_writing_at_once_keep_both_entries(tmp_path):
    path = tmp_path / "autotune.json"
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(path), tag, 15, barrier)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = autotune.ConfigCache(path).entries
    assert len(entries) == 30
    assert {json.dumps(e["shape"], sort_keys=True) for e in entries.values()} == {
        json.dumps(dict(N=2 ** i, tag=t), sort_keys=True) for t in "ab" for i in range(15)}


# get_config: what launchers call -----------------------------------------------------------------

def test_get_config_returns_the_cached_winner(store):
    winner = dict(HEURISTIC, BLOCK_M=128, BLOCK_N=64)
    assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC) == HEURISTIC
    store.put("conv_fwd", conv(), torch.float16, "nhwc", winner)
    got = autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC)
    assert got == winner
    got["BLOCK_M"] = 1  # callers may change what they get
    assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC) == winner
    assert autotune.get_config("conv_fwd", conv(), torch.float32, "nhwc", HEURISTIC) == HEURISTIC


def test_get_config_reads_the_file_once_and_is_fast(store):
    store.put("max_pool_fwd", dict(N=4), torch.float16, "nhwc", dict(BLOCK=512, num_warps=4))
    store.reload()
    shape, heur = dict(N=4), dict(BLOCK=1024, num_warps=8)
    assert autotune.get_config("max_pool_fwd", shape, torch.float16, "nhwc", heur)["BLOCK"] == 512
    store.path.unlink()  # in memory after the first read
    start = time.perf_counter()
    for _ in range(10_000):
        cfg = autotune.get_config("max_pool_fwd", shape, torch.float16, "nhwc", heur)
    per_call = (time.perf_counter() - start) / 10_000
    assert cfg == dict(BLOCK=512, num_warps=4) and per_call < 50e-6


def test_get_config_adapts_old_entries_to_the_launchers_keys(store):
    store.put("conv_dw", conv(), torch.float16, "nhwc", dict(BLOCK_M=64, OLD_KEY=3))
    heur = dict(HEURISTIC, SPLIT=4)
    assert autotune.get_config("conv_dw", conv(), torch.float16, "nhwc", heur) == dict(heur,
                                                                                       BLOCK_M=64)


def test_interpreter_always_gets_the_heuristic(store, monkeypatch):
    store.put("conv_fwd", conv(), torch.float16, "nhwc", dict(HEURISTIC, BLOCK_M=128))
    monkeypatch.setattr(autotune, "INTERPRET", True)
    assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC) == HEURISTIC


def test_autotune_on_first_use_tunes_a_missing_entry_once(store, monkeypatch):
    ref = torch.randn(4)
    made = []

    def factory(shape, dtype, layout):
        made.append((shape, dtype, layout))
        return autotune.Problem(run=fake_kernel(ref, {16: 2.0, 32: 3.0, 64: 1.0}), reference=ref,
                                configs=configs(16, 64))

    monkeypatch.setitem(tuner._FACTORIES, "conv_fwd", factory)
    monkeypatch.setattr(tuner, "default_timer", FakeTimer)
    shape = conv()
    assert autotune.get_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC) == HEURISTIC
    assert not made  # off unless asked for
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
    got = autotune.get_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC)
    assert got["BLOCK_M"] == 64 and made == [(shape, torch.float16, "nhwc")]
    assert autotune.get_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC) == got
    assert len(made) == 1 and store.path.exists()
    monkeypatch.delenv(autotune.ENV_AUTOTUNE)
    autotune.enable_autotune(True)
    assert autotune.autotune_enabled()


def test_autotune_on_first_use_times_nothing_while_traced(store, monkeypatch):
    """Nothing is tuned while torch.compile traces or under fake tensors (the ops' bodies traced,
    as make_fx and the fake kernels do): the heuristic serves, and the entry stays missing for
    the next eager call to tune."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    made = []
    ref = torch.randn(4)

    def factory(shape, dtype, layout):
        made.append(shape)
        return autotune.Problem(run=fake_kernel(ref, {16: 2.0, 64: 1.0}), reference=ref,
                                configs=configs(16, 64))

    monkeypatch.setitem(tuner._FACTORIES, "conv_fwd", factory)
    monkeypatch.setattr(tuner, "default_timer", FakeTimer)
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
    with FakeTensorMode():
        assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc",
                                   HEURISTIC) == HEURISTIC
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC) == HEURISTIC
    assert not made
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc",
                               HEURISTIC)["BLOCK_M"] == 64
    assert len(made) == 1


def test_autotune_without_a_factory_warns_and_uses_the_heuristic(store, monkeypatch):
    monkeypatch.setattr(tuner, "_FACTORIES", {})
    monkeypatch.setattr(tuner, "_warned_missing", set())
    monkeypatch.setattr(tuner, "_ensure_kernels_imported", lambda: None)
    autotune.enable_autotune()
    with pytest.warns(UserWarning, match="registered no problem factory"):
        got = autotune.get_config("max_pool_bwd", dict(N=3), torch.float16, "nhwc", dict(BLOCK=64))
    assert got == dict(BLOCK=64)


def test_record_calls_collects_launches(store):
    with autotune.record_calls() as calls:
        autotune.get_config("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC)
    autotune.get_config("conv_dx", conv(), torch.float16, "nhwc", HEURISTIC)
    assert calls == [("conv_fwd", conv(), torch.float16, "nhwc", HEURISTIC, HEURISTIC)]
    assert calls[0].config == HEURISTIC and calls[0].kernel == "conv_fwd"


def test_register_problem_as_decorator(monkeypatch):
    monkeypatch.setattr(tuner, "_FACTORIES", {})

    @autotune.register_problem("max_pool_fwd")
    def factory(shape, dtype, layout):
        return autotune.Problem(run=lambda cfg: None, reference=None)

    p = autotune.make_problem("max_pool_fwd", dict(N=2), torch.float16, "nhwc", dict(BLOCK=64))
    assert (p.kernel, p.shape, p.dtype, p.layout, p.heuristic) == (
        "max_pool_fwd", dict(N=2), torch.float16, "nhwc", dict(BLOCK=64))


# A real (tiny) Triton kernel through the tuner ---------------------------------------------------

def test_tuner_with_a_real_triton_kernel(device):
    import triton
    import triton.language as tl

    @triton.jit
    def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)

    x = torch.randn(1000, device=device)

    def run(cfg):
        y = torch.empty_like(x)
        _scale_kernel[(triton.cdiv(x.numel(), cfg["BLOCK"]),)](x, y, x.numel(), BLOCK=cfg["BLOCK"],
                                                                num_warps=cfg["num_warps"])
        return y

    space = [dict(BLOCK=256, num_warps=4), dict(BLOCK=96, num_warps=4),  # arange needs 2**k
             dict(BLOCK=1024, num_warps=4)]
    problem = autotune.Problem(run=run, reference=x * 2, configs=space, kernel="scale")
    # do_bench needs a GPU; under the interpreter a fake timer stands in
    timer = FakeConstantTimer() if INTERPRET_MODE else None
    table = autotune.tune_problem(problem, timer=timer)
    assert list(table["status"]) == ["ok", "failed", "ok"], table[["status", "error"]]
    assert autotune.best_config(table) in (space[0], space[2])


# The launchers and the cache ---------------------------------------------------------------------

def test_launchers_and_tune_build_the_same_shape_dicts(store, device):
    from tritoncnn import kernels

    x = torch.randn(2, 3, 7, 6, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    with autotune.record_calls() as calls:
        kernels.conv2d(x, w, None, stride=2, padding=1)
        kernels.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        kernels.linear(torch.randn(5, 7, device=device), torch.randn(3, 7, device=device))
    # conv operands are read with their channels innermost (NCHW ones through channels_last
    # copies): every conv key says nhwc, as tune plans it; the max-pool runs NCHW
    assert [(c.kernel, c.layout) for c in calls] == [
        ("conv_fwd", "nhwc"), ("max_pool_fwd", "nchw"), ("conv_fwd", "nhwc")]
    assert calls[0].shape == spaces.conv_shape(x.shape, w.shape, 2, 1)
    assert calls[1].shape == spaces.pool_shape(x.shape, 3, 2, 1, 1, True)
    assert calls[2].shape == spaces.conv_shape((5, 7, 1, 1), (3, 7, 1, 1))


def test_launchers_pick_the_cached_config(store, device):
    from tritoncnn import kernels

    x = torch.randn(1, 2, 6, 6, device=device)
    cached = dict(BLOCK=16, num_warps=1)
    store.put("max_pool_fwd", spaces.pool_shape(x.shape, 2), x.dtype, "nchw", cached)
    with autotune.record_calls() as calls:
        y = kernels.max_pool2d(x, 2)
    assert [(c.kernel, c.config) for c in calls] == [("max_pool_fwd", cached)]
    torch.testing.assert_close(y, torch.nn.functional.max_pool2d(x, 2))


def test_cli_surfaces_a_subcommand_import_error(monkeypatch):
    """A subcommand whose module does not import is an error, not a silently missing command."""
    monkeypatch.setitem(cli.COMMANDS, "broken", "tritoncnn.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        cli.build_parser()


def test_backward_launches_use_the_tune_shape_dicts(store, device):
    """Forward and backward launches of conv (padding='same' with an even kernel: asymmetric
    padding) and of a ceil_mode pool build exactly the shape dicts conv_shape / pool_shape build."""
    from tritoncnn import kernels

    x = torch.randn(2, 3, 7, 6, device=device, requires_grad=True)
    w = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    with autotune.record_calls() as calls:
        kernels.conv2d(x, w, None, padding="same").sum().backward()
        kernels.max_pool2d(x, 3, 2, 1, ceil_mode=True).sum().backward()
    conv = spaces.conv_shape(x.shape, w.shape, 1, "same")
    assert conv["P"] == 7 and conv["Q"] == 6 and conv["pad_h"] == 0
    assert conv == spaces.conv_shape(x.shape, w.shape, 1, (0, 1, 0, 1))
    pool = spaces.pool_shape(x.shape, 3, 2, 1, 1, True)
    want = {"conv_fwd": conv, "conv_dx": conv, "conv_dw": conv, "max_pool_fwd": pool,
            "max_pool_bwd": pool}
    assert sorted(c.kernel for c in calls) == sorted(want)
    for call in calls:
        assert call.shape == want[call.kernel], call.kernel


def test_shared_memory_model_of_the_backward_kernels():
    """Every conv kernel's sm_90 build holds its pipelined operand tiles and no more (an fp32
    128x128x64 tile in 3 stages: 196608 B, tests/compile_sm90.py); every candidate fits the budget
    it was pruned for."""
    cfg = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    for kernel in ("conv_fwd", "conv_dx", "conv_dw"):
        assert spaces.conv_smem_bytes(cfg, torch.float32, kernel) == 196608
    shape = spaces.conv_shape((8, 256, 32, 32), (256, 256, 3, 3), 1, 1)
    kept = spaces.candidates("conv_dw", shape, torch.float32, smem_budget=150000, num_sms=132)
    assert kept and all(spaces.conv_smem_bytes(c, torch.float32, "conv_dw") <= 150000
                        for c in kept)


@pytest.mark.parametrize("bad", [dict(BLOCK_M=24), dict(BLOCK_M="64"), dict(BLOCK_M=None),
                                 dict(num_warps=0), dict(num_warps=3), dict(num_stages=0),
                                 dict(GROUP_M=-1), dict(BLOCK_K=8), dict(num_warps=True)])
def test_invalid_cache_entry_falls_back_to_the_heuristic_with_one_warning(store, bad):
    """A well-formed cache entry whose config no launch can use (edited by hand, another
    version) is replaced by the heuristic, with one warning naming the entry and the value."""
    shape = conv()
    store.put("conv_fwd", shape, torch.float16, "nhwc", dict(HEURISTIC, **bad))
    key, value = next(iter(bad.items()))
    with pytest.warns(RuntimeWarning, match=rf"invalid config \({key}="):
        got = autotune.get_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC)
    assert got == HEURISTIC
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per entry and process
        assert autotune.get_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC) == HEURISTIC
    from tritoncnn.autotune import heuristics
    assert heuristics.conv_config("conv_fwd", shape, torch.float16, "nhwc", HEURISTIC,
                                  None) == HEURISTIC


def test_valid_pool_entries_pass_the_config_check():
    assert autotune.config_problem("max_pool_fwd", dict(BLOCK=256, num_warps=4)) is None
    assert autotune.config_problem("conv_dw", dict(HEURISTIC, SPLIT=8)) is None
    assert "BLOCK=300" in autotune.config_problem("max_pool_bwd", dict(BLOCK=300, num_warps=4))


def test_fused_pool_heuristic_keeps_windows_in_one_thread(monkeypatch):
    """On a GPU the conv's large tiles are 256 x 128 on 8 warps (128 x 256 serializes a 1x1
    filter's wgmma), only where the layer has 128 columns or more; the fused pool-2 kernel takes
    the conv's tiles, where a window's 4 rows lie in one thread of the wgmma accumulator (128
    rows on 4 warps, 256 on 8); pool 3 keeps 64 x 64 on 4 warps."""
    monkeypatch.setattr(heuristics, "INTERPRET", False)
    heuristics._gemm_heuristic_items.cache_clear()
    try:
        big = heuristics.gemm_heuristic(64 * 56 * 56, 256, 256, torch.bfloat16)
        assert (big["BLOCK_M"], big["BLOCK_N"], big["num_warps"]) == (256, 128, 8)
        narrow = heuristics.gemm_heuristic(256 * 56 * 56, 64, 64, torch.bfloat16)
        assert (narrow["BLOCK_M"], narrow["BLOCK_N"], narrow["num_warps"]) == (128, 64, 4)
        fused = heuristics.conv_pool_heuristic(64 * 28 * 28, 2, 256, 256, torch.bfloat16)
        assert (fused["BLOCK_M"], fused["BLOCK_N"], fused["num_warps"]) == (256, 128, 8)
        small = heuristics.conv_pool_heuristic(8 * 8 * 8, 2, 64, 64, torch.bfloat16)
        assert (small["BLOCK_M"], small["num_warps"]) == (128, 4)
        three = heuristics.conv_pool_heuristic(64 * 18 * 18, 3, 256, 256, torch.bfloat16)
        assert three["BLOCK_M"] <= 64 and three["BLOCK_N"] <= 64 and three["num_warps"] == 4
    finally:
        heuristics._gemm_heuristic_items.cache_clear()
