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
(resolution 2^-steps), which assumes accuracy falls as a threshold rises. Each layer's trials
rerun only the part of the graph after its threshold (:class:`CutGraph`): the same numbers as
whole forward passes, 1.3x (LeNet5) to 2.5x (ResNet-20) faster in measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore.models.thresholds import (  # noqa: F401 (thresholds_of: API)
    apply_thresholds,
    threshold_module_name,
    thresholds_of,
)
from dstcore.sparsity.activations import activation_layers

MAX_VALUES = 200_000  # positive input values per layer kept for the quantiles (strided)
# Images per forward pass of the search: on a CPU 64 kept ResNet-20's activations in cache and
# searched 1.7x faster than 500, with the same thresholds (config/README.md, FATReLU).
SEARCH_BATCH = 64


@dataclass(frozen=True)
class SearchStep:
    """One layer's result: its threshold, the quantile level it sits at, the slice top-1 (%)
    with it (and every earlier threshold) and the top-1 it had to stay at or above."""

    layer: str
    threshold: float
    level: float
    top1_pct: float
    floor_pct: float


def slice_top1(model: nn.Module, images: Tensor, labels: Tensor,
               batch_size: int = SEARCH_BATCH) -> float:
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


class CutGraph:
    """The model with the ``chosen`` thresholds and one more before ``layer`` whose value
    changes between evaluations on a fixed slice. The graph nodes before that threshold do not
    depend on it: they run once per batch of ``batch_size`` and the values later nodes read are
    kept, so each evaluation runs only the rest of the graph, with the same operations on the
    same tensors as the whole model would (results are bit-identical; kept values are copied
    before each evaluation, since a later in-place op may write into one)."""

    def __init__(self, model: nn.Module, chosen: dict[str, float], layer: str, images: Tensor,
                 labels: Tensor, batch_size: int = SEARCH_BATCH) -> None:
        self.module = apply_thresholds(model, {**chosen, layer: 1.0}).eval()  # 1.0: any value
        self.labels = labels
        nodes = list(self.module.graph.nodes)
        target = threshold_module_name(layer)
        cut = next(i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == target)
        self.cut, self.prefix, self.suffix = nodes[cut], nodes[:cut], nodes[cut:]
        self.index = {n: i for i, n in enumerate(nodes)}
        self.last_use = {n: i for i, node in enumerate(nodes) for n in node.all_input_nodes}
        later = set(self.suffix)
        keep = {n for n in self.prefix if any(u in later for u in n.users)}
        self.interpreter = torch.fx.Interpreter(self.module)
        with torch.no_grad():
            self.kept = [self._run(self.prefix, {}, images[i:i + batch_size], keep)
                         for i in range(0, len(labels), batch_size)]

    def _run(self, nodes: list[torch.fx.Node], env: dict, batch: Tensor | None,
             keep: set[torch.fx.Node], threshold: float | None = None) -> dict:
        """Run ``nodes`` in order on ``env`` (freeing values past their last use unless in
        ``keep``); the cut node applies ``threshold`` (None: passes its input on)."""
        self.interpreter.env = env
        for node in nodes:
            if node.op == "placeholder":
                env[node] = batch
            elif node is self.cut:
                x = env[node.args[0]]
                env[node] = x if threshold is None else F.threshold(x, threshold, 0.0)
            else:
                env[node] = self.interpreter.run_node(node)
            for used in node.all_input_nodes:
                if self.last_use[used] == self.index[node] and used not in keep:
                    del env[used]
        return {n: env[n] for n in keep} if keep else env

    def top1(self, threshold: float | None) -> float:
        """Slice top-1 (%) with the cut threshold at ``threshold`` (None: no threshold there)."""
        correct, start = 0, 0
        with torch.no_grad():
            for kept in self.kept:
                env = {n: v.clone() if isinstance(v, Tensor) else v for n, v in kept.items()}
                out = self._run(self.suffix, env, None, set(), threshold)
                logits = out[self.suffix[-1]]
                n = len(logits)
                correct += int((logits.argmax(1) == self.labels[start:start + n]).sum())
                start += n
        return 100.0 * correct / max(1, len(self.labels))

    def layer_input_values(self) -> tuple[Tensor, bool]:
        """(up to :data:`MAX_VALUES` positive values of the cut layer's input on the slice,
        whether every input value was >= 0)."""
        inputs = [kept[self.cut.args[0]] for kept in self.kept]
        nonneg = all(bool((a >= 0).all()) for a in inputs)
        values = torch.cat([a[a > 0].flatten() for a in inputs]) if inputs else torch.zeros(0)
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
    graph = CutGraph(model, chosen, layer, images, labels)
    values, nonneg = graph.layer_input_values()
    if not nonneg or values.numel() == 0:
        return SearchStep(layer, 0.0, 0.0, graph.top1(None), floor)
    quantile = _quantiles(values)
    scores: dict[float, float] = {}

    def admissible(level: float) -> bool:
        scores[level] = graph.top1(quantile(level))
        return scores[level] >= floor

    level = bisect_level(admissible, steps)
    if level == 0:
        return SearchStep(layer, 0.0, 0.0, graph.top1(None), floor)
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
