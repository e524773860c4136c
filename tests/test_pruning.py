import math

import pytest
import torch
from torch import nn

from dstcore import DstError
from dstcore.sparsity.pruning import (
    block_masks,
    fix_masks_from_zeros,
    has_masks,
    is_pruned,
    make_permanent,
    prunable_layers,
    prune_weights,
    unit_scores,
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


# ---------------------------------------------------------------- block-structured pruning

# A Conv2d-shaped weight [K=3, C=2, R=1, S=2] with block_out=2: units (output block, input
# channel) are rows {0, 1} and row {2} of each input channel, with mean |w|
#   (b0, c0) = (0.1 + 0.3 + 0.2 + 0.2) / 4 = 0.2     (b0, c1) = (1 + 1 + 0.5 + 0.5) / 4 = 0.75
#   (b1, c0) = (0.4 + 0.6) / 2 = 0.5                 (b1, c1) = (0 + 0.2) / 2 = 0.1
HAND = torch.tensor([[[[0.1, -0.3]], [[1.0, -1.0]]],
                     [[[0.2, 0.2]], [[0.5, 0.5]]],
                     [[[-0.4, 0.6]], [[0.0, 0.2]]]])


def test_unit_scores_by_hand():
    scores, sizes = unit_scores(HAND, block_out=2)
    assert torch.allclose(scores, torch.tensor([[0.2, 0.75], [0.5, 0.1]], dtype=torch.float64))
    assert sizes.tolist() == [[4, 4], [2, 2]]


def test_block_mask_by_hand():
    # rate 0.4 of 12 weights = 4.8: (b1, c1) zeroes 2, then (b0, c0) 4 more -> 6 >= 4.8, stop.
    # Magnitude pruning of single weights would have kept 0.6 and -0.4 but zeroed 0.1 and 0.2.
    (mask,) = block_masks([HAND], rate=0.4, block_out=2)
    expected = torch.tensor([[[[0, 0]], [[1, 1]]],
                             [[[0, 0]], [[1, 1]]],
                             [[[1, 1]], [[0, 0]]]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_global_block_mask_orders_units_across_layers_by_hand():
    # A Linear [K=2, C=2] weight: unit c0 scores 0.05, unit c1 scores 3 (one block of 2 rows).
    # Rate 0.25 of 12 + 4 = 16 weights = 4: linear c0 (2 weights, 0.05), then conv (b1, c1)
    # (2 weights, 0.1) reach exactly 4.
    linear = torch.tensor([[0.05, 3.0], [-0.05, -3.0]])
    conv_mask, linear_mask = block_masks([HAND, linear], rate=0.25, block_out=2)
    assert torch.equal(linear_mask, torch.tensor([[False, True], [False, True]]))
    assert torch.equal(~conv_mask, HAND.new_zeros(HAND.shape, dtype=torch.bool).index_put_(
        (torch.tensor([2]), torch.tensor([1])), torch.tensor(True)))
    # per layer: 0.25 of the conv's 12 = 3 needs (b1, c1) and (b0, c0); the linear's 1 needs c0
    conv_mask, linear_mask = block_masks([HAND, linear], rate=0.25, block_out=2, scope="layer")
    assert int((~conv_mask).sum()) == 6 and torch.equal(linear_mask[:, 1], torch.ones(2).bool())


def units(weight: torch.Tensor, block_out: int) -> list[torch.Tensor]:
    """Every (output block, input channel) unit of a weight, flattened."""
    return [weight[b:b + block_out, c].flatten() for b in range(0, weight.shape[0], block_out)
            for c in range(weight.shape[1])]


SHAPES = [(20, 3, 3, 3), (37, 5, 1, 1), (10, 7), (6, 1, 5, 5), (64, 16, 3, 3)]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("block_out", [16, 4])
def test_block_masks_zero_whole_units_lowest_first_and_reach_the_rate(scope, rate, block_out):
    torch.manual_seed(1)
    weights = [torch.randn(shape) * (i + 1) for i, shape in enumerate(SHAPES)]
    masks = block_masks(weights, rate, block_out, scope)
    groups = [weights] if scope == "global" else [[w] for w in weights]
    group_masks = [masks] if scope == "global" else [[m] for m in masks]
    for ws, ms in zip(groups, group_masks, strict=True):
        pruned, kept, largest, zeroed, total = [], [], 0, 0, 0
        for w, m in zip(ws, ms, strict=True):
            assert m.shape == w.shape and m.dtype == torch.bool
            for unit_w, unit_m in zip(units(w, block_out), units(m, block_out), strict=True):
                assert unit_m.all() or not unit_m.any()  # whole units only
                (kept if unit_m.all() else pruned).append(float(unit_w.abs().mean()))
                largest = max(largest, unit_w.numel())
            zeroed, total = zeroed + int((~m).sum()), total + w.numel()
        assert 0 <= zeroed - rate * total < largest  # the rate, within one unit
        assert max(pruned, default=0) <= min(kept, default=math.inf) + 1e-6  # lowest first


def test_block_pruning_of_a_model_leaves_whole_units_zero_or_untouched():
    model = net()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prune_weights(model, rate=0.5, structure="block", block_out=2)
    for name, m in (("0", model[0]), ("3", model[3])):
        weight, original = m.weight.detach(), before[f"{name}.weight"]
        for unit_w, unit_o in zip(units(weight, 2), units(original, 2), strict=True):
            assert torch.equal(unit_w, unit_o) or not unit_w.any()
    assert weight_sparsity(model)["overall"] >= 0.5


def test_block_pruning_takes_a_rate_not_a_threshold():
    with pytest.raises(DstError, match="block pruning takes a rate"):
        prune_weights(net(), threshold=0.1, structure="block")
    with pytest.raises(DstError, match="unknown pruning structure 'channel'"):
        prune_weights(net(), rate=0.5, structure="channel")


def three_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 5))


def test_excluded_layers_stay_dense_and_out_of_the_weight_l1():
    model = three_layers()
    first, middle, last = model[0], model[2], model[5]
    assert prunable_layers(model, ["first", "last"]) == [middle]
    assert prunable_layers(model, ["last"]) == [first, middle]
    assert prunable_layers(model, ["first"]) == [middle, last]
    assert weight_l1(model, ["first", "last"]).item() == pytest.approx(
        middle.weight.abs().sum().item())
    before = {id(m): m.weight.detach().clone() for m in (first, last)}
    prune_weights(model, rate=0.5, scope="layer", structure="block", block_out=4,
                  exclude=["first", "last"])
    assert not is_pruned(first) and not is_pruned(last)
    for m in (first, last):
        assert torch.equal(m.weight, before[id(m)])
    # middle: 2 blocks of 4 outputs x 4 input channels = 8 units, half of them zeroed whole
    units = middle.weight.detach().reshape(2, 4, 4, 9).abs().sum(dim=(1, 3))
    assert int((units == 0).sum()) == 4
    assert int((middle.weight == 0).sum()) == middle.weight.numel() // 2


def test_unknown_exclusion_is_an_error():
    with pytest.raises(DstError, match="cannot exclude middle from pruning; choose from first, "
                                       "last"):
        prune_weights(three_layers(), rate=0.5, exclude=["middle"])
