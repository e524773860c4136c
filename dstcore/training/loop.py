"""One training loop for the three stages of dual sparse training (after OpenLTH's
``training/train.py``: a small loop, the stages it runs and the callbacks after each epoch).

- ``train``: dense baseline from scratch.
- ``finetune``: from a saved model, CE + lam * activation penalty (``reg.method`` none, l1,
  hoyer or tl1); masks stay fixed when the parent was pruned (stage 3).
- ``prune``: from a saved model, ``prune.l1_epochs`` with a weight l1 penalty, then magnitude
  pruning (``prune.structure``: single weights or whole block units), then
  ``prune.finetune_epochs`` with the masks fixed (stage 2).

The commands are sequences of the stages in :mod:`dstcore.training.stages`; the run directory
and resume are :mod:`~dstcore.training.session` and :mod:`~dstcore.training.checkpointing`,
what follows each epoch :mod:`~dstcore.training.callbacks`. Epoch ``e`` draws its randomness
from (seed, e) only, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dstcore.data.datasets import DataBundle, load_dataset
from dstcore.sparsity.pruning import weight_l1
from dstcore.sparsity.regularizers import ActivationPenalty
from dstcore.training.callbacks import (
    after_epoch,
    evaluation_due,
    progress_bar,
    standard_callbacks,
)
from dstcore.training.checkpointing import CHECKPOINT_FORMAT, CHECKPOINT_REJECTED
from dstcore.training.config import RunConfig
from dstcore.training.pooling import fast_pools
from dstcore.training.runtime import (
    autocast,
    configure_runtime,
    epoch_seed,
    lr_at,
    make_optimizer,
    memory_format,
    resolve_device,
)
from dstcore.training.session import Session, check_run, finish, open_session
from dstcore.training.stages import STAGES, Stage

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_REJECTED", "STAGES", "EpochStats", "Session",
           "configure_runtime", "epoch_seed", "evaluation_due", "finish",
           "lr_at", "make_optimizer", "resolve_device", "run", "start_session",
           "train_epochs", "train_one_epoch"]


def run(cfg: RunConfig, stage: str, out_dir: str | Path, init: str | Path | None = None,
        resume: bool = False, final_eval: bool = True, bundle: DataBundle | None = None,
        tags: dict[str, str] | None = None) -> dict:
    """Run one stage into ``out_dir`` and return its ``train.json`` summary.

    Everything that can be checked (config, checkpoint, data) is checked before ``out_dir``
    is created. ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists and was
    made with the same config; otherwise the run starts over. With ``final_eval`` the last
    epoch's evaluation is the full one of ``metrics.json`` (accuracy, sparsity, MACs).
    """
    session = start_session(cfg, stage, out_dir, init, resume, bundle)
    divergence = train_epochs(session, final_eval)
    return finish(session, divergence, final_eval, tags or {})


def start_session(cfg: RunConfig, stage: str, out_dir: str | Path, init: str | Path | None,
                  resume: bool, bundle: DataBundle | None) -> Session:
    """Check the config and parent, load data, build the model (from the parent), resume."""
    out_dir, init, parent, device = check_run(cfg, stage, out_dir, init, resume)
    if bundle is None:
        d = cfg.data
        bundle = load_dataset(d.dataset, d.data_root, d.cache_dir, d.download, d.verify,
                              d.train_subset, d.test_subset, d.subset_seed)
    return open_session(cfg, stage, out_dir, init, parent, bundle, device, resume)


def train_epochs(s: Session, final_eval: bool) -> dict | None:
    """Train from ``s.start`` to the last epoch; return the divergence record, if any.

    Each epoch runs under its stage (begun at its first epoch here: stage 2 prunes), then the
    callbacks (evaluate, collapse check, checkpoint, report). A non-finite loss, or a
    callback's record, stops the run with the weights of the last good epoch.
    """
    t_start = time.perf_counter()
    bar = progress_bar(s)
    callbacks = standard_callbacks(s, final_eval, bar, t_start)
    stage, stop, last_good = None, None, copy.deepcopy(s.model.state_dict())
    with fast_pools(s.model, enabled=not s.cfg.train.compile):  # same weights, faster
        for epoch in bar:
            if s.stage_at(epoch) is not stage:
                stage = s.stage_at(epoch)
                stage.begin(s)
                last_good = copy.deepcopy(s.model.state_dict())
            stats, line = train_epoch(s, stage, epoch)
            if stats.diverged_step is not None:
                stop = {"epoch": epoch + 1, "step": stats.diverged_step, "lam": s.cfg.reg.lam,
                        "reason": "non-finite loss", "last_finite_loss": stats.last_finite_loss}
            else:
                s.history.append(line)
                stop = after_epoch(callbacks, s, epoch, stats, line)
            if stop is not None:
                s.model.load_state_dict(last_good)
                break
            last_good = copy.deepcopy(s.model.state_dict())
    bar.close()
    s.elapsed_before += time.perf_counter() - t_start
    return stop


@dataclass
class EpochStats:
    """Means over the steps of one epoch; ``diverged_step`` is set when the loss went non-finite."""

    ce: float = 0.0
    reg: float = 0.0
    weight_l1: float = 0.0
    loss: float = 0.0
    accuracy: float = 0.0
    steps: int = 0
    diverged_step: int | None = None
    last_finite_loss: float | None = None


def train_epoch(s: Session, stage: Stage, epoch: int) -> tuple[EpochStats, dict]:
    """One epoch of ``stage`` at its learning rate and seed: its stats and its log line (the
    training fields; the callbacks add the test fields)."""
    lr = lr_at(s.cfg, epoch, s.epochs)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    seed = epoch_seed(s.cfg.train.seed, epoch)
    torch.manual_seed(seed)
    terms = stage.loss_terms(s)
    t0 = time.perf_counter()
    with terms.penalty if terms.penalty is not None else contextlib.nullcontext():
        stats = train_one_epoch(s.train_model, s.loader.epoch(seed), s.optimizer, s.device,
                                terms.penalty, terms.lam, terms.weight_l1, f"epoch {epoch + 1}",
                                terms.l1_exclude, s.cfg.train.precision,
                                memory_format(s.cfg.train.memory_format, s.device))
    line = {"epoch": epoch + 1, "lr": lr, "phase": stage.phase, "train_ce": stats.ce,
            "train_reg": stats.reg, "train_weight_l1": stats.weight_l1,
            "train_loss": stats.loss, "train_top1": stats.accuracy,
            "train_seconds": time.perf_counter() - t0}
    return stats, line


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    device: torch.device, penalty: ActivationPenalty | None, lam: float,
                    weight_l1_lam: float, desc: str, l1_exclude: Sequence[str] = (),
                    precision: str = "fp32",
                    layout: torch.memory_format = torch.contiguous_format) -> EpochStats:
    """One pass over ``loader`` minimising CE + lam * penalty (+ weight_l1_lam * sum|w| over
    the layers stage 2 prunes, see :func:`~dstcore.sparsity.pruning.prunable_layers`), the
    forward pass under the autocast of ``precision``, inputs in ``layout``. The epoch's sums
    stay on ``device`` (float64, as Python floats would add them): the one host sync per step
    is the finiteness check of the loss."""
    model.train()
    s, seen = EpochStats(), 0
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # ce, reg, weight l1, loss
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None):
        x = x.to(device, non_blocking=True, memory_format=layout)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
            ce = F.cross_entropy(logits, y)
        loss = ce
        reg = penalty.pop() if penalty is not None else 0.0
        if penalty is not None and lam > 0:
            loss = loss + lam * reg
        wl1 = 0.0
        if weight_l1_lam > 0:
            wl1 = weight_l1(model, l1_exclude)
            loss = loss + weight_l1_lam * wl1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            s.diverged_step = s.steps
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        s.last_finite_loss = loss_value
        s.steps += 1
        for i, term in enumerate((ce, reg, wl1, loss)):
            if torch.is_tensor(term):
                sums[i] += term.detach().double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    n = max(s.steps, 1)
    s.ce, s.reg, s.weight_l1, s.loss = (v / n for v in sums.tolist())
    s.accuracy = int(correct) / max(seen, 1)
    return s
