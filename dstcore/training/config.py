"""Run configuration: dataclass hyperparameters, strict YAML loading and validation.

A run config has five sections (``data``, ``model``, ``train``, ``reg``, ``prune``); every key
has a default documented in ``config/README.md``. Unknown keys and out-of-range values are
errors that name the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from dstcore import DstError

OPTIMIZERS = ("sgd", "adam")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how much of it to use."""

    dataset: str = "mnist"
    data_root: str | None = None  # folder with upstream files; else $DST_DATA_ROOT, cache, download
    cache_dir: str = "data"
    download: bool = True
    verify: bool = True  # check content hashes (SHA-256 for IDX, torchvision's MD5 for CIFAR)
    train_subset: int | None = None  # stratified, seeded subset sizes (None = all)
    test_subset: int | None = None
    subset_seed: int = 0
    num_workers: int = 0  # DataLoader workers for CIFAR/ImageNet
    eval_batch_size: int = 256  # images per evaluation batch (larger is slower on CPUs)


@dataclass
class ModelConfig:
    name: str = "lenet5"


@dataclass
class TrainConfig:
    """Optimisation schedule shared by every stage (``dst prune`` takes its length from ``prune``)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # per-epoch: cosine to 0, step (milestones, gamma) or constant
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up epochs (counted within ``epochs``)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "auto"
    deterministic: bool = True
    collapse_factor: float = 1.5  # a fine-tune whose accuracy falls to <= this x chance diverged
    eval_every: int = 1  # evaluate the test set every k epochs and after the last (0: last only)


@dataclass
class RegConfig:
    """Activation regulariser: loss = CE + lam * sum_l w_l R(a_l)."""

    method: str = "none"  # none | l1 | hoyer | tl1
    lam: float = 0.0
    beta: float = 1.0  # TL1 shape parameter (> 0)
    layer_weights: dict[str, float] = field(default_factory=dict)  # default weight 1 per layer


@dataclass
class PruneConfig:
    """Stage 2: ``l1_epochs`` with weight l1, magnitude pruning, ``finetune_epochs`` masked."""

    weight_l1: float = 1e-5
    l1_epochs: int = 1
    finetune_epochs: int = 2
    rate: float | None = 0.9  # fraction of Conv2d/Linear weights set to zero
    threshold: float | None = None  # prune |w| <= threshold instead of a rate
    scope: str = "global"  # global | layer
    structure: str = "element"  # element (single weights) | block (block_out x 1 input channel)
    block_out: int = 16  # output channels per block unit (structure block)
    exclude: list[str] = field(default_factory=list)  # left dense: first (image layer), last


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def semantic_hash(self) -> str:
        """Hash of everything that changes results (not where files live or thread counts)."""
        d = self.to_dict()
        for section, key in (("data", "data_root"), ("data", "cache_dir"), ("data", "num_workers"),
                             ("data", "eval_batch_size"), ("data", "download"), ("train", "eval_every"),
                             ("train", "threads"), ("train", "device")):
            d[section].pop(key)
        if not d["prune"]["exclude"]:
            d["prune"].pop("exclude")  # the hash of runs from before the key existed
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {f.name: f.type for f in fields(RunConfig)}


def _type_name(hint: Any) -> str:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args) + " or null"
    if get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}"
    if get_origin(hint) is dict:
        return "a mapping of layer name to number"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[hint]


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint of ``key``; ints are accepted for floats."""
    if get_origin(hint) in (Union, UnionType):
        if value is None:
            return None
        inner = [a for a in get_args(hint) if a is not type(None)]
        try:
            return _coerce(key, value, inner[0])
        except DstError:
            raise DstError(f"{key}: {value!r} is not allowed; expected {_type_name(hint)}") from None
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif get_origin(hint) is list:
        item = get_args(hint)[0]
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool)
                                             for v in value)
    elif get_origin(hint) is dict:
        ok = isinstance(value, dict) and all(isinstance(v, (int, float))
                                             and not isinstance(v, bool) for v in value.values())
        value = {str(k): float(v) for k, v in value.items()} if ok else value
    if not ok:
        raise DstError(f"{key}: {value!r} is not allowed; expected {_type_name(hint)}")
    return value


def from_dict(data: dict | None) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown sections or keys are errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise DstError(f"config must be a mapping of sections, got {type(data).__name__}")
    cfg = RunConfig()
    for section, values in data.items():
        if section not in SECTIONS:
            raise DstError(f"unknown config section '{section}'; allowed: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise DstError(f"config section '{section}' must be a mapping")
        target = getattr(cfg, section)
        hints = get_type_hints(type(target))
        for key, value in values.items():
            if key not in hints:
                raise DstError(f"unknown config key '{section}.{key}'; allowed in {section}: "
                               f"{', '.join(hints)}")
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key]))
    return cfg


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DstError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DstError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested config dict."""
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise DstError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise DstError(f"override '{item}': value is not valid YAML") from err
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][key] = value
    return data


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise DstError(f"{key}: {value!r} is not allowed; expected {allowed}")


MAX_SEED = 2**32 - 1  # what NumPy/scikit-learn accept; epoch seeds (seed * 1e6 + epoch) fit torch's
MAX_THREADS = 1024  # threads and DataLoader workers; torch stores thread counts as int32
MAX_BLOCK_OUT = 4096  # output channels per block unit of block pruning


def validate(cfg: RunConfig, stage: str = "train") -> RunConfig:
    """Check names and ranges; raise :class:`DstError` naming the first bad key."""
    from dstcore.data.datasets import DATASETS
    from dstcore.models import MODELS
    from dstcore.sparsity.pruning import EXCLUDABLE, SCOPES, STRUCTURES
    from dstcore.sparsity.regularizers import methods

    d, m, t, r, p = cfg.data, cfg.model, cfg.train, cfg.reg, cfg.prune
    _require(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {', '.join(DATASETS)}")
    _require(m.name in MODELS, "model.name", m.name, f"one of {', '.join(MODELS)}")
    _require(r.method in methods(), "reg.method", r.method, f"one of {', '.join(methods())}")
    for key, value in (("data.train_subset", d.train_subset), ("data.test_subset", d.test_subset)):
        _require(value is None or value > 0, key, value, "null or an integer > 0")
    for key, value in (("data.subset_seed", d.subset_seed), ("train.seed", t.seed)):
        _require(0 <= value <= MAX_SEED, key, value, f"an integer in [0, {MAX_SEED}]")
    for key, value in (("data.num_workers", d.num_workers), ("train.threads", t.threads)):
        _require(0 <= value <= MAX_THREADS, key, value, f"an integer in [0, {MAX_THREADS}]")
    for key, value in (("train.eval_every", t.eval_every),
                       ("train.warmup_epochs", t.warmup_epochs),
                       ("prune.l1_epochs", p.l1_epochs), ("prune.finetune_epochs",
                                                          p.finetune_epochs)):
        _require(value >= 0, key, value, "an integer >= 0")
    for key, value in (("data.eval_batch_size", d.eval_batch_size),
                       ("train.batch_size", t.batch_size)):
        _require(value > 0, key, value, "an integer > 0")
    _require(t.epochs >= 1 or stage == "prune", "train.epochs", t.epochs, "an integer >= 1")
    _require(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer,
             f"one of {', '.join(OPTIMIZERS)}")
    _require(t.schedule in SCHEDULES, "train.schedule", t.schedule,
             f"one of {', '.join(SCHEDULES)}")
    _require(t.device in DEVICES, "train.device", t.device, f"one of {', '.join(DEVICES)}")
    _require(t.lr > 0, "train.lr", t.lr, "a number > 0")
    _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "a number in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _require(0 < t.gamma <= 1, "train.gamma", t.gamma, "a number in (0, 1]")
    _require(all(x >= 1 for x in t.milestones), "train.milestones", t.milestones,
             "a list of epochs >= 1")
    _require(t.collapse_factor >= 0, "train.collapse_factor", t.collapse_factor, "a number >= 0")
    _require(r.lam >= 0, "reg.lam", r.lam, "a number >= 0")
    _require(r.beta > 0, "reg.beta", r.beta, "a number > 0")
    _require(r.method != "none" or r.lam == 0, "reg.lam", r.lam,
             "0 when reg.method is none (choose l1, hoyer or tl1 for lam > 0)")
    _require(all(v >= 0 for v in r.layer_weights.values()), "reg.layer_weights",
             r.layer_weights, "weights >= 0")
    _require(p.weight_l1 >= 0, "prune.weight_l1", p.weight_l1, "a number >= 0")
    _require(p.rate is None or 0 <= p.rate < 1, "prune.rate", p.rate, "a number in [0, 1)")
    _require(p.threshold is None or p.threshold >= 0, "prune.threshold", p.threshold,
             "a number >= 0")
    if stage == "prune":
        _require(r.method == "none", "reg.method", r.method,
                 "none for dst prune (stage 3 is dst finetune from the pruned model)")
        _require((p.rate is None) != (p.threshold is None), "prune.rate", p.rate,
                 "exactly one of prune.rate and prune.threshold to be set")
        _require(p.l1_epochs + p.finetune_epochs >= 1, "prune.finetune_epochs",
                 p.finetune_epochs, "at least one epoch in total with prune.l1_epochs")
    _require(p.scope in SCOPES, "prune.scope", p.scope, f"one of {', '.join(SCOPES)}")
    _require(all(e in EXCLUDABLE for e in p.exclude) and len(set(p.exclude)) == len(p.exclude),
             "prune.exclude", p.exclude, f"a list of distinct items from {', '.join(EXCLUDABLE)}")
    _require(p.structure in STRUCTURES, "prune.structure", p.structure,
             f"one of {', '.join(STRUCTURES)}")
    _require(1 <= p.block_out <= MAX_BLOCK_OUT, "prune.block_out", p.block_out,
             f"an integer in [1, {MAX_BLOCK_OUT}]")
    _require(p.structure == "element" or p.threshold is None, "prune.threshold", p.threshold,
             "null when prune.structure is block (block pruning takes prune.rate)")
    return cfg


def replace_section(cfg: RunConfig, section: str, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with ``changes`` applied to one section."""
    new = dataclasses.replace(getattr(cfg, section), **changes)
    return dataclasses.replace(cfg, **{section: new})
