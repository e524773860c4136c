"""Synthetic sparse layers and the kernel sweep over them.

Inputs are :func:`sparse_activation` (ReLU-like, an exact fraction of zeros), weights
:func:`prune_magnitude` of one random normal weight. :func:`run_synthetic_sweep` times every
CPU kernel against dense on layers shaped like LeNet5's conv2 and ResNet18's 3x3 convs over an
activation sparsity x weight sparsity grid, at batch 1 and 8, 1 thread and all threads; it
writes ``latency_synthetic.csv`` and ``crossover_synthetic.csv`` (:func:`crossover_table`).
:func:`zero_fraction` and :func:`layer_macs` are the counts the model timings share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore.core.io import write_csv
from dstcore.kernels import CPU_KINDS, prepare
from dstcore.kernels.cpu import Kernel
from dstcore.measure.flops import conv2d_macs, linear_macs
from dstcore.measure.sidecar import write_results
from dstcore.measure.threads import thread_counts_used, threads
from dstcore.measure.timing import time_interleaved

SPARSE_KINDS = tuple(k for k in CPU_KINDS if k != "dense")
ACT_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
WEIGHT_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)

# ----------------------------------------------------------------------------- data


def sparse_activation(shape: Sequence[int], sparsity: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """ReLU-like input: values in (0, 1] with exactly round(sparsity * numel) exact zeros at
    uniformly random positions."""
    x = 1.0 - torch.rand(*shape, generator=generator)  # (0, 1]: no accidental zeros
    nz = int(round(sparsity * x.numel()))
    if nz:
        idx = torch.randperm(x.numel(), generator=generator)[:nz]
        x.view(-1)[idx] = 0.0
    return x


def prune_magnitude(weight: Tensor, sparsity: float) -> Tensor:
    """Copy of ``weight`` with the round(sparsity * numel) smallest-|w| entries set to 0."""
    w = weight.detach().clone()
    k = int(round(sparsity * w.numel()))
    if k:
        w.view(-1)[torch.argsort(w.abs().view(-1), stable=True)[:k]] = 0.0
    return w


def zero_fraction(t: Tensor) -> float:
    """Fraction of exact zeros in ``t``."""
    return float((t == 0).sum().item()) / max(1, t.numel())


def layer_macs(layer: nn.Module | Kernel, x: Tensor, weight: Tensor) -> tuple[int, int]:
    """(dense, effective) multiplications for the whole batch x (see :mod:`dstcore.measure.flops`)."""
    if weight.dim() == 4:
        p = layer.params if isinstance(layer, Kernel) else layer
        return conv2d_macs(x, weight, p.stride, p.padding, p.dilation, p.groups)
    return linear_macs(x, weight)


@dataclass(frozen=True)
class LayerShape:
    """A synthetic conv layer: weight [c_out, c_in, k, k] on a [N, c_in, h, w] input."""

    name: str
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    stride: int = 1
    padding: int = 0


SYNTH_LAYERS = (
    LayerShape("lenet5_conv2", 6, 16, 14, 14, 5, 1, 0),
    LayerShape("resnet18_64x56", 64, 64, 56, 56, 3, 1, 1),
    LayerShape("resnet18_128x28", 128, 128, 28, 28, 3, 1, 1),
    LayerShape("resnet18_256x14", 256, 256, 14, 14, 3, 1, 1),
    LayerShape("resnet18_512x7", 512, 512, 7, 7, 3, 1, 1),
)
QUICK_LAYERS = (SYNTH_LAYERS[0], LayerShape("resnet18_64x14", 64, 64, 14, 14, 3, 1, 1))

# ----------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class _Grid:
    """What :func:`run_synthetic_sweep` measures, defaults resolved."""

    layers: tuple[LayerShape, ...]
    acts: tuple[float, ...]
    wss: tuple[float, ...]
    batches: tuple[int, ...]
    tcounts: tuple[int | None, ...]
    warmup: int
    repeats: int
    rounds: int


def _grid(quick: bool, layers, act_sparsities, weight_sparsities, batches, thread_counts,
          warmup, repeats, rounds) -> _Grid:
    """The sweep's grid: the values given, else the full (or with ``quick`` the tiny) one."""
    return _Grid(
        layers=tuple(layers or (QUICK_LAYERS if quick else SYNTH_LAYERS)),
        acts=tuple(act_sparsities or ((0.0, 0.9) if quick else ACT_SPARSITIES)),
        wss=tuple(weight_sparsities or ((0.0, 0.8) if quick else WEIGHT_SPARSITIES)),
        batches=tuple(batches or ((1,) if quick else (1, 8))),
        tcounts=tuple(thread_counts or ((1,) if quick else (1, None))),
        warmup=warmup if warmup is not None else (1 if quick else 2),
        repeats=repeats if repeats is not None else (4 if quick else 12),
        rounds=rounds if rounds is not None else (2 if quick else 3))


def _spin_up(seconds: float = 1.0) -> None:
    """Keep the CPU busy for a moment so clocks ramp up before the first measurement."""
    x, w = torch.rand(1, 64, 56, 56), torch.randn(64, 64, 3, 3)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        F.conv2d(x, w, padding=1)


def crossover_table(df: pd.DataFrame) -> pd.DataFrame:
    """Crossover sparsity per (layer, kernel, batch, threads): the smallest sparsity at which
    the kernel's speedup vs dense reaches 1, linearly interpolated between grid points.

    Along ``axis='act'`` (activation sparsity, one row per fixed weight sparsity) for
    act_sparse / dual_sparse, and ``axis='weight'`` (one row per fixed activation sparsity)
    for weight_sparse / dual_sparse. ``status``: 'crosses', 'always' (already >= 1 at the
    first grid point) or 'never' (crossover_sparsity NaN).
    """
    rows = []
    keys = ["layer", "kernel", "batch", "threads"]
    axes = {"act": ("act_sparsity", "weight_sparsity"), "weight": ("weight_sparsity",
                                                                     "act_sparsity")}
    use = {"act": ("act_sparse", "dual_sparse"), "weight": ("weight_sparse", "dual_sparse")}
    for axis, (var, fixed) in axes.items():
        sub = df[df["kernel"].isin(use[axis])]
        for key, grp in sub.groupby(keys + [fixed], sort=True):
            g = grp.groupby(var)["speedup"].median().sort_index()
            if len(g) < 2:
                continue
            s, v = g.index.to_numpy(float), g.to_numpy(float)
            cross, status = np.nan, "never"
            hit = np.nonzero(v >= 1.0)[0]
            if hit.size:
                i = int(hit[0])
                if i == 0:
                    cross, status = float(s[0]), "always"
                else:
                    t = (1.0 - v[i - 1]) / (v[i] - v[i - 1])
                    cross, status = float(s[i - 1] + t * (s[i] - s[i - 1])), "crosses"
            rows.append(dict(zip(keys + ["fixed_sparsity"], key, strict=True), axis=axis,
                             crossover_sparsity=cross, status=status,
                             max_speedup=float(v.max()), grid_min=float(s[0]),
                             grid_max=float(s[-1])))
    cols = keys + ["axis", "fixed_sparsity", "crossover_sparsity", "status", "max_speedup",
                   "grid_min", "grid_max"]
    return pd.DataFrame(rows, columns=cols)


def run_synthetic_sweep(out_dir: str | Path, quick: bool = False, *,
                        layers: Sequence[LayerShape] | None = None,
                        act_sparsities: Sequence[float] | None = None,
                        weight_sparsities: Sequence[float] | None = None,
                        batches: Sequence[int] | None = None,
                        thread_counts: Sequence[int | None] | None = None,
                        kinds: Sequence[str] = SPARSE_KINDS, seed: int = 0,
                        warmup: int | None = None, repeats: int | None = None,
                        rounds: int | None = None, compute_only: bool = True,
                        log: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """Latency of every kernel vs dense on synthetic layers; writes CSVs into ``out_dir``.

    For each layer, batch and thread count, and each weight sparsity, all kernels and all
    activation sparsities are timed interleaved with dense (weight_sparse once per weight
    sparsity: its speed does not depend on the input values). Inputs: :func:`sparse_activation`,
    weights: :func:`prune_magnitude` of one random normal weight. ``quick=True``: two small
    layers, 2x2 grid, batch 1, 1 thread, few repeats (a few seconds once the kernels are
    compiled) -- for tests. Returns {"latency": df, "crossover": df}; files
    ``latency_synthetic.csv``, ``crossover_synthetic.csv`` and ``latency_synthetic.meta.json``.
    """
    out_dir = Path(out_dir)
    grid = _grid(quick, layers, act_sparsities, weight_sparsities, batches, thread_counts,
                 warmup, repeats, rounds)
    log = log or (lambda s: None)
    for k in kinds:
        if k not in SPARSE_KINDS:
            raise ValueError(f"unknown CPU sparse kernel {k!r}")
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if not quick:
        _spin_up()
    for layer in grid.layers:
        rows += _sweep_layer(layer, grid, kinds, gen, compute_only, log, t_start)
    df = pd.DataFrame(rows)
    cross = crossover_table(df)
    write_results(out_dir / "latency_synthetic.csv", df, {
        "load_average_at_start": load_start,
        "kind": "synthetic_sweep", "quick": quick, "seed": seed, "warmup": grid.warmup,
        "repeats": grid.repeats, "rounds": grid.rounds,
        "layers": [asdict(ly) for ly in grid.layers], "act_sparsities": list(grid.acts),
        "weight_sparsities": list(grid.wss), "batches": list(grid.batches),
        "thread_counts": thread_counts_used(grid.tcounts),
        "wall_s": round(time.perf_counter() - t_start, 1)})
    write_csv(out_dir / "crossover_synthetic.csv", cross)
    return {"latency": df, "crossover": cross}


def _sweep_layer(layer: LayerShape, grid: _Grid, kinds: Sequence[str], gen: torch.Generator,
                 compute_only: bool, log: Callable[[str], None],
                 t_start: float) -> list[dict[str, Any]]:
    """Rows of one layer: one random weight pruned to every weight sparsity, inputs per batch
    and activation sparsity, every thread count."""
    w0 = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k, generator=gen)
    bias = torch.randn(layer.c_out, generator=gen) * 0.1
    conv_kw = dict(stride=layer.stride, padding=layer.padding)
    weights = {ws: prune_magnitude(w0, ws) for ws in grid.wss}
    kernels = {(kind, ws): prepare(kind, weights[ws], bias, **conv_kw)
               for kind in kinds for ws in grid.wss}
    denses = {ws: prepare("dense", weights[ws], bias, **conv_kw) for ws in grid.wss}
    rows: list[dict[str, Any]] = []
    for batch in grid.batches:
        xs = {a: sparse_activation((batch, layer.c_in, layer.h, layer.w), a, gen)
              for a in grid.acts}
        for tc in grid.tcounts:
            with threads(tc) as nthr:
                for ws in grid.wss:
                    rows += _sweep_cell(layer, batch, nthr, ws, grid.acts, xs, denses[ws],
                                        kernels, weights[ws], kinds, grid.warmup, grid.repeats,
                                        grid.rounds, compute_only)
            log(f"{layer.name} batch={batch} threads={nthr} done "
                f"({time.perf_counter() - t_start:.0f}s)")
    return rows


def _sweep_cell(layer: LayerShape, batch: int, nthr: int, ws: float, acts: Sequence[float],
                xs: Mapping[float, Tensor], dense: Kernel, kernels: Mapping, weight: Tensor,
                kinds: Sequence[str], warmup: int, repeats: int, rounds: int,
                compute_only: bool) -> list[dict[str, Any]]:
    """Every kernel at every activation sparsity (weight_sparse at the first only) timed
    interleaved with dense, at one weight sparsity, batch and thread count."""
    fns: dict[str, Callable[[], Any]] = {"dense": lambda: dense(xs[acts[0]])}
    meta: dict[str, tuple[str, float, str]] = {"dense": ("dense", acts[0], "total")}
    for kind in kinds:
        k = kernels[(kind, ws)]
        for a in (acts[:1] if kind == "weight_sparse" else acts):
            x = xs[a]
            name = f"{kind}@{a}"
            fns[name] = (lambda k=k, x=x: k(x))
            meta[name] = (kind, a, "total")
            if compute_only and kind != "weight_sparse":
                prep = k.prepare_input(x)
                fns[name + ":compute"] = (lambda k=k, p=prep: k.compute(p))
                meta[name + ":compute"] = (kind, a, "compute")
    res = time_interleaved(fns, warmup, repeats, rounds, reference="dense")
    macs: dict[float, tuple[int, int]] = {}
    rows = []
    for name, (kind, a, part) in meta.items():
        if part != "total":
            continue
        if a not in macs:
            macs[a] = layer_macs(dense, xs[a], weight)
        rows.append(_sweep_row(layer, batch, nthr, kind, a, ws, res[name],
                               res.get(name + ":compute", {}), res["dense"]["median_ms"],
                               macs[a]))
    return rows


def _sweep_row(layer: LayerShape, batch: int, nthr: int, kind: str, a: float, ws: float,
               st: Mapping[str, float], comp: Mapping[str, float], dense_ms: float,
               macs: tuple[int, int]) -> dict[str, Any]:
    d, e = macs
    return {
        "layer": layer.name, "c_in": layer.c_in, "c_out": layer.c_out, "h": layer.h,
        "w": layer.w, "kernel_size": layer.k, "stride": layer.stride,
        "padding": layer.padding, "batch": batch, "threads": nthr, "device": "cpu",
        "kernel": kind, "act_sparsity": a,
        "weight_sparsity": ws,
        "median_ms": st["median_ms"], "p10_ms": st["p10_ms"], "p90_ms": st["p90_ms"],
        "compute_median_ms": comp.get("median_ms", np.nan),
        "dense_median_ms": dense_ms, "speedup": st["speedup"],
        "compute_speedup": (comp["speedup"] if comp else np.nan),
        "ideal_speedup": d / e if e else np.inf, "dense_macs": d, "effective_macs": e,
        "n_samples": st["n"]}
