# Config validation, the experiment grid, and the small input/param functions rules use.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dstcore import DstError
from dstcore.pipeline import fmt, validate_config

try:
    validate_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except DstError as err:
    raise WorkflowError(f"invalid config: {err}") from None

# Jobs run `python -m dstcore.cli`: the Python of the environment running Snakemake, or of the
# rule's conda environment (--sdm conda, built from environment.yml) with this checkout on
# PYTHONPATH.
def _prepend(variable, folder):
    return os.pathsep.join(filter(None, [str(folder), os.environ.get(variable)]))


os.environ.update(
    PATH=_prepend("PATH", Path(sys.executable).parent),
    PYTHONPATH=_prepend("PYTHONPATH", Path(workflow.basedir).resolve()),
)

RESULTS = config["results_dir"]
EXPERIMENTS = {e["name"]: e for e in config["experiments"]}
NUMBER = r"[0-9][0-9.e+-]*"


wildcard_constraints:
    exp="|".join(re.escape(name) for name in EXPERIMENTS),
    seed=r"\d+",
    lam=NUMBER,
    rate=NUMBER,
    variant=rf"none|l1|hoyer|tl1-beta{NUMBER}",
    dataset=r"[a-z0-9-]+",
    run=rf"{re.escape(RESULTS)}/.+",


# ---------------------------------------------------------------- the grid


def variants(exp):
    """(variant, method, lam, beta) for every activation-regulariser run incl. the lam=0 control."""
    out = [("none", "none", 0.0, None)]
    for method, spec in exp.get("regularizers", {}).items():
        for beta in spec.get("betas", [None]) if method == "tl1" else [None]:
            name = f"tl1-beta{fmt(beta)}" if method == "tl1" else method
            out += [(name, method, lam, beta) for lam in spec["lams"]]
    return out


def run_dirs(name):
    """Every run directory of experiment ``name``."""
    exp = EXPERIMENTS[name]
    root = f"{RESULTS}/{name}"
    dirs = []
    for seed in exp["seeds"]:
        dirs.append(f"{root}/baseline/seed{seed}")
        if "finetune" in exp:
            dirs += [f"{root}/{v}/lam{fmt(lam)}/seed{seed}" for v, _, lam, _ in variants(exp)]
        dual = exp.get("dual")
        if dual:
            for rate in dual["prune_rates"]:
                dirs.append(f"{root}/dual/prune{fmt(rate)}/stage2/seed{seed}")
                dirs += [f"{root}/dual/prune{fmt(rate)}/lam{fmt(lam)}/seed{seed}"
                         for lam in [0.0, *dual["tl1_lams"]]]
    return dirs


def all_metrics():
    return [f"{d}/metrics.json" for name in EXPERIMENTS for d in run_dirs(name)]


def latency_targets():
    """One latency table per seed of every experiment that asks for it."""
    if not config["latency"]["enabled"]:
        return []
    return [f"{RESULTS}/latency/{name}/seed{seed}.csv" for name, exp in EXPERIMENTS.items()
            if exp.get("latency") for seed in exp["seeds"]]


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
            stems += [f"{name}_tradeoff", f"{name}_layer_sparsity"]
        if exp.get("dual"):
            stems.append(f"{name}_dual_macs")
        if config["latency"]["enabled"] and exp.get("latency"):
            stems.append(f"{name}_latency")
    return stems


REPORT_TABLES = ["activation_sparsity", "dual_sparse", "paper_vs_reproduced", "diverged",
                 "latency_models"]


def report_targets():
    return [f"{RESULTS}/report/report.html"]


# ---------------------------------------------------------------- input functions


def prepared_data(wildcards):
    return f"{RESULTS}/data/{EXPERIMENTS[wildcards.exp]['dataset']}.json"


def baseline_model(wildcards):
    return f"{RESULTS}/{wildcards.exp}/baseline/seed{wildcards.seed}/model.pt"


def stage2_model(wildcards):
    return f"{RESULTS}/{wildcards.exp}/dual/prune{wildcards.rate}/stage2/seed{wildcards.seed}/model.pt"


# ---------------------------------------------------------------- CLI arguments


def _sets(section, values):
    return " ".join(f"--set {section}.{k}={v!r}" if isinstance(v, str) else
                    f"--set {section}.{k}={v}" for k, v in values.items())


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


def prune_args(wildcards):
    dual = EXPERIMENTS[wildcards.exp]["dual"]
    prune = {"rate": float(wildcards.rate), "weight_l1": dual["weight_l1"],
             "l1_epochs": dual["l1_epochs"], "finetune_epochs": dual["finetune_epochs"],
             "scope": dual["scope"]}
    labels = tags(experiment=wildcards.exp, kind="pruned", method="none",
                  prune_rate=wildcards.rate)
    return f"{common_args(wildcards, 'finetune')} {_sets('prune', prune)} {labels}"


def dual_args(wildcards):
    dual = EXPERIMENTS[wildcards.exp]["dual"]
    lam = float(wildcards.lam)
    reg = {"method": "tl1", "lam": lam, "beta": dual["tl1_beta"]} if lam > 0 else {"method": "none"}
    labels = tags(experiment=wildcards.exp, kind="dual" if lam > 0 else "dual_control",
                  method=reg["method"], lam=wildcards.lam, prune_rate=wildcards.rate,
                  **({"beta": fmt(dual["tl1_beta"])} if lam > 0 else {}))
    return f"{common_args(wildcards, 'finetune')} {_sets('reg', reg)} {labels}"


def resources_of(key, default):
    def get(wildcards):
        return EXPERIMENTS[wildcards.exp].get("resources", {}).get(key, default)

    return get
