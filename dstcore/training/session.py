"""One run's session: the checks before anything is written, the model (from its parent, or
resumed from ``checkpoint.pt``) and, at the end, its outputs.

Each run owns a directory: ``config.yaml`` (resolved), ``log.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic, every epoch, removed at the end), ``model.pt``, ``train.json`` and,
unless disabled, ``metrics.json``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dstcore import DstError
from dstcore.core.environment import provenance
from dstcore.core.io import write_json, write_yaml
from dstcore.core.records import make_record, write_record
from dstcore.data.datasets import DataBundle
from dstcore.data.loaders import TrainLoader, hold_on_device
from dstcore.models import build_model
from dstcore.models.checkpoint import read_model, save_model, with_thresholds
from dstcore.models.thresholds import thresholds_of
from dstcore.sparsity.activations import activation_layers
from dstcore.sparsity.pruning import fix_masks_from_zeros, has_masks, make_permanent
from dstcore.sparsity.regularizers import ActivationPenalty
from dstcore.training.callbacks import final_metrics
from dstcore.training.checkpointing import resume as resume_from_checkpoint
from dstcore.training.checkpointing import write_log
from dstcore.training.config import RunConfig, validate
from dstcore.training.runtime import (
    check_precision,
    configure_runtime,
    make_optimizer,
    memory_format,
    resolve_device,
    resolve_precision,
    say,
)
from dstcore.training.stages import STAGES, Stage, schedule, stage_at


@dataclass
class Session:
    """What one run trains with: the model and its optimiser, data, penalty and history."""

    cfg: RunConfig
    stage: str  # the dst command: one of STAGES
    out_dir: Path
    init: Path | None
    parent: dict | None
    bundle: DataBundle
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    act_layers: list
    penalty: ActivationPenalty | None
    masks_fixed: bool
    history: list[dict]
    loader: TrainLoader  # the training batches, epoch by epoch
    start: int = 0
    elapsed_before: float = 0.0
    final: dict | None = None  # full metrics of the last epoch, when they were computed
    _compiled: nn.Module | None = field(default=None, repr=False)

    @property
    def train_model(self) -> nn.Module:
        """What the training steps call: the model under ``torch.compile`` when
        ``train.compile`` (wrapped once per session; evaluation calls :attr:`model`, eager)."""
        if not self.cfg.train.compile:
            return self.model
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=False)  # a graph per batch shape
        return self._compiled

    @property
    def plan(self) -> list[tuple[Stage, int]]:
        return schedule(self.cfg, self.stage)

    @property
    def epochs(self) -> int:
        return sum(epochs for _, epochs in self.plan)

    def stage_at(self, epoch: int) -> Stage:
        return stage_at(self.plan, epoch)

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint.pt"


def load_parent(init: Path | None, cfg: RunConfig, stage: str) -> dict | None:
    """The saved model a fine-tune or prune starts from, checked against ``cfg``."""
    if stage == "train":
        return None
    if init is None:
        raise DstError(f"dst {stage} needs --from, the model.pt to start from")
    parent = read_model(init)
    for key, mine, theirs in (("model.name", cfg.model.name, parent["model"]),
                              ("data.dataset", cfg.data.dataset, parent["dataset"])):
        if mine != theirs:
            raise DstError(f"{key}: {mine!r} does not match the checkpoint {init} ({theirs!r})")
    return parent


def check_run(cfg: RunConfig, stage: str, out_dir: str | Path, init: str | Path | None,
              resume: bool) -> tuple[Path, Path | None, dict | None, torch.device]:
    """Check the command, config, output directory and parent, and set up the runtime;
    nothing is written. Returns (out_dir, init, parent, device)."""
    if stage not in STAGES:
        raise DstError(f"unknown stage '{stage}'; choose from {', '.join(STAGES)}")
    validate(cfg, stage)
    out_dir = Path(out_dir)
    init = Path(init) if init is not None else None
    if not resume and ((out_dir / "model.pt").exists() or (out_dir / "checkpoint.pt").exists()):
        raise DstError(f"{out_dir} already holds a run; pass --resume to continue it or choose "
                       f"another output directory")
    parent = load_parent(init, cfg, stage)
    device = resolve_device(cfg.train.device)
    cfg.train.precision = resolve_precision(cfg.train.precision, device)  # recorded resolved
    check_precision(cfg.train.precision, device)
    configure_runtime(cfg.train.threads, cfg.train.deterministic, device, cfg.train.precision,
                      compiles=cfg.train.compile)
    return out_dir, init, parent, device


def open_session(cfg: RunConfig, stage: str, out_dir: Path, init: Path | None,
                 parent: dict | None, bundle: DataBundle, device: torch.device,
                 resume: bool) -> Session:
    """Build the model, create ``out_dir`` with ``config.yaml``, resume from its checkpoint
    when asked and possible, and (re)write ``log.jsonl``."""
    bundle = hold_on_device(bundle, device)
    session = new_session(cfg, stage, out_dir, init, parent, bundle, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(out_dir / "config.yaml", {"stage": stage, "from": str(init) if init else None,
                                         **cfg.to_dict()})
    if resume and session.checkpoint.exists() and not resume_from_checkpoint(session):
        session = new_session(cfg, stage, out_dir, init, parent, bundle, device)
    write_log(session)
    return session


def new_session(cfg: RunConfig, stage: str, out_dir: Path, init: Path | None,
                parent: dict | None, bundle: DataBundle, device: torch.device) -> Session:
    """A session at epoch 0: the model seeded from ``cfg`` (or the parent's weights)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes)
    masks_fixed = False
    if parent is not None:
        model.load_state_dict(parent["state_dict"])
        model = with_thresholds(model, parent, init)  # FATReLU thresholds stay fixed
        masks_fixed = bool(parent["masks_fixed"])
        if masks_fixed:
            fix_masks_from_zeros(model)
    model.to(device, memory_format=memory_format(cfg.train.memory_format, device))
    act_layers = activation_layers(model, bundle.input_shape)
    penalty = None
    if cfg.reg.method != "none":
        penalty = ActivationPenalty(act_layers, cfg.reg.method, cfg.reg.beta,
                                    cfg.reg.layer_weights)
    loader = TrainLoader(bundle.train, cfg.train.batch_size, cfg.data.num_workers,
                         pin_memory=device.type == "cuda")
    return Session(cfg, stage, out_dir, init, parent, bundle, device, model,
                   make_optimizer(model, cfg), act_layers, penalty, masks_fixed, [], loader)


def finish(s: Session, divergence: dict | None, final_eval: bool, tags: dict[str, str]) -> dict:
    """Save ``model.pt`` (masks folded in), ``train.json`` and, with ``final_eval``,
    ``metrics.json``; remove the checkpoint. Returns the ``train.json`` summary."""
    status = "completed" if divergence is None else "diverged"
    if divergence is not None:
        say(f"{s.out_dir}: DIVERGED at epoch {divergence['epoch']} (lam={s.cfg.reg.lam}): "
            f"{divergence['reason']}; run marked status=diverged")
    history = s.history if divergence is None else s.history[:divergence["epoch"] - 1]
    pruned = has_masks(s.model)
    make_permanent(s.model)
    summary = {
        "status": status, "stage": s.stage, "tags": tags,
        "from": str(s.init) if s.init else None,
        "parent_status": s.parent.get("status") if s.parent else None,
        "epochs_planned": s.epochs, "epochs_completed": len(history),
        "divergence": divergence, "final": s.history[-1] if s.history else None,
        "train_seconds_per_epoch": statistics.median(h["train_seconds"] for h in s.history)
        if s.history else None,
        "wall_seconds": s.elapsed_before, "config": s.cfg.to_dict(),
        "data_source": s.bundle.source, "provenance": provenance(s.device, s.cfg.train.seed),
    }
    parent_top1 = s.parent.get("final_top1") if s.parent else None
    final_top1 = history[-1]["test_top1"] if history and divergence is None else parent_top1
    save_model(s.out_dir / "model.pt", s.model, model_name=s.cfg.model.name,
               dataset=s.cfg.data.dataset, input_shape=s.bundle.input_shape,
               num_classes=s.bundle.num_classes, masks_fixed=s.masks_fixed or pruned,
               config=s.cfg.to_dict(), stage=s.stage, status=status, final_top1=final_top1,
               **saved_thresholds(s.model))
    write_json(s.out_dir / "train.json", summary)
    if final_eval:
        write_record(s.out_dir / "metrics.json", make_record(final_metrics(s), summary))
    s.checkpoint.unlink(missing_ok=True)
    return summary


def saved_thresholds(model: nn.Module) -> dict:
    """The ``act_thresholds`` entry of a saved model with FATReLU thresholds (else nothing)."""
    thresholds = thresholds_of(model)
    return {"act_thresholds": thresholds} if thresholds else {}
