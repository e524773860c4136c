"""A run's identity: the one definition of what a run is and where it lives.

A :class:`RunSpec` names a run by its experiment, :class:`RunKind`, method, λ, β, pruning rate and
structure, and seed. From it come its directory under the results folder (:meth:`RunSpec.path`),
the ``--tag`` labels its ``dst`` command writes into ``metrics.json`` (:meth:`RunSpec.tags`), the
Snakemake rule that makes it (:attr:`RunKind.rule`) and its columns in ``runs.csv``; each of these
reads back into the same spec (:meth:`RunSpec.from_path`, :meth:`RunSpec.from_tags`).

Directories (:data:`PATH_TEMPLATES`; numbers written by :func:`fmt`; ``{variant}`` is the method,
``tl1-beta0.5`` for one with β; ``{structure}`` is empty for element pruning and ``block16-`` for
block pruning with 16 output channels per unit)::

    baseline      {exp}/baseline/seed{seed}
    control       {exp}/none/lam0/seed{seed}
    actreg        {exp}/{variant}/lam{lam}/seed{seed}
    pruned        {exp}/dual/{structure}prune{rate}/stage2/seed{seed}
    dual_control  {exp}/dual/{structure}prune{rate}/lam0/seed{seed}
    dual          {exp}/dual/{structure}prune{rate}/tl1-beta{beta}/lam{lam}/seed{seed}
    threshold     {exp}/fatrelu/budget{lam}/seed{seed}

A run's ``lam`` is the value its method's sweep varies: λ of a regulariser, and for FATReLU
(``threshold`` runs) the accuracy budget in percentage points of its threshold search.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from dstcore import DstError

NO_METHOD = "none"  # the method of runs without an activation penalty
ELEMENT = "element"  # unstructured weight pruning (single weights)
BLOCK = "block"  # block pruning: units of block_out output channels x one input channel
DUAL_DIR = "dual"  # the folder of an experiment's stage 2 and 3 runs
DUAL_METHOD = "tl1"  # stage 3's activation penalty: the paper's method (Transformed l1)
THRESHOLD_METHOD = "fatrelu"  # activation thresholds searched on a trained model (FATReLU)
RESERVED = frozenset({NO_METHOD, DUAL_DIR, "baseline", "latency", "data", "tables", "logs",
                      "benchmarks", "report", "figures"})  # names a method may not take


def fmt(value: float) -> str:
    """Canonical text of a number in paths and tags (``1e-05``, ``0.001``, ``0.9``)."""
    return f"{float(value):g}"


def _canonical(value: float | None) -> float | None:
    return None if value is None else float(fmt(value))


class RunKind(StrEnum):
    """The seven kinds of run; the value is ``runs.csv``'s ``kind``."""

    BASELINE = "baseline"  # stage 1: dense training from scratch
    CONTROL = "control"  # the λ = 0 fine-tune every regulariser is compared with
    ACTREG = "actreg"  # fine-tune with an activation penalty
    PRUNED = "pruned"  # stage 2: weight l1, pruning, masked fine-tune
    DUAL_CONTROL = "dual_control"  # stage 3's λ = 0 control, masks fixed
    DUAL = "dual"  # stage 3: TL1 with the masks fixed
    THRESHOLD = "threshold"  # FATReLU: per-layer activation thresholds on the λ = 0 control

    @property
    def rule(self) -> str:
        """The Snakemake rule that makes runs of this kind."""
        return _RULES[self]

    @property
    def command(self) -> str:
        """The ``dst`` sub-command of this kind (``train``, ``finetune``, ``prune`` or
        ``threshold``)."""
        return {RunKind.BASELINE: "train", RunKind.PRUNED: "prune",
                RunKind.THRESHOLD: "threshold"}.get(self, "finetune")

    @property
    def label(self) -> str:
        """How the report names runs of this kind."""
        return _LABELS[self]

    @property
    def pruned(self) -> bool:
        """Whether runs of this kind have pruned weights (stage 2 and 3)."""
        return self in (RunKind.PRUNED, RunKind.DUAL_CONTROL, RunKind.DUAL)

    @property
    def penalised(self) -> bool:
        """Whether runs of this kind train with an activation penalty (λ > 0 allowed)."""
        return self in (RunKind.ACTREG, RunKind.DUAL)

    @property
    def has_method(self) -> bool:
        """Whether runs of this kind have a method other than ``none``."""
        return self.penalised or self is RunKind.THRESHOLD


def method_kind(method: str) -> RunKind:
    """The kind of the runs of a compared method's sweep: ``threshold`` for FATReLU, else
    ``actreg`` (an activation-regularised fine-tune)."""
    return RunKind.THRESHOLD if method == THRESHOLD_METHOD else RunKind.ACTREG


_RULES = {RunKind.BASELINE: "train_baseline", RunKind.CONTROL: "finetune_actreg",
          RunKind.ACTREG: "finetune_actreg", RunKind.PRUNED: "prune_weights",
          RunKind.DUAL_CONTROL: "dual_control", RunKind.DUAL: "dual_tl1",
          RunKind.THRESHOLD: "threshold_activations"}
_LABELS = {RunKind.BASELINE: "baseline (dense)", RunKind.CONTROL: "λ = 0 fine-tune",
           RunKind.ACTREG: "activation-regularised fine-tune", RunKind.PRUNED: "pruned (stage 2)",
           RunKind.DUAL_CONTROL: "pruned, λ = 0 fine-tune",
           RunKind.DUAL: "dual sparse (TL1 + pruning)",
           RunKind.THRESHOLD: "activation thresholds (FATReLU)"}
LATENCY_RULE = "measure_latency"  # benchmarks under {experiment}/latency/


def structure_label(structure: str, block_out: int | None = None) -> str:
    """``runs.csv``'s prune_structure: ``element`` or ``block{block_out}`` (``block16``)."""
    return ELEMENT if structure == ELEMENT else f"{BLOCK}{block_out}"


def structure_parts(label: str) -> tuple[str, int | None]:
    """(prune.structure, prune.block_out) of a label: ``element`` -> (element, None),
    ``block16`` -> (block, 16)."""
    if label == ELEMENT:
        return ELEMENT, None
    match = re.fullmatch(rf"{BLOCK}([0-9]+)", label or "")
    if not match:
        raise DstError(f"pruning structure {label!r} is not 'element' or 'block<N>'")
    return BLOCK, int(match.group(1))


def structure_family(labels):
    """``element``, ``block`` (any block size) or ``""`` per label of a pandas column (or table
    with a ``prune_structure`` column)."""
    import pandas as pd

    if isinstance(labels, pd.DataFrame):
        if "prune_structure" not in labels:
            return pd.Series("", index=labels.index)
        labels = labels.prune_structure
    return labels.fillna("").astype(str).str.rstrip("0123456789")


@dataclass(frozen=True)
class RunSpec:
    """What a run is. Numbers are kept as :func:`fmt` writes them (six significant digits), so
    that every representation reads back into an equal spec. Fields a kind does not have are
    None (λ of a baseline, pruning of an unpruned run)."""

    experiment: str
    kind: RunKind
    seed: int
    method: str = NO_METHOD
    lam: float | None = None
    beta: float | None = None
    prune_rate: float | None = None
    prune_structure: str | None = None  # element | block<N>, for pruned kinds

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "kind", RunKind(self.kind))
        set_(self, "seed", int(self.seed))
        for name in ("lam", "beta", "prune_rate"):
            set_(self, name, _canonical(getattr(self, name)))
        kind = self.kind
        if kind.pruned and self.prune_structure is None:
            set_(self, "prune_structure", ELEMENT)
        problem = self._problem()
        if problem:
            raise DstError(f"run {self.experiment}/{kind}: {problem}")

    def _problem(self) -> str | None:
        kind = self.kind
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.experiment or ""):
            return f"experiment name {self.experiment!r} must match [A-Za-z0-9_.-]+"
        if (self.method != NO_METHOD) != kind.has_method or (
                (self.method == THRESHOLD_METHOD) != (kind is RunKind.THRESHOLD)):
            return f"method {self.method!r} does not fit the kind"
        if kind is RunKind.DUAL and (self.method != DUAL_METHOD or self.beta is None):
            return f"stage 3 runs {DUAL_METHOD} with a β, not {self.method!r} (β {self.beta!r})"
        if kind.penalised and self.method in RESERVED:
            return f"method name {self.method!r} is reserved"
        if (self.lam is None) != (kind in (RunKind.BASELINE, RunKind.PRUNED)):
            return f"λ {self.lam!r} does not fit the kind"
        if self.lam is not None and (self.lam < 0 or (not kind.has_method and self.lam != 0)):
            return f"λ {self.lam!r} must be >= 0 (0 for a control)"
        if self.beta is not None and (not kind.penalised or self.beta <= 0):
            return f"β {self.beta!r} needs a penalised kind and a value > 0"
        if (self.prune_rate is None) == kind.pruned:
            return f"pruning rate {self.prune_rate!r} does not fit the kind"
        if not kind.pruned and self.prune_structure is not None:
            return "an unpruned run has no pruning structure"
        if kind.pruned:
            structure_parts(self.prune_structure)
        if self.seed < 0:
            return f"seed {self.seed} must be >= 0"
        return None

    # ------------------------------------------------------------------ directories

    @property
    def variant(self) -> str:
        """The folder of the method: ``none``, ``l1``, ``tl1-beta0.5``."""
        return self.method if self.beta is None else f"{self.method}-beta{fmt(self.beta)}"

    def path(self) -> str:
        """The run directory relative to the results folder (see :data:`PATH_TEMPLATES`)."""
        structure = "" if self.prune_structure in (None, ELEMENT) else f"{self.prune_structure}-"
        numbers = {k: "" if v is None else fmt(v)
                   for k, v in (("lam", self.lam), ("beta", self.beta), ("rate", self.prune_rate))}
        return PATH_TEMPLATES[self.kind].format(exp=self.experiment, seed=self.seed,
                                                variant=self.variant, structure=structure,
                                                **numbers)

    @classmethod
    def from_path(cls, path: str) -> RunSpec:
        """The spec of a run directory relative to the results folder (inverse of :meth:`path`)."""
        match = _PATH.fullmatch(str(path).strip("/"))
        if not match:
            raise DstError(f"{path!r} is not a run directory (see dstcore.core.runs)")
        g = {k.removesuffix("_"): v for k, v in match.groupdict().items() if v is not None}
        number = {k: (float(g[k]) if k in g else None) for k in ("lam", "beta", "rate")}
        method = g.get("method", NO_METHOD)
        if "budget" in g:
            kind, structure = RunKind.THRESHOLD, None
            method, number["lam"] = THRESHOLD_METHOD, float(g["budget"])
        elif "prune" not in g:
            kind = (RunKind.BASELINE if "baseline" in g else
                    RunKind.CONTROL if method == NO_METHOD else RunKind.ACTREG)
            structure = None
        else:
            kind = (RunKind.PRUNED if "stage2" in g else
                    RunKind.DUAL_CONTROL if method == NO_METHOD else RunKind.DUAL)
            structure = g.get("structure", ELEMENT).removesuffix("-")
        return cls(g["experiment"], kind, int(g["seed"]), method,
                   number["lam"], number["beta"], number["rate"], structure)

    # ------------------------------------------------------------------ tags

    def tags(self) -> dict[str, str]:
        """The ``--tag`` labels of the run's ``dst`` command, in the order the pipeline has always
        written them. Element pruning carries no ``prune_structure`` tag (runs made before block
        pruning existed have none)."""
        out = {"experiment": self.experiment, "kind": str(self.kind)}
        if self.kind is not RunKind.BASELINE:
            out["method"] = self.method
        if self.lam is not None:
            out["lam"] = fmt(self.lam)
        if self.beta is not None:
            out["beta"] = fmt(self.beta)
        if self.prune_rate is not None:
            out["prune_rate"] = fmt(self.prune_rate)
        if self.prune_structure not in (None, ELEMENT):
            out["prune_structure"] = self.prune_structure
        return out

    @classmethod
    def from_tags(cls, tags: dict[str, str], seed: int) -> RunSpec:
        """The spec of a run from its recorded tags and seed (inverse of :meth:`tags`)."""
        unknown = set(tags) - set(TAG_KEYS)
        if unknown or "experiment" not in tags or "kind" not in tags:
            raise DstError(f"tags {tags} do not name a run: they need experiment and kind, "
                           f"and take only {', '.join(TAG_KEYS)}")
        try:
            kind = RunKind(tags["kind"])
        except ValueError:
            raise DstError(f"kind {tags['kind']!r} is not one of "
                           f"{', '.join(map(str, RunKind))}") from None

        def number(key: str) -> float | None:
            return None if key not in tags else float(tags[key])

        return cls(tags["experiment"], kind, seed, tags.get("method", NO_METHOD), number("lam"),
                   number("beta"), number("prune_rate"), tags.get("prune_structure"))

    # ------------------------------------------------------------------ runs.csv

    def columns(self) -> dict:
        """This run's identity columns of ``runs.csv`` (NaN / "" where the kind has none)."""
        def number(value: float | None) -> float:
            return math.nan if value is None else value

        return {"experiment": self.experiment, "kind": str(self.kind), "method": self.method,
                "lam": number(self.lam), "beta": number(self.beta),
                "prune_rate": number(self.prune_rate),
                "prune_structure": self.prune_structure or "", "seed": self.seed}


# Run directories relative to the results folder, with the wildcard names of the Snakemake rules
# ({structure} is "" or e.g. "block16-", numbers as fmt writes them).
_STAGE2 = f"{{exp}}/{DUAL_DIR}/{{structure}}prune{{rate}}"
PATH_TEMPLATES = {
    RunKind.BASELINE: "{exp}/baseline/seed{seed}",
    RunKind.CONTROL: "{exp}/{variant}/lam{lam}/seed{seed}",
    RunKind.ACTREG: "{exp}/{variant}/lam{lam}/seed{seed}",
    RunKind.PRUNED: f"{_STAGE2}/stage2/seed{{seed}}",
    RunKind.DUAL_CONTROL: f"{_STAGE2}/lam0/seed{{seed}}",
    RunKind.DUAL: f"{_STAGE2}/{DUAL_METHOD}-beta{{beta}}/lam{{lam}}/seed{{seed}}",
    RunKind.THRESHOLD: f"{{exp}}/{THRESHOLD_METHOD}/budget{{lam}}/seed{{seed}}",
}



def rule_output(kind: RunKind, name: str, root: str = "", folder: str = "") -> str:
    """A rule's file pattern for runs of ``kind`` under ``{root}/{folder}``: ``name`` is a file
    in the run directory (``model.pt``) or, starting with a dot, a suffix of a file named after
    it (``.log``)."""
    path = "/".join(filter(None, [root, folder, PATH_TEMPLATES[kind]]))
    return path + name if name.startswith(".") else f"{path}/{name}"


TAG_KEYS = ("experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure")
_NUM = r"[0-9][0-9.e+-]*"
_PATH = re.compile(
    rf"(?P<experiment>[A-Za-z0-9_.-]+)/(?:"
    rf"(?P<baseline>baseline)"
    rf"|{THRESHOLD_METHOD}/budget(?P<budget>{_NUM})"
    rf"|{DUAL_DIR}/(?P<prune>(?P<structure>{BLOCK}[0-9]+-)?prune(?P<rate>{_NUM}))/(?:"
    rf"(?P<stage2>stage2)|(?:(?P<method>[a-z0-9_]+)-beta(?P<beta>{_NUM})/)?lam(?P<lam>{_NUM}))"
    rf"|(?P<method_>[a-z0-9_]+)(?:-beta(?P<beta_>{_NUM}))?/lam(?P<lam_>{_NUM}))"
    rf"/seed(?P<seed>[0-9]+)")
