"""Accuracy, activation sparsity and multiplication counts of a model over a data loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dstcore.measure.flops import MacCounter
from dstcore.sparsity.activations import register_hooks


class SparsityCounter:
    """Counts exact zeros in the activation map of each layer (pre-hooks; no copies kept)."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.zeros = {n: 0 for n, _ in layers}
        self.elements = {n: 0 for n, _ in layers}
        self.images = 0

    def observe(self, name: str, module: nn.Module, a: Tensor) -> None:
        self.zeros[name] += int((a == 0).sum().item())
        self.elements[name] += a.numel()

    def summary(self) -> dict:
        """Per-layer and element-weighted overall fraction of zeros."""
        layers = {n: {"sparsity": self.zeros[n] / max(self.elements[n], 1),
                      "elements_per_image": self.elements[n] / max(self.images, 1)}
                  for n, _ in self.layers}
        total = sum(self.elements.values())
        return {"overall": sum(self.zeros.values()) / max(total, 1), "layers": layers}


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...]) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k in ``ks``."""
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels.view(-1, 1)
    return [int(hits[:, :k].any(dim=1).sum().item()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             act_layers: list[tuple[str, nn.Module]], num_classes: int,
             count_macs: bool = False, desc: str = "eval") -> dict:
    """Top-1 (and top-5 when classes > 10) accuracy, activation sparsity and optionally MACs.

    Accuracies are fractions in [0, 1]; sparsities are fractions of exact zeros.
    """
    model.eval()
    ks = (1, 5) if num_classes > 10 else (1,)
    correct, seen, loss_sum = [0] * len(ks), 0, 0.0
    sparsity = SparsityCounter(act_layers)
    macs = MacCounter(model, effective=True)
    # Counting MACs visits every layer's input already: take the zeros from there.
    hooks = macs.observing() if count_macs else register_hooks(act_layers, sparsity.observe)
    with hooks:
        for x, y in tqdm(loader, desc=desc, leave=False, disable=None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            for i, c in enumerate(topk_correct(logits, y, ks)):
                correct[i] += c
            seen += len(y)
    sparsity.images = macs.images = seen
    if count_macs:
        for name, _ in act_layers:
            sparsity.elements[name] = macs.input_elements[name]
            sparsity.zeros[name] = macs.input_elements[name] - macs.input_nonzero[name]
    out = {"top1": correct[0] / max(seen, 1), "loss": loss_sum / max(seen, 1), "images": seen,
           "activation_sparsity": sparsity.summary()}
    if len(ks) > 1:
        out["top5"] = correct[1] / max(seen, 1)
    if count_macs:
        out["macs"] = macs.summary()
    return out



def full_metrics(model: nn.Module, bundle, device: torch.device, batch_size: int,
                 num_workers: int = 0) -> dict:
    """Everything ``metrics.json`` reports about a model on the whole test split of ``bundle``
    (image datasets read with ``num_workers`` DataLoader workers), in float32.

    Accuracy (top-1, top-5 when classes > 10), activation sparsity per layer and overall,
    weight sparsity, dense and effective MACs per image, and the dense count according to
    ``torch.utils.flop_counter`` as a cross-check.
    """
    import time

    from dstcore.data.loaders import make_loader
    from dstcore.measure.flops import flop_counter_macs
    from dstcore.sparsity.activations import activation_layers
    from dstcore.sparsity.pruning import weight_sparsity

    t0 = time.perf_counter()
    model = model.to(device)
    act_layers = activation_layers(model, bundle.input_shape)
    loader = make_loader(bundle.test, batch_size, shuffle=False, num_workers=num_workers,
                         pin_memory=device.type == "cuda")
    ev = evaluate(model, loader, device, act_layers, bundle.num_classes, count_macs=True,
                  desc="evaluate")
    counted = flop_counter_macs(model, bundle.input_shape)
    accuracy = {"top1": ev["top1"]}
    if "top5" in ev:
        accuracy["top5"] = ev["top5"]
    return {
        "accuracy": accuracy, "test_loss": ev["loss"], "test_images": ev["images"],
        "activation_sparsity": ev["activation_sparsity"],
        "weight_sparsity": weight_sparsity(model),
        "macs": {**ev["macs"], "flop_counter_dense": counted,
                 "flop_counter_agrees": abs(counted - ev["macs"]["dense"]) < 0.5},
        "eval_seconds": time.perf_counter() - t0,
    }
