"""Latency helpers, synthetic sweep (quick) and per-model measurement produce sound files."""

from __future__ import annotations

import json
import time
import warnings

import numba
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dstcore.measure import engines
from dstcore.measure.engines import RUNNER_NAMES, time_engines
from dstcore.measure.model_latency import _more_batches, measure_model_latency
from dstcore.measure.sidecar import meta_path
from dstcore.measure.synthetic import (
    SPARSE_KINDS,
    crossover_table,
    layer_macs,
    prune_magnitude,
    run_synthetic_sweep,
    sparse_activation,
)
from dstcore.measure.threads import max_threads, threads
from dstcore.measure.timing import time_callable, time_interleaved


def test_time_callable_and_interleaved():
    st = time_callable(lambda: time.sleep(0.001), warmup=1, repeats=5)
    assert {"median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "n"} <= set(st)
    assert st["n"] == 5 and 0.9 <= st["median_ms"] < 50
    assert st["p10_ms"] <= st["median_ms"] <= st["p90_ms"]
    res = time_interleaved({"a": lambda: time.sleep(0.002), "b": lambda: time.sleep(0.0005)},
                             warmup=1, repeats=6, rounds=3, reference="a")
    assert res["a"]["speedup"] == 1.0 and res["b"]["speedup"] > 1.5
    assert res["a"]["n"] == 6


def test_threads_context_restores():
    numba.get_num_threads()  # launch Numba's pool first (it may reset OpenMP's thread count)
    before = (torch.get_num_threads(), numba.get_num_threads())
    with threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    with threads(None) as n:
        assert n == max_threads() == numba.get_num_threads()
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


@pytest.mark.parametrize("sp", [0.0, 0.37, 0.9, 1.0])
def test_sparse_activation_and_pruning_are_exact(sp):
    gen = torch.Generator().manual_seed(0)
    x = sparse_activation((2, 3, 7, 5), sp, gen)
    assert int((x == 0).sum()) == round(sp * x.numel())
    assert (x >= 0).all() and (x <= 1).all()
    w = torch.randn(8, 3, 3, 3, generator=gen)
    wp = prune_magnitude(w, sp)
    k = round(sp * w.numel())
    assert int((wp == 0).sum()) == k
    if 0 < k < w.numel():  # the survivors are the largest magnitudes
        assert wp[wp != 0].abs().min() >= w.abs().flatten().sort().values[k - 1]


def test_mac_counts_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        conv.weight.copy_(prune_magnitude(conv.weight, 0.5))
    x = sparse_activation((2, 4, 5, 6), 0.6, gen)
    dense, eff = layer_macs(conv, x, conv.weight.detach())
    # brute force over im2col columns, per group
    cols = F.unfold(x, 3, padding=1, stride=2)  # [N, C*9, L]
    wg = conv.weight.detach().view(2, 3, 2 * 9)
    brute = 0
    for g in range(2):
        xc = cols[:, g * 18:(g + 1) * 18, :] != 0  # [N, 18, L]
        wc = wg[g] != 0  # [3, 18]
        brute += int((wc[None, :, :, None] & xc[:, None]).sum())
    assert dense == 2 * 6 * cols.shape[-1] * 2 * 9 and eff == brute
    lin = nn.Linear(10, 4)
    xl = sparse_activation((3, 10), 0.5, gen)
    d, e = layer_macs(lin, xl, lin.weight.detach())
    assert d == 3 * 10 * 4
    assert e == int(((xl != 0).float() @ (lin.weight != 0).float().t()).sum())


def test_crossover_interpolation():
    df = pd.DataFrame({
        "layer": "l", "batch": 1, "threads": 1, "weight_sparsity": 0.0,
        "kernel": ["act_sparse"] * 3 + ["dual_sparse"] * 3,
        "act_sparsity": [0.0, 0.5, 0.9] * 2,
        "speedup": [0.5, 0.75, 2.75, 0.2, 0.3, 0.4]})
    cross = crossover_table(df)
    act = cross[(cross.kernel == "act_sparse") & (cross.axis == "act")].iloc[0]
    assert act.status == "crosses" and act.crossover_sparsity == pytest.approx(0.55)
    dual = cross[(cross.kernel == "dual_sparse") & (cross.axis == "act")].iloc[0]
    assert dual.status == "never" and np.isnan(dual.crossover_sparsity)


def test_quick_synthetic_sweep_writes_wellformed_csv(tmp_path):
    t0 = time.perf_counter()
    out = run_synthetic_sweep(tmp_path, quick=True)
    df = pd.read_csv(tmp_path / "latency_synthetic.csv")
    cross = pd.read_csv(tmp_path / "crossover_synthetic.csv")
    meta = json.loads((tmp_path / "latency_synthetic.meta.json").read_text())
    assert time.perf_counter() - t0 < 60  # a few seconds once compiled
    assert len(df) == len(out["latency"]) > 0
    for col in ("layer", "kernel", "batch", "threads", "act_sparsity", "weight_sparsity",
                "median_ms", "p10_ms", "p90_ms", "compute_median_ms", "dense_median_ms",
                "speedup", "ideal_speedup", "dense_macs", "effective_macs", "device"):
        assert col in df.columns, col
    assert set(df.kernel) == {"dense", *SPARSE_KINDS}
    assert (df.median_ms > 0).all() and df.speedup.notna().all()
    assert (df.p10_ms <= df.p90_ms).all() and (df.effective_macs <= df.dense_macs).all()
    act = df[df.kernel == "act_sparse"]
    assert act.compute_median_ms.notna().all()
    assert (df[df.kernel == "dense"].speedup == 1.0).all()
    assert {"axis", "crossover_sparsity", "status"} <= set(cross.columns)
    assert set(cross.status) <= {"crosses", "always", "never"}
    for key in ("cpu_model", "torch", "numba", "onnxruntime", "numpy", "thread_counts"):
        assert key in meta
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def test_measure_model_latency(tmp_path, monkeypatch):
    import dstcore.kernels.onnxrt as onnxrt

    spinning = []

    class RecordingOrtRunner(onnxrt.OrtRunner):
        def __init__(self, *args, **kwargs):
            spinning.append(kwargs.get("spinning", True))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxrt, "OrtRunner", RecordingOrtRunner)
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.conv2.weight.copy_(prune_magnitude(model.conv2.weight, 0.8))
    inputs = torch.rand(3, 1, 16, 16)
    csv = tmp_path / "sub" / "model_latency.csv"
    df = measure_model_latency(model, inputs, csv, batch_sizes=(1, 4), thread_counts=(1,),
                                 warmup=1, repeats=2, rounds=1, model_name="small")
    assert csv.exists() and meta_path(csv).exists()
    back = pd.read_csv(csv)
    assert len(back) == len(df)
    model_rows = back[back.scope == "model"]
    assert set(model_rows.kernel) == {"dense", "onnxruntime", *RUNNER_NAMES.values()}
    assert set(model_rows.batch) == {1, 4} and model_rows.speedup_vs_ort.notna().all()
    ort = model_rows[model_rows.kernel == "onnxruntime"]
    assert (ort.speedup_vs_ort == 1).all()
    layer_rows = back[back.scope == "layer"]
    assert set(layer_rows.layer) == {"conv1", "conv2", "fc"}
    assert set(layer_rows.kernel) == {"dense", "onnxruntime", *SPARSE_KINDS}
    assert (back.max_abs_err < 1e-4).all()
    assert (back.median_ms > 0).all() and back.speedup.notna().all()
    c2 = layer_rows[(layer_rows.layer == "conv2") & (layer_rows.kernel == "dense")].iloc[0]
    assert c2.weight_sparsity == pytest.approx(0.8, abs=0.01) and c2.ideal_speedup > 1
    assert layer_rows[layer_rows.kernel == "act_sparse"].compute_median_ms.notna().all()
    # ORT is timed between torch and Numba calls: its pool must not spin (it stole a core)
    assert spinning and not any(spinning)


def _lenet5_and_input():
    from dstcore.models import build_model

    torch.manual_seed(0)
    return build_model("lenet5", (1, 28, 28), 10).eval(), torch.rand(1, 1, 28, 28)


# one cold inductor compile of LeNet5 (C++ build): ~12 s on 2 AVX-512 cores, ~2 s when cached
def test_time_engines_times_torch_compile_as_a_peer():
    model, x = _lenet5_and_input()
    res = time_engines(model, x, 1, None, (), warmup=1, repeats=1, rounds=1,
                         torch_compile=True)
    assert set(res) == {"dense", "torch_compile"}
    tc = res["torch_compile"]
    assert tc["max_abs_err"] < 1e-4 and tc["median_ms"] > 0 and tc["n"] == 1
    assert np.isfinite(tc["speedup"]) and np.isnan(tc["speedup_vs_ort"])  # no ORT here


class _WrappedCompileError(Exception):
    """Like inductor's BackendCompilerFailed: the real error in ``inner_exception``."""

    def __init__(self, inner):
        super().__init__("backend='inductor' raised:\n" + str(inner))
        self.inner_exception = inner


@pytest.mark.parametrize("when", ["compile", "first_call"])
def test_failing_torch_compile_is_left_out_with_a_warning(monkeypatch, when):
    def broken_compile(model, **kwargs):
        if when == "compile":
            raise RuntimeError("inductor is broken here\nsecond line")

        def run(x):
            raise _WrappedCompileError(OSError("no C++ compiler found"))
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(engines, "_COMPILE_FAILURES", set())
    model, x = _lenet5_and_input()
    reason = ("RuntimeError: inductor is broken here" if when == "compile"
              else "OSError: no C++ compiler found")
    with pytest.warns(RuntimeWarning, match="torch_compile left out") as got:
        res = time_engines(model, x, 1, None, (), warmup=1, repeats=1, rounds=1,
                             torch_compile=True)
    assert set(res) == {"dense"} and np.isfinite(res["dense"]["median_ms"])
    messages = [str(w.message) for w in got if "torch_compile" in str(w.message)]
    assert len(messages) == 1 and messages[0].endswith(reason) and "\n" not in messages[0]
    with warnings.catch_warnings(record=True) as again:  # the same reason: no second warning
        warnings.simplefilter("always")
        res = time_engines(model, x, 1, None, (), warmup=1, repeats=1, rounds=1,
                             torch_compile=True)
    assert set(res) == {"dense"} and not [w for w in again if "torch_compile" in str(w.message)]


@pytest.mark.parametrize("argv, target", [
    (["resnets", "--out", "OUT", "--torch-compile"], "dstcore.measure.latency_models.run_model_sweep"),
    (["models", "--runs", "r.csv", "--results", "res", "--experiment", "e", "--out", "o.csv",
      "--torch-compile"], "dstcore.measure.experiment.measure_experiment"),
])
def test_cli_passes_torch_compile(monkeypatch, argv, target):
    from dstcore.cli import main

    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        if target.endswith("run_model_sweep"):
            return {"crossover": pd.DataFrame()}
        return pd.DataFrame(columns=["scope", "batch", "role", "kernel", "device", "threads",
                                     "median_ms", "speedup", "ideal_speedup"])

    monkeypatch.setattr(target, fake)
    assert main(["latency", *argv]) == 0
    assert calls and calls[0]["torch_compile"] is True
    calls.clear()
    assert main(["latency", *argv[:-1]]) == 0
    assert calls[0]["torch_compile"] is False


def test_model_timings_cycle_through_the_batches():
    """Every engine call takes the next batch (x, *more, x, ...), so a sparse engine is not
    timed on one input only; _more_batches holds the full batches after the first."""
    seen: list[float] = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(float(x[0, 0, 0, 0]))
            return x.flatten(1)

    x, x2, x3 = (torch.full((1, 1, 2, 2), float(v)) for v in (1, 2, 3))
    time_engines(Recorder(), x, 1, None, (), warmup=1, repeats=4, rounds=1, more=[x2, x3])
    assert seen == [1.0, 1.0, 2.0, 3.0, 1.0, 2.0]  # reference call, warm-up, 4 timed calls
    inputs = torch.arange(5.0).reshape(5, 1)
    assert [b.flatten().tolist() for b in _more_batches(inputs, 2)] == [[2.0, 3.0]]
    assert _more_batches(inputs, 8) == []


def test_latency_roles_keep_unstructured_and_block_dual_runs_apart():
    from dstcore.measure.experiment import select_latency_runs
    from tests.test_frontier import with_dual_runs

    chosen = select_latency_runs(with_dual_runs(), "lenet5_mnist", 0, tolerance_pp=1.0)
    assert chosen["best_dual"] == "element/lam1/seed0"  # lam 2 loses 2 pp: beyond 1 pp
    assert chosen["best_dual_block"] == "block16/lam2/seed0"
    runs = with_dual_runs()
    runs = runs[runs.prune_structure.fillna("") != "block16"]
    assert "best_dual_block" not in select_latency_runs(runs, "lenet5_mnist", 0, 1.0)


def test_latency_defaults_match_the_pipeline_schema():
    """The pipeline's latency section (and report.tolerance_pp) and LatencySettings agree."""
    from dataclasses import asdict

    import yaml

    from dstcore.measure.settings import LatencySettings
    from tests.conftest import ROOT

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    section = schema["properties"]["latency"]["properties"]
    in_schema = {key: spec["default"] for key, spec in section.items() if key != "enabled"}
    settings = {key: list(v) if isinstance(v, tuple) else v
                for key, v in asdict(LatencySettings()).items()}
    tolerance = schema["properties"]["report"]["properties"]["tolerance_pp"]["default"]
    assert in_schema == {k: v for k, v in settings.items() if k != "tolerance_pp"}
    assert tolerance == settings["tolerance_pp"]


def test_cli_latency_models_defaults_are_the_settings():
    from dstcore.cli import build_parser
    from dstcore.measure.settings import LatencySettings

    args = build_parser().parse_args(["latency", "models", "--runs", "r.csv", "--results", "res",
                                      "--experiment", "e", "--out", "o.csv"])
    s = LatencySettings()
    assert (args.batch_sizes, args.threads) == (list(s.batch_sizes), list(s.threads))
    assert (args.warmup, args.repeats, args.max_images) == (s.warmup, s.repeats, s.max_images)
    assert (args.tolerance_pp, args.torch_compile) == (s.tolerance_pp, s.torch_compile)
    assert s.thread_counts == (1, None)


def test_sidecar_keeps_its_keys(tmp_path):
    from dstcore.measure.sidecar import environment_info, write_results

    assert set(environment_info()) == {
        "device", "cpu_model", "logical_cpus", "usable_threads", "platform", "python", "torch",
        "numba", "numpy", "onnxruntime", "pandas", "numba_threading_layer", "accumulator_lanes",
        "cuda_available", "load_average_1_5_15min", "timestamp"}
    csv = write_results(tmp_path / "t.csv", pd.DataFrame({"a": [1.0, np.nan]}), {"x": np.nan})
    meta = json.loads(meta_path(csv).read_text())
    assert meta["x"] is None and meta["device"] == "cpu" and pd.read_csv(csv).shape == (2, 1)
