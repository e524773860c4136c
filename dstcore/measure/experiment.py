"""The latency of one experiment: its baseline, best TL1, best FATReLU and best dual sparse
models timed.

:func:`select_latency_runs` picks the runs from the aggregated runs table (by
:data:`LATENCY_ROLES`), :func:`measure_experiment` times each with
:func:`dstcore.measure.model_latency.measure_model_latency` on real test images and writes
one table; its defaults are :class:`dstcore.measure.settings.LatencySettings`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from dstcore import DstError
from dstcore.core.runs import (
    BLOCK,
    DUAL_METHOD,
    ELEMENT,
    THRESHOLD_METHOD,
    RunKind,
    structure_family,
)
from dstcore.measure.model_latency import measure_model_latency
from dstcore.measure.settings import LatencySettings
from dstcore.measure.sidecar import write_results
from dstcore.measure.threads import thread_counts_used

_DEFAULTS = LatencySettings()

#: role -> (kind, method, pruning structure family, score to maximise); the method is the
#: paper's (TL1) for the activation-regularised and for the dual sparse roles; FATReLU's is
#: its sparsest threshold run
LATENCY_ROLES = {
    "best_tl1": (RunKind.ACTREG, DUAL_METHOD, "", "activation_sparsity"),
    "best_fatrelu": (RunKind.THRESHOLD, THRESHOLD_METHOD, "", "activation_sparsity"),
    "best_dual": (RunKind.DUAL, DUAL_METHOD, ELEMENT, "mac_reduction_pct"),
    "best_dual_block": (RunKind.DUAL, DUAL_METHOD, BLOCK, "mac_reduction_pct"),
}


def select_latency_runs(runs: pd.DataFrame, experiment: str, seed: int,
                        tolerance_pp: float) -> dict[str, str]:
    """Run directories to time for one experiment and seed: the dense baseline, the TL1 run
    with the highest activation sparsity (``best_tl1``), likewise the FATReLU run
    (``best_fatrelu``), and the dual sparse TL1 run with the
    largest reduction of multiplications among the unstructured (``best_dual``) and among the
    block-structured ones (``best_dual_block``), each with top-1 within ``tolerance_pp`` of
    that seed's baseline (or the closest to it when none is); roles without runs are left out."""
    rows = runs[(runs.experiment == experiment) & (runs.seed == seed)
                & (runs.status == "completed")]
    base = rows[rows.kind == RunKind.BASELINE]
    if base.empty:
        raise DstError(f"no completed baseline for {experiment} seed {seed} in the runs table")
    floor = base.top1.iloc[0] - tolerance_pp / 100
    chosen = {"baseline": base.run_dir.iloc[0]}
    family = structure_family(rows)
    for role, (kind, method, structure, score) in LATENCY_ROLES.items():
        cand = rows[(rows.kind == kind) & (rows.method == method) & (family == structure)]
        if cand.empty:
            continue
        ok = cand[cand.top1 >= floor - 1e-12]
        pick = ok.sort_values(score).iloc[-1] if not ok.empty else \
            cand.sort_values("top1").iloc[-1]
        chosen[role] = pick.run_dir
    return chosen


def measure_experiment(runs_csv: str | Path, results_dir: str | Path, experiment: str,
                       seed: int, out_csv: str | Path, *,
                       tolerance_pp: float = _DEFAULTS.tolerance_pp,
                       batch_sizes: Sequence[int] = _DEFAULTS.batch_sizes,
                       thread_counts: Sequence[int | None] = _DEFAULTS.thread_counts,
                       warmup: int = _DEFAULTS.warmup, repeats: int = _DEFAULTS.repeats,
                       max_images: int = _DEFAULTS.max_images,
                       torch_compile: bool = _DEFAULTS.torch_compile,
                       gpu: str = _DEFAULTS.gpu,
                       gpu_batch_sizes: Sequence[int] = _DEFAULTS.gpu_batch_sizes,
                       gpu_compile_mode: str = _DEFAULTS.gpu_compile_mode,
                       log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Time the baseline, best TL1 and best dual sparse model of one experiment and seed.

    Models are chosen from the aggregated runs table by :func:`select_latency_runs`; inputs
    are the first ``max_images`` test images (so the activation sparsity is the model's own).
    Writes one tidy CSV with the columns of :func:`measure_model_latency` plus experiment,
    seed, role and run_dir, and a ``.meta.json`` sidecar with the machine, threads and library
    versions. ``torch_compile`` adds ``torch.compile`` as the end-to-end engine
    'torch_compile' (seconds of compilation per model, batch size and thread count);
    ``gpu`` ``auto`` adds the GPU engines at ``gpu_batch_sizes`` when CUDA is available
    (``gpu_compile_mode``: the mode of their ``torch.compile``).
    """
    from dstcore.data.datasets import load_dataset
    from dstcore.data.loaders import make_loader
    from dstcore.models.checkpoint import load_model

    runs = pd.read_csv(runs_csv)
    chosen = select_latency_runs(runs, experiment, seed, tolerance_pp)
    frames = []
    inputs = None
    with tempfile.TemporaryDirectory() as tmp:
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
                                       torch_compile=torch_compile, gpu=gpu,
                                       gpu_batch_sizes=gpu_batch_sizes,
                                       gpu_compile_mode=gpu_compile_mode, log=log)
            frames.append(df.assign(experiment=experiment, seed=seed, role=role,
                                    run_dir=run_dir))
    table = pd.concat(frames, ignore_index=True)
    write_results(out_csv, table, {
        "kind": "experiment_latency", "experiment": experiment, "seed": seed,
        "runs": chosen, "tolerance_pp": tolerance_pp, "batch_sizes": list(batch_sizes),
        "thread_counts": thread_counts_used(thread_counts),
        "warmup": warmup, "repeats": repeats, "max_images": max_images,
        "torch_compile": torch_compile, "gpu": gpu, "gpu_batch_sizes": list(gpu_batch_sizes),
        "gpu_compile_mode": gpu_compile_mode})
    return table
