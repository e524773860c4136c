"""Saved models (``model.pt``): weights with real zeros plus what is needed to rebuild them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dstcore import DstError
from dstcore.io import write_with
from dstcore.models import build_model

FORMAT = "dstcore-model-v1"


def save_model(path: str | Path, model: nn.Module, *, model_name: str, dataset: str,
               input_shape: tuple[int, int, int], num_classes: int, masks_fixed: bool,
               config: dict, stage: str, status: str, **extra) -> None:
    """Atomically save ``model`` (masks must already be folded in) with its metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if any(k.endswith(("_orig", "_mask")) for k in state):
        raise ValueError("fold pruning masks into the weights (make_permanent) before saving")
    payload = {"format": FORMAT, "model": model_name, "dataset": dataset,
               "input_shape": list(input_shape), "num_classes": num_classes,
               "masks_fixed": masks_fixed, "stage": stage, "status": status,
               "config": config, **extra, "state_dict": state}
    write_with(path, lambda tmp: torch.save(payload, tmp))


def read_model(path: str | Path) -> dict:
    """The saved payload of a ``model.pt``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DstError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise DstError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DstError(f"{path} is not a dstcore model (expected format {FORMAT})")
    return payload


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``; returns (model on CPU, metadata)."""
    payload = read_model(path)
    model = build_model(payload["model"], tuple(payload["input_shape"]), payload["num_classes"])
    model.load_state_dict(payload.pop("state_dict"))
    return model, payload
