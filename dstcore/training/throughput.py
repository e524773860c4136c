"""Training throughput: images per second, GFLOP/s and the time spent waiting for data, per
model and phase, through the pipeline's own training step (:func:`train_one_epoch`).

A benchmark, not a test (``dst bench-train``, ``make bench-train``, ``make bench-gpu``). Each
cell trains a fresh model on random images of the model's input shape for ``warmup_steps``
untimed steps, then for ``steps`` timed ones, and reports the median of ``rounds`` such
epochs. The phases: ``plain`` (cross-entropy only), one per activation regulariser (its
penalty hooks and gradient, at a small λ) and ``masked`` (90% of the weights pruned, masks
fixed, as stages 2 and 3 train). The data comes either held in memory, on the training
device, as MNIST-shaped data does (``resident``), or through the image-folder path: uint8
HWC images decoded and augmented by torchvision's transforms in DataLoader workers
(``loader``, as CIFAR is read). The time waiting for data is the time spent in the loader's
``next()``; GFLOP/s is ``torch.utils.flop_counter``'s count of one training step (forward and
backward) over the step's time.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dstcore import DstError
from dstcore.data.datasets import CifarImages, TensorImages, get_spec, image_transforms
from dstcore.data.loaders import TrainLoader
from dstcore.measure.gpu_latency import gpu_name
from dstcore.models import build_model
from dstcore.sparsity.activations import activation_layers
from dstcore.sparsity.pruning import prune_weights
from dstcore.sparsity.regularizers import ActivationPenalty, regularizers
from dstcore.training.config import RunConfig
from dstcore.training.loop import train_one_epoch
from dstcore.training.pooling import fast_pools
from dstcore.training.runtime import (
    autocast,
    check_precision,
    configure_runtime,
    make_optimizer,
    memory_format,
    resolve_device,
    resolve_precision,
)

DATA_MODES = ("resident", "loader")
BENCH_LAM = 1e-4  # λ of the regularised phases: the penalty's cost does not depend on it


@dataclass(frozen=True)
class BenchCell:
    """One measurement: a model at an input shape and batch size, in one phase."""

    model: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    batch_size: int
    phase: str  # plain, a regulariser's name, or masked


def phases() -> tuple[str, ...]:
    """plain, every registered activation regulariser, masked."""
    return ("plain", *regularizers(), "masked")


class TimedBatches:
    """Iterates ``batches``, adding the seconds spent in each ``next()`` to ``waited``."""

    def __init__(self, batches: Iterable) -> None:
        self.batches, self.waited = batches, 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t0
            yield item


def bench_data(shape: tuple[int, int, int], images: int, mode: str, device: torch.device,
               seed: int = 0) -> TensorImages | CifarImages:
    """``images`` random uint8 images of ``shape``, held in memory (on ``device``) for
    ``resident``, or decoded from HWC arrays by the CIFAR transforms (crop, flip,
    normalise) for ``loader``."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, *shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (images,), generator=g)
    if mode == "resident":
        return TensorImages(pixels, labels, (0.5,) * shape[0], (0.25,) * shape[0]).to(device)
    if shape[0] != 3:
        raise DstError(f"--data loader decodes RGB images: shape {shape} has {shape[0]} "
                       f"channel(s)")
    hwc = pixels.permute(0, 2, 3, 1).contiguous().numpy()
    return CifarImages(hwc, labels.tolist(), image_transforms(get_spec("cifar10"), True))


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one training step (forward, cross-entropy, backward) on batch ``x``."""
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _setup(cell: BenchCell, device: torch.device, cfg: RunConfig):
    """A fresh model (masked for ``masked``), its optimiser and the penalty of the phase."""
    torch.manual_seed(0)
    model = build_model(cell.model, cell.input_shape, 10)
    if cell.phase == "masked":
        prune_weights(model, rate=0.9)
    model.to(device, memory_format=memory_format(cfg.train.memory_format, device))
    penalty = None
    if cell.phase not in ("plain", "masked"):
        penalty = ActivationPenalty(activation_layers(model, cell.input_shape), cell.phase,
                                    beta=1.0)
    return model, make_optimizer(model, cfg), penalty


def measure_cell(cell: BenchCell, cfg: RunConfig, *, steps: int, warmup_steps: int,
                 rounds: int, data: str, workers: int, compiled: bool = False) -> dict:
    """Throughput of one cell with the device, precision and layout of ``cfg.train``;
    ``compiled``: the model under ``torch.compile`` (default mode; compiled in the warm-up,
    whose seconds are ``warmup_s``)."""
    device = resolve_device(cfg.train.device)
    layout = memory_format(cfg.train.memory_format, device)
    model, optimizer, penalty = _setup(cell, device, cfg)
    n = cell.batch_size
    dataset = bench_data(cell.input_shape, n * max(steps, warmup_steps, 1), data, device)
    loader = TrainLoader(dataset, n, workers, pin_memory=device.type == "cuda")
    x0, y0 = next(iter(loader.epoch(0)))
    x0 = x0.to(device, memory_format=layout)
    with autocast(device, cfg.train.precision):
        flops = step_flops(model, x0, y0.to(device))
    if compiled:
        torch._dynamo.reset()
    run_model = torch.compile(model) if compiled else model

    def epoch(seed: int, count: int) -> tuple[float, float]:
        batches = TimedBatches(_Steps(loader.epoch(seed), count))
        t0 = time.perf_counter()
        with penalty if penalty is not None else contextlib.nullcontext():
            train_one_epoch(run_model, batches, optimizer, device, penalty, BENCH_LAM, 0.0,
                            "bench", precision=cfg.train.precision, layout=layout)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, batches.waited

    with fast_pools(model, enabled=not compiled):  # as runs train
        warmup_s = epoch(0, warmup_steps)[0] if warmup_steps else 0.0
        timed = [epoch(r + 1, steps) for r in range(max(rounds, 1))]
    seconds = statistics.median(t for t, _ in timed)
    waited = statistics.median(w / t for t, w in timed)
    return {"model": cell.model, "input_shape": "x".join(map(str, cell.input_shape)),
            "batch": n, "phase": cell.phase, "device": gpu_name(device),
            "precision": cfg.train.precision, "memory_format": str(layout).split(".")[-1],
            "data": data, "workers": workers if data == "loader" else 0,
            "compiled": compiled, "warmup_s": warmup_s, "steps": steps,
            "rounds": len(timed), "images_per_s": n * steps / seconds,
            "step_ms": 1e3 * seconds / steps, "data_wait_fraction": waited,
            "gflop_per_step": flops / 1e9, "gflops": flops * steps / seconds / 1e9}


class _Steps:
    """The first ``count`` batches of ``batches``, read lazily (so waiting for data stays
    inside the timed loop), iterating ``batches`` again when one pass holds fewer."""

    def __init__(self, batches: Iterable, count: int) -> None:
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        given = 0
        while given < self.count:
            before = given
            for item in self.batches:
                yield item
                given += 1
                if given == self.count:
                    return
            if given == before:
                raise DstError("the benchmark's data gave no batch")


def run_bench(cells: Sequence[BenchCell], out_csv: str | Path | None, *, device: str = "auto",
              precision: str = "fp32", layout: str = "auto", threads: int = 0,
              deterministic: bool = True, steps: int = 20, warmup_steps: int = 3,
              rounds: int = 3, data: str = "resident", workers: int = 4,
              compiled: bool = False,
              log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every cell's throughput (:func:`measure_cell`) as a table, written to ``out_csv``
    (with a ``.meta.json`` of the machine) when given; ``vs_plain`` is a cell's step time
    over the plain phase's of the same model and batch. The run config's keys (device,
    precision, layout, threads, determinism) mean what they mean for training; ``compiled``
    trains the model under ``torch.compile``."""
    from dstcore.measure.sidecar import write_results
    from dstcore.training.config import from_dict, validate

    if data not in DATA_MODES:
        raise DstError(f"--data: {data!r} is not allowed; expected one of "
                       f"{', '.join(DATA_MODES)}")
    cfg = validate(from_dict({"train": {"device": device, "precision": precision,
                                        "memory_format": layout, "threads": threads,
                                        "deterministic": deterministic}}))
    where = resolve_device(device)
    cfg.train.precision = precision = resolve_precision(precision, where)  # as a run records it
    check_precision(precision, where)
    configure_runtime(threads, deterministic, where, precision)
    rows = []
    for cell in cells:
        rows.append(measure_cell(cell, cfg, steps=steps, warmup_steps=warmup_steps,
                                 rounds=rounds, data=data, workers=workers, compiled=compiled))
        if log:
            r = rows[-1]
            log(f"{cell.model} {cell.phase} batch {cell.batch_size}: {r['images_per_s']:.0f} "
                f"images/s, {r['gflops']:.1f} GFLOP/s, data wait {r['data_wait_fraction']:.1%}")
    table = pd.DataFrame(rows)
    plain = table[table.phase == "plain"].set_index(["model", "batch"]).step_ms
    table["vs_plain"] = [r.step_ms / plain.get((r.model, r.batch), np.nan)
                         for r in table.itertuples()]
    if out_csv is not None:
        write_results(out_csv, table, {"kind": "training_throughput", "threads": threads,
                                       "deterministic": deterministic,
                                       "torch_threads": torch.get_num_threads(),
                                       "gpu": gpu_name(where)})
    return table
