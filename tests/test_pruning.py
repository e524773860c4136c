import pytest
import torch
from torch import nn

from dstcore import DstError
from dstcore.sparsity.pruning import (
    fix_masks_from_zeros,
    has_masks,
    make_permanent,
    prune_weights,
    weight_l1,
    weight_sparsity,
)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_global_rate_prunes_exact_fraction_of_smallest_weights():
    model = net()
    weights = torch.cat([model[0].weight.flatten(), model[3].weight.flatten()]).abs()
    prune_weights(model, rate=0.75)
    total = weights.numel()
    ws = weight_sparsity(model)
    assert ws["zeros"] == round(0.75 * total)
    kept = torch.cat([model[0].weight.flatten(), model[3].weight.flatten()]).abs()
    assert kept[kept > 0].min() >= weights.sort().values[round(0.75 * total) - 1]


def test_layer_scope_prunes_each_layer():
    model = net()
    prune_weights(model, rate=0.5, scope="layer")
    for layer in weight_sparsity(model)["layers"].values():
        assert layer["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_threshold_prunes_small_magnitudes():
    model = net()
    prune_weights(model, threshold=0.1)
    for m in (model[0], model[3]):
        assert torch.all((m.weight == 0) == (m.weight_orig.abs() <= 0.1))


def test_bad_arguments():
    with pytest.raises(DstError):
        prune_weights(net(), rate=0.5, threshold=0.1)
    with pytest.raises(DstError):
        prune_weights(net(), rate=0.5, scope="channel")


def test_masks_stay_fixed_through_training_and_saved_weights_are_real_zeros():
    model = net()
    prune_weights(model, rate=0.6)
    zero_before = (model[3].weight == 0).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        loss = model(torch.randn(8, 1, 6, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(model[3].weight == 0, zero_before)
    assert not torch.equal(model[3].weight_orig, model[3].weight)  # training did move weights
    make_permanent(model)
    assert not has_masks(model)
    assert set(model.state_dict()) == set(net().state_dict())
    assert torch.equal(model[3].weight == 0, zero_before)


def test_fix_masks_from_zeros_keeps_zero_pattern():
    model = net()
    with torch.no_grad():
        model[0].weight[0] = 0
    fix_masks_from_zeros(model)
    assert has_masks(model)
    assert torch.all(model[0].weight_mask[0] == 0)
    assert model[3].weight_mask.all()


def test_weight_l1():
    model = net()
    expected = model[0].weight.abs().sum() + model[3].weight.abs().sum()
    assert weight_l1(model).item() == pytest.approx(expected.item())
