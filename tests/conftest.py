"""Shared fixtures. Real MNIST/Fashion-MNIST come from $DST_DATA_ROOT (set by make test / CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding the upstream MNIST/Fashion-MNIST files."""
    value = os.environ.get("DST_DATA_ROOT")
    if not value:
        pytest.skip("DST_DATA_ROOT is not set (make test sets it to the offline copies)")
    return Path(value)


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def no_data_env(monkeypatch):
    """Hide $DST_DATA_ROOT so only explicitly given roots are searched."""
    monkeypatch.delenv("DST_DATA_ROOT", raising=False)


def snakemake(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def smoke_config(results, **changes) -> dict:
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["results_dir"] = str(results)
    config.update(changes)
    return config


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, data_root):
    """Run the whole smoke DAG once; yield (results folder, config file). With
    $DST_SMOKE_RESULTS (a folder that does not exist yet) the run is made there and kept, so
    that `.ci/run`'s SLURM test compares its results with this run instead of making another."""
    keep = os.environ.get("DST_SMOKE_RESULTS")
    tmp = Path(keep).parent if keep else tmp_path_factory.mktemp("smoke")
    results = Path(keep) if keep else tmp / "results"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "smoke.yaml"
    # keys in config/smoke.yaml's order: layers.csv lists runs in the order of the grid
    cfg.write_text(yaml.safe_dump(smoke_config(results), sort_keys=False))
    proc = snakemake("all", "--cores", "2", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return results, cfg


