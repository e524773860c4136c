"""Weight sparsity for stage 2 of dual sparse training, on ``torch.nn.utils.prune`` masks.

Stage 2 = weight l1 regularisation, then threshold (magnitude) pruning, then fine-tuning
with the masks fixed; stage 3 keeps the masks fixed while it adds the activation penalty.
Pruned modules carry ``weight_orig`` and ``weight_mask``; :func:`make_permanent` folds them
into a plain ``weight`` with real zeros before a model is saved.

Two pruning structures: ``element`` zeroes single weights (unstructured magnitude pruning);
``block`` zeroes whole *units* (output block b, input channel c) =
``W[b*block_out:(b+1)*block_out, c]`` of a Conv2d [K, C, R, S] or Linear [K, C] weight, the
pattern a sparse kernel can skip (:func:`block_masks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from dstcore import DstError
from dstcore.sparsity.activations import weighted_layers

SCOPES = ("global", "layer")
STRUCTURES = ("element", "block")
EXCLUDABLE = ("first", "last")  # layers stage 2 may leave dense (prune.exclude)


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> list[nn.Module]:
    """The Conv2d/Linear layers stage 2 prunes: all of them in registration order, without
    the first (``"first"`` in ``exclude``: the image layer of every model in
    :mod:`dstcore.models`) and/or the last (``"last"``: the classifier)."""
    unknown = set(exclude) - set(EXCLUDABLE)
    if unknown:
        raise DstError(f"cannot exclude {', '.join(sorted(unknown))} from pruning; choose from "
                       f"{', '.join(EXCLUDABLE)}")
    layers = [m for _, m in weighted_layers(model)]
    lo = 1 if "first" in exclude else 0
    hi = len(layers) - 1 if "last" in exclude else len(layers)
    return layers[lo:max(lo, hi)]


def weight_l1(model: nn.Module, exclude: Sequence[str] = ()) -> Tensor:
    """Sum of |w| over the weights of :func:`prunable_layers` (biases excluded)."""
    return sum(m.weight.abs().sum() for m in prunable_layers(model, exclude))


def is_pruned(module: nn.Module) -> bool:
    return prune.is_pruned(module)


def prune_weights(model: nn.Module, rate: float | None = None, threshold: float | None = None,
                  scope: str = "global", structure: str = "element", block_out: int = 16,
                  exclude: Sequence[str] = ()) -> None:
    """Attach magnitude-pruning masks to the weights of :func:`prunable_layers` (every
    Conv2d/Linear but those ``exclude`` names; an excluded layer stays dense and unmasked).

    ``rate``: fraction of weights to zero (the smallest |w|), over all layers together
    (``scope="global"``) or in each layer (``scope="layer"``). ``threshold``: zero every
    weight with |w| <= threshold instead. Exactly one of the two must be given.
    ``structure="block"`` zeroes whole units of ``block_out`` output channels x one input
    channel, lowest mean |w| first (:func:`block_masks`); it takes a rate, not a threshold.
    """
    if (rate is None) == (threshold is None):
        raise DstError("pruning needs exactly one of rate or threshold")
    if scope not in SCOPES:
        raise DstError(f"unknown pruning scope '{scope}'; choose from {', '.join(SCOPES)}")
    if structure not in STRUCTURES:
        raise DstError(f"unknown pruning structure '{structure}'; choose from "
                       f"{', '.join(STRUCTURES)}")
    layers = prunable_layers(model, exclude)
    if structure == "block":
        if threshold is not None:
            raise DstError("block pruning takes a rate, not a threshold")
        masks = block_masks([m.weight for m in layers], float(rate), block_out, scope)
        for m, mask in zip(layers, masks, strict=True):
            prune.custom_from_mask(m, "weight", mask=mask)
    elif threshold is not None:
        for m in layers:
            prune.custom_from_mask(m, "weight", mask=(m.weight.detach().abs() > threshold))
    elif scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers],
                                  pruning_method=prune.L1Unstructured, amount=float(rate))
    else:
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=float(rate))


def unit_scores(weight: Tensor, block_out: int) -> tuple[Tensor, Tensor]:
    """(scores, sizes) of the block units of a Conv2d [K, C, R, S] or Linear [K, C] weight.

    Unit (b, c) = ``weight[b*block_out:(b+1)*block_out, c]`` (the last block may have fewer
    output channels); its score is the mean |w| over its elements and its size the number of
    elements. Both tensors have shape [ceil(K / block_out), C]; scores are float64.
    """
    k, c = weight.shape[:2]
    per_row = weight.detach().abs().double().reshape(k, c, -1)
    blocks = math.ceil(k / block_out)
    block_of_row = torch.arange(k, device=weight.device) // block_out
    sums = torch.zeros(blocks, c, dtype=torch.float64, device=weight.device)
    sums.index_add_(0, block_of_row, per_row.sum(-1))
    rows = torch.bincount(block_of_row, minlength=blocks)
    sizes = (rows * per_row.shape[-1])[:, None].expand(blocks, c)
    return sums / sizes, sizes


def lowest_units(scores: Tensor, sizes: Tensor, rate: float) -> Tensor:
    """Which units to zero (bool, same shape as ``scores``): lowest score first (ties in index
    order) until the zeroed elements reach ``rate`` x all elements, so the zeroed fraction
    exceeds ``rate`` by less than one unit."""
    flat_scores, flat_sizes = scores.flatten(), sizes.flatten()
    target = rate * float(flat_sizes.sum())
    chosen = torch.zeros(flat_scores.numel(), dtype=torch.bool, device=scores.device)
    if target > 0:
        order = torch.sort(flat_scores, stable=True).indices
        reached = torch.cumsum(flat_sizes[order], 0) >= target
        chosen[order[:int(torch.argmax(reached.int())) + 1]] = True
    return chosen.reshape(scores.shape)


def unit_mask(pruned_units: Tensor, shape: torch.Size, block_out: int) -> Tensor:
    """Weight-shaped keep mask (bool) from a [blocks, C] mask of pruned units."""
    k = shape[0]
    block_of_row = torch.arange(k, device=pruned_units.device) // block_out
    keep = ~pruned_units[block_of_row]  # [K, C]
    return keep.reshape(*keep.shape, *[1] * (len(shape) - 2)).expand(shape).clone()


def block_masks(weights: list[Tensor], rate: float, block_out: int = 16,
                scope: str = "global") -> list[Tensor]:
    """Keep masks (bool, one per weight) that zero whole units (:func:`unit_scores`), lowest
    mean |w| first, until the zeroed fraction reaches ``rate``: over all weights together
    (``scope="global"``) or in each weight (``scope="layer"``), within one unit of the target.
    """
    if block_out < 1:
        raise DstError(f"block_out must be an integer >= 1, got {block_out}")
    units = [unit_scores(w, block_out) for w in weights]
    if scope == "layer":
        pruned = [lowest_units(scores, sizes, rate) for scores, sizes in units]
    else:
        flat = lowest_units(torch.cat([s.flatten() for s, _ in units]),
                            torch.cat([n.flatten() for _, n in units]), rate)
        parts = flat.split([s.numel() for s, _ in units])
        pruned = [part.reshape(s.shape) for part, (s, _) in zip(parts, units, strict=True)]
    return [unit_mask(p, w.shape, block_out) for p, w in zip(pruned, weights, strict=True)]


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
