"""Run configuration: dataclass hyperparameters, strict YAML loading and validation.

A run config has five sections (``data``, ``model``, ``train``, ``reg``, ``prune``); every key
has a default documented in ``config/README.md``. Unknown keys and out-of-range values are
errors that name the key, the value and what is allowed.

Each key's default, one-line help and limits live here, in its dataclass field (:func:`param`):
:func:`validate` checks the limits, the pipeline schema (``dstcore.workflow.checks.filled_schema``)
takes its types, limits and defaults from :func:`field_schema`, and the ``dst`` shortcut flags
their type and help from :func:`shortcut_type` and :func:`field_help`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
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
PRECISIONS = ("fp32", "tf32", "bf16", "auto")  # fp32: IEEE float32; auto: bf16 where native
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")  # auto: channels_last on CUDA only
MAX_SEED = 2**32 - 1  # what NumPy/scikit-learn accept; epoch seeds (seed * 1e6 + epoch) fit torch's
MAX_THREADS = 1024  # threads and DataLoader workers; torch stores thread counts as int32
MAX_BLOCK_OUT = 4096  # output channels per block unit of block pruning


def param(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
          unique: bool = False, items: str = "items", null: str | None = None):
    """A config field with its one-line ``help`` and limits, checked by :func:`validate`.

    ``ge``/``gt``/``le``/``lt`` bound a number (each item of a list, each value of a mapping);
    ``choices`` lists the allowed strings (of a list's items), or is a function returning them
    when they come from a registry (looked up at validation time); ``unique``: a list's items
    are distinct. ``items`` names a list's items or a mapping's values in messages ("a list of
    epochs >= 1"). ``null`` says what null means when it is a setting of its own ("all"): the
    message then offers null ("null or an integer > 0"); where null hands over to another key
    (prune.rate / prune.threshold) a cross-field rule of :func:`validate` says so instead.
    A list or mapping default is copied for each config.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "unique": unique, "items": items, "null": null}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


def _scopes() -> tuple[str, ...]:
    from dstcore.sparsity.pruning import SCOPES

    return SCOPES


def _structures() -> tuple[str, ...]:
    from dstcore.sparsity.pruning import STRUCTURES

    return STRUCTURES


def _excludable() -> tuple[str, ...]:
    from dstcore.sparsity.pruning import EXCLUDABLE

    return EXCLUDABLE


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how much of it to use."""

    dataset: str = param("mnist", "dataset name (dstcore.data.datasets.DATASETS)")
    data_root: str | None = param(None, "folder with the upstream files; else $DST_DATA_ROOT, "
                                        "the cache, a download")
    cache_dir: str = param("data", "the data cache (downloads land here)")
    download: bool = param(True, "download missing files")
    verify: bool = param(True, "check content hashes (SHA-256 for IDX, torchvision's MD5 for "
                               "CIFAR)")
    train_subset: int | None = param(None, "stratified, seeded training subset size", gt=0,
                                     null="all")
    test_subset: int | None = param(None, "stratified, seeded test subset size", gt=0,
                                    null="all")
    subset_seed: int = param(0, "seed of the subsets", ge=0, le=MAX_SEED)
    num_workers: int = param(0, "DataLoader workers for CIFAR/ImageNet", ge=0, le=MAX_THREADS)
    eval_batch_size: int = param(64, "images per evaluation batch (larger is slower on CPUs)",
                                 gt=0)


@dataclass
class ModelConfig:
    name: str = param("lenet5", "model name (dstcore.models.MODELS)")


@dataclass
class TrainConfig:
    """Optimisation schedule shared by every stage (``dst prune`` takes its length from ``prune``)."""

    epochs: int = param(10, "epochs (passes over the training set; not used by dst prune)", ge=1)
    batch_size: int = param(128, "images per step", gt=0)
    optimizer: str = param("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = param(0.05, "peak learning rate", gt=0)
    momentum: float = param(0.9, "SGD momentum (not used by adam)", ge=0, lt=1)
    nesterov: bool = param(False, "Nesterov momentum (SGD)")
    weight_decay: float = param(5e-4, "L2 weight decay", ge=0)
    schedule: str = param("cosine", "per-epoch learning rate: cosine to 0, step (milestones, "
                                    "gamma) or constant", choices=SCHEDULES)
    milestones: list[int] = param([], "epochs (1-based) where schedule step multiplies lr by gamma",
                                  ge=1, items="epochs")
    gamma: float = param(0.1, "step factor of the lr at each milestone", gt=0, le=1)
    warmup_epochs: int = param(0, "linear warm-up epochs (counted within epochs)", ge=0)
    seed: int = param(0, "seed of initialisation, data order, augmentation and dropout", ge=0,
                      le=MAX_SEED)
    threads: int = param(0, "torch intra-op threads; 0 = torch's default", ge=0, le=MAX_THREADS)
    device: str = param("auto", "where to train (auto: cuda when available)", choices=DEVICES)
    deterministic: bool = param(True, "deterministic algorithms: torch's, cuDNN's (benchmark "
                                      "off) and cuBLAS's workspace; false lets cuDNN autotune")
    precision: str = param("fp32", "arithmetic: fp32 (IEEE), tf32 (TF32 matmuls and convs, "
                                   "CUDA), bf16 (autocast; CUDA or a CPU with native bfloat16) "
                                   "or auto (bf16 where the device has native bfloat16, else "
                                   "fp32; the run records which)", choices=PRECISIONS)
    memory_format: str = param("auto", "tensor layout of the model and its inputs: auto "
                                       "(channels_last on CUDA, contiguous on the CPU), "
                                       "contiguous or channels_last", choices=MEMORY_FORMATS)
    compile: bool = param(False, "train under torch.compile (inductor): the forward pass, the "
                                 "activation penalties' hooks and the backward pass fused; "
                                 "compiled once per process, cached on disk for the next; "
                                 "changes float order, so part of a run's identity when true")
    collapse_factor: float = param(1.5, "a fine-tune whose accuracy falls to <= this x chance "
                                        "diverged", ge=0)
    eval_every: int = param(1, "evaluate the test set every k epochs and after the last "
                               "(0: last only)", ge=0)
    curve_images: int = param(0, "after every epoch, top-1 and activation sparsity on a fixed "
                                 "class-stratified slice of this many test images (log.jsonl "
                                 "curve_top1, curve_sparsity; 0: off)", ge=0)


@dataclass
class RegConfig:
    """Activation regulariser: loss = CE + lam * sum_l w_l R(a_l)."""

    method: str = param("none", "activation regulariser (dstcore.sparsity.regularizers."
                                "methods(): none, l1, hoyer, tl1)")
    lam: float = param(0.0, "regularisation strength lambda (0 for method none)", ge=0)
    beta: float = param(1.0, "TL1 shape parameter beta", gt=0)
    layer_weights: dict[str, float] = param({}, "per-layer weights w_l by module name "
                                                "(default 1 per layer)", ge=0, items="weights")


@dataclass
class PruneConfig:
    """Stage 2: ``l1_epochs`` with weight l1, magnitude pruning, ``finetune_epochs`` masked."""

    weight_l1: float = param(1e-5, "weight l1 strength before pruning", ge=0)
    l1_epochs: int = param(1, "epochs of weight-l1 training before pruning", ge=0)
    finetune_epochs: int = param(2, "epochs of masked fine-tuning after pruning", ge=0)
    rate: float | None = param(0.9, "fraction of Conv2d/Linear weights set to zero", ge=0, lt=1)
    threshold: float | None = param(None, "prune |w| <= threshold instead of a rate", ge=0)
    scope: str = param("global", "rank weights over the whole model (global) or per layer",
                       choices=_scopes)
    structure: str = param("element", "element (single weights) or block (block_out x 1 "
                                      "input channel)", choices=_structures)
    block_out: int = param(16, "output channels per block unit (structure block)", ge=1,
                           le=MAX_BLOCK_OUT)
    exclude: list[str] = param([], "layers left dense: first (image layer), last (classifier)",
                               choices=_excludable, unique=True)


@dataclass
class FatreluConfig:
    """``dst threshold``: FATReLU's per-layer threshold search (dstcore.sparsity.fatrelu)."""

    budget_pp: float = param(1.0, "top-1 the search may lose on its slice, in percentage "
                                  "points, shared out over the layers in forward order", ge=0)
    search_images: int = param(1000, "images of the search slice: training images the run's "
                                     "train_subset leaves out, else training images", ge=1)
    search_steps: int = param(6, "bisection steps per layer over the quantile level of its "
                                 "inputs (resolution 2^-steps)", ge=1, le=20)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    fatrelu: FatreluConfig = field(default_factory=FatreluConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def semantic_hash(self) -> str:
        """Hash of everything that changes results (not where files live or thread counts)."""
        d = self.to_dict()
        for section, key in (("data", "data_root"), ("data", "cache_dir"), ("data", "num_workers"),
                             ("data", "eval_batch_size"), ("data", "download"),
                             ("train", "eval_every"), ("train", "curve_images"),
                             ("train", "threads"), ("train", "device"),
                             ("train", "memory_format")):
            d[section].pop(key)
        if d["train"]["precision"] == "fp32":
            d["train"].pop("precision")  # the hash of runs from before the key existed
        if not d["train"]["compile"]:
            d["train"].pop("compile")  # the hash of runs from before the key existed
        if not d["prune"]["exclude"]:
            d["prune"].pop("exclude")  # the hash of runs from before the key existed
        if d["fatrelu"] == asdict(FatreluConfig()):
            d.pop("fatrelu")  # likewise (and every run but dst threshold's)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = get_type_hints(RunConfig)  # section name -> its dataclass


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


def config_field(section: str, key: str) -> dataclasses.Field:
    """The dataclass field of ``section.key`` (its default, and help and limits in ``metadata``)."""
    for f in fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(f"{section}.{key}")


def field_hint(section: str, key: str) -> Any:
    """The type hint of ``section.key`` (e.g. ``int | None``)."""
    return get_type_hints(SECTIONS[section])[key]


def field_default(f: dataclasses.Field) -> Any:
    """The default of a field (a fresh copy of a list or mapping default)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def field_help(section: str, key: str) -> str:
    """The one-line help of ``section.key``."""
    f = config_field(section, key)
    null = f.metadata.get("null")
    return f.metadata["help"] + (f" (null: {null})" if null else "")


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed strings of a field (of a list field's items); registries are looked up now."""
    choices = f.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _scalar(hint: Any) -> Any:
    """``int`` of ``int | None``; the hint itself otherwise."""
    if get_origin(hint) in (Union, UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def shortcut_type(section: str, key: str) -> type:
    """The argparse ``type`` of a shortcut flag that sets ``section.key``: int, float or str."""
    hint = _scalar(field_hint(section, key))
    if hint not in (int, float, str):
        raise TypeError(f"{section}.{key} ({hint}) cannot be a shortcut flag")
    return hint


def _bound_text(meta) -> str:
    """``>= 0``, ``> 0``, ``in [0, 1)``, ... of a field's bounds."""
    lo = ("[", meta["ge"]) if meta["ge"] is not None else ("(", meta["gt"]) \
        if meta["gt"] is not None else None
    hi = (meta["le"], "]") if meta["le"] is not None else (meta["lt"], ")") \
        if meta["lt"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[1] == ']' else '<'} {hi[0]}"


def _has_bounds(meta) -> bool:
    return any(meta[k] is not None for k in ("ge", "gt", "le", "lt"))


def _in_bounds(x: float, meta) -> bool:
    """Written so that NaN is out of every bound."""
    return all((meta["ge"] is None or x >= meta["ge"], meta["gt"] is None or x > meta["gt"],
                meta["le"] is None or x <= meta["le"], meta["lt"] is None or x < meta["lt"]))


def _allowed(f: dataclasses.Field, hint: Any) -> str:
    """What a field's limits allow, as the end of an error message."""
    meta, choices = f.metadata, field_choices(f)
    if get_origin(hint) is list:
        what = f"{meta['items']} from {', '.join(choices)}" if choices else \
            f"{meta['items']} {_bound_text(meta)}"
        return f"a list of {'distinct ' if meta['unique'] else ''}{what}"
    if get_origin(hint) is dict:
        return f"{meta['items']} {_bound_text(meta)}"
    if choices:
        return f"one of {', '.join(choices)}"
    noun = "an integer" if _scalar(hint) is int else "a number"
    return f"{'null or ' if meta['null'] else ''}{noun} {_bound_text(meta)}"


def _within(f: dataclasses.Field, hint: Any, value: Any) -> bool:
    """Whether a (type-checked) value is within the field's limits."""
    meta, choices = f.metadata, field_choices(f)
    if value is None:
        return True
    if get_origin(hint) is list:
        items = value
        if meta["unique"] and len(set(items)) != len(items):
            return False
    elif get_origin(hint) is dict:
        items = list(value.values())
    else:
        items = [value]
    if choices is not None and not all(x in choices for x in items):
        return False
    return not _has_bounds(meta) or all(_in_bounds(x, meta) for x in items)


def check_limits(cfg: RunConfig, skip: tuple[tuple[str, str], ...] = ()) -> None:
    """Check every field against the limits of its metadata, section by section in field
    order; raise :class:`DstError` naming the first key out of them."""
    for section, cls in SECTIONS.items():
        hints, target = get_type_hints(cls), getattr(cfg, section)
        for f in fields(cls):
            limited = _has_bounds(f.metadata) or f.metadata["choices"] is not None
            if limited and (section, f.name) not in skip:
                value = getattr(target, f.name)
                _require(_within(f, hints[f.name], value), f"{section}.{f.name}", value,
                         _allowed(f, hints[f.name]))


def _json_type(hint: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[hint]


def field_schema(section: str, key: str, *, default: bool = False) -> dict:
    """The JSON schema of ``section.key``: its type and limits (and, with ``default``, its
    default), as the pipeline schema states them. Exclusive bounds of integers are written
    inclusively (``gt=0`` is ``minimum: 1``), as in the schema's ``positive_int``."""
    f, hint = config_field(section, key), field_hint(section, key)
    meta, choices = f.metadata, field_choices(f)
    scalar = get_args(hint)[0] if get_origin(hint) in (list, dict) else _scalar(hint)
    item: dict = {"enum": list(choices)} if choices else {"type": _json_type(scalar)}
    integer = scalar is int
    for name, word in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"),
                       ("lt", "exclusiveMaximum")):
        bound = meta[name]
        if bound is None:
            continue
        if integer and name == "gt":
            item["minimum"] = bound + 1
        elif integer and name == "lt":
            item["maximum"] = bound - 1
        else:
            item[word] = bound
    if get_origin(hint) is list:
        out = {"type": "array", "items": item}
        if meta["unique"]:
            out["uniqueItems"] = True
    elif get_origin(hint) is dict:
        out = {"type": "object", "additionalProperties": item}
    elif hint is not scalar:  # nullable
        out = {**item, "type": [item["type"], "null"]} if "type" in item else \
            {"enum": [*item["enum"], None]}
    else:
        out = item
    out["description"] = field_help(section, key)
    if default:
        out["default"] = field_default(f)
    return out


def validate(cfg: RunConfig, stage: str = "train") -> RunConfig:
    """Check names and ranges; raise :class:`DstError` naming the first bad key.

    The registries' names come first, then every field's limits (:func:`param`), then the
    rules that involve more than one key or the stage."""
    from dstcore.data.datasets import DATASETS
    from dstcore.models import MODELS
    from dstcore.sparsity.regularizers import methods

    d, m, r, p = cfg.data, cfg.model, cfg.reg, cfg.prune
    _require(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {', '.join(DATASETS)}")
    _require(m.name in MODELS, "model.name", m.name, f"one of {', '.join(MODELS)}")
    _require(r.method in methods(), "reg.method", r.method, f"one of {', '.join(methods())}")
    # dst prune takes its length from prune.l1_epochs + prune.finetune_epochs: train.epochs unused
    check_limits(cfg, skip=(("train", "epochs"),) if stage == "prune" else ())
    _require(r.method != "none" or r.lam == 0, "reg.lam", r.lam,
             "0 when reg.method is none (choose l1, hoyer or tl1 for lam > 0)")
    if stage == "prune":
        _require(r.method == "none", "reg.method", r.method,
                 "none for dst prune (stage 3 is dst finetune from the pruned model)")
        _require((p.rate is None) != (p.threshold is None), "prune.rate", p.rate,
                 "exactly one of prune.rate and prune.threshold to be set")
        _require(p.l1_epochs + p.finetune_epochs >= 1, "prune.finetune_epochs",
                 p.finetune_epochs, "at least one epoch in total with prune.l1_epochs")
    _require(p.structure == "element" or p.threshold is None, "prune.threshold", p.threshold,
             "null when prune.structure is block (block pruning takes prune.rate)")
    return cfg


def replace_section(cfg: RunConfig, section: str, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with ``changes`` applied to one section."""
    new = dataclasses.replace(getattr(cfg, section), **changes)
    return dataclasses.replace(cfg, **{section: new})
