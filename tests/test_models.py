import pytest
import torch

from dstcore import DstError
from dstcore.data.datasets import DATASETS
from dstcore.measure.flops import MacCounter, flop_counter_macs
from dstcore.models import MODELS, build_model
from dstcore.sparsity.activations import activation_layers, execution_order, weighted_layers

SHAPES = sorted({spec.input_shape for spec in DATASETS.values()})


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_model_builds_for_every_dataset_shape(name, shape):
    model = build_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(DstError, match="unknown model 'vgg'.*lenet5"):
        build_model("vgg", (1, 28, 28), 10)


def test_lenet5_macs_at_28x28():
    model = build_model("lenet5", (1, 28, 28), 10)
    assert flop_counter_macs(model, (1, 28, 28)) == 416_520
    counter = MacCounter(model)
    with counter.observing(), torch.no_grad():
        model(torch.randn(3, 1, 28, 28))
    counter.count_images(3)
    assert counter.summary()["dense"] == 416_520


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "densenet121", "resnet20"])
def test_activation_layers_exclude_only_the_image_layer(name):
    shape = (3, 32, 32)
    model = build_model(name, shape, 10)
    order = execution_order(model, shape)
    acts = activation_layers(model, shape)
    assert sum(fed for _, _, fed in order) == 1 and order[0][2]
    assert len(acts) == len(weighted_layers(model)) - 1
    assert all(not m._forward_pre_hooks for _, m in weighted_layers(model))


@pytest.mark.parametrize("name", ["resnet8", "googlenet", "densenet121"])
def test_penalty_backprops_through_residual_and_concat_paths(name):
    from dstcore.sparsity.regularizers import ActivationPenalty

    shape = (1, 28, 28)
    model = build_model(name, shape, 10).train()
    layers = activation_layers(model, shape)
    with ActivationPenalty(layers, "tl1", beta=1.0) as penalty:
        out = model(torch.randn(2, *shape))
        loss = out.sum() + penalty.pop()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# The CPU-scale families of the architecture comparison at 28x28, 10 classes: parameters,
# multiplications per image and activation layers (every Conv2d/Linear but the image layer)
SMALL_FAMILIES = {
    "inception_small": (182_058, 13_654_816, 25),
    "densenet_small": (148_402, 9_562_356, 35),
    "resnet29_bottleneck": (312_826, 9_891_584, 31),
}


@pytest.mark.parametrize("name", list(SMALL_FAMILIES))
def test_small_families_parameters_macs_and_activation_layers(name):
    params, macs, acts = SMALL_FAMILIES[name]
    model = build_model(name, (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert flop_counter_macs(model, (1, 28, 28)) == macs
    assert len(activation_layers(model, (1, 28, 28))) == acts == len(weighted_layers(model)) - 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_bottleneck_block_counted_by_hand():
    from dstcore.models.small_bottleneck import Bottleneck

    # 64 -> 1x1 16 -> 3x3 16 -> 1x1 64, BN after each (2 x channels), identity shortcut
    block = Bottleneck(64, 16, 1)
    assert sum(p.numel() for p in block.parameters()) == (
        64 * 16 + 16 * 16 * 9 + 16 * 64 + 2 * (16 + 16 + 64))
    # 16 -> 64 with stride 2 adds a 1x1 projection and its BN
    assert sum(p.numel() for p in Bottleneck(16, 16, 2).parameters()) == (
        16 * 16 + 16 * 16 * 9 + 16 * 64 + 2 * (16 + 16 + 64) + 16 * 64 + 2 * 64)


def test_inception_and_dense_layers_concatenate_their_channels():
    from dstcore.models.small_densenet import DenseLayer
    from dstcore.models.small_inception import Inception

    x = torch.randn(2, 32, 14, 14)
    block = Inception(32, 16, 24, 32, 4, 8, 8)
    assert block.out_channels == 16 + 32 + 8 + 8 and block(x).shape == (2, 64, 14, 14)
    layer = DenseLayer(32, growth=12, bottleneck=48)
    y = layer(x)
    assert y.shape == (2, 44, 14, 14) and torch.equal(y[:, :32], x)  # input passed through
