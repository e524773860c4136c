"""Swap every Conv2d / Linear of a model for a kernel-backed module (inference only)."""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from dstcore.kernels.cpu import Kernel
from dstcore.sparsity.activations import weighted_layers


class KernelModule(nn.Module):
    """Inference-only stand-in for a Conv2d / Linear that runs a prepared :class:`Kernel`."""

    def __init__(self, kernel: Kernel, name: str = "") -> None:
        super().__init__()
        self.kernel = kernel
        self.layer_name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.kernel(x)

    def extra_repr(self) -> str:
        return f"kind={self.kernel.kind!r}, layer={self.layer_name!r}"


def sparsify_model(model: nn.Module, kind: str, keep_first_dense: bool = True,
                   **options: Any) -> nn.Module:
    """A deep copy of ``model`` (eval mode) whose Conv2d / Linear layers run ``kind``.

    ``keep_first_dense``: the first Conv2d/Linear in ``named_modules`` order (the input layer,
    whose input is the raw image with no activation sparsity) stays torch's dense layer.
    ``options`` go to :func:`dstcore.kernels.prepare`. The copy shares nothing with
    ``model``; its kernels do not track gradients.
    """
    from dstcore.kernels import prepare

    new = copy.deepcopy(model).eval()
    names = [name for name, _ in weighted_layers(new)]
    skip = set(names[:1]) if keep_first_dense else set()
    for name in names:
        if name in skip:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        layer = getattr(parent, attr)
        setattr(parent, attr, KernelModule(prepare(kind, layer, **options), name))
    return new
