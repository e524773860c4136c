"""One training loop for the three stages of dual sparse training.

- ``train``: dense baseline from scratch.
- ``finetune``: from a saved model, CE + lam * activation penalty (``reg.method`` none, l1,
  hoyer or tl1); masks stay fixed when the parent was pruned (stage 3).
- ``prune``: from a saved model, ``prune.l1_epochs`` with a weight l1 penalty, then magnitude
  pruning, then ``prune.finetune_epochs`` with the masks fixed (stage 2).

Each run owns a directory: ``config.yaml`` (resolved), ``log.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic, every epoch, removed at the end), ``model.pt``, ``train.json`` and,
unless disabled, ``metrics.json``. Epoch ``e`` draws its randomness from (seed, e) only, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dstcore import DstError
from dstcore.checkpoint import read_model, save_model
from dstcore.config import RunConfig, validate
from dstcore.data import DataBundle, load_dataset, make_loader
from dstcore.io import write_json, write_text, write_with, write_yaml
from dstcore.metrics import evaluate, full_metrics
from dstcore.models import build_model
from dstcore.provenance import provenance
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

STAGES = ("train", "finetune", "prune")


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
                    weight_l1_lam: float, desc: str) -> EpochStats:
    """One pass over ``loader`` minimising CE + lam * penalty (+ weight_l1_lam * sum|w|)."""
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
            wl1 = weight_l1(model)
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


def run(cfg: RunConfig, stage: str, out_dir: str | Path, init: str | Path | None = None,
        resume: bool = False, final_eval: bool = True, bundle: DataBundle | None = None,
        tags: dict[str, str] | None = None) -> dict:
    """Run one stage into ``out_dir`` and return its ``train.json`` summary.

    Everything that can be checked (config, checkpoint, data) is checked before ``out_dir``
    is created. ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists and was
    made with the same config; otherwise the run starts over.
    """
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
    optimizer = make_optimizer(model, cfg)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(out_dir / "config.yaml", {"stage": stage, "from": str(init) if init else None,
                                         **cfg.to_dict()})
    ckpt_path = out_dir / "checkpoint.pt"
    history: list[dict] = []
    start, elapsed_before = 0, 0.0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("config_hash") == cfg.semantic_hash() and state.get("stage") == stage:
            if state["pruned"]:
                identity_masks(model)
            model.load_state_dict(state["model"])
            optimizer = make_optimizer(model, cfg)
            optimizer.load_state_dict(state["optimizer"])
            start, history, elapsed_before = state["epoch"], state["history"], state["elapsed"]
            _say(f"{out_dir}: resuming after epoch {start}")
        else:
            _say(f"{out_dir}: checkpoint was made with another config; starting over")
    write_text(out_dir / "log.jsonl", "".join(_jsonl(h) for h in history))

    epochs = total_epochs(cfg, stage)
    test_loader = make_loader(bundle.test, d.eval_batch_size, shuffle=False)
    chance = 1.0 / bundle.num_classes
    parent_top1 = parent.get("final_top1") if parent else None
    divergence = None
    last_good = copy.deepcopy(model.state_dict())
    t_start = time.perf_counter()
    bar = tqdm(range(start, epochs), desc=f"{stage} {out_dir.name}", disable=None,
               initial=start, total=epochs)
    for epoch in bar:
        pruning_phase = stage == "prune" and epoch < cfg.prune.l1_epochs
        if stage == "prune" and not pruning_phase and not has_masks(model):
            prune_weights(model, cfg.prune.rate, cfg.prune.threshold, cfg.prune.scope)
            last_good = copy.deepcopy(model.state_dict())
        lr = lr_at(cfg, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed = epoch_seed(cfg.train.seed, epoch)
        torch.manual_seed(seed)
        loader = make_loader(bundle.train, cfg.train.batch_size, shuffle=True, seed=seed,
                             num_workers=d.num_workers)
        t0 = time.perf_counter()
        if penalty is not None:
            with penalty:
                stats = train_one_epoch(model, loader, optimizer, device, penalty, cfg.reg.lam,
                                        0.0, f"epoch {epoch + 1}")
        else:
            stats = train_one_epoch(model, loader, optimizer, device, None, 0.0,
                                    cfg.prune.weight_l1 if pruning_phase else 0.0,
                                    f"epoch {epoch + 1}")
        train_seconds = time.perf_counter() - t0
        if stats.diverged_step is not None:
            divergence = {"epoch": epoch + 1, "step": stats.diverged_step, "lam": cfg.reg.lam,
                          "reason": "non-finite loss",
                          "last_finite_loss": stats.last_finite_loss}
            break
        t1 = time.perf_counter()
        ev = evaluate(model, test_loader, device, act_layers, bundle.num_classes,
                      desc="test")
        line = {"epoch": epoch + 1, "lr": lr, "phase": _phase(stage, pruning_phase),
                "train_ce": stats.ce, "train_reg": stats.reg, "train_weight_l1": stats.weight_l1,
                "train_loss": stats.loss, "train_top1": stats.accuracy, "test_top1": ev["top1"],
                "test_loss": ev["loss"],
                "activation_sparsity": ev["activation_sparsity"]["overall"],
                "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t1}
        collapsed = (parent is not None and ev["top1"] <= cfg.train.collapse_factor * chance
                     and (parent_top1 is None or parent_top1 > cfg.train.collapse_factor * chance))
        if collapsed:
            divergence = {"epoch": epoch + 1, "step": stats.steps, "lam": cfg.reg.lam,
                          "reason": f"test accuracy {ev['top1']:.4f} collapsed to chance",
                          "last_finite_loss": stats.last_finite_loss}
            history.append(line)
            break
        history.append(line)
        last_good = copy.deepcopy(model.state_dict())
        elapsed = elapsed_before + time.perf_counter() - t_start
        checkpoint = {"epoch": epoch + 1, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "history": history,
                      "elapsed": elapsed, "config_hash": cfg.semantic_hash(), "stage": stage,
                      "pruned": has_masks(model)}
        write_with(ckpt_path, lambda tmp, c=checkpoint: torch.save(c, tmp))
        with open(out_dir / "log.jsonl", "a") as fh:
            fh.write(_jsonl(line))
        bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{ev['top1']:.4f}",
                        sparsity=f"{line['activation_sparsity']:.3f}")
        _say(f"{out_dir}: epoch {epoch + 1}/{epochs} loss {stats.loss:.4f} "
             f"test top1 {ev['top1']:.4f} activation sparsity "
             f"{line['activation_sparsity']:.4f} ({train_seconds:.1f}s)")
    bar.close()

    status = "completed"
    if divergence is not None:
        status = "diverged"
        model.load_state_dict(last_good)  # the last finite weights
        _say(f"{out_dir}: DIVERGED at epoch {divergence['epoch']} (lam={cfg.reg.lam}): "
             f"{divergence['reason']}; run marked status=diverged")
    pruned = has_masks(model)
    make_permanent(model)
    wall = elapsed_before + time.perf_counter() - t_start
    summary = {
        "status": status, "stage": stage, "tags": tags or {}, "from": str(init) if init else None,
        "parent_status": parent.get("status") if parent else None,
        "epochs_planned": epochs, "epochs_completed": len(history) if not divergence
        else divergence["epoch"] - 1,
        "divergence": divergence, "final": history[-1] if history else None,
        "train_seconds_per_epoch": statistics.median(h["train_seconds"] for h in history)
        if history else None,
        "wall_seconds": wall, "config": cfg.to_dict(), "data_source": bundle.source,
        "provenance": provenance(device, cfg.train.seed),
    }
    final_top1 = history[-1]["test_top1"] if history and not divergence else parent_top1
    save_model(out_dir / "model.pt", model, model_name=cfg.model.name, dataset=cfg.data.dataset,
               input_shape=bundle.input_shape, num_classes=bundle.num_classes,
               masks_fixed=masks_fixed or pruned, config=cfg.to_dict(), stage=stage,
               status=status, final_top1=final_top1)
    write_json(out_dir / "train.json", summary)
    if final_eval:
        metrics = full_metrics(model, bundle, device, cfg.data.eval_batch_size)
        write_json(out_dir / "metrics.json", merge_metrics(metrics, summary))
    ckpt_path.unlink(missing_ok=True)
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


def _phase(stage: str, pruning_phase: bool) -> str:
    if stage == "prune":
        return "weight_l1" if pruning_phase else "masked_finetune"
    return stage


def _jsonl(obj: dict) -> str:
    import json

    return json.dumps(obj) + "\n"
