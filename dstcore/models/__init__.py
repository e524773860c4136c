"""Stage 2, models: the model-family registry, ``build_model(name, input_shape, num_classes)``.

A family is one module of this package that registers its builders with :func:`register`;
every module here (but ``checkpoint``, ``thresholds`` and private ``_*`` ones) is imported
when the package is, so adding a family is adding one file (see docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from torch import nn

from dstcore import DstError

Builder = Callable[[tuple[int, int, int], int], nn.Module]
MODELS: dict[str, Builder] = {}  # name -> builder(input_shape (C, H, W), num_classes)
_NOT_FAMILIES = {"checkpoint", "thresholds"}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(input_shape, num_classes) -> nn.Module`` as model ``name``."""
    def add(builder: Builder) -> Builder:
        if name in MODELS and MODELS[name] is not builder:
            raise DstError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return add


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A freshly initialised model ``name`` for inputs [N, *input_shape] and ``num_classes``."""
    if name not in MODELS:
        raise DstError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes))


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_") and _module.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")
