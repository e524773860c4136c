"""compile_model (the whole-model runner) equals torch on every supported model family, kind,
batch size and input sparsity; block-pruned layers take the block path; refusals are one line;
threads, bad inputs and per-shape plans behave.

Numba compiles one forward function per op sequence (seconds for LeNet5, ~25 s for ResNet50 or
GoogLeNet, over a minute for their sparse kinds), always from scratch here: the runner's disk
cache goes to a temporary folder. Compiled models are shared by the cases of this module (the
op sequence does not depend on the batch size or the image size, and ``dual_sparse`` without
block-pruned layers is the same sequence as ``act_sparse``), and the expensive combinations
only run with DST_RUNNER_FULL=1 (ResNet50 / GoogLeNet sparse kinds, ResNet20 / ResNet18 dense,
two-thread act_sparse); GoogLeNet and ResNet50 (dense, ~25 s each) are marked slow.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numba
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dstcore import DstError
from dstcore.kernels import RUNNER_KINDS, UnsupportedModel, compile_model
from dstcore.kernels.runner import BLOCK_MIN_WIDTH, DIRECT_MAX_CHANNELS
from dstcore.models import build_model
from dstcore.sparsity.pruning import block_masks

FULL = os.environ.get("DST_RUNNER_FULL") == "1"
TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2
RTOL = 1e-5  # of max |torch output|


@pytest.fixture(scope="module", autouse=True)
def _runner_cache(tmp_path_factory):
    """Generated code and Numba's cache of it go to a fresh folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DST_RUNNER_CACHE", str(tmp_path_factory.mktemp("runner_cache")))
        yield


@pytest.fixture(autouse=True)
def _one_numba_thread():
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(1)


def randomise(model: nn.Module, shape: tuple[int, int, int], seed: int) -> nn.Module:
    """He-initialised weights, then BatchNorm statistics measured on random images and
    perturbed (mean, variance, affine weight and bias all random), so BN folding is really
    tested while activations stay O(1) through 50 layers; BN biases lean negative so most
    ReLU outputs are zero."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # running stats = this batch's
        model.train()
        model(torch.randn(8, *shape, generator=g))
        for bn in bns:
            c = bn.num_features
            bn.momentum = 0.1
            bn.weight.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.copy_(torch.rand(c, generator=g) - 1.0)
            bn.running_mean.add_(0.3 * bn.running_var.sqrt() * torch.randn(c, generator=g))
            bn.running_var.mul_(0.5 + 1.5 * torch.rand(c, generator=g))
    return model.eval()


def assert_equal_to_torch(y: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert y.shape == ref.shape and y.dtype == torch.float32, what
    scale = ref.abs().max().item()
    assert scale > 0, what
    err = (y - ref).abs().max().item()
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} vs max |ref| {scale:.3g}"
    spread = (ref - ref.mean(0)).abs().max().item()
    if spread > 1e-3 * scale:  # images differ (not all-zero inputs)
        # deep nets' logits are mostly bias: the part that differs between images must match too
        err = ((y - y.mean(0)) - (ref - ref.mean(0))).abs().max().item()
        assert err <= 1e-3 * spread, f"{what}: error {err:.3g} of the per-image part {spread:.3g}"


def inputs(shape, second_shape, seed):
    """(label, tensor): dense and sparse images, batch 1 and 3, all zeros, a second size."""
    g = torch.Generator().manual_seed(seed)
    yield "randn n=1", torch.randn(1, *shape, generator=g)
    yield "randn n=3", torch.randn(3, *shape, generator=g)
    yield "zeros n=3", torch.zeros(3, *shape)
    yield "zeros n=1", torch.zeros(1, *shape)
    yield "sparse n=3", torch.relu(torch.randn(3, *shape, generator=g) - 1.0)  # ~84% zeros
    yield f"randn n=2 {second_shape}", torch.randn(2, *second_shape, generator=g)


def relu_zero_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of zeros in the outputs of the model's nn.ReLU modules."""
    counts = [0, 0]

    def hook(_m, _i, out):
        counts[0] += int((out == 0).sum())
        counts[1] += out.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return counts[0] / max(counts[1], 1)


@pytest.fixture(scope="module")
def runner():
    """get(name, shape, kind, threads) -> (randomised torch model, its CompiledModel), cached."""
    models: dict = {}
    compiled: dict = {}

    def get(name, shape, kind, threads=1):
        if (name, shape) not in models:
            torch.manual_seed(0)
            models[name, shape] = randomise(build_model(name, shape, 10), shape, seed=1)
        key = (name, shape, kind, threads)
        if key not in compiled:
            compiled[key] = compile_model(models[name, shape], kind, threads=threads)
        return models[name, shape], compiled[key]

    return get


# (name, built for, second input size, kinds run by default); a CHW size above 64 gets
# torchvision's ImageNet stem (7x7 stride-2 conv + max pool), at most 64 the CIFAR stem
FAMILIES = [
    ("lenet5", (1, 28, 28), (1, 30, 33), RUNNER_KINDS),
    ("resnet8", (1, 28, 28), (1, 19, 23), RUNNER_KINDS),
    ("resnet20", (1, 28, 28), (1, 17, 15), ("act_sparse", "dual_sparse")),
    ("resnet18", (3, 33, 35), (3, 37, 37), ("act_sparse", "dual_sparse")),
    # GoogLeNet (140 ops, 50 s to compile), DenseNet and the bottleneck ResNet (40-45 s each)
    # only with DST_RUNNER_FULL=1: inception_small runs branches and concatenations through the
    # sparse path in every make test, resnet20 the 1x1 projection shortcuts
    ("googlenet", (3, 32, 32), (3, 35, 37), ()),
    ("inception_small", (1, 28, 28), (1, 20, 24), ("act_sparse",)),
    ("densenet_small", (1, 28, 28), (1, 24, 20), ()),
    ("resnet29_bottleneck", (1, 28, 28), (1, 16, 18), ()),
    ("resnet50", (3, 65, 67), (3, 37, 37), ("dense",)),
]
SLOW = {"googlenet", "resnet50"}


def _family_cases():
    for name, shape, second, kinds in FAMILIES:
        for kind in RUNNER_KINDS:
            marks = [pytest.mark.slow] if name in SLOW or kind not in kinds else []
            if kind not in kinds and not FULL:
                marks.append(pytest.mark.skip(reason="compiles for a minute: DST_RUNNER_FULL=1"))
            yield pytest.param(name, shape, second, kind, marks=marks, id=f"{name}-{kind}")


def _is_direct(m: nn.Module) -> bool:
    """Convs over few input channels run dense and direct (not linears; 1x1 convs too)."""
    return isinstance(m, nn.Conv2d) and m.in_channels <= DIRECT_MAX_CHANNELS


def expected_paths(model: nn.Module, kind: str) -> list[str]:
    """Per conv/linear: 'direct' for convs over few input channels (the image layer, the
    16-channel stage) in every kind, else 'gemm' for the dense kind and 'compress' for the
    sparse kinds (no block-pruned weights)."""
    return ["direct" if _is_direct(m) else "gemm" if kind == "dense" else "compress"
            for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize(("name", "shape", "second", "kind"), list(_family_cases()))
def test_equals_torch(runner, name, shape, second, kind):
    model, compiled = runner(name, shape, kind)
    for label, x in inputs(shape, second, seed=zlib.crc32(f"{name} {kind}".encode())):
        x0 = x.clone()
        with torch.no_grad():
            ref = model(x)
        assert_equal_to_torch(compiled(x), ref, f"{name} {kind} {label}")
        assert torch.equal(x, x0)  # the input is not written to
    assert [layer["path"] for layer in compiled.layers(shape)] == expected_paths(model, kind)
    n_layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    assert len(compiled.layers(second)) == len(compiled.layers(shape)) == n_layers


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18"])
def test_relu_zeros_dominate(name):
    """The randomised models really produce mostly-zero activations (the sparse kinds skip
    them), for dense and sparse images alike (LeNet5 has no BatchNorm: about half)."""
    shape = next(s for n, s, *_ in FAMILIES if n == name)
    torch.manual_seed(0)
    model = randomise(build_model(name, shape, 10), shape, seed=1)
    for x in (torch.randn(2, *shape), torch.relu(torch.randn(2, *shape) - 1.0)):
        assert relu_zero_fraction(model, x) > 0.6


# ----------------------------------------------------------------------------- block path


def _block_prune(model: nn.Module, rate: float) -> dict[str, str]:
    """Zero whole (16 output x 1 input channel) units of every conv the block path can take
    (C and K multiples of 16): ``rate`` of them per layer, except ``layers.1.conv1`` (all of
    them: its output is the bias alone) and ``layers.0.conv2`` (2 of its 16 units, below the
    runner's 25% threshold: not the block path, and with 16 input channels 'direct').
    Returns the expected path per conv/linear: a pruned conv whose live input channels (any
    non-zero weight) number at most DIRECT_MAX_CHANNELS runs 'direct' on just those channels,
    a wider one 'block'."""
    expected = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.Conv2d | nn.Linear):
                continue
            k, c = m.weight.shape[:2]
            if k % 16 or c % 16:
                expected[name] = "direct" if _is_direct(m) else "compress"
                continue
            if name == "layers.0.conv2":
                m.weight[:16, :2] = 0.0  # 2 of 16 units: 12.5% < BLOCK_ZERO_FRACTION
                expected[name] = "direct"  # 16 input channels, not block pruned
                continue
            layer_rate = 1.0 if name == "layers.1.conv1" else rate
            (keep,) = block_masks([m.weight], layer_rate, scope="layer")
            m.weight.mul_(keep)
            live = int(m.weight.ne(0).flatten(2).any(-1).any(0).sum())  # input channels
            # 1x1 convs (the projection shortcuts) are pruned too, but do not pay for blocks
            expected[name] = ("direct" if live <= DIRECT_MAX_CHANNELS else
                              "compress" if m.weight.shape[3] < BLOCK_MIN_WIDTH else "block")
    return expected


@pytest.fixture(scope="module")
def block_pruned():
    shape = (1, 28, 28)
    torch.manual_seed(0)
    pruned = randomise(build_model("resnet8", shape, 10), shape, seed=2)
    expected = _block_prune(pruned, 0.8)
    return pruned, expected, compile_model(pruned, "dual_sparse")


def test_block_pruned_layers_take_block_path(block_pruned):
    model, expected, compiled = block_pruned
    shape, second = (1, 28, 28), (1, 19, 23)
    layers = compiled.layers(shape)
    assert [lay["path"] for lay in layers] == list(expected.values())
    # 7 prunable convs, 2 of them 1x1; of the 5 others, 3 keep at most 16 live input channels
    # (layers.1.conv2 of its 32; layers.1.conv1 none) and run direct on those
    assert [name for name, path in expected.items() if path == "block"] == [
        "layers.2.conv1", "layers.2.conv2"]
    assert expected["layers.1.conv2"] == expected["layers.1.conv1"] == "direct"
    for lay, name in zip(layers, expected, strict=True):
        assert lay["layer"] == name
        w = model.get_submodule(name).weight
        assert lay["weight_sparsity"] == pytest.approx(float((w == 0).float().mean()))
    for label, x in inputs(shape, second, seed=5):
        with torch.no_grad():
            ref = model(x)
        assert_equal_to_torch(compiled(x), ref, f"block-pruned resnet8 {label}")


def test_block_pruned_model_on_other_kinds(runner, block_pruned):
    """dense / act_sparse ignore the block structure (same code as the unpruned resnet8)."""
    model, _, _ = block_pruned
    x = torch.relu(torch.randn(3, 1, 28, 28) - 0.5)
    with torch.no_grad():
        ref = model(x)
    for kind in ("dense", "act_sparse"):
        compiled = compile_model(model, kind)
        assert [lay["path"] for lay in compiled.layers((1, 28, 28))] == expected_paths(model, kind)
        assert_equal_to_torch(compiled(x), ref, kind)


# ----------------------------------------------------------------------------- refusals


class _HardswishNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.act(self.conv(x)), 1), 1))


class _GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3)
        self.grouped = nn.Conv2d(4, 8, 3, groups=2)

    def forward(self, x):
        return self.grouped(F.relu(self.stem(x)))


class _SigmoidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


class _BranchyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.conv(x)
        return -self.conv(x)


@pytest.mark.parametrize(("build", "names"), [
    (_HardswishNet, ["'act'", "Hardswish"]),
    (_GroupedNet, ["'grouped'", "Conv2d"]),
    (_SigmoidNet, ["sigmoid"]),
    (_BranchyNet, ["cannot trace", "_BranchyNet"]),
    (lambda: build_model("densenet121", (3, 32, 32), 10), ["DenseNet", "operations"]),
], ids=["hardswish", "grouped-conv", "sigmoid", "untraceable", "densenet121"])
def test_unsupported_model_one_line(build, names):
    """Refused by compile_model itself (before any compilation), in one line naming the part."""
    with pytest.raises(UnsupportedModel) as info:
        compile_model(build(), "dual_sparse", batch_size=1, input_shape=(1, 28, 28))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("compile_model:")
    for name in names:
        assert name in message
    assert isinstance(info.value, DstError)


# ----------------------------------------------------------------------------- threads


@pytest.mark.skipif(not TWO_THREADS, reason="needs 2 Numba threads")
@pytest.mark.parametrize("kind", [
    "dense",
    pytest.param("act_sparse", marks=[pytest.mark.slow, pytest.mark.skipif(
        not FULL, reason="compiles the parallel act_sparse code (15 s): DST_RUNNER_FULL=1")]),
])
def test_two_threads_equal_one(runner, kind):
    shape = (1, 28, 28)
    model, one = runner("lenet5", shape, kind, threads=1)
    _, two = runner("lenet5", shape, kind, threads=2)
    for label, x in inputs(shape, (1, 30, 33), seed=9):
        y2 = two(x)
        assert numba.get_num_threads() == 2
        y1 = one(x)
        assert numba.get_num_threads() == 1
        torch.testing.assert_close(y2, y1, rtol=0, atol=0, msg=label)
        with torch.no_grad():
            assert_equal_to_torch(y2, model(x), label)


def test_thread_count_checked(runner):
    model, _ = runner("lenet5", (1, 28, 28), "dense")
    limit = numba.config.NUMBA_NUM_THREADS
    for threads in (0, -1, limit + 1):
        with pytest.raises(DstError, match="threads") as info:
            compile_model(model, "dense", threads=threads)
        assert not isinstance(info.value, UnsupportedModel)
    assert compile_model(model, "dense", threads=limit).threads == limit


# ----------------------------------------------------------------------------- inputs


def test_bad_inputs_and_kind(runner):
    model, compiled = runner("lenet5", (1, 28, 28), "dense")
    x = torch.randn(2, 1, 28, 28)
    for bad in (x.double(), x.half(), x[0], x.reshape(2, 28, 28), x[None], x.to(torch.int32)):
        with pytest.raises(TypeError, match="float32"):
            compiled(bad)
    with torch.no_grad():
        assert_equal_to_torch(compiled(x), model(x), "after refused calls")
    for kind in ("sparse", "Dense", "weight_sparse", ""):
        with pytest.raises(DstError, match="unknown runner kind"):
            compile_model(model, kind)


def test_plans_per_shape_and_buffer_reuse(runner):
    """New shapes (batch and image size) get their own plan; earlier ones keep working, repeated
    calls are bit-identical and returned tensors are never overwritten by later calls."""
    model, compiled = runner("resnet8", (1, 28, 28), "act_sparse")
    g = torch.Generator().manual_seed(3)
    xs = [torch.relu(torch.randn(n, 1, h, w, generator=g) - 0.3)
          for n, h, w in ((2, 28, 28), (2, 21, 26), (1, 28, 28), (4, 9, 9), (2, 28, 28))]
    first = [compiled(x) for x in xs]
    kept = [y.clone() for y in first]
    for x, y in zip(reversed(xs), reversed(first), strict=True):  # the other order
        assert torch.equal(compiled(x), y)
    assert torch.equal(compiled(xs[0]), compiled(xs[0]))
    for x, y, y0 in zip(xs, first, kept, strict=True):
        assert torch.equal(y, y0)
        with torch.no_grad():
            assert_equal_to_torch(y, model(x), str(tuple(x.shape)))


def test_strided_inputs_and_eager_prepare(runner):
    """channels_last and sliced (non-contiguous) inputs; batch_size + input_shape plans at
    compile time."""
    model, _ = runner("resnet8", (1, 28, 28), "act_sparse")
    compiled = compile_model(model, "act_sparse", batch_size=3, input_shape=(1, 28, 28))
    big = torch.randn(3, 1, 31, 33)
    x = big[:, :, 1:29, 3:31]
    with torch.no_grad():
        ref = model(x.contiguous())
    assert_equal_to_torch(compiled(x), ref, "slice")
    assert_equal_to_torch(compiled(x.contiguous(memory_format=torch.channels_last)), ref, "NHWC")
    assert_equal_to_torch(compiled(x.contiguous().requires_grad_()), ref, "requires_grad")


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2), nn.AdaptiveMaxPool2d(2),
                                  nn.AdaptiveAvgPool2d(1)], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("channels", [16, 6, 20])  # whole 16-lane vectors, masked, both
def test_pooling_propagates_nan_like_torch(pool, channels):
    model = nn.Sequential(nn.Conv2d(3, channels, 1), pool).eval()
    x = torch.randn(2, 3, 9, 7)
    x[0, :, 4, 3] = float("nan")  # one pixel: NaN in every channel of the conv's output
    with torch.no_grad():
        ref = model(x)
    y = compile_model(model, "act_sparse")(x)
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    assert torch.allclose(y[ok], ref[ok], atol=1e-5)


@pytest.mark.parametrize("channels", [8, 16, 20])  # scale and shift padded apart, or not
def test_a_batchnorm_not_after_a_conv_is_its_own_scale_and_shift(channels):
    # DenseNet's pre-activation BN (after a pool or a concatenation) is not folded into a conv
    model = randomise(nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.MaxPool2d(2),
                                    nn.BatchNorm2d(channels), nn.ReLU(),
                                    nn.Conv2d(channels, 4, 1)), (1, 8, 8), seed=3)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    for kind in ("dense", "act_sparse"):
        assert_equal_to_torch(compile_model(model, kind)(x), ref, kind)


@pytest.mark.parametrize(("cin", "cout", "conv"), [
    (1, 6, dict(kernel_size=5, padding=2)),                    # LeNet5's: K < 16, one tile
    (3, 70, dict(kernel_size=7, stride=2, padding=3)),         # 2 channel blocks, the 2nd masked
    (2, 20, dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2))),
    (16, 16, dict(kernel_size=3, padding=1, bias=False)),      # the 16-channel stage
    (4, 8, dict(kernel_size=3, padding=4, dilation=3)),        # padding wider than the kernel
    (16, 32, dict(kernel_size=1, stride=2, bias=False)),       # a projection shortcut
], ids=["lenet5", "blocks", "dilated", "stage", "wide-pad", "shortcut"])
@pytest.mark.parametrize("kind", RUNNER_KINDS)
def test_direct_conv_geometries(cin, cout, conv, kind):
    """The dense direct conv (few input channels): strides, dilation, padding, channel tails,
    a fused ReLU that keeps NaN and a fused residual add, against torch."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(cin, cout, **conv)
            self.b = nn.Conv2d(cout, cout, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return torch.relu(self.b(y) + y)

    torch.manual_seed(0)
    model = Net().eval()
    compiled = compile_model(model, kind)
    assert compiled.layers((cin, 13, 11))[0]["path"] == "direct"
    for x in (torch.randn(2, cin, 13, 11), torch.randn(1, cin, 9, 16)):
        with torch.no_grad():
            ref = model(x)
        assert_equal_to_torch(compiled(x), ref, f"{kind} {tuple(x.shape)}")
    x = torch.randn(1, cin, 13, 11)
    x[0, :, 6, 4] = float("nan")  # an even pixel: strided kernels read it too
    with torch.no_grad():
        ref = model(x)
    y = compiled(x)
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))


def test_profile_times_every_op(runner):
    """profile: one row per lowered op, in order, with its kind and a time; the forward pass
    still gives the same logits afterwards."""
    model, compiled = runner("resnet8", (1, 28, 28), "act_sparse")
    x = torch.relu(torch.randn(2, 1, 28, 28))
    rows = compiled.profile(x, repeats=2)
    assert [r["op"] for r in rows] == list(range(len(rows)))
    assert rows[0]["what"] == "tonhwc" and rows[-1]["what"] == "output"
    paths = [r["path"] for r in rows if r["what"] == "conv"]
    assert paths == [lay["path"] for lay in compiled.layers((1, 28, 28))]
    assert all(r["ms"] >= 0 for r in rows)
    with torch.no_grad():
        assert_equal_to_torch(compiled(x), model(x), "after profile")


# ----------------------------------------------------------------------------- disk cache

_PROBE = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    import dstcore.kernels.runner as runner
    assert runner.__file__.startswith(sys.argv[1]), runner.__file__
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1)).eval()
    x = torch.ones(1, 1, 2, 2)
    with torch.no_grad():
        print(runner.compile_model(model, "dense")(x).sum().item(), model(2 * x).sum().item())
""")


@pytest.mark.slow  # three fresh Python processes, one cold compile each
def test_disk_cache_follows_kernel_changes(tmp_path):
    """In a copy of dstcore, change a kernel (nchw_to_nhwc doubles its input) after a model was
    compiled: compiling it again with the same cache folder must run the new kernel, i.e.
    give torch's output on 2 * x, not the forward cached from the old kernels."""
    pkg = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parent.parent / "dstcore", pkg / "dstcore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(pkg), "NUMBA_NUM_THREADS": "1"}

    def run(cache: str = "cache") -> tuple[float, float]:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(pkg)], cwd=tmp_path,
                              env=dict(env, DST_RUNNER_CACHE=str(tmp_path / cache)),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        compiled, doubled = proc.stdout.split()[-2:]
        return float(compiled), float(doubled)

    before, doubled = run()
    if before == pytest.approx(doubled):
        raise RuntimeError(f"probe cannot tell the kernels apart: {before} {doubled}")
    ops = pkg / "dstcore/kernels/_runner_ops.py"
    line = "out[oo + p * C] = x[xo + p]"
    if ops.read_text().count(line) != 1:
        raise RuntimeError(f"nchw_to_nhwc changed: no single line {line!r} to edit")
    ops.write_text(ops.read_text().replace(line, "out[oo + p * C] = 2 * x[xo + p]"))
    fresh, _ = run("fresh_cache")
    if fresh != pytest.approx(doubled):
        raise RuntimeError(f"the edited kernel is not used even without a cache: {fresh}")
    after, _ = run()
    # before the fix: after == before (the forward compiled from the old kernels)
    assert after == pytest.approx(doubled), f"same cache folder: {after}, before the edit: {before}"
