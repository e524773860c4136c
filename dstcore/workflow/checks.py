"""Checks of the Snakemake pipeline's config (used by workflow/rules/common.smk).

The JSON schema (workflow/schemas/config.schema.yaml, with the registries' names filled in by
:func:`filled_schema`) checks types, ranges and names;
:func:`check_experiments` adds what a schema cannot say (unique names, existing folders).
:func:`schema_error_line` turns a jsonschema error into one line naming key, value, allowed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from dstcore import DstError
from dstcore.sparsity.regularizers import PROPOSED, REGISTRY
from dstcore.workflow.grid import RUNTIME_KEYS, dual_seeds, shape_sweeps


def _key_path(path) -> str:
    out = "config"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def schema_error_line(error) -> str:
    """One line for a jsonschema ``ValidationError``: where, what value, what is allowed."""
    import jsonschema

    if not isinstance(error, jsonschema.ValidationError):
        return str(error).splitlines()[0]
    error = jsonschema.exceptions.best_match([error])
    where = _key_path(error.absolute_path)
    value = error.instance
    schema = error.schema
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))
        return f"{where}: unknown key {', '.join(map(repr, extra))}; allowed keys: " \
               f"{', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {value!r} is not allowed; expected one of {', '.join(map(str, schema['enum']))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=",
              "exclusiveMaximum": "<"}[error.validator]
        return f"{where}: {value!r} is not allowed; expected a number {op} {error.validator_value}"
    if error.validator == "minItems":
        return f"{where}: {value!r} is not allowed; expected at least {error.validator_value} item(s)"
    if error.validator in ("anyOf", "oneOf") and "description" in schema:
        return f"{where}: {value!r} is not allowed; expected {schema['description']}"
    if error.validator == "type":
        return f"{where}: {value!r} is not allowed; expected type {error.validator_value}"
    return f"{where}: {error.message}"


# Pipeline keys that are run-config keys: their type, limits and help (and, for the dual
# section, default) come from the dataclass fields of dstcore.training.config.
SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov",
                 "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs",
                 "collapse_factor", "eval_every", "curve_images",
                 *RUNTIME_KEYS)  # train.* keys a schedule sets (the runtime keys: per stage)
DATA_KEYS = ("train_subset", "test_subset", "subset_seed", "num_workers", "eval_batch_size",
             "verify")  # the data.* keys an experiment may set
DUAL_KEYS = ("weight_l1", "l1_epochs", "finetune_epochs", "scope", "block_out")  # prune.*
TOP_KEYS = {"data_root": "data", "cache_dir": "data", "download": "data", "device": "train",
            **{key: "train" for key in RUNTIME_KEYS}}
# Where the pipeline is deliberately stricter than dst: a dual arm always fine-tunes its pruned
# model (dst prune alone may stop right after pruning, prune.finetune_epochs = 0).
STRICTER = {("dual", "finetune_epochs"): {"minimum": 1}}


def filled_schema(schema: str | Path) -> dict:
    """The pipeline schema with what dstcore defines filled in: the model and dataset names,
    one sweep block per registered regulariser, and the keys that are run-config keys
    (schedules, an experiment's ``data``, the ``dual`` keys of ``prune``, the top-level data and
    device keys) from :func:`dstcore.training.config.field_schema`."""
    from dstcore.data.datasets import DATASETS
    from dstcore.models import MODELS
    from dstcore.training.config import config_field, field_choices, field_schema

    filled = yaml.safe_load(Path(schema).read_text())
    props = filled["$defs"]["experiment"]["properties"]
    props["model"]["enum"] = list(MODELS)
    props["dataset"]["enum"] = list(DATASETS)
    props["regularizers"]["properties"] = {
        name: {"$ref": "#/$defs/shape_sweep" if m.shape_parameter else "#/$defs/sweep"}
        for name, m in REGISTRY.items() if m.formula is not None}
    props["fatrelu"]["properties"].update({k: field_schema("fatrelu", k)
                                           for k in ("search_images", "search_steps")})
    filled["$defs"]["schedule"]["properties"] = {k: field_schema("train", k)
                                                 for k in SCHEDULE_KEYS}
    props["data"]["properties"] = {k: field_schema("data", k) for k in DATA_KEYS}
    props["seeds"]["items"] = field_schema("train", "seed")
    dual = props["dual"]["properties"]
    dual.update({k: {**field_schema("prune", k, default=True), **STRICTER.get(("dual", k), {})}
                 for k in DUAL_KEYS})
    dual["seeds"]["anyOf"][1]["items"] = props["seeds"]["items"]
    dual["structures"]["items"]["enum"] = list(field_choices(config_field("prune", "structure")))
    dual["block_scope"]["anyOf"][1]["enum"] = list(field_choices(config_field("prune", "scope")))
    dual["block_exclude"]["items"]["enum"] = list(field_choices(config_field("prune",
                                                                             "exclude")))
    filled["properties"].update({k: field_schema(section, k, default=True)
                                 for k, section in TOP_KEYS.items()})
    return filled


def validate_config(config: dict, schema: str | Path) -> dict:
    """Validate (and fill defaults into) a pipeline config; one-line :class:`DstError` if bad."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(schema).name
        path.write_text(yaml.safe_dump(filled_schema(schema), sort_keys=False))
        try:
            validate(config, str(path))
        except WorkflowError as err:
            raise DstError(schema_error_line(err.__context__ or err)) from None
    check_experiments(config)
    return config


def check_experiments(config: dict) -> None:
    """Checks beyond the schema; raise :class:`DstError` with one line naming the key."""
    names = [e["name"] for e in config["experiments"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DstError(f"config.experiments: duplicate experiment name(s) {', '.join(duplicates)}; "
                       f"names must be unique")
    known = sorted({e["group"] for e in config["experiments"]})
    unknown = [g for g in config["groups"] if g not in known]
    if unknown:
        raise DstError(f"config.groups: {', '.join(map(repr, unknown))} is no experiment's group "
                       f"(theirs: {', '.join(known)})")
    root = config.get("data_root")
    if root and not Path(os.path.expanduser(root)).is_dir():
        raise DstError(f"config.data_root: {root!r} is not an existing directory")
    for i, exp in enumerate(config["experiments"]):
        dual = exp.get("dual")
        if dual and dual["l1_epochs"] + dual["finetune_epochs"] < 1:  # defaults: the schema
            raise DstError(f"config.experiments[{i}].dual: needs at least one epoch")
        chosen = dual_seeds(exp) if dual else exp["seeds"]
        if not set(chosen) <= set(exp["seeds"]) or exp["seeds"][0] not in chosen:
            raise DstError(f"config.experiments[{i}].dual.seeds: {chosen} must be some of the "
                           f"experiment's seeds {exp['seeds']}, its first (the latency "
                           f"table's) among them")
        for method, spec in exp.get("regularizers", {}).items():
            if REGISTRY[method].shape_parameter:
                _check_shape_sweeps(spec, f"config.experiments[{i}].regularizers.{method}")
        if dual and PROPOSED not in exp.get("regularizers", {}) and "auto" in (
                dual.get("tl1_beta"), dual.get("tl1_lams")):
            raise DstError(f"config.experiments[{i}].dual: tl1_beta/tl1_lams 'auto' choose from "
                           f"the TL1 sweeps, but the experiment has no regularizers.{PROPOSED}; "
                           f"give numbers instead")
        if not exp.get("regularizers") and not dual and not exp.get("fatrelu"):
            continue
        if "finetune" not in exp:
            raise DstError(f"config.experiments[{i}].finetune: required when regularizers, "
                           f"fatrelu or dual are given (the schedule every regulariser and the "
                           f"lam = 0 control share; FATReLU starts from the control)")


def _check_shape_sweeps(spec: dict, where: str) -> None:
    """A shape-parameter method (TL1) takes ``lams`` (with ``betas``) or ``sweeps``, not both;
    its β values are unique."""
    has_sweeps, has_grid = "sweeps" in spec, "lams" in spec or "betas" in spec
    if has_sweeps == has_grid:
        raise DstError(f"{where}: give either lams (with betas) or sweeps "
                       f"(a list of {{beta, lams}}), not {'both' if has_sweeps else 'neither'}")
    if has_grid and "lams" not in spec:
        raise DstError(f"{where}: betas given without lams")
    betas = [b for b, _ in shape_sweeps(spec)]
    if len(set(betas)) != len(betas):
        raise DstError(f"{where}: β values {betas} repeat; give each β once")
