"""Per-layer and end-to-end latency of a (trained, pruned) model on real inputs.

:func:`measure_model_latency` times the whole model with every engine of
:func:`dstcore.measure.engines.time_engines`, and every Conv2d / Linear on the exact input it
sees in the dense model with every CPU kernel, dense torch and the layer exported alone to
ONNX Runtime, with the ideal speedup (dense / effective multiplications).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from dstcore.kernels import prepare
from dstcore.kernels.cpu import Kernel
from dstcore.measure.engines import max_abs_err, time_engines
from dstcore.measure.gpu_latency import gpu_name, gpu_wanted, time_gpu_engines
from dstcore.measure.sidecar import write_results
from dstcore.measure.synthetic import SPARSE_KINDS, layer_macs, zero_fraction
from dstcore.measure.threads import thread_counts_used, threads
from dstcore.measure.timing import time_interleaved
from dstcore.sparsity.activations import register_hooks, weighted_layers


def layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Input of every Conv2d / Linear of ``model`` on batch ``x`` (first call of each layer)."""
    got: dict[str, Tensor] = {}
    with register_hooks(weighted_layers(model),
                        lambda name, _m, a: got.setdefault(name, a.detach().clone())), \
            torch.no_grad():
        model(x)
    return got


def _more_batches(inputs: Tensor, b: int) -> list[Tensor]:
    """The batches of ``b`` after the first that ``inputs`` holds in full (model timings
    cycle through them all)."""
    return [inputs[i * b:(i + 1) * b].contiguous() for i in range(1, inputs.shape[0] // b)]


def _batch_of(inputs: Tensor, b: int) -> Tensor:
    if inputs.shape[0] >= b:
        return inputs[:b].contiguous()
    reps = -(-b // inputs.shape[0])
    return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:b].contiguous()


def measure_model_latency(model: nn.Module, inputs: Tensor, out_csv: str | Path, *,
                          kinds: Sequence[str] = SPARSE_KINDS,
                          batch_sizes: Sequence[int] = (1, 8),
                          thread_counts: Sequence[int | None] = (1, None),
                          include_ort: bool = True,
                          runner_kinds: Sequence[str] = ("dense", "act_sparse", "dual_sparse"),
                          per_layer: bool = True, warmup: int = 3, repeats: int = 20,
                          rounds: int = 4, model_name: str = "model",
                          torch_compile: bool = False, gpu: str = "off",
                          gpu_batch_sizes: Sequence[int] = (1, 256),
                          gpu_compile_mode: str = "max-autotune-no-cudagraphs",
                          log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Per-layer and end-to-end latency of ``model`` for every kernel and ONNX Runtime.

    ``model``: trained nn.Module (pruned weights carry real zeros), run in eval mode on CPU.
    ``inputs``: a batch of real inputs [M, ...]; the first b are used for batch size b
    (repeated when M < b). For each batch size and thread count (None = all threads):

    - scope='model': the engines of :func:`time_engines`, each call on the next of the
      M // b batches of ``inputs`` in turn (torch eager as kernel 'dense',
      ONNX Runtime, the compiled runner's kinds, with ``torch_compile`` also
      ``torch.compile`` as kernel 'torch_compile', compiled per batch size and thread count);
      ``max_abs_err`` vs torch eager;
    - scope='layer': every Conv2d/Linear on the exact input it sees in the dense model,
      each kernel (also the first layer), dense torch and the layer exported alone to ORT;
      ``compute_median_ms`` excludes per-call input compression;
    - with ``gpu`` ``auto`` and CUDA available, for each of ``gpu_batch_sizes``,
      scope='model' rows of every engine of
      :func:`dstcore.measure.gpu_latency.time_gpu_engines` (``device`` = the GPU's name,
      ``threads`` 0, ``speedup`` over ``cuda_eager``, no ONNX Runtime peer).

    ``ideal_speedup`` = dense multiplications / multiplications with weight != 0 and input
    != 0 (model rows: summed over layers). Writes ``out_csv`` (+ ``.meta.json``) atomically.
    """
    log = log or (lambda s: None)
    model = model.eval().cpu()
    inputs = inputs.detach().float().cpu()
    layer_mods = dict(weighted_layers(model))
    layer_kernels = {n: {k: prepare(k, m) for k in ("dense", *kinds)}
                     for n, m in layer_mods.items()} if per_layer else {}
    onnx_model, onnx_layers = _onnx_exports(model, inputs, layer_mods, include_ort, per_layer)
    reps = (warmup, repeats, rounds)
    rows: list[dict[str, Any]] = []
    for b in batch_sizes:
        x = _batch_of(inputs, b)
        xin = layer_inputs(model, x)
        macs = {n: layer_macs(m, xin[n], m.weight.detach()) for n, m in layer_mods.items()}
        for tc in thread_counts:
            with threads(tc) as nthr, torch.no_grad():
                res = time_engines(model, x, nthr, onnx_model, runner_kinds, *reps,
                                   torch_compile=torch_compile, more=_more_batches(inputs, b))
                rows += _engine_rows(model_name, res, b, nthr, macs, tuple(x.shape))
                log(f"{model_name}: model batch={b} threads={nthr} done")
                if per_layer:
                    for n, m in layer_mods.items():
                        rows += _time_layer(model_name, n, m, xin[n], layer_kernels[n],
                                            onnx_layers.get(n), nthr, b, macs[n], *reps)
                    log(f"{model_name}: layers batch={b} threads={nthr} done")
    for b in gpu_batch_sizes if gpu_wanted(gpu) else ():
        x = _batch_of(inputs, b)
        xin = layer_inputs(model, x)
        macs = {n: layer_macs(m, xin[n], m.weight.detach()) for n, m in layer_mods.items()}
        rows += _gpu_rows(model_name, model, [x, *_more_batches(inputs, b)], macs,
                          gpu_compile_mode, reps)
        log(f"{model_name}: GPU batch={b} done")
    df = pd.DataFrame(rows)
    write_results(out_csv, df, {
        "kind": "model_latency", "model": model_name, "kinds": list(kinds),
        "batch_sizes": list(batch_sizes), "thread_counts": thread_counts_used(thread_counts),
        "include_ort": include_ort, "runner_kinds": list(runner_kinds),
        "torch_compile": torch_compile, "warmup": warmup, "repeats": repeats,
        "rounds": rounds, "gpu": gpu_name(torch.device("cuda")) if gpu_wanted(gpu) else None,
        "gpu_batch_sizes": list(gpu_batch_sizes) if gpu_wanted(gpu) else [],
        "gpu_compile_mode": gpu_compile_mode if gpu_wanted(gpu) else None})
    return df


def _gpu_rows(model_name: str, model: nn.Module, batches: Sequence[Tensor],
              macs: Mapping[str, tuple[int, int]], compile_mode: str,
              reps: tuple[int, int, int]) -> list[dict[str, Any]]:
    """scope='model' rows of every GPU engine on ``batches`` (one shape)."""
    device = torch.device("cuda")
    res = time_gpu_engines(model, batches, device, compile_mode=compile_mode, warmup=reps[0],
                           repeats=reps[1], rounds=reps[2])
    d_all, e_all = sum(v[0] for v in macs.values()), sum(v[1] for v in macs.values())
    name, b, shape = gpu_name(device), batches[0].shape[0], tuple(batches[0].shape)
    return [_model_row(model_name, "model", model_name, "model", k, b, 0, st,
                       res["cuda_eager"]["median_ms"], np.nan, d_all, e_all, st["max_abs_err"],
                       np.nan, np.nan, shape, device=name) for k, st in res.items()]


def _onnx_exports(model: nn.Module, inputs: Tensor, layer_mods: Mapping[str, nn.Module],
                  include_ort: bool, per_layer: bool) -> tuple[bytes | None, dict[str, bytes]]:
    """The model exported to ONNX (None without ORT) and, with ``per_layer``, every layer
    exported alone on the input it sees at batch 1."""
    from dstcore.kernels.onnxrt import export_onnx

    onnx_model = export_onnx(model, _batch_of(inputs, 1)) if include_ort else None
    onnx_layers: dict[str, bytes] = {}
    if include_ort and per_layer:
        x1 = layer_inputs(model, _batch_of(inputs, 1))
        onnx_layers = {n: export_onnx(m, x1[n]) for n, m in layer_mods.items()}
    return onnx_model, onnx_layers


def _engine_rows(model_name: str, res: Mapping[str, Mapping[str, float]], b: int, nthr: int,
                 macs: Mapping[str, tuple[int, int]],
                 shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """scope='model' rows of :func:`time_engines`' results (multiplications summed over layers)."""
    d_all = sum(v[0] for v in macs.values())
    e_all = sum(v[1] for v in macs.values())
    return [_model_row(model_name, "model", model_name, "model", k, b, nthr, st,
                       res["dense"]["median_ms"], np.nan, d_all, e_all, st["max_abs_err"],
                       np.nan, np.nan, shape) for k, st in res.items()]


def _time_layer(model_name: str, name: str, mod: nn.Module, x: Tensor,
                kerns: Mapping[str, Kernel], onnx_bytes: bytes | None, nthr: int, b: int,
                macs: tuple[int, int], warmup: int, repeats: int,
                rounds: int) -> list[dict[str, Any]]:
    from dstcore.kernels.onnxrt import OrtRunner

    ltype = "conv2d" if isinstance(mod, nn.Conv2d) else "linear"
    ref = kerns["dense"](x)
    fns: dict[str, Callable[[], Any]] = {}
    errs: dict[str, float] = {}
    for k, kern in kerns.items():
        fns[k] = (lambda kern=kern: kern(x))
        errs[k] = max_abs_err(kern(x), ref)
        if k in ("act_sparse", "dual_sparse"):
            prep = kern.prepare_input(x)
            fns[k + ":compute"] = (lambda kern=kern, p=prep: kern.compute(p))
    if onnx_bytes is not None:
        ort_run = OrtRunner(onnx_bytes, threads=nthr, spinning=False)
        fns["onnxruntime"] = lambda: ort_run(x)
        errs["onnxruntime"] = max_abs_err(ort_run(x), ref)
    res = time_interleaved(fns, warmup, repeats, rounds, reference="dense")
    wsp = zero_fraction(mod.weight.detach())
    asp = zero_fraction(x)
    rows = []
    for k, st in res.items():
        if k.endswith(":compute"):
            continue
        comp = res.get(k + ":compute", {})
        rows.append(_model_row(model_name, "layer", name, ltype, k, b, nthr, st,
                               res["dense"]["median_ms"], comp.get("median_ms", np.nan),
                               macs[0], macs[1], errs[k], asp, wsp, tuple(x.shape)))
    return rows


def _model_row(model_name: str, scope: str, layer: str, ltype: str, kernel: str, batch: int,
               nthr: int, st: Mapping[str, float], dense_ms: float, compute_ms: float,
               dense_macs: int, eff_macs: int, err: float, asp: float, wsp: float,
               shape: tuple[int, ...], device: str = "cpu") -> dict[str, Any]:
    return {"model": model_name, "scope": scope, "layer": layer, "layer_type": ltype,
            "kernel": kernel, "batch": batch, "threads": nthr, "device": device,
            "median_ms": st["median_ms"], "p10_ms": st["p10_ms"], "p90_ms": st["p90_ms"],
            "mean_ms": st["mean_ms"], "std_ms": st["std_ms"], "compute_median_ms": compute_ms,
            "dense_median_ms": dense_ms, "speedup": st.get("speedup", np.nan),
            "speedup_vs_ort": st.get("speedup_vs_ort", np.nan),
            "ideal_speedup": dense_macs / eff_macs if eff_macs else np.inf,
            "dense_macs": dense_macs, "effective_macs": eff_macs, "act_sparsity": asp,
            "weight_sparsity": wsp, "max_abs_err": err, "input_shape": "x".join(map(str, shape)),
            "n_samples": st["n"]}
