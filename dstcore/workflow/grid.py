"""The experiment grid of a validated pipeline config, as :class:`~dstcore.core.runs.RunSpec`\\ s,
and the ``dst`` command line of each run (what ``workflow/rules/common.smk`` hands the rules).

Every run of an experiment is known from the config except stage 3's TL1 runs, whose β and λ
are chosen from the sweeps (the ``choose_dual_tl1`` checkpoint): :func:`stage3_specs`.
"""

from __future__ import annotations

import shlex

from dstcore.core.runs import (
    NO_METHOD,
    THRESHOLD_METHOD,
    RunKind,
    RunSpec,
    structure_label,
    structure_parts,
)
from dstcore.sparsity.regularizers import PROPOSED, REGISTRY
from dstcore.training.config import config_field, field_default


def selected_experiments(config: dict) -> dict[str, dict]:
    """The validated config's experiments that run, by name: those whose ``group`` is in the
    top-level ``groups`` (config/families.yaml adds the CPU-scale families)."""
    return {e["name"]: e for e in config["experiments"] if e["group"] in config["groups"]}


def shape_sweeps(spec: dict) -> list[tuple[float, list[float]]]:
    """(β, λ values) of each sweep of a shape-parameter method's block (``regularizers.tl1``):
    its ``sweeps`` entries (one λ grid per β), or every β of ``betas`` (default [1.0]) with the
    shared ``lams``."""
    if "sweeps" in spec:
        return [(float(s["beta"]), list(s["lams"])) for s in spec["sweeps"]]
    return [(float(beta), list(spec["lams"])) for beta in spec.get("betas", [1.0])]


def regularizer_sweeps(exp: dict) -> list[tuple[str, float | None, list[float]]]:
    """(method, β or None, λ values) of every activation-regulariser sweep of an experiment."""
    out = []
    for method, spec in exp.get("regularizers", {}).items():
        if REGISTRY[method].shape_parameter:
            out += [(method, beta, lams) for beta, lams in shape_sweeps(spec)]
        else:
            out.append((method, None, list(spec["lams"])))
    return out


def prune_structures(dual: dict) -> list[str]:
    """Labels of the weight-pruning structures of a ``dual`` section, as in runs.csv's
    ``prune_structure``: ``element`` (unstructured) and ``block{block_out}`` (e.g. block16)."""
    return [structure_label(s, dual.get("block_out", 16))
            for s in dual.get("structures", ["element"])]


def finetune_specs(exp: dict, seed: int) -> list[RunSpec]:
    """The λ = 0 control, every regulariser run and every FATReLU budget of one seed, in
    config order."""
    name = exp["name"]
    out = [RunSpec(name, RunKind.CONTROL, seed, lam=0.0)]
    for method, beta, lams in regularizer_sweeps(exp):
        out += [RunSpec(name, RunKind.ACTREG, seed, method, lam, beta) for lam in lams]
    budgets = exp.get(THRESHOLD_METHOD, {}).get("budgets", [])
    return out + [RunSpec(name, RunKind.THRESHOLD, seed, THRESHOLD_METHOD, budget)
                  for budget in budgets]


def dual_seeds(exp: dict) -> list:
    """The seeds that run the dual sparse stages: ``dual.seeds``, else all of the experiment's."""
    return exp["dual"].get("seeds") or exp["seeds"]


def pruned_specs(exp: dict, seed: int) -> list[RunSpec]:
    """Stage 2 and its λ = 0 control of one seed, per prune rate and pruning structure."""
    dual = exp.get("dual")
    if not dual or seed not in dual_seeds(exp):
        return []
    out = []
    for rate in dual["prune_rates"]:
        for label in prune_structures(dual):
            out += [RunSpec(exp["name"], RunKind.PRUNED, seed, prune_rate=rate,
                            prune_structure=label),
                    RunSpec(exp["name"], RunKind.DUAL_CONTROL, seed, lam=0.0, prune_rate=rate,
                            prune_structure=label)]
    return out


def run_specs(exp: dict) -> list[RunSpec]:
    """Every run of experiment ``exp`` known before any run: all but stage 3's TL1 runs."""
    out = []
    for seed in exp["seeds"]:
        out.append(RunSpec(exp["name"], RunKind.BASELINE, seed))
        if "finetune" in exp:
            out += finetune_specs(exp, seed)
        out += pruned_specs(exp, seed)
    return out


def stage3_specs(exp: dict, choice: dict) -> list[RunSpec]:
    """Stage 3's TL1 runs once the choice (``tl1_choice.json``: ``beta``, ``lams``) is made: the
    same β and λ for every prune rate and pruning structure."""
    return [RunSpec(exp["name"], RunKind.DUAL, p.seed, PROPOSED, lam, choice["beta"],
                    p.prune_rate, p.prune_structure)
            for seed in exp["seeds"]
            for p in pruned_specs(exp, seed) if p.kind is RunKind.PRUNED
            for lam in choice["lams"]]


def choice_specs(exp: dict) -> list[RunSpec]:
    """The runs stage 3's TL1 choice reads: baselines, controls and TL1 sweeps, every seed."""
    out = [RunSpec(exp["name"], RunKind.BASELINE, seed) for seed in exp["seeds"]]
    return out + [s for seed in exp["seeds"] for s in finetune_specs(exp, seed)
                  if s.method in (NO_METHOD, PROPOSED)]


def feeds_stage3(spec: RunSpec, exp: dict) -> bool:
    """Whether stage 3 of ``exp`` waits on ``spec``: a run its TL1 choice reads, or a dual
    stage. The workflow schedules these first (rule priority), so that the chain ending in
    stage 3, the longest of an experiment, does not run last with the other cores idle."""
    if not exp.get("dual"):
        return False
    if spec.kind in (RunKind.PRUNED, RunKind.DUAL_CONTROL, RunKind.DUAL):
        return True
    return spec in choice_specs(exp)


# ---------------------------------------------------------------- command lines


def _set_value(value):
    if isinstance(value, list):  # a YAML flow list, quoted for the shell
        return shlex.quote(f"[{','.join(map(str, value))}]")
    return repr(value) if isinstance(value, str) else value


def _sets(section: str, values: dict) -> str:
    return " ".join(f"--set {section}.{k}={_set_value(v)}" for k, v in values.items())


def data_args(exp: dict, config: dict) -> str:
    """--set flags for the data section: dataset, location and subsets."""
    data = {"dataset": exp["dataset"], "cache_dir": config["cache_dir"], "download": False,
            **exp.get("data", {})}
    if config["data_root"]:
        data["data_root"] = config["data_root"]
    return _sets("data", {k: ("null" if v is None else v) for k, v in data.items()})


# The top-level train.* keys every run takes from the pipeline config (beside device), unless
# its stage's schedule sets them; a run's command line names them only where they differ from
# dst's defaults.
RUNTIME_KEYS = ("precision", "memory_format", "deterministic", "compile")


def _schedule_args(spec: RunSpec, exp: dict, config: dict) -> str:
    section = "baseline" if spec.kind is RunKind.BASELINE else "finetune"
    schedule = exp.get(section, {})
    train = {**schedule, "seed": spec.seed, "device": config["device"]}
    for key in RUNTIME_KEYS:  # only where they differ: the commands of runs made before stay
        if key in config and key not in schedule \
                and config[key] != field_default(config_field("train", key)):
            train[key] = config[key]
    return f"{data_args(exp, config)} --set model.name={exp['model']} {_sets('train', train)}"


def _prune_values(spec: RunSpec, dual: dict) -> dict:
    prune = {"rate": spec.prune_rate, "weight_l1": dual["weight_l1"],
             "l1_epochs": dual["l1_epochs"], "finetune_epochs": dual["finetune_epochs"],
             "scope": dual["scope"]}
    structure, block_out = structure_parts(spec.prune_structure)
    if structure != "element":
        prune.update(structure=structure, block_out=block_out,
                     scope=dual.get("block_scope") or dual["scope"])
        if dual.get("block_exclude"):
            prune["exclude"] = dual["block_exclude"]
    return prune


def run_args(spec: RunSpec, exp: dict, config: dict) -> str:
    """The ``dst`` arguments of a run after ``--out``/``--from``: its schedule, penalty or
    pruning as ``--set`` flags and its identity as ``--tag`` flags. The text of every existing
    run's command stays as it was, so Snakemake does not rerun finished runs."""
    parts = [_schedule_args(spec, exp, config)]
    if spec.kind is RunKind.PRUNED:
        parts.append(_sets("prune", _prune_values(spec, exp["dual"])))
    elif spec.kind is RunKind.DUAL_CONTROL:
        parts.append(f"--set reg.method='{NO_METHOD}'")
    elif spec.kind is RunKind.THRESHOLD:
        search = {k: v for k, v in exp[THRESHOLD_METHOD].items() if k != "budgets"}
        parts.append(_sets("fatrelu", {"budget_pp": spec.lam, **search}))
    elif spec.kind is not RunKind.BASELINE:
        reg = {"method": spec.method, "lam": spec.lam}
        if spec.beta is not None:
            reg["beta"] = spec.beta
        parts.append(_sets("reg", reg))
    parts.append(" ".join(f"--tag {k}={v}" for k, v in spec.tags().items()))
    return " ".join(parts)
