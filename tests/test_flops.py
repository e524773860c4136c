"""Effective and dense MAC counts against brute-force loops over every product."""

import itertools

import pytest
import torch
from torch import nn

from dstcore.measure.flops import MacCounter, dense_macs, effective_macs, flop_counter_macs
from dstcore.models import MODELS, build_model


def brute_force_conv(x: torch.Tensor, conv: nn.Conv2d) -> tuple[int, int]:
    """(dense, effective) products of ``conv`` on ``x`` by visiting every product."""
    n, c_in, h, w = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    g = conv.groups
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cin_g, cout_g = c_in // g, conv.out_channels // g
    dense = eff = 0
    weight = conv.weight
    for b, o, oy, ox in itertools.product(range(n), range(conv.out_channels), range(out_h),
                                          range(out_w)):
        group = o // cout_g
        for ci, ky, kx in itertools.product(range(cin_g), range(kh), range(kw)):
            dense += 1
            iy, ix = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
            if not (0 <= iy < h and 0 <= ix < w):
                continue  # padding: the product is with a zero
            a = x[b, group * cin_g + ci, iy, ix]
            if a != 0 and weight[o, ci, ky, kx] != 0:
                eff += 1
    return dense, eff


CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=0),
    dict(in_channels=4, out_channels=4, kernel_size=3, stride=1, padding=2, dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
         groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),  # depthwise
    dict(in_channels=3, out_channels=2, kernel_size=1, stride=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv_counts_match_brute_force(case):
    torch.manual_seed(1)
    conv = nn.Conv2d(**case, bias=False)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.4] = 0
    x = torch.relu(torch.randn(2, case["in_channels"], 7, 6))
    y = conv(x)
    dense, eff = brute_force_conv(x, conv)
    assert dense_macs(conv, x, y) == dense
    assert effective_macs(conv, x) == eff
    assert 0 < eff < dense


def test_mac_counter_over_batches_equals_brute_force_per_batch():
    # the counter sums each layer's non-zero maps over batches and counts once at the end
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(**CASES[3], bias=False), nn.ReLU(),
                          nn.Conv2d(6, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 5, 5))
    with torch.no_grad():
        for m in (model[0], model[5]):
            m.weight[torch.rand_like(m.weight) < 0.4] = 0
    batches = [torch.relu(torch.randn(n, 4, 7, 6)) for n in (2, 3, 1)]
    counter = MacCounter(model)
    with counter.observing(), torch.no_grad():
        for x in batches:
            model(x)
    expected = {"0": 0, "2": 0, "5": 0}
    with torch.no_grad():
        for x in batches:
            expected["0"] += brute_force_conv(x, model[0])[1]
            hidden = model[1](model[0](x))
            expected["2"] += effective_macs(model[2], hidden)  # reflect: batch by batch
            expected["5"] += effective_macs(model[5], model[4](model[3](model[2](hidden))))
    assert counter.nonzero == expected
    assert all(v > 0 for v in expected.values())


def test_conv_with_reflect_padding_counts_padded_copies():
    torch.manual_seed(2)
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False)
    x = torch.ones(1, 1, 4, 4)
    # reflect padding copies non-zero inputs, so every product has a non-zero input
    assert effective_macs(conv, x) == 16 * 9


def test_linear_counts_match_brute_force():
    torch.manual_seed(3)
    lin = nn.Linear(5, 4)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.5] = 0
    x = torch.relu(torch.randn(3, 5))
    eff = sum(int(x[b, i] != 0 and lin.weight[o, i] != 0)
              for b in range(3) for o in range(4) for i in range(5))
    assert effective_macs(lin, x) == eff
    assert dense_macs(lin, x, lin(x)) == 3 * 4 * 5


def test_all_zero_input_has_no_effective_macs():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    assert effective_macs(conv, torch.zeros(1, 2, 5, 5)) == 0


@pytest.mark.parametrize("name", list(MODELS))
def test_dense_macs_agree_with_torch_flop_counter(name):
    shape = (3, 32, 32)
    model = build_model(name, shape, 10).eval()
    counter = MacCounter(model, effective=False)
    with counter.observing(), torch.no_grad():
        model(torch.randn(2, *shape))
    counter.count_images(2)
    assert counter.summary()["dense"] == flop_counter_macs(model, shape)


def test_mac_counter_averages_per_image_and_reduction():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # all hidden activations are zero after the ReLU
    counter = MacCounter(model)
    with counter.observing(), torch.no_grad():
        model(torch.ones(5, 4))
    counter.count_images(5)
    s = counter.summary()
    assert s["dense"] == 12 + 6
    assert s["layers"]["0"]["effective"] == 0  # zero weights
    assert s["layers"]["2"]["effective"] == 0  # zero inputs
    assert s["reduction_pct"] == pytest.approx(100.0)


def test_evaluation_with_macs_counts_the_same_zeros_as_without():
    from dstcore.measure.metrics import evaluate
    from dstcore.sparsity.activations import activation_layers

    torch.manual_seed(4)
    model = build_model("resnet8", (1, 12, 12), 10).eval()
    layers = activation_layers(model, (1, 12, 12))
    batches = [(torch.randn(5, 1, 12, 12), torch.randint(0, 10, (5,))) for _ in range(3)]
    plain = evaluate(model, batches, torch.device("cpu"), layers, 10)
    counted = evaluate(model, batches, torch.device("cpu"), layers, 10, count_macs=True)
    assert counted["activation_sparsity"] == plain["activation_sparsity"]
    assert 0 < plain["activation_sparsity"]["overall"] < 1
