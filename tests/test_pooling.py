"""The training pools give torch's values and gradients, and leave the model as built."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dstcore.models.lenet import LeNet5
from dstcore.training.pooling import (
    TrainingAdaptiveMaxPool2d,
    TrainingMaxPool2d,
    fast_pools,
    max_pool2x2,
)


def _pool_both(x: torch.Tensor, g: torch.Tensor):
    outs = []
    for pool in (lambda t: F.max_pool2d(t, 2), max_pool2x2):
        t = x.clone().requires_grad_()
        y = pool(t)
        y.backward(g)
        outs.append((y.detach(), t.grad))
    return outs


def test_hand_computed_window_picks_the_first_maximum_and_the_last_nan():
    # one 2x4 plane: windows [[1, 3], [3, 0]] (ties: the first 3 wins) and [[nan, 2], [5, nan]]
    x = torch.tensor([[[[1.0, 3.0, float("nan"), 2.0], [3.0, 0.0, 5.0, float("nan")]]]])
    t = x.clone().requires_grad_()
    y = max_pool2x2(t)
    y.backward(torch.tensor([[[[10.0, 20.0]]]]))
    assert y[0, 0, 0, 0] == 3.0 and torch.isnan(y[0, 0, 0, 1])
    assert t.grad.tolist() == [[[[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 20.0]]]]
    (ref_y, ref_g), _ = _pool_both(x, torch.tensor([[[[10.0, 20.0]]]]))
    assert torch.equal(t.grad, ref_g) and torch.equal(y.nan_to_num(), ref_y.nan_to_num())


def test_equals_torch_on_ties_zeros_infinities_and_nan():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(3, 5, 12, 10, generator=gen)).round(decimals=1)  # many ties
    x[0, 0, :2, :2] = float("-inf")
    x[1, 2, 4, 4] = float("inf")
    x[2, 1, 6:8, 6:8] = float("nan")
    g = torch.randn(3, 5, 6, 5, generator=gen)
    (ref_y, ref_g), (y, grad) = _pool_both(x, g)
    assert torch.equal(y.isnan(), ref_y.isnan())
    assert torch.equal(y.nan_to_num(), ref_y.nan_to_num()) and torch.equal(grad, ref_g)


def test_other_cases_fall_back_to_torch():
    pool = TrainingMaxPool2d(2)
    odd = torch.randn(2, 3, 7, 9, requires_grad=True)
    assert torch.equal(pool(odd), F.max_pool2d(odd, 2))
    with torch.no_grad():
        assert torch.equal(pool(odd), F.max_pool2d(odd, 2))
    same = TrainingAdaptiveMaxPool2d((5, 5))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    assert same(x) is x
    bigger = torch.randn(2, 4, 11, 10)
    assert torch.equal(same(bigger), F.adaptive_max_pool2d(bigger, (5, 5)))


def test_fast_pools_swaps_only_what_it_computes_and_restores_the_model():
    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(3, stride=1, padding=1),
                          nn.Sequential(nn.AdaptiveMaxPool2d(4)))
    originals = list(model.modules())
    with fast_pools(model) as swapped:
        assert swapped == 2
        assert type(model[0]) is TrainingMaxPool2d and type(model[1]) is nn.MaxPool2d
        assert type(model[2][0]) is TrainingAdaptiveMaxPool2d
    assert list(model.modules()) == originals
    with fast_pools(model, enabled=False) as swapped:
        assert swapped == 0 and list(model.modules()) == originals


def test_lenet5_trains_to_the_same_weights_with_the_training_pools():
    def train(fast: bool) -> dict:
        torch.manual_seed(0)
        model = LeNet5()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        with fast_pools(model, enabled=fast):
            for _ in range(4):
                x = torch.rand(16, 1, 28, 28, generator=gen)
                x[x < 0.7] = 0  # blank regions: the constant bias of conv1 ties in the pools
                loss = F.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=gen))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.state_dict()

    fast, plain = train(True), train(False)
    assert all(torch.equal(fast[k], plain[k]) for k in plain)
