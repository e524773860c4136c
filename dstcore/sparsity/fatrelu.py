"""FATReLU (Kurtz et al., ICML 2020): forced activation thresholds, searched on a trained model.

FATReLU_t(x) = x where x > t, else 0. Here a threshold t_l sits on the input of each
activation layer l (the Conv2d/Linear layers of :func:`~dstcore.sparsity.activations.
activation_layers`), as a ``torch.nn.Threshold(t_l, 0)`` module inserted before the layer
in the model's fx graph (:func:`dstcore.models.thresholds.apply_thresholds`). Where a ReLU
feeds the layer directly or through max-pooling this equals replacing that ReLU by FATReLU
(thresholding commutes with max); in a residual block the shortcut keeps the unthresholded
map. Layers whose input can be negative on the search slice get no threshold.

The search (:func:`search_thresholds`, as SparseML's one-shot FATReLU search) walks the layers
in forward order and gives each the largest threshold whose top-1 on a held-out slice stays
within its share of the budget: after layer i of L the slice top-1 may be at most
``budget_pp * (i + 1) / L`` below the unthresholded model's, so early layers cannot spend the
whole budget and budget a layer does not use carries to the next. A layer's candidates are
quantiles of its positive input values on the slice (with earlier thresholds applied); the
largest admissible quantile level is found by bisection over [0, 1] in ``steps`` steps
(resolution 2^-steps), which assumes accuracy falls as a threshold rises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dstcore.models.thresholds import apply_thresholds, thresholds_of  # noqa: F401 (API)
from dstcore.sparsity.activations import activation_layers, register_hooks

MAX_VALUES = 200_000  # positive input values per layer kept for the quantiles (strided)


@dataclass(frozen=True)
class SearchStep:
    """One layer's result: its threshold, the quantile level it sits at, the slice top-1 (%)
    with it (and every earlier threshold) and the top-1 it had to stay at or above."""

    layer: str
    threshold: float
    level: float
    top1_pct: float
    floor_pct: float


def slice_top1(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 (%) of ``model`` in eval mode on ``images`` [N, C, H, W] with ``labels`` [N]."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            logits = model(images[i:i + batch_size])
            correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(labels))


def layer_inputs(model: nn.Module, layer: str, images: Tensor, batch_size: int = 500
                 ) -> tuple[Tensor, bool]:
    """(up to :data:`MAX_VALUES` positive input values of ``layer`` on ``images``, whether
    every input value was >= 0)."""
    module = model.get_submodule(layer)
    kept, nonneg = [], True

    def see(name: str, m: nn.Module, a: Tensor) -> None:
        nonlocal nonneg
        nonneg = nonneg and bool((a >= 0).all())
        kept.append(a[a > 0].flatten())

    was = model.training
    model.eval()
    with register_hooks([(layer, module)], see), torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    model.train(was)
    values = torch.cat(kept) if kept else torch.zeros(0)
    stride = max(1, len(values) // MAX_VALUES)
    return values[::stride].float().cpu(), nonneg


def bisect_level(admissible: Callable[[float], bool], steps: int) -> float:
    """The largest level in [0, 1] (to 2^-steps) with ``admissible(level)``, assuming it holds
    below any admissible level; 0 when none above 0 is (level 0 is always admissible)."""
    if admissible(1.0):
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if admissible(mid) else (low, mid)
    return low


def search_thresholds(model: nn.Module, images: Tensor, labels: Tensor, budget_pp: float,
                      steps: int = 6) -> tuple[dict[str, float], list[SearchStep], float]:
    """Per-layer thresholds within ``budget_pp`` of top-1 on the slice (module docstring).
    Returns ({layer: threshold}, one :class:`SearchStep` per layer, the slice top-1 (%) before
    thresholds). ``model`` is left unchanged."""
    layers = [name for name, _ in activation_layers(model, tuple(images.shape[1:]))]
    start = slice_top1(model, images, labels)
    chosen: dict[str, float] = {}
    log: list[SearchStep] = []
    for i, layer in enumerate(layers):
        floor = start - budget_pp * (i + 1) / len(layers)
        step = _search_layer(model, chosen, layer, images, labels, floor, steps)
        if step.threshold > 0:
            chosen[layer] = step.threshold
        log.append(step)
    return chosen, log, start


def _search_layer(model: nn.Module, chosen: dict[str, float], layer: str, images: Tensor,
                  labels: Tensor, floor: float, steps: int) -> SearchStep:
    """The largest threshold of ``layer`` (after the ``chosen`` ones) keeping the slice top-1
    at or above ``floor``."""
    current = apply_thresholds(model, chosen) if chosen else model
    values, nonneg = layer_inputs(current, layer, images)
    if not nonneg or values.numel() == 0:
        return SearchStep(layer, 0.0, 0.0, slice_top1(current, images, labels), floor)
    quantile = _quantiles(values)
    scores: dict[float, float] = {}

    def admissible(level: float) -> bool:
        trial = apply_thresholds(model, {**chosen, layer: quantile(level)})
        scores[level] = slice_top1(trial, images, labels)
        return scores[level] >= floor

    level = bisect_level(admissible, steps)
    if level == 0:
        return SearchStep(layer, 0.0, 0.0, slice_top1(current, images, labels), floor)
    return SearchStep(layer, quantile(level), level, scores[level], floor)


def _quantiles(values: Tensor) -> Callable[[float], float]:
    """level -> the level-quantile of ``values`` (level 1: just above the largest, so every
    value is cut)."""
    ordered = values.sort().values

    def at(level: float) -> float:
        if level >= 1.0:
            return float(torch.nextafter(ordered[-1], torch.tensor(float("inf"))))
        return float(ordered[min(len(ordered) - 1, int(level * len(ordered)))])

    return at
