"""``checkpoint.pt`` and ``log.jsonl``: the atomic per-epoch checkpoint and how resume reads it.

A checkpoint (format :data:`CHECKPOINT_FORMAT`) holds the epochs done, model and optimiser
state, the history as JSON, the elapsed seconds, the config's semantic hash, the command and
whether the model carries pruning masks. Resume reads it with ``weights_only=True``; a file
that is not a checkpoint of this run's layout is moved aside to :data:`CHECKPOINT_REJECTED`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch

from dstcore import error_line
from dstcore.core.io import write_text, write_with
from dstcore.models.checkpoint import safe_load
from dstcore.sparsity.pruning import has_masks, identity_masks
from dstcore.training.runtime import make_optimizer, say

if TYPE_CHECKING:
    from dstcore.training.session import Session

CHECKPOINT_FORMAT = "dstcore-checkpoint-v2"  # what resume accepts (checkpoint.pt)
CHECKPOINT_REJECTED = "checkpoint.pt.rejected"  # where a file resume refuses is moved


def save_checkpoint(s: Session, epoch: int, elapsed: float) -> None:
    """Write ``checkpoint.pt`` atomically after (0-based) ``epoch``, then its log line."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1,
                  "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                  "history": json.dumps(s.history), "elapsed": float(elapsed),
                  "config_hash": s.cfg.semantic_hash(), "stage": s.stage,
                  "pruned": has_masks(s.model)}
    write_with(s.checkpoint, lambda tmp: torch.save(checkpoint, tmp))
    with open(s.out_dir / "log.jsonl", "a") as fh:
        fh.write(jsonl(s.history[-1]))


def write_log(s: Session) -> None:
    """(Re)write ``log.jsonl`` from the session's history (empty for a fresh run)."""
    write_text(s.out_dir / "log.jsonl", "".join(jsonl(h) for h in s.history))


def resume(s: Session) -> bool:
    """Continue from ``s.checkpoint``; False when the run must start over from a fresh model."""
    try:
        state = safe_load(s.checkpoint, s.device)
        history = check_checkpoint(state, s.epochs)
        if state["config_hash"] != s.cfg.semantic_hash() or state["stage"] != s.stage:
            say(f"{s.out_dir}: checkpoint was made with another config; starting over")
            return False
        if state["pruned"]:
            identity_masks(s.model)
        s.model.load_state_dict(state["model"])
        s.optimizer = make_optimizer(s.model, s.cfg)
        s.optimizer.load_state_dict(state["optimizer"])
    except Exception as err:  # any failure means the file is not a checkpoint of this run
        rejected = s.checkpoint.with_name(CHECKPOINT_REJECTED)
        os.replace(s.checkpoint, rejected)
        say(f"{s.checkpoint}: not a valid checkpoint ({error_line(err)}); "
            f"moved to {rejected.name}, starting over")
        return False
    s.start, s.history, s.elapsed_before = state["epoch"], history, state["elapsed"]
    say(f"{s.out_dir}: resuming after epoch {s.start}")
    return True


def check_checkpoint(state: object, epochs: int) -> list[dict]:
    """Check a loaded checkpoint's fields and types; return its history (one dict per epoch)."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
    types = {"epoch": int, "model": dict, "optimizer": dict, "history": str, "elapsed": float,
             "config_hash": str, "stage": str, "pruned": bool}
    wrong = [k for k, t in types.items() if not isinstance(state.get(k), t)]
    if wrong:
        raise ValueError(f"missing or mistyped fields: {', '.join(wrong)}")
    history = json.loads(state["history"])
    if not (0 < state["epoch"] <= epochs and isinstance(history, list)
            and len(history) == state["epoch"] and all(isinstance(h, dict) for h in history)):
        raise ValueError(f"epoch {state['epoch']} does not match its history")
    return history


def jsonl(obj: dict) -> str:
    return json.dumps(obj) + "\n"
