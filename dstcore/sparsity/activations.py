"""Activation maps: the inputs of every Conv2d/Linear layer except those fed the image.

Layers are found by one dry forward pass that records, in execution order, which
Conv2d/Linear modules run and whether their input *is* the network input. Observers are
forward pre-hooks: they see each activation map as it flows by and keep no copy of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

WEIGHTED = (nn.Conv2d, nn.Linear)
LayerFn = Callable[[str, nn.Module, Tensor], None]


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All Conv2d and Linear layers of ``model`` as (qualified name, module), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]


def execution_order(model: nn.Module, input_shape: tuple[int, ...]
                    ) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, fed_the_image) for each Conv2d/Linear in the order a forward pass runs them."""
    param = next(model.parameters())
    image = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    seen: list[tuple[str, nn.Module, bool]] = []
    names = {id(m): n for n, m in weighted_layers(model)}

    def record(module: nn.Module, args: tuple) -> None:
        if id(module) in names and all(module is not s[1] for s in seen):
            seen.append((names[id(module)], module, args[0] is image))

    was_training = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(record) for _, m in weighted_layers(model)]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in handles:
            h.remove()
    model.train(was_training)
    return seen


def activation_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module]]:
    """Conv2d/Linear layers whose input is an activation map (not the image), in execution order."""
    order = execution_order(model, input_shape)
    layers = [(n, m) for n, m, fed_image in order if not fed_image]
    if len(layers) == len(order) and layers:  # input was transformed before the first layer
        layers = layers[1:]
    return layers


@contextmanager
def register_hooks(layers: list[tuple[str, nn.Module]], fn: LayerFn) -> Iterator[None]:
    """Call ``fn(name, module, input)`` before each listed layer runs; remove the hooks on exit."""
    handles = [module.register_forward_pre_hook(
        lambda m, args, _name=name: fn(_name, m, args[0])) for name, module in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
