"""End-to-end latency of whole models: the compiled runner against torch eager and ONNX Runtime.

:func:`dstcore.measure.engines.time_engines` times, interleaved in one process on the same inputs and
thread count, torch eager, ONNX Runtime (dense, graph optimisations on, no spinning), the
runner's ``dense`` kind (overhead removed, every multiplication done), its sparse kinds and,
on request, ``torch.compile`` (inductor, default mode).
:func:`run_model_sweep` is the paper-scale benchmark: torchvision ResNet18/50 at 224x224 with
random weights whose activation sparsity is set by :func:`set_input_sparsity` ("synthetic
sparsity").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dstcore.core.io import write_csv
from dstcore.measure.engines import RUNNER_NAMES, time_engines
from dstcore.measure.model_latency import layer_inputs
from dstcore.measure.sidecar import write_results
from dstcore.measure.synthetic import zero_fraction
from dstcore.measure.threads import max_threads, threads

SWEEP_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


# ----------------------------------------------------------------------------- sparsity


def _relu_sites(model: nn.Module) -> list[tuple[nn.BatchNorm2d, bool]]:
    """(BatchNorm before a ReLU, followed by the stem max-pool) of a torchvision ResNet, in
    forward order. Shifting that BatchNorm's bias shifts the ReLU's input (residual adds
    included: bn2/bn3 + identity)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    sites = [(model.bn1, isinstance(model.maxpool, nn.MaxPool2d))]
    for block in model.modules():
        if isinstance(block, BasicBlock):
            sites += [(block.bn1, False), (block.bn2, False)]
        elif isinstance(block, Bottleneck):
            sites += [(block.bn1, False), (block.bn2, False), (block.bn3, False)]
    return sites


@torch.no_grad()
def set_input_sparsity(model: nn.Module, sparsity: float, calib: Tensor) -> nn.Module:
    """Shift the BatchNorm biases of a torchvision ResNet (eval mode) so that every ReLU
    output -- the input of every conv but the first -- is ``sparsity`` zeros per channel on
    the calibration batch ``calib`` [N, 3, H, W].

    One site at a time in forward order (each shift changes what follows): the bias is
    lowered by the per-channel ``sparsity``-quantile of the ReLU's input (after the stem
    max-pool for the stem, since ReLU and max-pool commute). The final linear layer's input
    (a global average) is not set. Returns ``model``, changed in place.
    """
    model.eval()
    for bn, pooled in _relu_sites(model):
        pre = _relu_input(model, bn, calib)
        if pooled:
            mp = model.maxpool
            pre = F.max_pool2d(pre, mp.kernel_size, mp.stride, mp.padding, mp.dilation,
                               ceil_mode=mp.ceil_mode)
        per_channel = pre.transpose(0, 1).reshape(pre.shape[1], -1)
        q = torch.quantile(per_channel, float(sparsity), dim=1)
        bn.bias -= q
    return model


def _relu_input(model: nn.Module, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """What the ReLU after ``bn`` receives: bn's output (+ the block's identity when ``bn``
    ends a residual branch), captured by hooks on one forward pass."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    owner = next((b for b in model.modules()
                  if isinstance(b, BasicBlock | Bottleneck)
                  and bn is (b.bn3 if isinstance(b, Bottleneck) else b.bn2)), None)
    got: dict[str, Tensor] = {}
    hooks = [bn.register_forward_hook(lambda _m, _a, out: got.setdefault("bn", out))]
    if owner is not None:
        def identity(m: nn.Module, args: tuple[Tensor, ...]) -> None:
            got.setdefault("in", m.downsample(args[0]) if m.downsample is not None else args[0])
        hooks.append(owner.register_forward_pre_hook(identity))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return got["bn"] + got["in"] if owner is not None else got["bn"]


def input_sparsity(model: nn.Module, x: Tensor) -> dict[str, float]:
    """Fraction of zeros in the input of every Conv2d / Linear of ``model`` on ``x``."""
    return {name: zero_fraction(a) for name, a in layer_inputs(model, x).items()}


# ----------------------------------------------------------------------------- sweep


@torch.no_grad()
def _prune_blocks(model: nn.Module, rate: float) -> None:
    """Zero ``rate`` of the (16 output x 1 input channel) weight units of every conv but the
    first, per layer (:func:`dstcore.sparsity.pruning.block_masks`, scope 'layer')."""
    from dstcore.sparsity.activations import weighted_layers
    from dstcore.sparsity.pruning import block_masks

    convs = [m for _, m in weighted_layers(model) if isinstance(m, nn.Conv2d)][1:]
    for m, keep in zip(convs, block_masks([m.weight for m in convs], rate, scope="layer"),
                       strict=True):
        m.weight.mul_(keep)


def synthetic_model(name: str, sparsity: float, weight_sparsity: float, seed: int = 0,
                    size: int = 224, calib_images: int = 4) -> nn.Module:
    """torchvision ``name`` (random weights, ``size`` x ``size``, 1000 classes), block-pruned
    to ``weight_sparsity`` and with input sparsity ``sparsity`` at every conv but the first
    (:func:`set_input_sparsity` on ``calib_images`` N(0, 1) images)."""
    from dstcore.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, (3, size, size), 1000).eval()
    if weight_sparsity > 0:
        _prune_blocks(model, weight_sparsity)
    return set_input_sparsity(model, sparsity, torch.randn(calib_images, 3, size, size))


def run_model_sweep(out_dir: str | Path, *, models: Sequence[str] = ("resnet18", "resnet50"),
                    sparsities: Sequence[float] = SWEEP_SPARSITIES,
                    weight_sparsities: Sequence[float] = (0.0, 0.8),
                    batch_sizes: Sequence[int] = (1, 8), thread_counts: Sequence[int] = (1, 2),
                    size: int = 224, warmup: int = 1, repeats: int = 4, rounds: int = 2,
                    torch_compile: bool = False, grid_sparsity: float | None = 0.9,
                    log: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """End-to-end latency of torchvision ResNets with synthetic activation sparsity: every
    engine of :func:`dstcore.measure.engines.time_engines` on N(0, 1) inputs, per model, weight
    sparsity, input sparsity, batch and thread count. With ``grid_sparsity`` the batch sizes
    and thread counts after the first of each are measured at that sparsity only (the
    sparsity sweep runs at the first batch size and thread count; None = every cell), which
    keeps the default sweep near 15 minutes on 2 cores (``torch_compile``: also
    ``torch.compile``, compiled per cell: ResNet18 at 224x224 ~25 s for the first cell of a
    batch and thread count, <1 s for the next sparsities from inductor's cache). Writes
    ``models.csv`` (+ meta) and ``models_crossover.csv`` (:func:`model_crossover`) to
    ``out_dir``."""
    from dstcore.kernels.onnxrt import export_onnx

    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    cells = [(m, ws, s) for m in models for ws in weight_sparsities for s in sparsities]
    for name, ws, s in tqdm(cells, desc="synthetic models", unit="model", disable=None):
        model = synthetic_model(name, s, ws, size=size)
        measured = input_sparsity(model, torch.randn(2, 3, size, size))
        asp = float(np.mean(list(measured.values())[1:-1]))
        kinds = ("dense", "act_sparse", "dual_sparse") if ws > 0 else ("dense", "act_sparse")
        onnx_model = export_onnx(model, torch.randn(1, 3, size, size))
        for b in batch_sizes:
            x = torch.randn(b, 3, size, size)
            for t in thread_counts:
                off_grid = (b, t) != (batch_sizes[0], thread_counts[0])
                if t > max_threads() or (off_grid and grid_sparsity is not None
                                         and not np.isclose(s, grid_sparsity)):
                    continue
                with threads(t) as nthr, torch.no_grad():
                    res = time_engines(model, x, nthr, onnx_model, kinds, warmup, repeats,
                                       rounds, torch_compile=torch_compile)
                for engine, st in res.items():
                    rows.append({"model": name, "weight_sparsity": ws, "target_sparsity": s,
                                 "act_sparsity": asp, "batch": b, "threads": nthr,
                                 "kernel": engine, "median_ms": st["median_ms"],
                                 "p10_ms": st["p10_ms"], "p90_ms": st["p90_ms"],
                                 "speedup_vs_eager": st["speedup"],
                                 "speedup_vs_ort": st["speedup_vs_ort"],
                                 "max_abs_err": st["max_abs_err"], "n_samples": st["n"]})
                log(f"{name} w{ws:.0%} s{s:.0%} batch={b} threads={nthr}: " + ", ".join(
                    f"{k} {v['median_ms']:.1f} ms" for k, v in res.items()))
    df = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir / "models.csv", df, {
        "kind": "synthetic_model_latency", "models": list(models), "size": size,
        "sparsities": list(sparsities), "weight_sparsities": list(weight_sparsities),
        "batch_sizes": list(batch_sizes), "thread_counts": list(thread_counts),
        "runner_names": RUNNER_NAMES, "torch_compile": torch_compile,
        "grid_sparsity": grid_sparsity, "warmup": warmup,
        "repeats": repeats, "rounds": rounds,
        "sparsity_method": "per-channel BatchNorm bias shift to the target quantile of each "
                           "ReLU input on 4 N(0,1) calibration images (set_input_sparsity)",
        "weight_pruning": "block units of 16 output x 1 input channel, per layer, "
                          "all convs but the first"})
    cross = model_crossover(df)
    write_csv(out_dir / "models_crossover.csv", cross)
    return {"models": df, "crossover": cross}


def model_crossover(df: pd.DataFrame, peer: str = "onnxruntime") -> pd.DataFrame:
    """Per model, weight sparsity, batch, threads and sparse kernel: the lowest swept input
    sparsity from which the kernel is faster than ``peer`` end to end at every higher
    swept sparsity (NaN: never; linear interpolation of the speedup between grid points)."""
    rows = []
    keys = ["model", "weight_sparsity", "batch", "threads", "kernel"]
    sparse = df[df.kernel.isin(["act_sparse", "dual_sparse"])]
    for key, g in sparse.groupby(keys):
        g = g.sort_values("act_sparsity")
        x, y = g.act_sparsity.to_numpy(), g.speedup_vs_ort.to_numpy()
        cross = np.nan
        if y[-1] > 1:
            i = len(y) - 1
            while i > 0 and y[i - 1] > 1:
                i -= 1
            cross = x[0] if i == 0 else x[i - 1] + (1 - y[i - 1]) * (x[i] - x[i - 1]) / (
                y[i] - y[i - 1])
        rows.append(dict(zip(keys, key, strict=True)) | {
            "crossover_sparsity_vs_" + peer: cross,
            "speedup_at_max_sparsity": y[-1], "max_sparsity": x[-1]})
    return pd.DataFrame(rows)
