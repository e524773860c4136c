"""Model registry: ``build_model(name, input_shape, num_classes)`` for every registered name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dstcore import DstError
from dstcore.models.lenet import LeNet5
from dstcore.models.small_resnet import small_resnet
from dstcore.models.tv import googlenet, tv_densenet, tv_resnet

Builder = Callable[[tuple[int, int, int], int], nn.Module]

MODELS: dict[str, Builder] = {
    "lenet5": lambda shape, k: LeNet5(shape, k),
    "resnet8": lambda shape, k: small_resnet(shape, k, blocks_per_stage=1),
    "resnet20": lambda shape, k: small_resnet(shape, k, blocks_per_stage=3),
    "resnet18": lambda shape, k: tv_resnet("resnet18", shape, k),
    "resnet34": lambda shape, k: tv_resnet("resnet34", shape, k),
    "resnet50": lambda shape, k: tv_resnet("resnet50", shape, k),
    "googlenet": googlenet,
    "densenet121": tv_densenet,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A freshly initialised model ``name`` for inputs [N, *input_shape] and ``num_classes``."""
    if name not in MODELS:
        raise DstError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes))
