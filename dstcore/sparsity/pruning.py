"""Weight sparsity for stage 2 of dual sparse training, on ``torch.nn.utils.prune`` masks.

Stage 2 = weight l1 regularisation, then threshold (magnitude) pruning, then fine-tuning
with the masks fixed; stage 3 keeps the masks fixed while it adds the activation penalty.
Pruned modules carry ``weight_orig`` and ``weight_mask``; :func:`make_permanent` folds them
into a plain ``weight`` with real zeros before a model is saved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from dstcore import DstError
from dstcore.sparsity.activations import weighted_layers

SCOPES = ("global", "layer")


def weight_l1(model: nn.Module) -> Tensor:
    """Sum of |w| over every Conv2d/Linear weight (biases excluded)."""
    return sum(m.weight.abs().sum() for _, m in weighted_layers(model))


def is_pruned(module: nn.Module) -> bool:
    return prune.is_pruned(module)


def prune_weights(model: nn.Module, rate: float | None = None, threshold: float | None = None,
                  scope: str = "global") -> None:
    """Attach magnitude-pruning masks to every Conv2d/Linear weight.

    ``rate``: fraction of weights to zero (the smallest |w|), over all layers together
    (``scope="global"``) or in each layer (``scope="layer"``). ``threshold``: zero every
    weight with |w| <= threshold instead. Exactly one of the two must be given.
    """
    if (rate is None) == (threshold is None):
        raise DstError("pruning needs exactly one of rate or threshold")
    if scope not in SCOPES:
        raise DstError(f"unknown pruning scope '{scope}'; choose from {', '.join(SCOPES)}")
    layers = [m for _, m in weighted_layers(model)]
    if threshold is not None:
        for m in layers:
            prune.custom_from_mask(m, "weight", mask=(m.weight.detach().abs() > threshold))
    elif scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers],
                                  pruning_method=prune.L1Unstructured, amount=float(rate))
    else:
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=float(rate))


def fix_masks_from_zeros(model: nn.Module) -> None:
    """Freeze the current zero pattern of every Conv2d/Linear weight as a pruning mask."""
    for _, m in weighted_layers(model):
        if not is_pruned(m):
            prune.custom_from_mask(m, "weight", mask=(m.weight.detach() != 0))


def identity_masks(model: nn.Module) -> None:
    """Attach all-ones masks (the structure a pruned state_dict needs before loading)."""
    for _, m in weighted_layers(model):
        if not is_pruned(m):
            prune.identity(m, "weight")


def make_permanent(model: nn.Module) -> None:
    """Fold masks into the weights: plain ``weight`` tensors with real zeros, no hooks left."""
    for _, m in weighted_layers(model):
        if is_pruned(m):
            prune.remove(m, "weight")


def has_masks(model: nn.Module) -> bool:
    return any(is_pruned(m) for _, m in weighted_layers(model))


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> dict:
    """Fraction of exact zeros per Conv2d/Linear weight and overall (element-weighted)."""
    layers, zeros, total = {}, 0, 0
    for name, m in weighted_layers(model):
        w = m.weight
        z, n = int((w == 0).sum()), w.numel()
        layers[name] = {"sparsity": z / n, "params": n}
        zeros, total = zeros + z, total + n
    return {"overall": zeros / max(total, 1), "zeros": zeros, "params": total, "layers": layers}
