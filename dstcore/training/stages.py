"""The stages of dual sparse training: one registry, and the ``dst`` commands as sequences.

A stage names its epochs in ``log.jsonl`` (``phase``), says what it does at its first epoch in
a session (``begin``) and which loss terms a step adds to the cross-entropy (``loss_terms``):

=====================  ===================  ==================  ===============================
stage                  phase                at its start        loss of a step
=====================  ===================  ==================  ===============================
dense                  ``train``            -                   CE (+ lam * penalty when
                                                                ``reg.method`` is set)
activation_finetune    ``finetune``         -                   CE + lam * penalty (``reg``;
                                                                none: the lam = 0 control)
weight_l1              ``weight_l1``        -                   CE + prune.weight_l1 * sum |w|
masked_finetune        ``masked_finetune``  magnitude pruning   CE, masks fixed
=====================  ===================  ==================  ===============================

Masks stay fixed in any stage when the parent model was pruned (stage 3 is
``activation_finetune`` from a pruned model). ``dst prune`` runs ``weight_l1`` for
``prune.l1_epochs``, then ``masked_finetune`` for ``prune.finetune_epochs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dstcore.sparsity.pruning import has_masks, prune_weights
from dstcore.sparsity.regularizers import ActivationPenalty
from dstcore.training.config import RunConfig

if TYPE_CHECKING:
    from dstcore.training.session import Session


@dataclass
class LossTerms:
    """What a step adds to the cross-entropy: ``lam * penalty`` and ``weight_l1 * sum |w|``
    (over the prunable layers but ``l1_exclude``)."""

    penalty: ActivationPenalty | None = None
    lam: float = 0.0
    weight_l1: float = 0.0
    l1_exclude: Sequence[str] = ()


class Stage:
    """One kind of epoch. Stages hold no state; the registry holds one of each."""

    name = ""
    phase = ""  # the ``phase`` of its lines in log.jsonl

    def begin(self, s: Session) -> None:
        """Run at the stage's first epoch in a session (a resumed one included)."""

    def loss_terms(self, s: Session) -> LossTerms:
        return LossTerms()


def activation_terms(s: Session) -> LossTerms:
    """``lam * penalty`` when ``reg.method`` is set (the session built its penalty), else none."""
    if s.penalty is None:
        return LossTerms()
    return LossTerms(s.penalty, s.cfg.reg.lam)


class Dense(Stage):
    """Train from scratch (``dst train``)."""

    name, phase = "dense", "train"

    def loss_terms(self, s: Session) -> LossTerms:
        return activation_terms(s)


class ActivationFinetune(Stage):
    """Fine-tune a saved model with ``reg.method`` (``dst finetune``; stage 3 from a pruned one)."""

    name, phase = "activation_finetune", "finetune"

    def loss_terms(self, s: Session) -> LossTerms:
        return activation_terms(s)


class WeightL1(Stage):
    """Stage 2's first epochs: a weight l1 penalty drives weights towards zero before pruning
    (``dst prune`` takes no ``reg.method``, see :func:`~dstcore.training.config.validate`)."""

    name, phase = "weight_l1", "weight_l1"

    def loss_terms(self, s: Session) -> LossTerms:
        return LossTerms(weight_l1=s.cfg.prune.weight_l1, l1_exclude=s.cfg.prune.exclude)


class MaskedFinetune(Stage):
    """Stage 2 after pruning: prune by magnitude at its start, then train with the masks fixed."""

    name, phase = "masked_finetune", "masked_finetune"

    def begin(self, s: Session) -> None:
        if not has_masks(s.model):  # resumed after pruning, or the parent was already pruned
            p = s.cfg.prune
            prune_weights(s.model, p.rate, p.threshold, p.scope, p.structure, p.block_out,
                          p.exclude)


REGISTRY: dict[str, Stage] = {stage.name: stage for stage in (
    Dense(), ActivationFinetune(), WeightL1(), MaskedFinetune())}

# dst command -> (stage, the config key holding its number of epochs), in order
COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("dense", "train.epochs"),),
    "finetune": (("activation_finetune", "train.epochs"),),
    "prune": (("weight_l1", "prune.l1_epochs"), ("masked_finetune", "prune.finetune_epochs")),
}
STAGES = tuple(COMMANDS)


def schedule(cfg: RunConfig, command: str) -> list[tuple[Stage, int]]:
    """The stages ``dst <command>`` runs, in order, each with its number of epochs."""
    def epochs(key: str) -> int:
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)
    return [(REGISTRY[stage], epochs(key)) for stage, key in COMMANDS[command]]


def stage_at(plan: list[tuple[Stage, int]], epoch: int) -> Stage:
    """The stage of (0-based) ``epoch`` in ``plan``."""
    left = epoch
    for stage, epochs in plan:
        if left < epochs:
            return stage
        left -= epochs
    raise IndexError(f"epoch {epoch} is past the last stage")
