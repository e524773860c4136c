"""Checks and naming for the Snakemake pipeline's config (used by workflow/rules/common.smk).

The JSON schema (workflow/schemas/config.schema.yaml) checks types, ranges and names;
:func:`check_experiments` adds what a schema cannot say (unique names, existing folders).
:func:`schema_error_line` turns a jsonschema error into one line naming key, value, allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from dstcore import DstError


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


def validate_config(config: dict, schema: str | Path) -> dict:
    """Validate (and fill defaults into) a pipeline config; one-line :class:`DstError` if bad."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(Path(schema).resolve()))
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
    root = config.get("data_root")
    if root and not Path(os.path.expanduser(root)).is_dir():
        raise DstError(f"config.data_root: {root!r} is not an existing directory")
    for i, exp in enumerate(config["experiments"]):
        dual = exp.get("dual")
        if dual and dual.get("l1_epochs", 1) + dual.get("finetune_epochs", 2) < 1:
            raise DstError(f"config.experiments[{i}].dual: needs at least one epoch")
        _check_tl1(exp.get("regularizers", {}).get("tl1"), f"config.experiments[{i}]", dual)
        if not exp.get("regularizers") and not dual:
            continue
        if (exp.get("regularizers") or dual) and "finetune" not in exp:
            raise DstError(f"config.experiments[{i}].finetune: required when regularizers or "
                           f"dual are given (the schedule every regulariser and the lam = 0 "
                           f"control share)")


def _check_tl1(spec: dict | None, where: str, dual: dict | None) -> None:
    """TL1 takes ``lams`` (with ``betas``) or ``sweeps``, not both; β values are unique;
    stage 3's automatic β and λ need a TL1 sweep to choose from."""
    if spec is not None:
        has_sweeps, has_grid = "sweeps" in spec, "lams" in spec or "betas" in spec
        if has_sweeps == has_grid:
            raise DstError(f"{where}.regularizers.tl1: give either lams (with betas) or sweeps "
                           f"(a list of {{beta, lams}}), not {'both' if has_sweeps else 'neither'}")
        if has_grid and "lams" not in spec:
            raise DstError(f"{where}.regularizers.tl1: betas given without lams")
        betas = [b for b, _ in tl1_sweeps(spec)]
        if len(set(betas)) != len(betas):
            raise DstError(f"{where}.regularizers.tl1: β values {betas} repeat; give each β once")
    if dual and spec is None and "auto" in (dual.get("tl1_beta"), dual.get("tl1_lams")):
        raise DstError(f"{where}.dual: tl1_beta/tl1_lams 'auto' choose from the TL1 sweeps, but "
                       f"the experiment has no regularizers.tl1; give numbers instead")


def fmt(value: float) -> str:
    """Canonical text of a number in paths and tags (``1e-05``, ``0.001``, ``0.9``)."""
    return f"{float(value):g}"


def prune_structures(dual: dict) -> list[str]:
    """Labels of the weight-pruning structures of a ``dual`` section, as in runs.csv's
    ``prune_structure``: ``element`` (unstructured) and ``block{block_out}`` (e.g. block16)."""
    return [s if s == "element" else f"{s}{dual.get('block_out', 16)}"
            for s in dual.get("structures", ["element"])]


def structure_prefix(label: str) -> str:
    """The path prefix of a structure label before ``prune{rate}``: none for element runs (their
    paths predate block pruning), ``block16-`` for block16."""
    return "" if label == "element" else f"{label}-"


def structure_of_prefix(prefix: str) -> tuple[str, int | None]:
    """(prune.structure, prune.block_out) of a path prefix: ``""`` -> element, ``block16-`` ->
    (block, 16)."""
    if not prefix:
        return "element", None
    return "block", int(prefix.removeprefix("block").removesuffix("-"))


def tl1_sweeps(spec: dict) -> list[tuple[float, list[float]]]:
    """(β, λ values) of each TL1 sweep of a ``regularizers.tl1`` block: its ``sweeps`` entries
    (one λ grid per β), or every β of ``betas`` (default [1.0]) with the shared ``lams``."""
    if "sweeps" in spec:
        return [(float(s["beta"]), list(s["lams"])) for s in spec["sweeps"]]
    return [(float(beta), list(spec["lams"])) for beta in spec.get("betas", [1.0])]


def regularizer_sweeps(exp: dict) -> list[tuple[str, float | None, list[float]]]:
    """(method, β or None, λ values) of every activation-regulariser sweep of an experiment."""
    out = []
    for method, spec in exp.get("regularizers", {}).items():
        if method == "tl1":
            out += [("tl1", beta, lams) for beta, lams in tl1_sweeps(spec)]
        else:
            out.append((method, None, list(spec["lams"])))
    return out
