"""Saved models (``model.pt``): weights with real zeros plus what is needed to rebuild them."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from dstcore import DstError, error_line
from dstcore.core.io import write_with
from dstcore.models import build_model
from dstcore.models.thresholds import apply_thresholds

FORMAT = "dstcore-model-v1"
# Fields every saved model has, with their types (checked when reading).
PAYLOAD_TYPES = {"model": str, "dataset": str, "input_shape": list, "num_classes": int,
                 "masks_fixed": bool, "config": dict, "stage": str, "status": str,
                 "state_dict": dict}


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


def safe_load(path: str | Path, device: torch.device | str) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so no
    code in the file can run. torch's warnings about unusual pickle protocols are silenced
    (the caller reports a refused file in one line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location=device, weights_only=True)


def read_model(path: str | Path) -> dict:
    """The saved payload of a ``model.pt``, read without running any code in the file.

    Anything that is not a dstcore model (crafted, truncated, another format) is a
    :class:`DstError` of one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DstError(f"checkpoint {path} does not exist")
    try:
        payload = safe_load(path, "cpu")
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise DstError(f"checkpoint {path} cannot be read ({error_line(err)})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DstError(f"{path} is not a dstcore model (expected format {FORMAT})")
    wrong = [k for k, t in PAYLOAD_TYPES.items() if not isinstance(payload.get(k), t)]
    config = payload["config"] if isinstance(payload.get("config"), dict) else {}
    wrong += [f"config.{k}" for k in ("data", "model") if not isinstance(config.get(k), dict)]
    if wrong:
        raise DstError(f"{path} is not a valid dstcore model (missing or mistyped: "
                       f"{', '.join(wrong)})")
    return payload


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``, with its FATReLU thresholds when it has any
    (``act_thresholds``); returns (model on CPU, metadata)."""
    payload = read_model(path)
    model = model_from_payload(payload, path)
    payload.pop("state_dict")
    return model, payload


def model_from_payload(payload: dict, path: str | Path) -> nn.Module:
    """The model (on CPU) of a payload :func:`read_model` returned for ``path``, with its
    FATReLU thresholds."""
    try:
        model = build_model(payload["model"], tuple(payload["input_shape"]),
                            payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
    except (DstError, RuntimeError, TypeError, ValueError, KeyError) as err:
        raise DstError(f"{path}: its weights do not fit its model ({error_line(err)})") from err
    return with_thresholds(model, payload, path)


def with_thresholds(model: nn.Module, payload: dict, path: str | Path) -> nn.Module:
    """``model`` with the saved model's FATReLU thresholds inserted (itself when it has none)."""
    saved = payload.get("act_thresholds") or {}
    if not isinstance(saved, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) for k, v in saved.items()):
        raise DstError(f"{path}: act_thresholds must map layer names to numbers")
    return apply_thresholds(model, saved) if saved else model

