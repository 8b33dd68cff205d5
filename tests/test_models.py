"""tritoncnn.models: the layers, convert(), the zoo and the spec builder.

Tests that need exact outputs or shapes too large for the interpreter (convert's branches, the
zoo's full-size models) swap the tritoncnn layers' kernels for PyTorch's reference ops
(``torch_kernels``): they check structure, not the kernels. The others run the real kernels on
tiny shapes (interpreted on the CPU, compiled on a GPU) against torch.nn.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tritoncnn.models import convert, get_model, layers
from tritoncnn.models.convert import ConvertReport
from tritoncnn.models.layers import (
    Conv2d, Conv2dReLU, Conv2dReLUPool, Linear, LinearReLU, MaxPool2d,
)
from tritoncnn.models.spec import SpecError, build, parse

from conftest import DEVICE

# PyTorch's ops under the names and call signatures the layers use
_REFERENCE = {
    "conv2d": lambda x, w, b, s, p, d, g: F.conv2d(x, w, b, s, p, d, g),
    "conv2d_relu": lambda x, w, b, s, p, d, g: F.relu(F.conv2d(x, w, b, s, p, d, g)),
    "conv2d_relu_pool": lambda x, w, b, s, p, d, g, pool: F.max_pool2d(
        F.relu(F.conv2d(x, w, b, s, p, d, g)), pool),
    "max_pool2d": lambda x, k, s, p, d, ceil_mode=False, return_indices=False: F.max_pool2d(
        x, k, s, p, d, ceil_mode=ceil_mode, return_indices=return_indices),
    "linear": lambda x, w, b, activation=None: (
        F.relu(F.linear(x, w, b)) if activation == "relu" else F.linear(x, w, b)),
}


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """float32 in IEEE on both sides (no TF32 on a GPU), so outputs agree to 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def torch_kernels(monkeypatch):
    """The tritoncnn layers compute with PyTorch's ops: structure tests, exact outputs."""
    monkeypatch.setattr(layers, "_op", _REFERENCE.__getitem__)


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------
# layers

LAYER_CASES = [
    (Conv2d, nn.Conv2d, (3, 8, 3), dict(stride=2, padding=1)),
    (Conv2d, nn.Conv2d, (4, 6, (3, 1)), dict(groups=2, bias=False, dilation=(2, 1))),
    (Conv2dReLU, nn.Conv2d, (1, 5, 5), dict(padding="same")),
    (Linear, nn.Linear, (7, 3), {}),
    (LinearReLU, nn.Linear, (7, 3), dict(bias=False)),
    (MaxPool2d, nn.MaxPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True)),
    (Conv2dReLUPool, nn.Conv2d, (3, 8, 3), dict(padding=1, pool=3)),
]


@pytest.mark.parametrize("cls,torch_cls,args,kw", LAYER_CASES)
def test_layer_matches_torch_nn_state_and_init(cls, torch_cls, args, kw):
    torch.manual_seed(1)
    ref = torch_cls(*args, **{k: v for k, v in kw.items() if k != "pool"})
    torch.manual_seed(1)
    ours = cls(*args, **kw)
    assert isinstance(ours, torch_cls)
    _same_state(ours, ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    # checkpoints move both ways
    other = torch_cls(*args, **{k: v for k, v in kw.items() if k != "pool"})
    other.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    _same_state(other, ours)


@pytest.mark.parametrize("make,match", [
    (lambda: Conv2d(3, 4, 3, dtype=torch.int64), "int64"),
    (lambda: Linear(3, 4, dtype=torch.int32), "int32"),
    (lambda: MaxPool2d(2, padding=2), "at most half"),
    (lambda: Conv2dReLUPool(3, 4, 3, pool=0), "pool must be a positive int"),
    (lambda: Conv2dReLUPool(3, 4, 3, pool=(2, 2)), "pool must be a positive int"),
])
def test_layer_rejects_what_kernels_cannot_serve(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_layers_forward_through_kernel_api():
    x = torch.randn(2, 3, 9, 7, device=DEVICE)
    pool = MaxPool2d(2, return_indices=True)
    out, idx = pool(x)
    assert torch.equal(idx, F.max_pool2d(x, 2, return_indices=True)[1])
    lin = LinearReLU(7, 5).to(DEVICE)
    h = torch.randn(2, 3, 7, device=DEVICE)
    y = lin(h)
    assert y.shape == (2, 3, 5)  # any leading dims, like nn.Linear
    torch.testing.assert_close(y, F.relu(F.linear(h, lin.weight, lin.bias)), atol=1e-4,
                               rtol=1e-4)
    fused = Conv2dReLUPool(3, 4, 3, padding=1, pool=3)
    assert "pool=3" in repr(fused) and set(fused.state_dict()) == {"weight", "bias"}


def _relu_pool(pool):
    return lambda y: F.max_pool2d(F.relu(y), pool)


@pytest.mark.parametrize("cls,torch_cls,args,kw,shape,after", [
    (Conv2dReLU, nn.Conv2d, (3, 5, 3), dict(padding=1), (2, 3, 7, 6), F.relu),
    (Conv2d, nn.Conv2d, (4, 6, 3), dict(stride=2, groups=2), (2, 4, 9, 9), None),
    (Conv2dReLUPool, nn.Conv2d, (3, 5, 3), dict(padding=1, pool=2), (2, 3, 7, 6),
     _relu_pool(2)),
    (Conv2dReLUPool, nn.Conv2d, (2, 4, 3), dict(stride=2, pool=3, bias=False), (1, 2, 15, 13),
     _relu_pool(3)),
    # padding modes other than zeros: F.pad first, as nn.Conv2d does ('same' with an even
    # kernel pads one more at the end)
    (Conv2dReLU, nn.Conv2d, (3, 5, 3), dict(padding=1, padding_mode="reflect"), (2, 3, 7, 6),
     F.relu),
    (Conv2d, nn.Conv2d, (2, 4, (3, 2)), dict(padding="same", padding_mode="circular"),
     (1, 2, 6, 5), None),
    (Conv2dReLUPool, nn.Conv2d, (3, 4, 3), dict(padding=(2, 1), padding_mode="replicate", pool=2),
     (2, 3, 7, 6), _relu_pool(2)),
    (MaxPool2d, nn.MaxPool2d, (2,), {}, (2, 3, 7, 6), None),
    (LinearReLU, nn.Linear, (10, 7), {}, (5, 10), F.relu),
    (Linear, nn.Linear, (10, 3), {}, (5, 10), None),
])
def test_layer_outputs_and_gradients_match_torch(cls, torch_cls, args, kw, shape, after):
    torch.manual_seed(0)
    ours = cls(*args, **kw).to(DEVICE)
    ref = torch_cls(*args, **{k: v for k, v in kw.items() if k != "pool"}).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape, device=DEVICE)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = ours(xa)
    yb = ref(xb)
    if after is not None:
        yb = after(yb)
    torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    for (name, pa), pb in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cls,kw,after", [
    (Conv2dReLU, {}, F.relu),
    (Conv2dReLUPool, dict(pool=2), _relu_pool(2)),
    (Conv2d, {}, None),
])
def test_conv_layers_under_autocast_match_torch(cls, kw, after):
    """The kernels' custom ops carry the autocast casts: the layers add none of their own."""
    device_type = torch.device(DEVICE).type
    dtype = torch.bfloat16
    torch.manual_seed(0)
    ours = cls(3, 5, 3, padding=1, **kw).to(DEVICE)
    ref = nn.Conv2d(3, 5, 3, padding=1).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    with torch.autocast(device_type, dtype=dtype):
        ya, yb = ours(x), ref(x)
        if after is not None:
            yb = after(yb)
    assert ya.dtype == yb.dtype == dtype
    assert ours.weight.dtype == torch.float32  # parameters stay fp32, as autocast leaves them
    torch.testing.assert_close(ya.float(), yb.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("shape", [(4, 200), (800,), (2, 256)])
def test_linear_layer_names_an_input_of_the_wrong_width(shape):
    """nn.Linear refuses an input whose last dimension is not in_features; flattening it to
    (-1, in_features) first would hide the mistake, or fail on a reshape no one asked for."""
    lin = Linear(400, 7).to(DEVICE)
    with pytest.raises(ValueError, match=rf"input of shape \({shape[0]},.*in_features=400"):
        lin(torch.randn(*shape, device=DEVICE))
    assert lin(torch.randn(400, device=DEVICE)).shape == (7,)


def test_linear_layer_under_autocast_matches_torch():
    device_type = torch.device(DEVICE).type
    lin = LinearReLU(10, 7).to(DEVICE)
    h = torch.randn(4, 10, device=DEVICE)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        ya = lin(h)
        yb = F.relu(F.linear(h, lin.weight, lin.bias))
    assert ya.dtype == yb.dtype == torch.bfloat16
    torch.testing.assert_close(ya.float(), yb.float(), atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------------------------
# convert()

class Block(nn.Module):
    """A custom forward: conv -> ReLU module (found by torch.fx), and an unfusable conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.side = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return y + self.side(x)  # side's output is not followed by a ReLU


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),  # nested Sequential
            nn.MaxPool2d(2),
        )
        self.blocks = nn.ModuleList([Block(4), Block(4)])
        self.odd = nn.ModuleDict({
            "circ": nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),  # F.pad first
            "bn": nn.BatchNorm2d(4),  # kept
        })
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):  # (N, 3, 8, 8)
        x = self.stem(x)  # (N, 4, 4, 4)
        for b in self.blocks:
            x = b(x)
        x = self.odd["bn"](self.odd["circ"](x))
        return self.head(x)  # (N, 3)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.fc(x.mean((2, 3)))


def _kinds(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules() if n}


def test_convert_nested_containers():
    torch.manual_seed(0)
    model = Nested().eval().to(DEVICE)
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match="odd.bn"):
        conv = convert(model)
    assert torch.equal(rng, torch.get_rng_state())  # converting draws no random numbers
    kinds = _kinds(conv)
    assert kinds["stem.0"] == "Conv2dReLU" and kinds["stem.1"] == "Identity"
    assert kinds["stem.2.0"] == "Conv2dReLU" and kinds["stem.3"] == "MaxPool2d"
    assert isinstance(conv.stem[3], MaxPool2d)
    assert kinds["blocks.0.conv"] == "Conv2dReLU"  # through torch.fx: conv -> self.relu
    assert kinds["blocks.0.relu"] == "Identity" and kinds["blocks.1.relu"] == "Identity"
    assert isinstance(conv.blocks[1].side, Conv2d) and not isinstance(conv.blocks[1].side,
                                                                      Conv2dReLU)
    assert isinstance(conv.head[1], LinearReLU) and isinstance(conv.head[3], Linear)
    assert type(conv.odd["circ"]) is Conv2d and conv.odd["circ"].padding_mode == "circular"
    assert type(conv.odd["bn"]) is nn.BatchNorm2d
    report = conv.convert_report
    assert isinstance(report, ConvertReport)
    assert set(report.traced) == {"", "blocks.0", "blocks.1"}  # the custom forwards
    assert type(conv) is Nested and isinstance(conv.stem, nn.Sequential)  # structure kept
    assert {n for n, _, _ in report.kept} == {"odd.bn"}
    assert len(report.fused) == 5 and "stem.0" in str(report)
    # same parameters, same outputs; the original is untouched
    _same_state(conv, model)
    assert type(model.stem[0]) is nn.Conv2d
    assert all("forward" not in vars(m) for m in conv.modules())  # no forward was replaced
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-4)


# Two modules whose forwards branch in Python: a torch.fx trace takes one side of each branch.

class TrainingBranch(nn.Module):
    """Scales the conv output in training only: the conv's user differs between the modes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        if self.training:
            y = y * 0.5
        y = self.pool(self.relu(y))
        return self.relu2(self.conv2(y))


class OptionalScale(nn.Module):
    """An optional argument: ``scale=None`` and a tensor take different branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x, scale=None):
        y = self.pool(self.relu(self.conv(x)))
        z = self.conv2(y)
        if scale is not None:
            z = z - scale
        return self.relu2(z)


def _outputs_match(model, conv, x, atol=0.0, **kw) -> None:
    for mode in (True, False):
        model.train(mode), conv.train(mode)
        torch.testing.assert_close(conv(x, **kw), model(x, **kw), atol=atol, rtol=atol,
                                   msg=f"training={mode} {kw}")


def test_convert_keeps_a_training_branch(torch_kernels):
    model = TrainingBranch()
    conv = convert(model.train())
    assert type(conv.forward) is type(model.forward) and "forward" not in vars(conv)
    # conv's output is scaled before the ReLU in training: not fused; conv2 -> relu2 is
    assert type(conv.conv) is Conv2d and type(conv.relu) is nn.ReLU
    assert type(conv.pool) is MaxPool2d
    assert type(conv.conv2) is Conv2dReLU and type(conv.relu2) is nn.Identity
    _outputs_match(model, conv, torch.randn(2, 3, 8, 8))
    conv_eval = convert(model.eval())  # the mode at conversion makes no difference
    assert type(conv_eval.conv) is Conv2d and conv_eval.training is False
    _outputs_match(model, conv_eval, torch.randn(2, 3, 8, 8))


def test_convert_keeps_an_optional_argument_branch(torch_kernels):
    model = OptionalScale()
    conv = convert(model)
    assert type(conv.conv) is Conv2dReLUPool and conv.conv.pool == 2
    assert type(conv.relu) is nn.Identity and type(conv.pool) is nn.Identity
    assert type(conv.conv2) is Conv2d and type(conv.relu2) is nn.ReLU  # z - scale in between
    x = torch.randn(2, 3, 8, 8)
    _outputs_match(model, conv, x)  # scale=None
    _outputs_match(model, conv, x, scale=torch.tensor(0.3))
    _outputs_match(model, conv, x, scale=None)


class SharedModules(nn.Module):
    """One ReLU and one pool module called at several places, not all after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()  # after a, after b, and on x - 1
        self.pool = nn.MaxPool2d(2)  # after b's ReLU, and on the skip path
        self.act2 = nn.ReLU()  # only ever after c
        self.pool2 = nn.MaxPool2d(2)  # only ever after c's ReLU

    def forward(self, x):  # (N, 3, 8, 8)
        y = self.act(self.a(x))  # (N, 4, 8, 8)
        skip = self.pool(y - 1)  # (N, 4, 4, 4)
        y = self.pool(self.act(self.b(y)))  # (N, 4, 4, 4)
        z = self.pool2(self.act2(self.c(y))) + self.pool2(self.act2(self.c(skip)))
        return z + self.act(x[:, :1, :2, :2] - 1)  # (N, 4, 2, 2)


def test_convert_shared_relu_and_pool_modules(torch_kernels):
    model = SharedModules()
    conv = convert(model)
    # act is also used on x - 1: it stays (relu(relu(x)) is relu(x)); a and b fuse their ReLU
    assert type(conv.a) is Conv2dReLU and type(conv.act) is nn.ReLU
    # pool also pools the skip path: it stays, so b must not pool itself
    assert type(conv.b) is Conv2dReLU and type(conv.pool) is MaxPool2d
    # c is called twice, each call followed by act2 then pool2, used nowhere else
    assert type(conv.c) is Conv2dReLUPool
    assert type(conv.act2) is nn.Identity and type(conv.pool2) is nn.Identity
    _outputs_match(model, conv, torch.randn(2, 3, 8, 8))


class FunctionalReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv2(F.relu(self.conv(x))))


def test_convert_leaves_functional_relu_unfused(torch_kernels):
    model = FunctionalReLU()
    conv = convert(model)
    assert type(conv.conv) is Conv2d and type(conv.conv2) is Conv2d
    assert conv.convert_report.fused == []
    _outputs_match(model, conv, torch.randn(2, 3, 8, 8))


class TutorialNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial form: one pool module for every stage, ReLU as a function
    (each call form), and convs that cannot fuse with a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c5, self.c6 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.pool, self.pool2 = nn.MaxPool2d(2, 2), nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # (N, 3, 16, 16)
        y = self.pool(F.relu(self.c1(x)))  # (N, 4, 8, 8)
        y = self.pool(torch.relu(self.c2(y)))
        y = self.pool(self.c3(y).relu())
        y = self.pool(F.relu(self.c4(y), inplace=True))  # (N, 4, 1, 1)
        z = F.max_pool2d(F.relu(self.c5(x)), 2)  # a functional pool: c5 stays a plain conv
        z = self.pool2(F.relu(self.c6(z))) + self.pool2(z)  # pool2 also pools z: it stays
        return self.fc(y.flatten(1)) + z.mean((1, 2, 3))[:, None]


def test_convert_fuses_a_relu_function_with_the_pool_module_after_it():
    torch.manual_seed(0)
    model = TutorialNet().to(DEVICE)
    conv = convert(model)
    kinds = _kinds(conv)
    assert [kinds[f"c{i}"] for i in range(1, 7)] == ["Conv2dReLUPool"] * 4 + ["Conv2d"] * 2
    assert kinds["pool"] == "Identity" and kinds["pool2"] == "MaxPool2d"
    assert conv.c1.pool == 2
    assert sorted(conv.convert_report.fused) == [
        ("c1", "relu()", "pool"), ("c2", "relu()", "pool"), ("c3", ".relu()", "pool"),
        ("c4", "relu()", "pool")]
    # the ReLU calls stay in the forward, on pooled outputs they leave as they are
    x = torch.randn(2, 3, 16, 16, device=DEVICE, requires_grad=True)
    ya, yb = conv(x), model(x)
    torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yb)
    names = [n for n, _ in model.named_parameters()]
    ga = torch.autograd.grad(ya, [x, *conv.parameters()], g)
    gb = torch.autograd.grad(yb, [x, *model.parameters()], g)
    assert [n for n, _ in conv.named_parameters()] == names
    for name, a, b in zip(["input", *names], ga, gb):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.act, self.pool = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):  # (N, 3, 8, 8)
        x = self.pool(self.act(self.b1(self.c1(x))))  # (N, 8, 4, 4)
        return self.act(self.b2(self.c2(x)))  # (N, 4, 4, 4)


def test_convert_fuses_inside_a_torch_fx_graph_module():
    """Batch norms folded into the convs by torch.fx (eval mode), then converted: the GraphModule's
    forward is analysed like a custom one, so conv -> ReLU -> pool fuses."""
    from torch.fx.experimental.optimization import fuse

    torch.manual_seed(0)
    model = ConvBN().eval().to(DEVICE)
    for bn in (model.b1, model.b2):  # statistics that make the folding matter
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    folded = fuse(model)
    conv = convert(folded)
    kinds = _kinds(conv)
    assert kinds["c1"] == "Conv2dReLUPool" and kinds["c2"] == "Conv2dReLU"
    assert kinds["pool"] == "Identity" and kinds["act"] == "Identity"
    assert conv.convert_report.traced == [""]
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-4)


class Stages(nn.Module):
    """Convs in a ModuleList called from the parent, one ReLU and one pool module for all."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)])
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                                                nn.MaxPool2d(2)), nn.Flatten())

    def forward(self, x):  # (N, 3, 8, 8)
        for conv in self.convs:
            x = self.act(conv(x))  # (N, 4, 8, 8)
        return self.head(x)  # (N, 5 * 4 * 4)


def test_convert_carries_hooks_and_never_fuses_a_hooked_module():
    """A conv with a forward hook is converted alone (its hook sees the conv's own output, before
    the ReLU, as on torch) and keeps the hook (converted in place, the handle still removes it);
    a ReLU or pool with a hook is not fused away; a full backward hook sees the same gradient."""
    torch.manual_seed(0)

    class Block(nn.Module):  # the same through torch.fx
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), \
                nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.relu(self.conv(x)))

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          Block()).to(DEVICE)
    seen = {}

    def keep(name):
        return lambda module, args, out: seen.setdefault(name, []).append(out)

    model[0].register_forward_hook(keep("conv"))
    model[4].register_forward_hook(keep("relu"))
    model[6].pool.register_forward_pre_hook(lambda m, args: None)
    model[3].register_full_backward_hook(
        lambda m, gin, gout: seen.setdefault("grad", []).append(gout[0]))
    conv = convert(model)
    kinds = _kinds(conv)
    assert (kinds["0"], kinds["1"], kinds["2"]) == ("Conv2d", "ReLU", "MaxPool2d")
    assert (kinds["3"], kinds["4"], kinds["5"]) == ("Conv2d", "ReLU", "MaxPool2d")
    assert isinstance(conv[2], MaxPool2d) and isinstance(conv[5], MaxPool2d)
    assert kinds["6.conv"] == "Conv2dReLU" and kinds["6.relu"] == "Identity"
    assert kinds["6.pool"] == "MaxPool2d"  # kept unfused: it has a hook
    assert any("hooks carried over" in n for n in conv.convert_report.notes)

    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    conv(ours).sum().backward()
    model(theirs).sum().backward()
    for name in ("conv", "relu"):  # ours first, then torch's: the same values
        assert len(seen[name]) == 2
        torch.testing.assert_close(seen[name][0], seen[name][1], atol=1e-4, rtol=1e-4)
    assert (seen["conv"][0] < 0).any()  # the conv's own output, not the ReLU's
    torch.testing.assert_close(seen["grad"][0], seen["grad"][1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-4, rtol=1e-4)
    # converted in place, the handles taken before converting still remove the hooks
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).to(DEVICE)
    calls = []
    handle = small[0].register_forward_hook(lambda *args: calls.append(1))
    convert(small, inplace=True)
    small(x)
    handle.remove()
    small(x)
    assert type(small[0]) is Conv2d and len(calls) == 1


def test_convert_module_list_and_nested_sequential(torch_kernels):
    model = Stages()
    conv = convert(model)
    assert [type(c) for c in conv.convs] == [Conv2dReLU, Conv2dReLU]
    assert type(conv.act) is nn.Identity
    assert [type(m) for m in conv.head[0]] == [Conv2dReLUPool, nn.Identity, nn.Identity]
    assert ("head.0.0", "head.0.1", "head.0.2") in conv.convert_report.fused
    _same_state(conv, model)
    _outputs_match(model, conv, torch.randn(2, 3, 8, 8))


def test_convert_on_kernels_traced_module_and_nested_sequential():
    """The real kernels, through fx-found fusion (OptionalScale) and Sequential fusion."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OptionalScale(),  # (N, 4, 3, 3) from (N, 3, 7, 6)
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3)),  # (N, 6, 1, 1)
        nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3),
    ).to(DEVICE)
    conv = convert(model)
    assert type(conv[0].conv) is Conv2dReLUPool and type(conv[0].conv2) is Conv2d
    assert type(conv[1][0]) is Conv2dReLUPool and conv[1][0].pool == 3
    assert type(conv[3]) is LinearReLU and type(conv[5]) is Linear
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), model(xb)
    torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yb)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dict(conv.named_parameters())[name].grad,
                                   atol=1e-4, rtol=1e-4, msg=name)


def test_convert_on_kernels_training_branch():
    torch.manual_seed(0)
    model = TrainingBranch().to(DEVICE)
    conv = convert(model)
    _outputs_match(model, conv, torch.randn(2, 3, 6, 6, device=DEVICE), atol=1e-4)


def test_convert_waits_for_lazy_modules_and_the_warning_says_why():
    """An uninitialized nn.LazyConv2d / nn.LazyLinear is kept, and the warning names it with the
    reason; after one forward pass the same model converts and fuses."""
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.LazyLinear(5)).to(DEVICE)
    with pytest.warns(UserWarning, match=r"0 \(LazyConv2d\): a lazy module not initialized yet"):
        kept = convert(make())
    assert {n for n, _, _ in kept.convert_report.kept} == {"0", "4"}
    model = make()
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    ref = model(x)
    ours = convert(model)
    assert type(ours[0]) is Conv2dReLUPool and type(ours[4]) is Linear
    torch.testing.assert_close(ours(x), ref, atol=1e-4, rtol=1e-4)


def test_convert_a_float64_model():
    """A float64 model converts and fuses like any other and gives torch's outputs and input
    gradients to float64 rounding; complex layers are kept, with the reason."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).to(DEVICE, torch.float64)
    ours = convert(model)
    assert type(ours[0]) is Conv2dReLUPool and type(ours[4]) is Linear
    _same_outputs_and_input_grads(
        ours, model, torch.randn(2, 3, 8, 8, device=DEVICE, dtype=torch.float64), 1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that complex modules are new
        complex_model = nn.Sequential(nn.Linear(3, 2).to(torch.complex64))
    with pytest.warns(UserWarning, match=r"dtype torch.complex64"):
        convert(complex_model)


def test_convert_untraceable_model_converts_unfused():
    model = Untraceable().to(DEVICE)
    conv = convert(model)
    assert type(conv.conv) is Conv2d and type(conv.fc) is Linear
    assert conv.convert_report.traced == []
    assert any("not torch.fx-traceable" in n for n in conv.convert_report.notes)
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-4)


def test_convert_inplace_shared_and_top_level():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)  # one module used twice
    params = list(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept, so no warning
        out = convert(model, inplace=True)
    assert out is model and out[0] is out[2] and isinstance(out[0], Linear)
    assert list(out.parameters()) == params  # the same Parameter objects: optimizers keep working
    top = convert(nn.Conv2d(3, 4, 3))  # a bare layer converts too
    assert type(top) is Conv2d and top.convert_report.replaced[0][0] == ""
    unfused = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), fuse=False)
    assert type(unfused[0]) is Conv2d and type(unfused[1]) is nn.ReLU


def _same_outputs_and_input_grads(ours, model, x, tol=1e-4):
    """ours(x) and model(x) agree within ``tol``, and so do the gradients of |output|^2 in x."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = ours(a), model(b)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=tol)


def test_convert_outputs_match_on_kernels():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 3),
    ).to(DEVICE)
    conv = convert(model)
    assert type(conv[0][0]) is Conv2dReLUPool
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-4)


def test_exported_converted_model_keeps_a_dynamic_batch():
    """torch.export with a dynamic batch dimension (no bound declared): the shape checks put no
    guard on the batch size (the op checks its concrete sizes when it runs), and the exported
    program gives torch's outputs at another batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).to(DEVICE)
    exported = torch.export.export(convert(model), (torch.randn(2, 3, 8, 8, device=DEVICE),),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert "tritoncnn.conv2d_relu_pool" in str(exported.graph_module.code)
    x = torch.randn(5, 3, 8, 8, device=DEVICE)
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-4, rtol=1e-4)


def test_jit_traced_converted_model_matches_torch():
    """torch.jit.trace of a converted model records the tritoncnn custom ops (sizes are traced
    tensors there, which the launchers never see): the trace runs another batch size, survives
    torch.jit.save and load, and gives torch's outputs and input gradients."""
    import io
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).to(DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(convert(model), torch.randn(2, 3, 8, 8, device=DEVICE))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    # the shape checks' TracerWarnings ("might not generalize") are silenced: the trace does
    # generalize (another batch size below); jit's own deprecation warning may stay
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)], \
        [str(w.message) for w in caught]
    assert "tritoncnn::conv2d_relu_pool" in str(traced.inlined_graph)
    _same_outputs_and_input_grads(loaded, model, torch.randn(5, 3, 8, 8, device=DEVICE))


# --------------------------------------------------------------------------------------------
# zoo

# (name, options, (channels, size), CONV -> RELU -> POOL blocks)
ZOO_CASES = [
    ("lenet5", {}, (1, 32), 2),
    ("lenet5", dict(input_size=28, in_channels=3, num_classes=5), (3, 28), 2),
    ("convnetjs", {}, (3, 32), 3),
    ("vgg11", dict(width=0.125), (3, 32), 5),
    ("vgg16", dict(width=1 / 16, input_size=224, num_classes=7, fc_width=32), (3, 224), 5),
]


def _count(model: nn.Module, cls) -> int:
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("name,kw,inp,blocks", ZOO_CASES)
def test_zoo_same_seed_same_weights_on_both_backends(name, kw, inp, blocks, torch_kernels):
    torch.manual_seed(3)
    ref = get_model(name, backend="torch", **kw)
    torch.manual_seed(3)
    tri = get_model(name, backend="triton", **kw)
    _same_state(tri, ref)
    assert not any(type(m) in (nn.Conv2d, nn.Linear, nn.MaxPool2d) for m in tri.modules())
    # every CONV -> RELU -> POOL block runs as one fused layer, every other conv with its ReLU
    assert _count(tri, Conv2dReLUPool) == blocks
    assert _count(tri, Conv2dReLUPool) + _count(tri, Conv2dReLU) == _count(ref, nn.Conv2d)
    assert _count(tri, MaxPool2d) == 0
    c, s = inp
    x = torch.randn(2, c, s, s)
    ref.eval(), tri.eval()
    y = ref(x)
    assert y.shape == (2, kw.get("num_classes", 10))
    torch.testing.assert_close(tri(x), y, atol=0, rtol=0)


@pytest.mark.parametrize("make,inp", [
    (lambda backend: get_model("vgg11", backend=backend, width=1 / 16, fc_width=8), (3, 32)),
    (lambda backend: get_model("convnetjs", backend=backend, width=0.25, input_size=8), (3, 8)),
    (lambda backend: build("CONV3-4-RELU-POOL2-CONV3-6-RELU-POOL3-FC8-RELU-FC3",
                           backend=backend, in_channels=2, input_size=7), (2, 7)),
])
def test_zoo_and_spec_on_kernels_match_the_torch_twin(make, inp):
    torch.manual_seed(4)
    ref = make("torch").to(DEVICE).eval()
    torch.manual_seed(4)
    tri = make("triton").to(DEVICE).eval()
    _same_state(tri, ref)
    assert _count(tri, Conv2dReLUPool) >= 2
    c, size = inp
    x = torch.randn(1, c, size, size, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), atol=1e-4, rtol=1e-4)


def test_per_sample_gradients_with_torch_func_match_the_torch_twin():
    """torch.func's per-sample-gradient recipe (functional_call, grad, vmap over the batch) on a
    model of tritoncnn layers (fused conv + ReLU + pool, conv + ReLU, linear) gives the torch
    twin's gradients."""
    spec = "CONV3-4-RELU-POOL2-CONV3-6-RELU-FC10"
    grads, models = {}, {}
    for backend in ("triton", "torch"):
        torch.manual_seed(5)
        model = models[backend] = build(spec, backend=backend, in_channels=1,
                                        input_size=8).to(DEVICE)
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(params, xi, yi):
            out = torch.func.functional_call(model, params, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        torch.manual_seed(6)
        x = torch.randn(5, 1, 8, 8, device=DEVICE)
        y = torch.randint(0, 10, (5,), device=DEVICE)
        grads[backend] = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    assert _count(models["triton"], Conv2dReLUPool) == 1
    assert list(grads["triton"]) == list(grads["torch"])
    for name, g in grads["triton"].items():
        assert g.shape[0] == 5, name
        torch.testing.assert_close(g, grads["torch"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_zoo_shapes_and_errors():
    vgg = get_model("vgg16", backend="torch")
    n_convs = sum(isinstance(m, nn.Conv2d) for m in vgg.modules())
    n_fcs = sum(isinstance(m, nn.Linear) for m in vgg.modules())
    assert (n_convs, n_fcs) == (13, 3)
    assert vgg.features[0].out_channels == 64 and vgg.classifier[0].in_features == 512
    vgg224 = get_model("vgg11", backend="torch", input_size=224, num_classes=1000, width=0.25)
    assert vgg224.classifier[0].in_features == 128 * 7 * 7
    assert vgg224.classifier[0].out_features == 1024  # 4096 x width at 224
    with pytest.raises(ValueError, match="unknown model"):
        get_model("resnet50")
    with pytest.raises(ValueError, match="backend"):
        get_model("lenet5", backend="cudnn")
    with pytest.raises(TypeError, match="unknown option"):
        get_model("lenet5", depth=3)
    with pytest.raises(ValueError, match="input_size"):
        get_model("vgg11", input_size=16)
    for name in ("in_channels", "num_classes", "input_size"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int, got 0"):
            get_model("lenet5", backend="torch", **{name: 0})
    with pytest.raises(ValueError, match="input_size must be a positive int, got -3"):
        get_model("vgg11", backend="torch", input_size=-3)


# --------------------------------------------------------------------------------------------
# spec grammar

def test_spec_lecture_pattern_builds():
    spec = "[(CONV3-32-RELU)*2-POOL2]*3-(FC256-RELU)*1-FC10"
    layers_ = parse(spec)
    assert [l.kind for l in layers_].count("conv") == 6
    assert [l.kind for l in layers_].count("pool") == 3
    assert [(l.kind, l.size) for l in layers_[-3:]] == [("fc", 256), ("relu", 0), ("fc", 10)]
    model = build(spec, backend="torch", in_channels=3, input_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model[16].in_features == 32 * 4 * 4  # the first FC, after Flatten


@pytest.mark.parametrize("spec,expect", [
    ("conv5p0-6-relu-pool2-fc10", [("conv", 5, 6, 1, 0), ("relu",), ("pool", 2, 0, 2, 0),
                                   ("fc", 10)]),
    ("CONV3S2-8", [("conv", 3, 8, 2, 1)]),
    ("CONV3P0S2-8", [("conv", 3, 8, 2, 0)]),
    ("POOL3S2", [("pool", 3, 0, 2, 0)]),
    ("INPUT-(FC4)*3-SOFTMAX", [("fc", 4)] * 3),
    (" [ (CONV3-4 - RELU) * 2 ] - FC2 ", [("conv", 3, 4, 1, 1), ("relu",)] * 2 + [("fc", 2)]),
])
def test_spec_parses(spec, expect):
    got = [(l.kind, l.size, l.channels, l.stride, l.pad)[:len(e)] for l, e in
           zip(parse(spec), expect)]
    assert got == [tuple(e) for e in expect] and len(parse(spec)) == len(expect)


# (spec, index of the mistake, words the message must contain)
SPEC_ERRORS = [
    ("[(CONV3-x-RELU)*2-POOL2]*3-FC10", 8, "number of filters"),
    ("CONV3-32-", 9, "end of the spec"),
    ("(CONV3-8", 0, "never closed"),
    ("CONV3-8)", 7, "closes nothing"),
    ("[CONV3-8)", 8, "cannot close the '['"),
    ("CONVV3-8", 0, "unknown layer 'CONVV'"),
    ("CONV3", 5, "number of filters"),
    ("CONV3-8--RELU", 8, "between two '-'"),
    ("(CONV3-8)*0", 10, "at least 1"),
    ("(CONV3-8)*", 10, "repeat count"),
    ("CONV3Q-8", 5, "unexpected 'Q'"),
    ("CONV3P1P2-8", 7, "twice"),
    ("CONV3-8 RELU", 8, "expected '-'"),
    ("()", 1, "empty group"),
    ("", 0, "empty spec"),
    ("FC10-SOFTMAX-FC2", 5, "last"),
    ("FC4-INPUT", 4, "first"),
    ("POOL2-FC10-CONV3-4", 11, "CONV after FC"),
    ("FC10-POOL2", 5, "POOL after FC"),
    ("[POOL2]*4-FC10", 1, "does not fit a 1x1"),  # the 4th repetition: 8 -> 4 -> 2 -> 1 -> 0
    ("CONV9P0-4", 0, "does not fit a 8x8"),
    ("CONV3-8\u00b2", 7, "ASCII digits 0-9"),  # a superscript two: a digit, but not 0-9
    ("CONV\u00b2-8", 4, "ASCII digits 0-9"),
    ("(FC3)*\u0663", 6, "ASCII digits 0-9"),  # an Arabic-Indic three
    ("CONV3 -8", 5, "spaces are not allowed inside a layer"),
    ("CONV3- 8", 6, "spaces are not allowed inside a layer"),
    ("POOL 2", 4, "spaces are not allowed inside a layer"),
]


@pytest.mark.parametrize("spec,pos,words", SPEC_ERRORS)
def test_spec_errors_point_at_the_mistake(spec, pos, words):
    with pytest.raises(SpecError) as info:
        build(spec, backend="torch", in_channels=1, input_size=8)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.position == pos, str(err)
    assert words in err.message
    # the message shows the spec and a caret under the mistake
    lines = str(err).splitlines()
    assert lines[1] == f"  {spec}" and lines[2] == "  " + " " * pos + "^"


def test_spec_same_seed_same_weights():
    spec = "CONV3-4-RELU-POOL2-FC8-RELU-FC3"
    torch.manual_seed(5)
    ref = build(spec, backend="torch", in_channels=2, input_size=6).to(DEVICE)
    torch.manual_seed(5)
    tri = build(spec, backend="triton", in_channels=2, input_size=6).to(DEVICE)
    _same_state(tri, ref)
    assert type(tri[0]) is Conv2dReLUPool and type(tri[4]) is LinearReLU
    assert type(tri[1]) is nn.Identity and type(tri[2]) is nn.Identity
    x = torch.randn(3, 2, 6, 6, device=DEVICE)
    torch.testing.assert_close(tri(x), ref(x), atol=1e-4, rtol=1e-4)


# (spec, words the message must contain): specs that would exhaust memory, time or the stack
SPEC_BOMBS = [
    ("(((FC10)*1000)*1000)*1000", "more than 10000 layers"),
    ("(FC10)*99999", "more than 10000 layers"),
    ("(FC10)*5000-(FC10)*5000-FC10", "more than 10000 layers"),
    ("CONV3-99999999999999999999", "at most 2147483647"),
    ("(FC3)*" + "9" * 5000, "5000 digits"),
    ("(" * 2000 + "FC10" + ")" * 2000, "nested more than 100 deep"),
    ("CONV3-2147483647", "more than 2147483648 elements"),
    ("FC2147483647", "more than 2147483648 elements"),
]


@pytest.mark.parametrize("spec,words", SPEC_BOMBS)
def test_spec_bombs_are_refused_quickly(spec, words):
    import time

    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        build(spec, backend="torch", in_channels=3, input_size=8)
    assert time.perf_counter() - start < 1.0
    assert words in info.value.message, info.value.message
    assert len(str(info.value).splitlines()[0]) < 200  # one readable line


def test_spec_at_the_layer_cap_still_parses():
    from tritoncnn.models.spec import MAX_LAYERS

    assert len(parse(f"(FC10)*{MAX_LAYERS}")) == MAX_LAYERS
    assert len(parse("(" * 100 + "FC10" + ")" * 100)) == 1


@pytest.mark.parametrize("kw,match", [
    (dict(input_size=-3), r"input_size must be .*got -3"),
    (dict(input_size=0), r"input_size must be .*got 0"),
    (dict(input_size=(8, 0)), r"input_size must be .*got \(8, 0\)"),
    (dict(input_size=8.5), r"input_size must be .*got 8.5"),
    (dict(in_channels=0), r"in_channels must be a positive int, got 0"),
    (dict(in_channels=True), r"in_channels must be a positive int, got True"),
])
def test_build_refuses_sizes_that_are_not_positive(kw, match):
    with pytest.raises(ValueError, match=match):
        build("CONV3-4-FC10", backend="torch", **kw)
