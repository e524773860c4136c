"""The ``.meta.json`` beside every latency CSV: machine, threads and library versions.

Tables and sidecars are written atomically by :mod:`dstcore.core.io` (temp file in the same
directory + ``os.replace``); the sidecar is written as JSON with NaN as null.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numba
import torch

from dstcore.core.environment import cpu_model, versions
from dstcore.core.io import write_csv, write_json
from dstcore.kernels.cpu import MAX_ACC_LANES
from dstcore.measure.threads import max_threads


def environment_info() -> dict[str, Any]:
    """Device, CPU model, threads and library versions for the sidecar JSON
    (:func:`dstcore.core.environment.cpu_model` and :func:`~dstcore.core.environment.versions`)."""
    v = versions()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel function launched yet
        layer = None
    return {
        "device": "cpu",
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_threads": max_threads(),
        "platform": platform.platform(),
        "python": v["python"],
        "torch": v["torch"],
        "numba": v["numba"],
        "numpy": v["numpy"],
        "onnxruntime": v["onnxruntime"],
        "pandas": metadata.version("pandas"),
        "numba_threading_layer": layer,
        "accumulator_lanes": MAX_ACC_LANES,
        "cuda_available": torch.cuda.is_available(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def meta_path(csv_path: str | Path) -> Path:
    """Sidecar JSON next to a CSV: ``x.csv`` -> ``x.meta.json``."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".meta.json")


def write_results(csv_path: str | Path, table, meta: dict[str, Any]) -> Path:
    """Write ``table`` (pandas) to ``csv_path`` and :func:`environment_info` updated with
    ``meta`` to its sidecar :func:`meta_path`; returns the CSV's path."""
    csv_path = Path(csv_path)
    write_csv(csv_path, table)
    write_json(meta_path(csv_path), environment_info() | meta)
    return csv_path
