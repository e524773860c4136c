# Config validation, the experiment grid, and the small input/param functions rules use.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dstcore import DstError
from dstcore.workflow.checks import (
    fmt,
    prune_structures,
    regularizer_sweeps,
    structure_of_prefix,
    structure_prefix,
    validate_config,
)

try:
    validate_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except DstError as err:  # one line and exit status 2, like every dst command
    print(f"invalid config: {err}", file=sys.stderr)
    sys.exit(2)

# Jobs run `python -m dstcore.cli`: the Python of the environment running Snakemake, or of the
# rule's conda environment (--sdm conda, built from environment.yml) with this checkout on
# PYTHONPATH.
def _prepend(variable, folder):
    return os.pathsep.join(filter(None, [str(folder), os.environ.get(variable)]))


os.environ.update(
    PATH=_prepend("PATH", Path(sys.executable).parent),
    PYTHONPATH=_prepend("PYTHONPATH", Path(workflow.basedir).resolve()),
)

# The command that started the workflow, for the report's provenance section; jobs (local or
# on a cluster) inherit it rather than recording their own inner command.
os.environ.setdefault("DST_SNAKEMAKE_COMMAND", shlex.join(["snakemake", *sys.argv[1:]]))



def config_files_in_merge_order():
    """Absolute paths of the config files in the order Snakemake merged them: the Snakefile's
    default first, then each --configfile (a later file's keys override an earlier one's)."""
    given = [str(f) for f in workflow.overwrite_configfiles]
    default = [str(f) for f in workflow.configfiles if str(f) not in given]
    return [str(Path(f).resolve()) for f in default + given]


RESULTS = config["results_dir"]
EXPERIMENTS = {e["name"]: e for e in config["experiments"]}
NUMBER = r"[0-9][0-9.e+-]*"


wildcard_constraints:
    exp="|".join(re.escape(name) for name in EXPERIMENTS),
    seed=r"\d+",
    lam=NUMBER,
    rate=NUMBER,
    structure=r"(block[0-9]+-)?",  # the pruning structure before prune{rate}: none = element
    beta=NUMBER,
    variant=rf"none|l1|hoyer|tl1-beta{NUMBER}",
    dataset=r"[a-z0-9-]+",
    run=rf"{re.escape(RESULTS)}/.+",


# ---------------------------------------------------------------- the grid


def variants(exp):
    """(variant, method, lam, beta) for every activation-regulariser run incl. the lam=0 control."""
    out = [("none", "none", 0.0, None)]
    for method, beta, lams in regularizer_sweeps(exp):
        name = f"tl1-beta{fmt(beta)}" if method == "tl1" else method
        out += [(name, method, lam, beta) for lam in lams]
    return out


def dual_choice(name):
    """Stage 3's TL1 beta and lams for experiment ``name``: the output of the
    choose_dual_tl1 checkpoint (the rule is in dstcore.analysis.frontier.choose_dual_tl1)."""
    with open(checkpoints.choose_dual_tl1.get(exp=name).output[0]) as fh:
        return json.load(fh)


def dual_prefixes(name):
    """The stage 2 folders of experiment ``name``: one per prune rate and pruning structure,
    ``dual/prune{rate}`` (element) or ``dual/block16-prune{rate}`` (block16)."""
    dual = EXPERIMENTS[name].get("dual")
    if not dual:
        return []
    return [f"{RESULTS}/{name}/dual/{structure_prefix(label)}prune{fmt(rate)}"
            for rate in dual["prune_rates"] for label in prune_structures(dual)]


def run_dirs(name):
    """Every run directory of experiment ``name`` known before any run: all but stage 3's TL1
    runs (:func:`stage3_dirs`)."""
    exp = EXPERIMENTS[name]
    root = f"{RESULTS}/{name}"
    dirs = []
    for seed in exp["seeds"]:
        dirs.append(f"{root}/baseline/seed{seed}")
        if "finetune" in exp:
            dirs += [f"{root}/{v}/lam{fmt(lam)}/seed{seed}" for v, _, lam, _ in variants(exp)]
        for prefix in dual_prefixes(name):
            dirs += [f"{prefix}/stage2/seed{seed}", f"{prefix}/lam0/seed{seed}"]
    return dirs


def stage3_dirs(name):
    """Stage 3's TL1 run directories of experiment ``name``, once its choice is made (the same
    β and λ for every pruning structure)."""
    exp = EXPERIMENTS[name]
    if not exp.get("dual"):
        return []
    choice = dual_choice(name)
    return [f"{prefix}/tl1-beta{fmt(choice['beta'])}/lam{fmt(lam)}/seed{seed}"
            for seed in exp["seeds"] for prefix in dual_prefixes(name)
            for lam in choice["lams"]]


def known_metrics(wildcards):
    return [f"{d}/metrics.json" for name in EXPERIMENTS for d in run_dirs(name)]


def stage3_metrics():
    """One input function per experiment: while a choice is pending, Snakemake waits for that
    checkpoint there without holding back other runs or other experiments' choices."""
    return {f"stage3_{name}": lambda wildcards, name=name: [f"{d}/metrics.json"
                                                             for d in stage3_dirs(name)]
            for name in EXPERIMENTS if EXPERIMENTS[name].get("dual")}


def tl1_choice_inputs(wildcards):
    """The runs stage 3's TL1 choice reads: baselines, controls and TL1 sweeps, every seed."""
    exp = EXPERIMENTS[wildcards.exp]
    root = f"{RESULTS}/{wildcards.exp}"
    runs = [f"{root}/baseline/seed{seed}" for seed in exp["seeds"]]
    runs += [f"{root}/{variant}/lam{fmt(lam)}/seed{seed}" for seed in exp["seeds"]
             for variant, method, lam, _ in variants(exp) if method in ("none", "tl1")]
    return [f"{run}/metrics.json" for run in runs]


def latency_targets():
    """One latency table (the first seed's models) of every experiment that asks for it."""
    if not config["latency"]["enabled"]:
        return []
    return [f"{RESULTS}/latency/{name}/seed{exp['seeds'][0]}.csv"
            for name, exp in EXPERIMENTS.items() if exp.get("latency")]


def latency_threads():
    """The latency job takes every core it may use (--cores), so nothing else runs meanwhile."""
    try:
        cores = workflow.cores
    except WorkflowError:  # no --cores given (cluster runs without `cores:`, --unlock, ...)
        cores = None
    return cores if isinstance(cores, int) and cores > 0 else (os.cpu_count() or 1)


def all_targets():
    return [f"{RESULTS}/tables/runs.csv", f"{RESULTS}/tables/layers.csv", *report_targets()]


def report_figures():
    """Figure stems the notebook writes, per experiment, from what the config runs."""
    stems = []
    for name, exp in EXPERIMENTS.items():
        if exp.get("regularizers"):
            stems += [f"{name}_frontier", f"{name}_tradeoff", f"{name}_layer_sparsity"]
        if exp.get("dual"):
            stems.append(f"{name}_dual_macs")
        if config["latency"]["enabled"] and exp.get("latency"):
            stems.append(f"{name}_latency")
    return stems


REPORT_TABLES = ["frontier", "activation_sparsity", "dual_sparse", "dual_structures",
                 "paper_vs_reproduced", "diverged", "latency_models"]


def report_targets():
    return [f"{RESULTS}/report/report.html"]


# ---------------------------------------------------------------- input functions


def prepared_data(wildcards):
    return f"{RESULTS}/data/{EXPERIMENTS[wildcards.exp]['dataset']}.json"


def baseline_model(wildcards):
    return f"{RESULTS}/{wildcards.exp}/baseline/seed{wildcards.seed}/model.pt"


def stage2_model(wildcards):
    return (f"{RESULTS}/{wildcards.exp}/dual/{wildcards.structure}prune{wildcards.rate}/stage2/"
            f"seed{wildcards.seed}/model.pt")


# ---------------------------------------------------------------- CLI arguments


def _set_value(v):
    if isinstance(v, list):  # a YAML flow list, quoted for the shell
        return shlex.quote(f"[{','.join(map(str, v))}]")
    return repr(v) if isinstance(v, str) else v


def _sets(section, values):
    return " ".join(f"--set {section}.{k}={_set_value(v)}" for k, v in values.items())


def data_args(exp):
    """--set flags for the data section: dataset, location and subsets."""
    data = {"dataset": exp["dataset"], "cache_dir": config["cache_dir"], "download": False,
            **exp.get("data", {})}
    if config["data_root"]:
        data["data_root"] = config["data_root"]
    return _sets("data", {k: ("null" if v is None else v) for k, v in data.items()})


def common_args(wildcards, section):
    exp = EXPERIMENTS[wildcards.exp]
    train = {**exp.get(section, {}), "seed": int(wildcards.seed), "device": config["device"]}
    return f"{data_args(exp)} --set model.name={exp['model']} {_sets('train', train)}"


def tags(**values):
    return " ".join(f"--tag {k}={v}" for k, v in values.items())


def baseline_args(wildcards):
    return f"{common_args(wildcards, 'baseline')} {tags(experiment=wildcards.exp, kind='baseline')}"


def variant_parts(variant):
    """(method, beta) of a variant directory name such as ``tl1-beta1``."""
    if variant.startswith("tl1-beta"):
        return "tl1", float(variant.removeprefix("tl1-beta"))
    return variant, None


def actreg_args(wildcards):
    method, beta = variant_parts(wildcards.variant)
    reg = {"method": method, "lam": float(wildcards.lam)}
    if beta is not None:
        reg["beta"] = beta
    labels = tags(experiment=wildcards.exp, kind="control" if method == "none" else "actreg",
                  method=method, lam=wildcards.lam,
                  **({"beta": fmt(beta)} if beta is not None else {}))
    return f"{common_args(wildcards, 'finetune')} {_sets('reg', reg)} {labels}"


def structure_tags(wildcards):
    """The prune_structure tag of a block-structured dual run (block16). Element runs get none:
    their commands predate block pruning and must stay as they were, or they would rerun
    (dstcore.analysis.aggregate reads a dual run without the tag as element)."""
    structure, block_out = structure_of_prefix(wildcards.structure)
    return {} if structure == "element" else {"prune_structure": f"block{block_out}"}


def prune_args(wildcards):
    dual = EXPERIMENTS[wildcards.exp]["dual"]
    prune = {"rate": float(wildcards.rate), "weight_l1": dual["weight_l1"],
             "l1_epochs": dual["l1_epochs"], "finetune_epochs": dual["finetune_epochs"],
             "scope": dual["scope"]}
    structure, block_out = structure_of_prefix(wildcards.structure)
    if structure != "element":
        prune.update(structure=structure, block_out=block_out,
                     scope=dual.get("block_scope") or dual["scope"])
        if dual.get("block_exclude"):
            prune["exclude"] = dual["block_exclude"]
    labels = tags(experiment=wildcards.exp, kind="pruned", method="none",
                  prune_rate=wildcards.rate, **structure_tags(wildcards))
    return f"{common_args(wildcards, 'finetune')} {_sets('prune', prune)} {labels}"


def dual_control_args(wildcards):
    """Stage 3's lam = 0 control: the pruned model fine-tuned with the masks fixed, no penalty."""
    labels = tags(experiment=wildcards.exp, kind="dual_control", method="none", lam=0,
                  prune_rate=wildcards.rate, **structure_tags(wildcards))
    return f"{common_args(wildcards, 'finetune')} --set reg.method='none' {labels}"


def dual_args(wildcards):
    reg = {"method": "tl1", "lam": float(wildcards.lam), "beta": float(wildcards.beta)}
    labels = tags(experiment=wildcards.exp, kind="dual", method="tl1", lam=wildcards.lam,
                  beta=wildcards.beta, prune_rate=wildcards.rate, **structure_tags(wildcards))
    return f"{common_args(wildcards, 'finetune')} {_sets('reg', reg)} {labels}"


def dual_choice_params(wildcards):
    """--beta/--lams of dst choose-tl1: the config's values or auto."""
    dual = EXPERIMENTS[wildcards.exp]["dual"]
    lams = dual.get("tl1_lams", "auto")
    lams = lams if lams == "auto" else " ".join(map(str, lams))
    return f"--beta {dual.get('tl1_beta', 'auto')} --lams {lams}"


def resources_of(key, default):
    def get(wildcards):
        return EXPERIMENTS[wildcards.exp].get("resources", {}).get(key, default)

    return get
