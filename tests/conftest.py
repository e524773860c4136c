"""Shared fixtures. Real MNIST/Fashion-MNIST come from $DST_DATA_ROOT (set by make test / CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
