"""Collect every run's ``metrics.json`` into tidy tables (one row per run, one per run x layer).

``runs.csv`` columns: experiment, kind (baseline | control | actreg | pruned | dual_control |
dual), model, dataset, method, lam, beta, prune_rate, prune_structure (``element`` or
``block{block_out}`` such as ``block16`` for stage 2 and 3 runs, empty otherwise), seed,
status, top1, top5 (fractions),
activation_sparsity, weight_sparsity (fractions of exact zeros), dense_macs, effective_macs
(multiplications per image), mac_reduction_pct, epochs_completed, wall_seconds,
train_seconds_per_epoch, eval_seconds, diverged_epoch, divergence_reason, run_dir,
git_commit, device.

``curves.csv``: one row per run x epoch from each run's ``log.jsonl``: the run's identity
columns, ``epoch`` (1-based), ``phase``, ``train_loss``, ``curve_top1`` / ``curve_sparsity``
(the fixed test slice of ``train.curve_images``; empty when the run had none) and
``test_top1`` / ``test_sparsity`` (the epochs the full test set was evaluated).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from dstcore.analysis.stats import t_interval
from dstcore.core.environment import PACKAGES
from dstcore.core.io import write_csv
from dstcore.core.records import Record, read_record

RUN_COLUMNS = [
    "experiment", "kind", "model", "dataset", "method", "lam", "beta", "prune_rate",
    "prune_structure", "seed", "status", "top1", "top5", "activation_sparsity",
    "weight_sparsity", "dense_macs", "effective_macs", "mac_reduction_pct", "epochs_completed",
    "wall_seconds", "train_seconds_per_epoch", "eval_seconds", "diverged_epoch",
    "divergence_reason", "run_dir",
    # provenance (see provenance_columns)
    "git_commit", "git_dirty", "finished_at", "host", "device", "gpu", "cpu", "cpu_count",
    "cpu_capability", "threads", *(f"version_{name}" for name in PACKAGES),
]
LAYER_COLUMNS = [
    "experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure", "seed",
    "status", "run_dir",
    "layer", "position", "activation_sparsity", "weight_sparsity", "dense_macs", "effective_macs",
]


def _number(value) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


# runs.csv columns that differ between two runs of the same job (clocks), left out when runs are
# compared for identity.
TIMING_COLUMNS = ["wall_seconds", "train_seconds_per_epoch", "eval_seconds", "finished_at"]


def run_row(record: Record, run_dir: str) -> dict:
    """One ``runs.csv`` row from a read ``metrics.json``."""
    metrics = record.data
    train = metrics.get("train") or {}
    divergence = train.get("divergence") or {}
    macs = metrics["macs"]
    identity = record.spec.columns()
    return {
        **{k: identity[k] for k in ("experiment", "kind")},
        "model": metrics["model"], "dataset": metrics["dataset"],
        **{k: identity[k] for k in ("method", "lam", "beta", "prune_rate", "prune_structure",
                                    "seed")},
        "status": metrics["status"],
        "top1": metrics["accuracy"]["top1"], "top5": metrics["accuracy"].get("top5", math.nan),
        "activation_sparsity": metrics["activation_sparsity"]["overall"],
        "weight_sparsity": metrics["weight_sparsity"]["overall"],
        "dense_macs": macs["dense"], "effective_macs": macs["effective"],
        "mac_reduction_pct": macs["reduction_pct"],
        "epochs_completed": train.get("epochs_completed", math.nan),
        "wall_seconds": _number(train.get("wall_seconds")),
        "train_seconds_per_epoch": _number(train.get("train_seconds_per_epoch")),
        "eval_seconds": _number(metrics.get("eval_seconds")),
        "diverged_epoch": _number(divergence.get("epoch")),
        "divergence_reason": divergence.get("reason", ""),
        "run_dir": run_dir,
        **provenance_columns(metrics.get("provenance") or {}),
    }


def provenance_columns(prov: dict) -> dict:
    """The ``runs.csv`` columns that say where a run came from (empty when not recorded)."""
    git, versions = prov.get("git") or {}, prov.get("versions") or {}
    return {
        "git_commit": git.get("commit") or "", "git_dirty": git.get("dirty"),
        "finished_at": prov.get("finished_at", ""), "host": prov.get("host", ""),
        "device": prov.get("device", ""), "gpu": prov.get("gpu", ""), "cpu": prov.get("cpu", ""),
        "cpu_count": prov.get("cpu_count"), "cpu_capability": prov.get("cpu_capability", ""),
        "threads": prov.get("torch_threads"),
        **{f"version_{name}": versions.get(name) or "" for name in PACKAGES},
    }


def layer_rows(metrics: dict, row: dict) -> list[dict]:
    """``layers.csv`` rows: one per Conv2d/Linear layer in execution order of the MAC count."""
    act = metrics["activation_sparsity"]["layers"]
    weights = metrics["weight_sparsity"]["layers"]
    rows = []
    for position, (layer, macs) in enumerate(metrics["macs"]["layers"].items()):
        rows.append({
            **{k: row[k] for k in ("experiment", "kind", "method", "lam", "beta", "prune_rate",
                                   "prune_structure", "seed", "status", "run_dir")},
            "layer": layer, "position": position,
            "activation_sparsity": act[layer]["sparsity"] if layer in act else math.nan,
            "weight_sparsity": weights[layer]["sparsity"],
            "dense_macs": macs["dense"], "effective_macs": macs["effective"],
        })
    return rows


CURVE_COLUMNS = [
    "experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure", "seed",
    "status", "run_dir", "epoch", "phase", "train_loss", "curve_top1", "curve_sparsity",
    "test_top1", "test_sparsity",
]


def curve_rows(log_file: Path, row: dict) -> list[dict]:
    """``curves.csv`` rows of one run: a line of its ``log.jsonl`` per epoch (none when the
    run wrote no log)."""
    if not log_file.is_file():
        return []
    rows = []
    for text in log_file.read_text().splitlines():
        if not text.strip():
            continue
        line = json.loads(text)
        rows.append({**{k: row[k] for k in CURVE_COLUMNS[:10]},
                     "epoch": line["epoch"], "phase": line.get("phase", ""),
                     "train_loss": _number(line.get("train_loss")),
                     "curve_top1": _number(line.get("curve_top1")),
                     "curve_sparsity": _number(line.get("curve_sparsity")),
                     "test_top1": _number(line.get("test_top1")),
                     "test_sparsity": _number(line.get("activation_sparsity"))})
    return rows


def curve_table(runs: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """``curves.csv`` of every run of ``runs`` (its ``run_dir`` relative to ``results_dir``)."""
    rows = []
    for row in runs.to_dict("records"):
        rows.extend(curve_rows(Path(results_dir) / row["run_dir"] / "log.jsonl", row))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def collect(metrics_files: list[Path], results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, layers) tables from ``metrics_files``; a missing or unreadable file is an error."""
    runs, layers = [], []
    for path in metrics_files:
        record = read_record(path)
        row = run_row(record, os.path.relpath(record.path.parent, results_dir))
        runs.append(row)
        layers.extend(layer_rows(record.data, row))
    run_table = pd.DataFrame(runs, columns=RUN_COLUMNS)
    run_table = run_table.sort_values(["experiment", "kind", "method", "prune_structure",
                                       "prune_rate", "lam", "beta", "seed"],
                                      na_position="first", kind="stable")
    return run_table.reset_index(drop=True), pd.DataFrame(layers, columns=LAYER_COLUMNS)


GROUP = ["experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure"]


def seed_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% t interval over seeds of every completed configuration (accuracy and
    sparsity in %; MACs per image)."""
    ok = runs[runs.status == "completed"].copy()
    ok["top1_pct"] = 100 * ok.top1
    ok["sparsity_pct"] = 100 * ok.activation_sparsity
    ok["weight_sparsity_pct"] = 100 * ok.weight_sparsity
    keys = [k for k in GROUP if k in ok]
    grouped = ok.groupby(keys, dropna=False)
    out = grouped.agg(seeds=("seed", "nunique"), top1_mean=("top1_pct", "mean"),
                      top1_std=("top1_pct", "std"), sparsity_mean=("sparsity_pct", "mean"),
                      sparsity_std=("sparsity_pct", "std"),
                      weight_sparsity_mean=("weight_sparsity_pct", "mean"),
                      dense_macs=("dense_macs", "mean"), effective_macs=("effective_macs", "mean"),
                      mac_reduction_pct=("mac_reduction_pct", "mean")).reset_index()
    for column, source in (("top1", "top1_pct"), ("sparsity", "sparsity_pct"),
                           ("mac_reduction", "mac_reduction_pct")):
        intervals = [t_interval(group[source]) for _, group in grouped]
        out[f"{column}_ci_low"] = [ci.low for ci in intervals]
        out[f"{column}_ci_high"] = [ci.high for ci in intervals]
    return out


def best_within_tolerance(candidates: pd.DataFrame, reference_top1: float,
                          tolerance_pp: float) -> pd.Series | None:
    """The row with the highest mean sparsity whose mean top-1 is >= reference - tolerance."""
    ok = candidates[candidates.top1_mean >= reference_top1 - tolerance_pp - 1e-9]
    if ok.empty:
        return None
    return ok.sort_values(["sparsity_mean", "top1_mean"], ascending=False).iloc[0]


def write_tables(metrics_files: list[Path], results_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Write ``runs.csv``, ``layers.csv`` and ``curves.csv`` into ``out_dir``; return the runs
    table."""
    runs, layers = collect(metrics_files, results_dir)
    write_csv(Path(out_dir) / "runs.csv", runs)
    write_csv(Path(out_dir) / "layers.csv", layers)
    write_csv(Path(out_dir) / "curves.csv", curve_table(runs, results_dir))
    return runs
