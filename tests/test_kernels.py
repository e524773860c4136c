"""Sparse kernels equal torch's dense conv2d / linear; model swap and ONNX Runtime agree."""

from __future__ import annotations

import random

import numba
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dstcore.kernels import (
    CPU_KINDS,
    KERNELS,
    available_kinds,
    cuda_available,
    prepare,
    sparsify_model,
)
from dstcore.kernels.cpu import choose_block
from dstcore.kernels.onnxrt import OrtRunner

SPARSE = [k for k in CPU_KINDS if k != "dense"]
TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2


@pytest.fixture(autouse=True)
def _one_numba_thread():
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(1)


def sparse_input(shape, sparsity, gen):
    x = torch.rand(*shape, generator=gen) + 0.05
    x[torch.rand(*shape, generator=gen) < sparsity] = 0.0
    return x


def sparse_weight(shape, sparsity, gen):
    w = torch.randn(*shape, generator=gen)
    w[torch.rand(*shape, generator=gen) < sparsity] = 0.0
    return w


def assert_matches(y, ref):
    scale = max(1.0, ref.abs().max().item())
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=2e-5 * scale)


# (n, c_in, c_out, h, w, (kh, kw), stride, padding, dilation, groups)
CONV_CASES = [
    (1, 64, 64, 20, 20, 3, 1, 1, 1, 1),  # ResNet-like, K = one 64-lane block
    (2, 6, 16, 14, 14, 5, 1, 0, 1, 1),  # LeNet conv2, batch 2
    (3, 8, 12, 9, 13, (2, 3), 2, (1, 0), 1, 2),  # non-square everything, groups
    (1, 16, 16, 11, 10, 3, (1, 2), 2, 2, 1),  # dilation, anisotropic stride
    (2, 32, 16, 7, 7, 1, 2, 0, 1, 1),  # 1x1 stride-2 downsample
    (1, 3, 40, 17, 19, (7, 5), 2, 3, 1, 1),  # stem-like, C_in = 3
    (2, 8, 8, 6, 6, 3, 1, 1, 1, 8),  # depthwise
    (1, 20, 70, 5, 4, 3, 1, 1, 1, 1),  # K not a multiple of the block (several blocks)
]


def _random_cases(n, seed=1234):
    rnd = random.Random(seed)
    cases = []
    for _ in range(n):
        groups = rnd.choice([1, 1, 1, 2])
        kh, kw = rnd.choice([1, 2, 3, 5]), rnd.choice([1, 3])  # kw: compile-time taps
        dil = rnd.choice([1, 1, 2])
        cin, cout = groups * rnd.randint(1, 12), groups * rnd.randint(1, 16)
        h, w = rnd.randint(dil * (kh - 1) + 1, 15), rnd.randint(dil * (kw - 1) + 1, 15)
        cases.append((rnd.choice([1, 2]), cin, cout, h, w, (kh, kw), rnd.choice([1, 2]),
                      (rnd.randint(0, 2), rnd.randint(0, 1)), dil, groups))
    return cases


@pytest.mark.parametrize("case", CONV_CASES + _random_cases(8), ids=str)
@pytest.mark.parametrize("kind", SPARSE)
def test_conv_kernels_equal_dense(kind, case):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    k = k if isinstance(k, tuple) else (k, k)
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    wt = sparse_weight((cout, cin // groups, *k), 0.6, gen)
    b = torch.randn(cout, generator=gen)
    kern = prepare(kind, wt, b, stride=stride, padding=pad, dilation=dil, groups=groups)
    for sp in (0.0, 0.7, 1.0):  # dense, sparse and all-zero inputs
        x = sparse_input((n, cin, h, w), sp, gen)
        ref = F.conv2d(x, wt, b, stride, pad, dil, groups)
        assert_matches(kern(x), ref)
        assert_matches(kern(x.contiguous(memory_format=torch.channels_last)), ref)


@pytest.mark.parametrize("kind", SPARSE)
@pytest.mark.parametrize("wsp", [0.0, 0.8, 0.97, 1.0])
def test_conv_weight_sparsity_levels(kind, wsp):
    """All dual_sparse block modes (dense / packed / all-zero) and weight_sparse empty rows."""
    gen = torch.Generator().manual_seed(7)
    wt = sparse_weight((64, 32, 3, 3), wsp, gen)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(wt)
    x = sparse_input((2, 32, 9, 8), 0.8, gen)
    opts = [{"dense_fraction": 0.0}, {"dense_fraction": 0.6}] if kind == "dual_sparse" else [{}]
    with torch.no_grad():
        for opt in opts:
            assert_matches(prepare(kind, conv, **opt)(x), conv(x))


@pytest.mark.parametrize("kind", SPARSE)
def test_structured_weight_sparsity(kind):
    """Dead input channels (dual drops them before compression) and dead filters."""
    gen = torch.Generator().manual_seed(8)
    wt = sparse_weight((48, 32, 3, 3), 0.5, gen)
    wt[:, ::2] = 0.0
    wt[5:20] = 0.0
    x = sparse_input((1, 32, 10, 10), 0.5, gen)
    kern = prepare(kind, wt, padding=1)
    if kind == "dual_sparse":
        assert kern.block_stats["dead_input_channels"] == 16
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        assert_matches(kern(xx), F.conv2d(x, wt, padding=1))
    wl = sparse_weight((20, 30), 0.5, gen)
    wl[:, 3:9] = 0.0
    xl = sparse_input((2, 30), 0.3, gen)
    assert_matches(prepare(kind, wl)(xl), F.linear(xl, wl))


@pytest.mark.skipif(not TWO_THREADS, reason="needs 2 Numba threads")
@pytest.mark.parametrize("kind", ["act_sparse", "weight_sparse"])
def test_parallel_kernels_equal_serial(kind):
    """prange drivers (2 threads) give bit-identical results to the serial ones.

    (dual_sparse's driver is the same prange-over-rows loop as act_sparse's; it is left out
    to keep the cold-JIT time of this file down and is exercised by the benchmarks.)"""
    gen = torch.Generator().manual_seed(3)
    wt = sparse_weight((64, 64, 3, 3), 0.5, gen)
    kern = prepare(kind, wt, padding=1)
    x = sparse_input((2, 64, 12, 12), 0.8, gen)
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        numba.set_num_threads(1)
        serial = kern(xx)
        numba.set_num_threads(2)
        parallel = kern(xx)
        assert_matches(parallel, F.conv2d(x, wt, padding=1))
        torch.testing.assert_close(parallel, serial, rtol=0, atol=0)
    if kind == "weight_sparse":  # act/dual linear layers run the conv drivers above
        wl = sparse_weight((70, 50), 0.5, gen)
        xl = sparse_input((3, 50), 0.5, gen)
        lin = prepare(kind, wl)
        assert_matches(lin(xl), F.linear(xl, wl))


@pytest.mark.parametrize("kind", CPU_KINDS)
@pytest.mark.parametrize("shape", [(1, 7, 3), (5, 100, 10), (2, 300, 200), (3, 64, 1), (2, 40, 64)])
def test_linear_kernels_equal_dense(kind, shape):
    n, fin, fout = shape
    gen = torch.Generator().manual_seed(fin * fout)
    wt = sparse_weight((fout, fin), 0.7, gen)
    b = torch.randn(fout, generator=gen)
    kern = prepare(kind, wt, b)
    for sp in (0.0, 0.6, 1.0):
        x = sparse_input((n, fin), sp, gen)
        assert_matches(kern(x), F.linear(x, wt, b))
    lin = nn.Linear(fin, fout, bias=False)
    x = sparse_input((n, fin), 0.5, gen)
    with torch.no_grad():
        assert_matches(prepare(kind, lin)(x), lin(x))


@pytest.mark.parametrize("kind", SPARSE)
def test_compute_only_path_and_output_layout(kind):
    gen = torch.Generator().manual_seed(11)
    wt = sparse_weight((16, 8, 3, 3), 0.5, gen)
    x = sparse_input((2, 8, 10, 10), 0.8, gen)
    ref = F.conv2d(x, wt, padding=1)
    kern = prepare(kind, wt, padding=1)
    assert_matches(kern.compute(kern.prepare_input(x)), ref)
    y = prepare(kind, wt, padding=1, contiguous_output=True)(x)
    assert y.is_contiguous()
    assert_matches(y, ref)


def test_block_choice_and_registry():
    assert choose_block(3, 64, 192) == 64
    assert choose_block(1, 1000, 192) == 128
    assert choose_block(7, 64, 192) == 16
    assert choose_block(3, 6, 64) == 16
    assert set(CPU_KINDS) <= set(KERNELS) and set(CPU_KINDS) <= set(available_kinds())
    with pytest.raises(ValueError, match="unknown kernel kind"):
        prepare("magic", torch.zeros(2, 2))
    with pytest.raises(TypeError, match="float32 CPU"):
        prepare("act_sparse", torch.zeros(4, 2, 3, 3))(torch.zeros(1, 2, 5, 5, dtype=torch.float64))


class TinyLeNet(nn.Module):
    """LeNet-like: conv-relu-pool x2, three linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


def _pruned(model, rate, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight.view(-1)
                w[torch.argsort(w.abs())[: int(rate * w.numel())]] = 0.0
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_swapped_lenet_equals_original(kind):
    torch.manual_seed(0)
    model = _pruned(TinyLeNet(), 0.8)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        for keep_first in (True, False):
            swapped = sparsify_model(model, kind, keep_first_dense=keep_first)
            assert_matches(swapped(x), ref)
    kernels = [m.kernel for m in swapped.modules() if hasattr(m, "kernel")]
    assert len(kernels) == 5 and {k.kind for k in kernels} == {kind}
    assert {k.layer_type for k in kernels} == {"conv2d", "linear"}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_swapped_resnet18_equals_original(kind):
    model = _pruned(torchvision.models.resnet18(num_classes=10), 0.7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        swapped = sparsify_model(model, kind)
        assert isinstance(swapped.conv1, nn.Conv2d)  # first layer kept dense
        assert_matches(swapped(x), ref)


def test_onnxruntime_matches_torch():
    torch.manual_seed(1)
    for model, x in ((TinyLeNet().eval(), torch.rand(2, 1, 28, 28)),
                     (_pruned(torchvision.models.resnet18(num_classes=10), 0.5),
                      torch.randn(1, 3, 32, 32))):
        runner = OrtRunner(model, x[:1], threads=1)
        with torch.no_grad():
            assert_matches(runner(x), model(x))  # dynamic batch axis


@pytest.mark.skipif(not cuda_available(), reason="CUDA not available")
@pytest.mark.parametrize("kind", ["cuda_dense", "cuda_sparse_csr"])
def test_cuda_kernels(kind):  # pragma: no cover - needs a GPU
    gen = torch.Generator().manual_seed(5)
    wt = sparse_weight((16, 8, 3, 3), 0.8, gen)
    x = sparse_input((2, 8, 9, 9), 0.5, gen)
    y = prepare(kind, wt, stride=2, padding=1)(x)
    assert_matches(y.cpu(), F.conv2d(x, wt, stride=2, padding=1))
    wl = sparse_weight((10, 20), 0.8, gen)
    xl = sparse_input((3, 20), 0.5, gen)
    assert_matches(prepare(kind, wl)(xl).cpu(), F.linear(xl, wl))


def test_cuda_kinds_refuse_without_gpu():
    if cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        prepare("cuda_dense", torch.zeros(2, 2))


def test_swapped_model_runs_without_no_grad():
    model = _pruned(TinyLeNet(), 0.5)
    x = torch.rand(2, 1, 28, 28)
    swapped = sparsify_model(model, "act_sparse", keep_first_dense=False)
    y = swapped(x)  # parameters require grad: kernels must detach, not fail in .numpy()
    with torch.no_grad():
        assert_matches(y.detach(), model(x))
