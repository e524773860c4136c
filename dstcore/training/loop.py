"""One training loop for the three stages of dual sparse training.

- ``train``: dense baseline from scratch.
- ``finetune``: from a saved model, CE + lam * activation penalty (``reg.method`` none, l1,
  hoyer or tl1); masks stay fixed when the parent was pruned (stage 3).
- ``prune``: from a saved model, ``prune.l1_epochs`` with a weight l1 penalty, then magnitude
  pruning (``prune.structure``: single weights or whole block units), then
  ``prune.finetune_epochs`` with the masks fixed (stage 2).

Each run owns a directory: ``config.yaml`` (resolved), ``log.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic, every epoch, removed at the end), ``model.pt``, ``train.json`` and,
unless disabled, ``metrics.json``. Epoch ``e`` draws its randomness from (seed, e) only, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dstcore import DstError, error_line
from dstcore.core.environment import provenance
from dstcore.core.io import write_json, write_text, write_with, write_yaml
from dstcore.data.datasets import DataBundle, load_dataset, make_loader
from dstcore.measure.metrics import evaluate, full_metrics
from dstcore.models import build_model
from dstcore.models.checkpoint import read_model, safe_load, save_model
from dstcore.sparsity.activations import activation_layers
from dstcore.sparsity.pruning import (
    fix_masks_from_zeros,
    has_masks,
    identity_masks,
    make_permanent,
    prune_weights,
    weight_l1,
)
from dstcore.sparsity.regularizers import ActivationPenalty
from dstcore.training.config import RunConfig, validate

STAGES = ("train", "finetune", "prune")
CHECKPOINT_FORMAT = "dstcore-checkpoint-v2"  # what resume accepts (checkpoint.pt)
CHECKPOINT_REJECTED = "checkpoint.pt.rejected"  # where a file resume refuses is moved


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DstError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def configure_runtime(threads: int, deterministic: bool) -> None:
    """Set torch's thread count (0 keeps the default) and deterministic algorithms."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def lr_at(cfg: RunConfig, epoch: int, total: int) -> float:
    """Learning rate of (0-based) ``epoch`` out of ``total``."""
    t = cfg.train
    if epoch < t.warmup_epochs:
        return t.lr * (epoch + 1) / t.warmup_epochs
    if t.schedule == "cosine":
        span = max(total - t.warmup_epochs, 1)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - t.warmup_epochs) / span))
    if t.schedule == "step":
        return t.lr * t.gamma ** sum(epoch >= m for m in t.milestones)
    return t.lr


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch (shuffling, augmentation, dropout)."""
    return seed * 1_000_003 + epoch


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD or Adam over the parameters in a pruning-independent order (``weight_orig`` sorts
    as ``weight``), so an optimizer state saved before or after pruning loads the same way."""
    named = sorted(model.named_parameters(), key=lambda kv: kv[0].removesuffix("_orig"))
    params = [p for _, p in named]
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay)


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


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    device: torch.device, penalty: ActivationPenalty | None, lam: float,
                    weight_l1_lam: float, desc: str, l1_exclude: Sequence[str] = ()) -> EpochStats:
    """One pass over ``loader`` minimising CE + lam * penalty (+ weight_l1_lam * sum|w| over
    the layers stage 2 prunes, see :func:`~dstcore.sparsity.pruning.prunable_layers`)."""
    model.train()
    s, correct, seen = EpochStats(), 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
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
        s.ce += ce.item()
        s.reg += float(reg.detach()) if torch.is_tensor(reg) else reg
        s.weight_l1 += float(wl1.detach()) if torch.is_tensor(wl1) else wl1
        s.loss += loss_value
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    n = max(s.steps, 1)
    s.ce, s.reg, s.weight_l1, s.loss = s.ce / n, s.reg / n, s.weight_l1 / n, s.loss / n
    s.accuracy = correct / max(seen, 1)
    return s


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


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


def total_epochs(cfg: RunConfig, stage: str) -> int:
    if stage == "prune":
        return cfg.prune.l1_epochs + cfg.prune.finetune_epochs
    return cfg.train.epochs


@dataclass
class Session:
    """What one run trains with: the model and its optimiser, data, penalty and history."""

    cfg: RunConfig
    stage: str
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
    start: int = 0
    elapsed_before: float = 0.0
    final: dict | None = None  # full metrics of the last epoch, when they were computed

    @property
    def epochs(self) -> int:
        return total_epochs(self.cfg, self.stage)

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint.pt"


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
    configure_runtime(cfg.train.threads, cfg.train.deterministic)
    d = cfg.data
    if bundle is None:
        bundle = load_dataset(d.dataset, d.data_root, d.cache_dir, d.download, d.verify,
                              d.train_subset, d.test_subset, d.subset_seed)
    session = _new_session(cfg, stage, out_dir, init, parent, bundle, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(out_dir / "config.yaml", {"stage": stage, "from": str(init) if init else None,
                                         **cfg.to_dict()})
    if resume and session.checkpoint.exists() and not _resume(session):
        session = _new_session(cfg, stage, out_dir, init, parent, bundle, device)
    write_text(out_dir / "log.jsonl", "".join(_jsonl(h) for h in session.history))
    return session


def _new_session(cfg: RunConfig, stage: str, out_dir: Path, init: Path | None,
                 parent: dict | None, bundle: DataBundle, device: torch.device) -> Session:
    """A session at epoch 0: the model seeded from ``cfg`` (or the parent's weights)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes)
    masks_fixed = False
    if parent is not None:
        model.load_state_dict(parent["state_dict"])
        masks_fixed = bool(parent["masks_fixed"])
        if masks_fixed:
            fix_masks_from_zeros(model)
    model.to(device)
    act_layers = activation_layers(model, bundle.input_shape)
    penalty = None
    if cfg.reg.method != "none":
        penalty = ActivationPenalty(act_layers, cfg.reg.method, cfg.reg.beta,
                                    cfg.reg.layer_weights)
    return Session(cfg, stage, out_dir, init, parent, bundle, device, model,
                   make_optimizer(model, cfg), act_layers, penalty, masks_fixed, [])


def _resume(s: Session) -> bool:
    """Continue from ``s.checkpoint``; False when the run must start over from a fresh model.

    The file is read with ``weights_only=True`` (no code in it can run). A file that is not a
    checkpoint of this run's layout is moved aside to ``checkpoint.pt.rejected``.
    """
    try:
        state = safe_load(s.checkpoint, s.device)
        history = _check_checkpoint(state, s.epochs)
        if state["config_hash"] != s.cfg.semantic_hash() or state["stage"] != s.stage:
            _say(f"{s.out_dir}: checkpoint was made with another config; starting over")
            return False
        if state["pruned"]:
            identity_masks(s.model)
        s.model.load_state_dict(state["model"])
        s.optimizer = make_optimizer(s.model, s.cfg)
        s.optimizer.load_state_dict(state["optimizer"])
    except Exception as err:  # any failure means the file is not a checkpoint of this run
        rejected = s.checkpoint.with_name(CHECKPOINT_REJECTED)
        os.replace(s.checkpoint, rejected)
        _say(f"{s.checkpoint}: not a valid checkpoint ({error_line(err)}); "
             f"moved to {rejected.name}, starting over")
        return False
    s.start, s.history, s.elapsed_before = state["epoch"], history, state["elapsed"]
    _say(f"{s.out_dir}: resuming after epoch {s.start}")
    return True


def _check_checkpoint(state: object, epochs: int) -> list[dict]:
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


def train_epochs(s: Session, final_eval: bool) -> dict | None:
    """Train from ``s.start`` to the last epoch; return the divergence record, if any.

    After each epoch: evaluate when it is due (:func:`evaluation_due`), stop early on a
    collapse to chance, keep the last good weights and write an atomic checkpoint.
    """
    t_start = time.perf_counter()
    bar = tqdm(range(s.start, s.epochs), desc=f"{s.stage} {s.out_dir.name}", disable=None,
               initial=s.start, total=s.epochs)
    divergence = _epochs(s, bar, final_eval, t_start)
    bar.close()
    s.elapsed_before += time.perf_counter() - t_start
    return divergence


def _epochs(s: Session, bar, final_eval: bool, t_start: float) -> dict | None:
    last_good = copy.deepcopy(s.model.state_dict())
    for epoch in bar:
        if s.stage == "prune" and epoch >= s.cfg.prune.l1_epochs and not has_masks(s.model):
            p = s.cfg.prune
            prune_weights(s.model, p.rate, p.threshold, p.scope, p.structure, p.block_out,
                          p.exclude)
            last_good = copy.deepcopy(s.model.state_dict())
        stats, lr, train_seconds = _train_epoch(s, epoch)
        if stats.diverged_step is not None:
            s.model.load_state_dict(last_good)
            return {"epoch": epoch + 1, "step": stats.diverged_step, "lam": s.cfg.reg.lam,
                    "reason": "non-finite loss", "last_finite_loss": stats.last_finite_loss}
        line = {"epoch": epoch + 1, "lr": lr, "phase": _phase(s, epoch), "train_ce": stats.ce,
                "train_reg": stats.reg, "train_weight_l1": stats.weight_l1,
                "train_loss": stats.loss, "train_top1": stats.accuracy,
                "train_seconds": train_seconds, **_evaluate_epoch(s, epoch, final_eval)}
        s.history.append(line)
        if _collapsed(s, line["test_top1"]):
            s.model.load_state_dict(last_good)
            s.final = None
            return {"epoch": epoch + 1, "step": stats.steps, "lam": s.cfg.reg.lam,
                    "reason": f"test accuracy {line['test_top1']:.4f} collapsed to chance",
                    "last_finite_loss": stats.last_finite_loss}
        last_good = copy.deepcopy(s.model.state_dict())
        _save_checkpoint(s, epoch, s.elapsed_before + time.perf_counter() - t_start)
        _report(s, bar, line)
    return None


def _train_epoch(s: Session, epoch: int) -> tuple[EpochStats, float, float]:
    """One epoch at its learning rate and seed: (stats, learning rate, seconds)."""
    lr = lr_at(s.cfg, epoch, s.epochs)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    seed = epoch_seed(s.cfg.train.seed, epoch)
    torch.manual_seed(seed)
    loader = make_loader(s.bundle.train, s.cfg.train.batch_size, shuffle=True, seed=seed,
                         num_workers=s.cfg.data.num_workers)
    weight_l1_lam = s.cfg.prune.weight_l1 if _phase(s, epoch) == "weight_l1" else 0.0
    t0 = time.perf_counter()
    if s.penalty is not None:
        with s.penalty:
            stats = train_one_epoch(s.model, loader, s.optimizer, s.device, s.penalty,
                                    s.cfg.reg.lam, 0.0, f"epoch {epoch + 1}")
    else:
        stats = train_one_epoch(s.model, loader, s.optimizer, s.device, None, 0.0,
                                weight_l1_lam, f"epoch {epoch + 1}", s.cfg.prune.exclude)
    return stats, lr, time.perf_counter() - t0


def evaluation_due(cfg: RunConfig, epoch: int, epochs: int) -> bool:
    """Whether (0-based) ``epoch`` is evaluated: every ``train.eval_every`` epochs and always
    the last (``eval_every`` 0: the last only)."""
    every = cfg.train.eval_every
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


def _evaluate_epoch(s: Session, epoch: int, final_eval: bool) -> dict:
    """The log fields of the test evaluation after ``epoch`` (None when not due). The last
    epoch's evaluation is the full one (MACs, weight sparsity) when ``final_eval``."""
    if not evaluation_due(s.cfg, epoch, s.epochs):
        return {"test_top1": None, "test_loss": None, "activation_sparsity": None,
                "eval_seconds": 0.0}
    t0 = time.perf_counter()
    if final_eval and epoch + 1 == s.epochs:
        s.final = full_metrics(s.model, s.bundle, s.device, s.cfg.data.eval_batch_size)
        top1, loss = s.final["accuracy"]["top1"], s.final["test_loss"]
        sparsity = s.final["activation_sparsity"]["overall"]
    else:
        loader = make_loader(s.bundle.test, s.cfg.data.eval_batch_size, shuffle=False)
        ev = evaluate(s.model, loader, s.device, s.act_layers, s.bundle.num_classes, desc="test")
        top1, loss, sparsity = ev["top1"], ev["loss"], ev["activation_sparsity"]["overall"]
    return {"test_top1": top1, "test_loss": loss, "activation_sparsity": sparsity,
            "eval_seconds": time.perf_counter() - t0}


def _collapsed(s: Session, top1: float | None) -> bool:
    """A fine-tune whose test accuracy fell to chance (x collapse_factor) from a parent above."""
    if top1 is None or s.parent is None:
        return False
    floor = s.cfg.train.collapse_factor / s.bundle.num_classes
    parent_top1 = s.parent.get("final_top1")
    return top1 <= floor and (parent_top1 is None or parent_top1 > floor)


def _save_checkpoint(s: Session, epoch: int, elapsed: float) -> None:
    checkpoint = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1,
                  "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                  "history": json.dumps(s.history), "elapsed": float(elapsed),
                  "config_hash": s.cfg.semantic_hash(), "stage": s.stage,
                  "pruned": has_masks(s.model)}
    write_with(s.checkpoint, lambda tmp: torch.save(checkpoint, tmp))
    with open(s.out_dir / "log.jsonl", "a") as fh:
        fh.write(_jsonl(s.history[-1]))


def _report(s: Session, bar, line: dict) -> None:
    seconds = f"({line['train_seconds']:.1f}s)"
    if line["test_top1"] is None:
        _say(f"{s.out_dir}: epoch {line['epoch']}/{s.epochs} loss {line['train_loss']:.4f} "
             f"train top1 {line['train_top1']:.4f} {seconds}")
        return
    bar.set_postfix(loss=f"{line['train_loss']:.3f}", acc=f"{line['test_top1']:.4f}",
                    sparsity=f"{line['activation_sparsity']:.3f}")
    _say(f"{s.out_dir}: epoch {line['epoch']}/{s.epochs} loss {line['train_loss']:.4f} "
         f"test top1 {line['test_top1']:.4f} activation sparsity "
         f"{line['activation_sparsity']:.4f} {seconds}")


def finish(s: Session, divergence: dict | None, final_eval: bool, tags: dict[str, str]) -> dict:
    """Save ``model.pt`` (masks folded in), ``train.json`` and, with ``final_eval``,
    ``metrics.json``; remove the checkpoint. Returns the ``train.json`` summary."""
    status = "completed" if divergence is None else "diverged"
    if divergence is not None:
        _say(f"{s.out_dir}: DIVERGED at epoch {divergence['epoch']} (lam={s.cfg.reg.lam}): "
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
               config=s.cfg.to_dict(), stage=s.stage, status=status, final_top1=final_top1)
    write_json(s.out_dir / "train.json", summary)
    if final_eval:
        metrics = s.final or full_metrics(s.model, s.bundle, s.device, s.cfg.data.eval_batch_size)
        write_json(s.out_dir / "metrics.json", merge_metrics(metrics, summary))
    s.checkpoint.unlink(missing_ok=True)
    return summary


def merge_metrics(metrics: dict, summary: dict) -> dict:
    """metrics.json: the evaluation plus the run's identity, status and provenance."""
    cfg = summary["config"]
    return {
        "status": summary["status"], "stage": summary["stage"], "tags": summary.get("tags", {}),
        "model": cfg["model"]["name"], "dataset": cfg["data"]["dataset"],
        "method": cfg["reg"]["method"] if summary["stage"] == "finetune" else None,
        "lam": cfg["reg"]["lam"] if summary["stage"] == "finetune" else None,
        "beta": cfg["reg"]["beta"] if cfg["reg"]["method"] == "tl1" else None,
        "seed": cfg["train"]["seed"],
        **metrics,
        "train": {k: summary[k] for k in ("from", "parent_status", "epochs_planned",
                                          "epochs_completed", "divergence", "final",
                                          "train_seconds_per_epoch", "wall_seconds")},
        "config": cfg,
        "provenance": summary["provenance"],
    }


def _phase(s: Session, epoch: int) -> str:
    if s.stage == "prune":
        return "weight_l1" if epoch < s.cfg.prune.l1_epochs else "masked_finetune"
    return s.stage


def _jsonl(obj: dict) -> str:
    return json.dumps(obj) + "\n"
