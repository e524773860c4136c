"""``metrics.json``: the one record format of a finished run, its writer and its reader.

A record holds the run's identity (``tags``, read back into a :class:`~dstcore.core.runs.RunSpec`
together with ``seed``), its status, the final evaluation (``accuracy``, ``test_loss``,
``activation_sparsity``, ``weight_sparsity``, ``macs``, ``eval_seconds``), the training summary
(``train``), the resolved run config (``config``) and where it was made (``provenance``).
``format_version`` says which layout a file has. Version 1 files (before the field existed)
also carry ``method``, ``lam`` and ``beta``, which repeat ``tags`` and ``config.reg``; readers
take the identity from ``tags`` in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstcore import DstError
from dstcore.core.io import read_json, write_json
from dstcore.core.runs import RunSpec

RECORD_VERSION = 2  # 1: no format_version field (before dstcore 0.2), same fields otherwise
EVALUATION_KEYS = ("accuracy", "test_loss", "activation_sparsity", "weight_sparsity", "macs",
                   "eval_seconds")  # what dstcore.measure.metrics.full_metrics returns
TRAIN_KEYS = ("from", "parent_status", "epochs_planned", "epochs_completed", "divergence",
              "final", "train_seconds_per_epoch", "wall_seconds")  # from train.json
REQUIRED = ("status", "stage", "model", "dataset", "accuracy", "activation_sparsity",
            "weight_sparsity", "macs")


def make_record(evaluation: dict, summary: dict, provenance: dict | None = None) -> dict:
    """The ``metrics.json`` of a run: its ``evaluation`` (full_metrics) and its ``train.json``
    ``summary``; ``provenance`` replaces the summary's (``dst evaluate`` adds where it ran)."""
    cfg = summary["config"]
    return {
        "format_version": RECORD_VERSION,
        "status": summary["status"], "stage": summary["stage"], "tags": summary.get("tags", {}),
        "model": cfg["model"]["name"], "dataset": cfg["data"]["dataset"],
        "seed": cfg["train"]["seed"],
        **evaluation,
        "train": {k: summary[k] for k in TRAIN_KEYS},
        "config": cfg,
        "provenance": provenance or summary["provenance"],
    }


def write_record(path: str | Path, record: dict) -> None:
    """Write a record made by :func:`make_record` atomically."""
    write_json(path, record)


@dataclass(frozen=True)
class Record:
    """A read ``metrics.json``: the run's spec and the file's fields (``data``)."""

    path: Path
    spec: RunSpec
    data: dict[str, Any]

    @property
    def status(self) -> str:
        return self.data["status"]


def read_record(path: str | Path) -> Record:
    """Read and check a ``metrics.json``; a file that is not a record of a pipeline run is a
    :class:`DstError` of one line naming the file and what to do."""
    path = Path(path)
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise DstError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise DstError(f"{path}: not a dstcore metrics.json (a JSON object)")
    version = data.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
        raise DstError(f"{path}: metrics format version {version!r} is not one this dstcore "
                       f"reads (1 to {RECORD_VERSION}); update dstcore or rerun the run")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DstError(f"{path}: not a dstcore metrics.json (missing {', '.join(missing)}); "
                       f"rerun `dst evaluate --run {path.parent}`")
    tags = data.get("tags") or {}
    if not tags:
        raise DstError(f"{path}: the run has no identity (tags experiment, kind, ...): it was "
                       f"not made by the pipeline; run it with `dst ... --tag experiment=NAME "
                       f"--tag kind=KIND` or through snakemake")
    try:
        spec = RunSpec.from_tags(tags, int(data["seed"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DstError(f"{path}: no valid seed ({err})") from None
    except DstError as err:
        raise DstError(f"{path}: {err}") from None
    return Record(path, spec, data)
