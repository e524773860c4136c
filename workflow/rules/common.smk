# Config validation, the experiment grid, and the small input/param functions rules use.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dstcore import DstError
from dstcore.core.runs import PATH_TEMPLATES, RunKind, RunSpec, rule_output
from dstcore.sparsity.regularizers import REGISTRY
from dstcore.workflow.checks import validate_config
from dstcore.workflow.grid import (
    choice_specs,
    feeds_stage3,
    run_args,
    run_specs,
    selected_experiments,
    stage3_specs,
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
    given = [str(Path(f).resolve()) for f in workflow.overwrite_configfiles]
    default = [str(Path(f).resolve()) for f in workflow.configfiles]
    return list(dict.fromkeys([f for f in default if f not in given] + given))


RESULTS = config["results_dir"]
EXPERIMENTS = selected_experiments(config)
NUMBER = r"[0-9][0-9.e+-]*"


wildcard_constraints:
    exp="|".join(re.escape(name) for name in EXPERIMENTS),
    seed=r"\d+",
    lam=NUMBER,
    rate=NUMBER,
    structure=r"(block[0-9]+-)?",  # the pruning structure before prune{rate}: none = element
    beta=NUMBER,
    variant="|".join(["none", *(f"{m.name}-beta{NUMBER}" if m.shape_parameter else m.name
                                for m in REGISTRY.values() if m.formula is not None)]),
    dataset=r"[a-z0-9-]+",
    run=rf"{re.escape(RESULTS)}/.+",


# ---------------------------------------------------------------- the grid (dstcore.workflow.grid)


def run_dir(spec):
    return f"{RESULTS}/{spec.path()}"


def run_file(kind, name, folder=""):
    """A rule's output pattern for runs of ``kind`` (dstcore.core.runs.PATH_TEMPLATES): ``name``
    is a file in the run directory (``model.pt``) or a suffix (``.log`` under ``folder``)."""
    return rule_output(kind, name, RESULTS, folder)


def dual_choice(name):
    """Stage 3's TL1 beta and lams for experiment ``name``: the output of the
    choose_dual_tl1 checkpoint (the rule is in dstcore.analysis.frontier.choose_dual_tl1)."""
    with open(checkpoints.choose_dual_tl1.get(exp=name).output[0]) as fh:
        return json.load(fh)


def known_metrics(wildcards):
    return [f"{run_dir(s)}/metrics.json" for exp in EXPERIMENTS.values() for s in run_specs(exp)]


def stage3_metrics():
    """One input function per experiment: while a choice is pending, Snakemake waits for that
    checkpoint there without holding back other runs or other experiments' choices."""
    return {f"stage3_{name}": lambda wildcards, name=name: [
                f"{run_dir(s)}/metrics.json"
                for s in stage3_specs(EXPERIMENTS[name], dual_choice(name))]
            for name in EXPERIMENTS if EXPERIMENTS[name].get("dual")}


def tl1_choice_inputs(wildcards):
    """The runs stage 3's TL1 choice reads: baselines, controls and TL1 sweeps, every seed."""
    return [f"{run_dir(s)}/metrics.json" for s in choice_specs(EXPERIMENTS[wildcards.exp])]


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


def latency_gpus(wildcards):
    """GPUs of the latency job: its experiment's training GPUs while latency.gpu is auto."""
    if config["latency"]["gpu"] != "auto":
        return 0
    return EXPERIMENTS[wildcards.exp].get("resources", {}).get("gpu", 0)


def all_targets():
    return [f"{RESULTS}/tables/runs.csv", f"{RESULTS}/tables/layers.csv", *report_targets()]


def report_figures():
    """Figure stems the notebook writes, per experiment, from what the config runs."""
    stems = []
    for name, exp in EXPERIMENTS.items():
        if exp.get("regularizers"):
            stems += [f"{name}_frontier", f"{name}_tradeoff", f"{name}_layer_sparsity",
                      f"{name}_convergence"]
        if exp.get("dual"):
            stems.append(f"{name}_dual_macs")
        if config["latency"]["enabled"] and exp.get("latency"):
            stems += [f"{name}_latency_vs_ort", f"{name}_latency"]
    return stems


REPORT_TABLES = ["frontier", "activation_sparsity", "convergence", "dual_sparse",
                 "dual_structures", "paper_vs_reproduced", "diverged", "latency_models"]


def report_targets():
    return [f"{RESULTS}/report/report.html"]


# ---------------------------------------------------------------- input functions


def prepared_data(wildcards):
    return f"{RESULTS}/data/{EXPERIMENTS[wildcards.exp]['dataset']}.json"


def baseline_model(wildcards):
    return f"{run_dir(spec_of(RunKind.BASELINE, wildcards))}/model.pt"


def control_model(wildcards):
    spec = spec_of(RunKind.THRESHOLD, wildcards)
    return f"{run_dir(RunSpec(spec.experiment, RunKind.CONTROL, spec.seed, lam=0.0))}/model.pt"


def stage2_model(wildcards):
    return f"{run_dir(spec_of(RunKind.PRUNED, wildcards))}/model.pt"


# ---------------------------------------------------------------- CLI arguments


def spec_of(kind, wildcards):
    """The RunSpec of the run a rule for runs of ``kind`` writes, from its wildcards."""
    return RunSpec.from_path(PATH_TEMPLATES[kind].format(**wildcards))


def spec_args(kind):
    """The dst arguments of the runs a rule writes (dstcore.workflow.grid.run_args)."""
    def args(wildcards):
        spec = spec_of(kind, wildcards)
        return run_args(spec, EXPERIMENTS[spec.experiment], config)

    return args


def run_priority(kind):
    """Rule priority of the runs of ``kind``: 1 for the runs stage 3 waits on, else 0
    (dstcore.workflow.grid.feeds_stage3)."""
    def priority(wildcards):
        spec = spec_of(kind, wildcards)
        return int(feeds_stage3(spec, EXPERIMENTS[spec.experiment]))

    return priority


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
