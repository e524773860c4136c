"""Latency measurement of the sparse kernels: timing helpers, synthetic sweep, per-model runs.

Entry points (for the CLI):

- :func:`run_synthetic_sweep` -- layers shaped like LeNet5's conv2 and ResNet18's 3x3 convs,
  activation sparsity x weight sparsity grid, every CPU kernel vs dense, batch 1 and 8,
  1 thread and all threads; writes ``latency_synthetic.csv`` and ``crossover_synthetic.csv``.
- :func:`measure_model_latency` -- per-layer and end-to-end latency of a (trained, pruned)
  model on real inputs for every kernel and ONNX Runtime (optionally ``torch.compile`` end
  to end), with the ideal speedup.

Timing: ``time.perf_counter`` around single calls, warm-up first, median and p10/p90 reported.
Kernels that are compared are timed *interleaved* (round-robin, several rounds) and a speedup
is the median over rounds of (dense round median / kernel round median), which cancels slow
drifts of the machine (frequency, other processes). Threads are set with
``torch.set_num_threads`` and ``numba.set_num_threads``; ONNX Runtime sessions get the same
``intra_op_num_threads``. All files are written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore.core.io import write_with
from dstcore.kernels import CPU_KINDS, prepare
from dstcore.kernels.cpu import MAX_ACC_LANES, Kernel
from dstcore.measure.flops import conv2d_macs, linear_macs
from dstcore.sparsity.activations import register_hooks, weighted_layers

SPARSE_KINDS = tuple(k for k in CPU_KINDS if k != "dense")
ACT_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
WEIGHT_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)

# ----------------------------------------------------------------------------- threads


def max_threads() -> int:
    """Threads usable by this process (CPU affinity), capped by Numba's pool size."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def set_threads(n: int | None) -> int:
    """Set torch and Numba thread counts to ``n`` (None = all); returns the count used."""
    n = max_threads() if n is None else max(1, min(int(n), max_threads()))
    numba.set_num_threads(n)  # first: with Numba's OpenMP layer this also sets OpenMP's count
    torch.set_num_threads(n)
    return n


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Context manager: run with ``n`` threads, restore the previous counts afterwards."""
    old_n = numba.get_num_threads()  # first: launching Numba's OpenMP pool resets OpenMP's count
    old_t = torch.get_num_threads()
    try:
        yield set_threads(n)
    finally:
        numba.set_num_threads(min(old_n, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(old_t)


# ----------------------------------------------------------------------------- timing


def _stats(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "n": int(a.size)}


def time_callable(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, *,
                  sync: Callable[[], Any] | None = None) -> dict[str, float]:
    """Time ``fn()`` (ms): ``warmup`` untimed calls, then ``repeats`` timed single calls.

    Returns median_ms, p10_ms, p90_ms, mean_ms, std_ms, min_ms, n. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before starting and before stopping each clock.
    """
    for _ in range(warmup):
        fn()
    return _stats([_time_once(fn, sync) for _ in range(max(1, repeats))])


def _time_once(fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
    """Seconds for one call of ``fn``, with ``sync()`` before starting and stopping the clock."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def time_interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int = 3, repeats: int = 20,
                     rounds: int = 4, reference: str | None = None, *,
                     sync: Callable[[], Any] | None = None) -> dict[str, dict[str, float]]:
    """Time several callables round-robin: ``rounds`` rounds, each running every function
    ``ceil(repeats / rounds)`` times in a row. Per function: the :func:`time_callable`
    statistics over all samples, plus ``speedup`` = median over rounds of
    (reference round median / own round median) when ``reference`` is given."""
    per_round = max(1, -(-repeats // max(1, rounds)))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    round_med: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            rs = [_time_once(fn, sync) for _ in range(per_round)]
            samples[name].extend(rs)
            round_med[name].append(float(np.median(rs)))
    out = {}
    for name in fns:
        st = _stats(samples[name])
        if reference is not None:
            ratios = np.asarray(round_med[reference]) / np.asarray(round_med[name])
            st["speedup"] = float(np.median(ratios))
        out[name] = st
    return out


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


def _zero_fraction(t: Tensor) -> float:
    return float((t == 0).sum().item()) / max(1, t.numel())


def _macs(layer: nn.Module | Kernel, x: Tensor, weight: Tensor) -> tuple[int, int]:
    """(dense, effective) multiplications for the whole batch x (see :mod:`dstcore.measure.flops`)."""
    if weight.dim() == 4:
        p = layer.params if isinstance(layer, Kernel) else layer
        return conv2d_macs(x, weight, p.stride, p.padding, p.dilation, p.groups)
    return linear_macs(x, weight)


# ----------------------------------------------------------------------------- output


def environment_info() -> dict[str, Any]:
    """Device, CPU model, threads and library versions for the sidecar JSON."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel function launched yet
        layer = None
    return {
        "device": "cpu",
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_threads": max_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pandas": pd.__version__,
        "numba_threading_layer": layer,
        "accumulator_lanes": MAX_ACC_LANES,
        "cuda_available": torch.cuda.is_available(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``path`` as CSV atomically (temp file in the same directory)."""
    write_with(path, lambda p: df.to_csv(p, index=False))
    return Path(path)


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    write_with(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))
    return Path(path)


def meta_path(csv_path: str | Path) -> Path:
    """Sidecar JSON next to a CSV: ``x.csv`` -> ``x.meta.json``."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".meta.json")


# ----------------------------------------------------------------------------- synthetic sweep


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
    layers = tuple(layers or (QUICK_LAYERS if quick else SYNTH_LAYERS))
    acts = tuple(act_sparsities or ((0.0, 0.9) if quick else ACT_SPARSITIES))
    wss = tuple(weight_sparsities or ((0.0, 0.8) if quick else WEIGHT_SPARSITIES))
    batches = tuple(batches or ((1,) if quick else (1, 8)))
    tcounts = tuple(thread_counts or ((1,) if quick else (1, None)))
    warmup = warmup if warmup is not None else (1 if quick else 2)
    repeats = repeats if repeats is not None else (4 if quick else 12)
    rounds = rounds if rounds is not None else (2 if quick else 3)
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
    for layer in layers:
        w0 = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k, generator=gen)
        bias = torch.randn(layer.c_out, generator=gen) * 0.1
        conv_kw = dict(stride=layer.stride, padding=layer.padding)
        weights = {ws: prune_magnitude(w0, ws) for ws in wss}
        kernels = {(kind, ws): prepare(kind, weights[ws], bias, **conv_kw)
                   for kind in kinds for ws in wss}
        denses = {ws: prepare("dense", weights[ws], bias, **conv_kw) for ws in wss}
        for batch in batches:
            xs = {a: sparse_activation((batch, layer.c_in, layer.h, layer.w), a, gen)
                  for a in acts}
            for tc in tcounts:
                with threads(tc) as nthr:
                    for ws in wss:
                        rows += _sweep_cell(layer, batch, nthr, ws, acts, xs, denses[ws], kernels,
                                            weights[ws], kinds, warmup, repeats, rounds,
                                            compute_only)
                log(f"{layer.name} batch={batch} threads={nthr} done "
                    f"({time.perf_counter() - t_start:.0f}s)")
    df = pd.DataFrame(rows)
    cross = crossover_table(df)
    meta = environment_info() | {
        "load_average_at_start": load_start,
        "kind": "synthetic_sweep", "quick": quick, "seed": seed, "warmup": warmup,
        "repeats": repeats, "rounds": rounds, "layers": [asdict(ly) for ly in layers],
        "act_sparsities": list(acts), "weight_sparsities": list(wss), "batches": list(batches),
        "thread_counts": [max_threads() if t is None else t for t in tcounts],
        "wall_s": round(time.perf_counter() - t_start, 1)}
    write_csv_atomic(df, out_dir / "latency_synthetic.csv")
    write_csv_atomic(cross, out_dir / "crossover_synthetic.csv")
    write_json_atomic(meta, meta_path(out_dir / "latency_synthetic.csv"))
    return {"latency": df, "crossover": cross}


def _sweep_cell(layer: LayerShape, batch: int, nthr: int, ws: float, acts: Sequence[float],
                xs: Mapping[float, Tensor], dense: Kernel, kernels: Mapping, weight: Tensor,
                kinds: Sequence[str], warmup: int, repeats: int, rounds: int,
                compute_only: bool) -> list[dict[str, Any]]:
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
    rows = []
    dense_ms = res["dense"]["median_ms"]
    macs: dict[float, tuple[int, int]] = {}
    for name, (kind, a, part) in meta.items():
        if part != "total":
            continue
        if a not in macs:
            macs[a] = _macs(dense, xs[a], weight)
        st = res[name]
        comp = res.get(name + ":compute", {})
        d, e = macs[a]
        rows.append({
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
            "n_samples": st["n"]})
    return rows


# ----------------------------------------------------------------------------- per model


#: runner kind -> kernel name in the latency tables (the runner's dense kind is not torch's)
RUNNER_NAMES = {"dense": "runner_dense", "act_sparse": "act_sparse",
                "dual_sparse": "dual_sparse"}


def time_engines(model: nn.Module, x: Tensor, nthr: int, onnx_model: bytes | None,
                 runner_kinds: Sequence[str], warmup: int = 3, repeats: int = 20,
                 rounds: int = 4, *, torch_compile: bool = False,
                 more: Sequence[Tensor] = ()) -> dict[str, dict[str, float]]:
    """End-to-end latency of one model on batch ``x`` (each call takes the next of ``x``,
    ``*more``, cyclically: every engine sees the same sequence of batches, so a sparse
    engine's time is not that of one easy or hard input) with ``nthr`` threads, every engine
    timed interleaved in this process under ``torch.no_grad``: torch eager ('dense'), ONNX
    Runtime ('onnxruntime', when ``onnx_model`` is given; no spinning),
    :func:`dstcore.kernels.compile_model` of each of ``runner_kinds`` (named by
    ``RUNNER_NAMES``) and, with ``torch_compile``, ``torch.compile(model, dynamic=False)``
    ('torch_compile', see :func:`compile_torch`; left out with a warning when it cannot
    compile). Per engine: the statistics of :func:`time_interleaved` with ``speedup`` over
    torch eager, ``speedup_vs_ort`` (ratio of medians; NaN without ORT) and ``max_abs_err``
    against torch eager's output."""
    from dstcore.kernels import compile_model
    from dstcore.kernels.onnxrt import OrtRunner

    batches = [x, *more]

    def cycling(run: Callable[[Tensor], Any]) -> Callable[[], Any]:
        it = itertools.cycle(batches)
        return lambda: run(next(it))

    with torch.no_grad():
        ref = model(x)
        fns: dict[str, Callable[[], Any]] = {"dense": cycling(model)}
        errs = {"dense": 0.0}
        if onnx_model is not None:
            ort_run = OrtRunner(onnx_model, threads=nthr, spinning=False)
            fns["onnxruntime"] = cycling(ort_run)
            errs["onnxruntime"] = _max_err(ort_run(x), ref)
        for kind in runner_kinds:
            compiled = compile_model(model, kind, threads=nthr)
            errs[RUNNER_NAMES[kind]] = _max_err(compiled(x), ref)
            fns[RUNNER_NAMES[kind]] = cycling(compiled)
        if torch_compile:
            got = compile_torch(model, x)
            if got is not None:
                tc_model, tc_out = got
                errs["torch_compile"] = _max_err(tc_out, ref)
                fns["torch_compile"] = cycling(tc_model)
        res = time_interleaved(fns, warmup, repeats, rounds, reference="dense")
    ort_ms = res["onnxruntime"]["median_ms"] if "onnxruntime" in res else np.nan
    for name, st in res.items():
        st["speedup_vs_ort"] = ort_ms / st["median_ms"]
        st["max_abs_err"] = errs[name]
    return res


def compile_torch(model: nn.Module,
                  x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor] | None:
    """``torch.compile(model, dynamic=False)`` (default mode, inductor), compiled for the
    shape of ``x`` and the current thread count by one call under ``torch.no_grad``.

    Returns (compiled model, its output on ``x``), or None with a one-line warning naming
    the reason when compilation fails (no C++ compiler, an inductor error, ...; once per
    reason and process). Dynamo's caches are reset first: inductor's CPU code bakes in
    ``torch.get_num_threads()`` but Dynamo does not guard on it, so a graph compiled at
    another thread count (or a fallback to eager after too many recompiles) must not be
    reused. Inductor's on-disk cache (keyed by graph, shapes and thread count) keeps
    repeated compiles of a shape cheap.
    """
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad():
            out = compiled(x)
    except Exception as err:  # noqa: BLE001 - any compile failure leaves the engine out
        torch._dynamo.reset()
        reason = _root_reason(err)
        if reason not in _COMPILE_FAILURES:  # once per reason: not again for every cell
            _COMPILE_FAILURES.add(reason)
            warnings.warn(f"torch_compile left out of the latency tables: {reason}",
                          RuntimeWarning, stacklevel=2)
        return None
    return compiled, out


#: reasons :func:`compile_torch` already warned about (Python's own once-per-location display
#: repeated the same warning for every cell when tried here)
_COMPILE_FAILURES: set[str] = set()


def _root_reason(err: BaseException) -> str:
    """'Type: first line' of the innermost exception (inductor wraps the real error)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "inner_exception", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
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


def _max_err(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max().item()) if a.numel() else 0.0


def measure_model_latency(model: nn.Module, inputs: Tensor, out_csv: str | Path, *,
                          kinds: Sequence[str] = SPARSE_KINDS,
                          batch_sizes: Sequence[int] = (1, 8),
                          thread_counts: Sequence[int | None] = (1, None),
                          include_ort: bool = True,
                          runner_kinds: Sequence[str] = ("dense", "act_sparse", "dual_sparse"),
                          per_layer: bool = True, warmup: int = 3, repeats: int = 20,
                          rounds: int = 4, model_name: str = "model",
                          torch_compile: bool = False,
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
      ``compute_median_ms`` excludes per-call input compression.

    ``ideal_speedup`` = dense multiplications / multiplications with weight != 0 and input
    != 0 (model rows: summed over layers). Writes ``out_csv`` (+ ``.meta.json``) atomically.
    """
    from dstcore.kernels.onnxrt import export_onnx

    log = log or (lambda s: None)
    model = model.eval().cpu()
    inputs = inputs.detach().float().cpu()
    layer_mods = dict(weighted_layers(model))
    layer_kernels = {n: {k: prepare(k, m) for k in ("dense", *kinds)}
                     for n, m in layer_mods.items()} if per_layer else {}
    onnx_model = export_onnx(model, _batch_of(inputs, 1)) if include_ort else None
    onnx_layers: dict[str, bytes] = {}
    if include_ort and per_layer:
        x1 = _layer_inputs(model, _batch_of(inputs, 1))
        onnx_layers = {n: export_onnx(m, x1[n]) for n, m in layer_mods.items()}
    rows: list[dict[str, Any]] = []
    for b in batch_sizes:
        x = _batch_of(inputs, b)
        xin = _layer_inputs(model, x)
        macs = {n: _macs(m, xin[n], m.weight.detach()) for n, m in layer_mods.items()}
        for tc in thread_counts:
            with threads(tc) as nthr, torch.no_grad():
                res = time_engines(model, x, nthr, onnx_model, runner_kinds, warmup,
                                   repeats, rounds, torch_compile=torch_compile,
                                   more=_more_batches(inputs, b))
                d_all = sum(v[0] for v in macs.values())
                e_all = sum(v[1] for v in macs.values())
                for k, st in res.items():
                    rows.append(_model_row(model_name, "model", model_name, "model", k, b, nthr,
                                           st, res["dense"]["median_ms"], np.nan, d_all, e_all,
                                           st["max_abs_err"], np.nan, np.nan, tuple(x.shape)))
                log(f"{model_name}: model batch={b} threads={nthr} done")
                if per_layer:
                    for n, m in layer_mods.items():
                        rows += _time_layer(model_name, n, m, xin[n], layer_kernels[n],
                                            onnx_layers.get(n), nthr, b, macs[n], warmup,
                                            repeats, rounds)
                    log(f"{model_name}: layers batch={b} threads={nthr} done")
    df = pd.DataFrame(rows)
    out_csv = Path(out_csv)
    write_csv_atomic(df, out_csv)
    write_json_atomic(environment_info() | {
        "kind": "model_latency", "model": model_name, "kinds": list(kinds),
        "batch_sizes": list(batch_sizes),
        "thread_counts": [max_threads() if t is None else t for t in thread_counts],
        "include_ort": include_ort, "runner_kinds": list(runner_kinds),
        "torch_compile": torch_compile, "warmup": warmup, "repeats": repeats,
        "rounds": rounds}, meta_path(out_csv))
    return df


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
        errs[k] = _max_err(kern(x), ref)
        if k in ("act_sparse", "dual_sparse"):
            prep = kern.prepare_input(x)
            fns[k + ":compute"] = (lambda kern=kern, p=prep: kern.compute(p))
    if onnx_bytes is not None:
        ort_run = OrtRunner(onnx_bytes, threads=nthr, spinning=False)
        fns["onnxruntime"] = lambda: ort_run(x)
        errs["onnxruntime"] = _max_err(ort_run(x), ref)
    res = time_interleaved(fns, warmup, repeats, rounds, reference="dense")
    wsp = _zero_fraction(mod.weight.detach())
    asp = _zero_fraction(x)
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
               shape: tuple[int, ...]) -> dict[str, Any]:
    return {"model": model_name, "scope": scope, "layer": layer, "layer_type": ltype,
            "kernel": kernel, "batch": batch, "threads": nthr, "device": "cpu",
            "median_ms": st["median_ms"], "p10_ms": st["p10_ms"], "p90_ms": st["p90_ms"],
            "mean_ms": st["mean_ms"], "std_ms": st["std_ms"], "compute_median_ms": compute_ms,
            "dense_median_ms": dense_ms, "speedup": st.get("speedup", np.nan),
            "speedup_vs_ort": st.get("speedup_vs_ort", np.nan),
            "ideal_speedup": dense_macs / eff_macs if eff_macs else np.inf,
            "dense_macs": dense_macs, "effective_macs": eff_macs, "act_sparsity": asp,
            "weight_sparsity": wsp, "max_abs_err": err, "input_shape": "x".join(map(str, shape)),
            "n_samples": st["n"]}


# ----------------------------------------------------------------------------- pipeline


def measure_experiment(runs_csv: str | Path, results_dir: str | Path, experiment: str,
                       seed: int, out_csv: str | Path, *, tolerance_pp: float = 0.5,
                       batch_sizes: Sequence[int] = (1, 16),
                       thread_counts: Sequence[int | None] = (1, None), warmup: int = 3,
                       repeats: int = 20, max_images: int = 64, torch_compile: bool = False,
                       log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Time the baseline, best TL1 and best dual sparse model of one experiment and seed.

    Models are chosen from the aggregated runs table by
    :func:`dstcore.analysis.aggregate.select_latency_runs`; inputs are the first ``max_images`` test
    images (so the activation sparsity is the model's own). Writes one tidy CSV with the
    columns of :func:`measure_model_latency` plus experiment, seed, role and run_dir, and a
    ``.meta.json`` sidecar with the machine, threads and library versions. ``torch_compile``
    adds ``torch.compile`` as the end-to-end engine 'torch_compile' (seconds of compilation
    per model, batch size and thread count).
    """
    import tempfile as _tempfile

    from dstcore.analysis.aggregate import select_latency_runs
    from dstcore.data.datasets import load_dataset, make_loader
    from dstcore.models.checkpoint import load_model

    runs = pd.read_csv(runs_csv)
    chosen = select_latency_runs(runs, experiment, seed, tolerance_pp)
    frames = []
    inputs = None
    with _tempfile.TemporaryDirectory() as tmp:
        for role, run_dir in chosen.items():
            model, meta = load_model(Path(results_dir) / run_dir / "model.pt")
            if inputs is None:
                d = meta["config"]["data"]
                bundle = load_dataset(d["dataset"], d["data_root"], d["cache_dir"], False,
                                      d["verify"], 1, d["test_subset"], d["subset_seed"])
                inputs = next(iter(make_loader(bundle.test, max_images, shuffle=False)))[0]
            if log:
                log(f"{experiment} seed {seed}: timing {role} ({run_dir})")
            df = measure_model_latency(model, inputs, Path(tmp) / f"{role}.csv",
                                       batch_sizes=batch_sizes, thread_counts=thread_counts,
                                       warmup=warmup, repeats=repeats, model_name=role,
                                       torch_compile=torch_compile, log=log)
            frames.append(df.assign(experiment=experiment, seed=seed, role=role,
                                    run_dir=run_dir))
    table = pd.concat(frames, ignore_index=True)
    write_csv_atomic(table, out_csv)
    write_json_atomic(environment_info() | {
        "kind": "experiment_latency", "experiment": experiment, "seed": seed,
        "runs": chosen, "tolerance_pp": tolerance_pp, "batch_sizes": list(batch_sizes),
        "thread_counts": [max_threads() if t is None else t for t in thread_counts],
        "warmup": warmup, "repeats": repeats, "max_images": max_images,
        "torch_compile": torch_compile}, meta_path(out_csv))
    return table
