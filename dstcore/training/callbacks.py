"""What runs after each epoch, in order (OpenLTH's ``standard_callbacks``).

A callback is ``callback(session, epoch, stats, line)``: ``epoch`` is 0-based, ``stats`` the
epoch's :class:`~dstcore.training.loop.EpochStats` and ``line`` its ``log.jsonl`` line (already
the last of ``session.history``, which callbacks complete). One that returns a divergence
record stops the run; the loop then restores the last good weights.

1. evaluation: the test pass when due (:func:`evaluation_due`); the last epoch's is the full
   one of ``metrics.json`` when the run evaluates at all (``final_eval``); then, when
   ``train.curve_images`` is set, the learning curve's point on a fixed test slice
   (:func:`curve_point`).
2. collapse: a fine-tune whose test accuracy fell to chance stops as diverged.
3. checkpointing: the atomic ``checkpoint.pt`` and the epoch's ``log.jsonl`` line.
4. logging: the progress bar and one console line per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from dstcore.data.loaders import make_loader
from dstcore.measure.metrics import evaluate, full_metrics
from dstcore.training.checkpointing import save_checkpoint
from dstcore.training.config import RunConfig
from dstcore.training.runtime import say

if TYPE_CHECKING:
    from dstcore.training.loop import EpochStats
    from dstcore.training.session import Session

    Callback = Callable[[Session, int, EpochStats, dict], dict | None]


def standard_callbacks(s: Session, final_eval: bool, bar: tqdm, t_start: float) -> list[Callback]:
    """The callbacks of a run whose epochs started at ``t_start`` (perf_counter seconds)."""
    curve_slice: list = []  # built on first use, shared by every epoch of the run

    def evaluation(s: Session, epoch: int, stats: EpochStats, line: dict) -> None:
        line.update(evaluate_epoch(s, epoch, final_eval))
        if s.cfg.train.curve_images > 0:
            if not curve_slice:
                curve_slice.append(curve_loader(s))
            line.update(curve_point(s, curve_slice[0]))

    def collapse(s: Session, epoch: int, stats: EpochStats, line: dict) -> dict | None:
        if not collapsed(s, line["test_top1"]):
            return None
        s.final = None
        return {"epoch": epoch + 1, "step": stats.steps, "lam": s.cfg.reg.lam,
                "reason": f"test accuracy {line['test_top1']:.4f} collapsed to chance",
                "last_finite_loss": stats.last_finite_loss}

    def checkpointing(s: Session, epoch: int, stats: EpochStats, line: dict) -> None:
        save_checkpoint(s, epoch, s.elapsed_before + time.perf_counter() - t_start)

    def logging(s: Session, epoch: int, stats: EpochStats, line: dict) -> None:
        report(s, bar, line)

    return [evaluation, collapse, checkpointing, logging]


def after_epoch(callbacks: list[Callback], s: Session, epoch: int, stats: EpochStats,
                line: dict) -> dict | None:
    """Run ``callbacks`` in order; the first divergence record returned stops the rest."""
    for callback in callbacks:
        stop = callback(s, epoch, stats, line)
        if stop is not None:
            return stop
    return None


def evaluation_due(cfg: RunConfig, epoch: int, epochs: int) -> bool:
    """Whether (0-based) ``epoch`` is evaluated: every ``train.eval_every`` epochs and always
    the last (``eval_every`` 0: the last only)."""
    every = cfg.train.eval_every
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


def evaluate_epoch(s: Session, epoch: int, final_eval: bool) -> dict:
    """The log fields of the test evaluation after ``epoch`` (None when not due). The last
    epoch's evaluation is the full one (MACs, weight sparsity) when ``final_eval``."""
    if not evaluation_due(s.cfg, epoch, s.epochs):
        return {"test_top1": None, "test_loss": None, "activation_sparsity": None,
                "eval_seconds": 0.0}
    t0 = time.perf_counter()
    if final_eval and epoch + 1 == s.epochs:
        s.final = full_metrics(s.model, s.bundle, s.device, s.cfg.data.eval_batch_size,
                               s.cfg.data.num_workers)
        top1, loss = s.final["accuracy"]["top1"], s.final["test_loss"]
        sparsity = s.final["activation_sparsity"]["overall"]
    else:
        loader = make_loader(s.bundle.test, s.cfg.data.eval_batch_size, shuffle=False,
                             num_workers=s.cfg.data.num_workers,
                             pin_memory=s.device.type == "cuda")
        ev = evaluate(s.model, loader, s.device, s.act_layers, s.bundle.num_classes, desc="test")
        top1, loss, sparsity = ev["top1"], ev["loss"], ev["activation_sparsity"]["overall"]
    return {"test_top1": top1, "test_loss": loss, "activation_sparsity": sparsity,
            "eval_seconds": time.perf_counter() - t0}


def curve_loader(s: Session) -> list:
    """The batches of the learning-curve slice: ``train.curve_images`` test images, class-
    stratified with seed 0 (the same images for every run of a dataset and test subset)."""
    from dstcore.data.subsets import stratified_subset

    chosen = stratified_subset(s.bundle.test, s.cfg.train.curve_images, 0, "curve slice",
                               s.bundle.subset_cache)
    return list(make_loader(chosen, s.cfg.data.eval_batch_size, shuffle=False))


def curve_point(s: Session, batches: list) -> dict:
    """``curve_top1`` and ``curve_sparsity`` (fractions) of the model now on ``batches`` and
    the seconds it took (``curve_seconds``)."""
    t0 = time.perf_counter()
    ev = evaluate(s.model, batches, s.device, s.act_layers, s.bundle.num_classes, desc="curve")
    return {"curve_top1": ev["top1"], "curve_sparsity": ev["activation_sparsity"]["overall"],
            "curve_seconds": time.perf_counter() - t0}


def final_metrics(s: Session) -> dict:
    """The full evaluation of ``metrics.json``: the last epoch's, else (a run that stopped
    early or had no epoch left to run) one of the final model now."""
    return s.final or full_metrics(s.model, s.bundle, s.device, s.cfg.data.eval_batch_size,
                                   s.cfg.data.num_workers)


def collapsed(s: Session, top1: float | None) -> bool:
    """A fine-tune whose test accuracy fell to chance (x collapse_factor) from a parent above."""
    if top1 is None or s.parent is None:
        return False
    floor = s.cfg.train.collapse_factor / s.bundle.num_classes
    parent_top1 = s.parent.get("final_top1")
    return top1 <= floor and (parent_top1 is None or parent_top1 > floor)


def progress_bar(s: Session) -> tqdm:
    """A bar over the epochs left to run (shown on a terminal only)."""
    return tqdm(range(s.start, s.epochs), desc=f"{s.stage} {s.out_dir.name}", disable=None,
                initial=s.start, total=s.epochs)


def report(s: Session, bar: tqdm, line: dict) -> None:
    seconds = f"({line['train_seconds']:.1f}s)"
    if line["test_top1"] is None:
        say(f"{s.out_dir}: epoch {line['epoch']}/{s.epochs} loss {line['train_loss']:.4f} "
            f"train top1 {line['train_top1']:.4f} {seconds}")
        return
    bar.set_postfix(loss=f"{line['train_loss']:.3f}", acc=f"{line['test_top1']:.4f}",
                    sparsity=f"{line['activation_sparsity']:.3f}")
    say(f"{s.out_dir}: epoch {line['epoch']}/{s.epochs} loss {line['train_loss']:.4f} "
        f"test top1 {line['test_top1']:.4f} activation sparsity "
        f"{line['activation_sparsity']:.4f} {seconds}")
