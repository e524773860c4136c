"""The Snakemake pipeline end to end on config/smoke.yaml, plus dry runs of the other configs."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest
import yaml

from dstcore.analysis.aggregate import LAYER_COLUMNS, RUN_COLUMNS
from dstcore.models import build_model
from dstcore.sparsity.activations import weighted_layers
from tests.conftest import job_counts, smoke_config, snakemake


def tl1_sweeps(spec: dict) -> list[tuple[float, list[float]]]:
    if "sweeps" in spec:
        return [(s["beta"], s["lams"]) for s in spec["sweeps"]]
    return [(beta, spec["lams"]) for beta in spec.get("betas", [1.0])]


def expected_runs(config: dict, results) -> set[str]:
    runs = set()
    for exp in config["experiments"]:
        name = exp["name"]
        for seed in exp["seeds"]:
            runs.add(f"{name}/baseline/seed{seed}")
            runs.add(f"{name}/none/lam0/seed{seed}")
            for method, spec in exp.get("regularizers", {}).items():
                grids = tl1_sweeps(spec) if method == "tl1" else [(None, spec["lams"])]
                for beta, lams in grids:
                    variant = f"tl1-beta{beta:g}" if method == "tl1" else method
                    runs.update(f"{name}/{variant}/lam{lam:g}/seed{seed}" for lam in lams)
            runs.update(f"{name}/fatrelu/budget{budget:g}/seed{seed}"
                        for budget in exp.get("fatrelu", {}).get("budgets", []))
            dual = exp.get("dual")
            if dual:
                choice = json.loads((results / name / "dual/tl1_choice.json").read_text())
                # element runs keep their paths from before block pruning: dual/prune{rate}
                structures = ["" if s == "element" else f"{s}{dual.get('block_out', 16)}-"
                              for s in dual.get("structures", ["element"])]
                for rate, structure in itertools.product(dual["prune_rates"], structures):
                    prefix = f"{name}/dual/{structure}prune{rate:g}"
                    runs.update({f"{prefix}/stage2/seed{seed}", f"{prefix}/lam0/seed{seed}"})
                    runs.update(f"{prefix}/tl1-beta{choice['beta']:g}/lam{lam:g}/seed{seed}"
                                for lam in choice["lams"])
    return runs


def test_smoke_tables_are_complete_and_well_formed(smoke):
    results, cfg = smoke
    config = yaml.safe_load(cfg.read_text())
    runs = pd.read_csv(results / "tables/runs.csv")
    assert list(runs.columns) == RUN_COLUMNS
    assert set(runs.run_dir) == expected_runs(config, results) and runs.run_dir.is_unique
    ok = runs[runs.status == "completed"]
    for col in ("top1", "activation_sparsity", "weight_sparsity"):
        assert ok[col].between(0, 1).all(), col
    assert (ok.effective_macs <= ok.dense_macs).all() and (ok.effective_macs > 0).all()
    assert (runs[runs.model == "lenet5"].dense_macs == 416_520).all()
    assert ok.wall_seconds.gt(0).all() and ok.git_commit.notna().all()
    kinds = runs.groupby("experiment").kind.apply(set).to_dict()
    assert kinds["lenet5_mnist"] == {"baseline", "control", "actreg", "threshold", "pruned",
                                     "dual_control", "dual"}
    # FATReLU changes no weight: its runs keep their control's weights, on the same test images
    control = runs[runs.kind == "control"].set_index(["experiment", "seed"])
    for r in runs[runs.kind == "threshold"].itertuples():
        parent = control.loc[(r.experiment, r.seed)]
        assert (r.weight_sparsity, r.dense_macs) == (parent.weight_sparsity, parent.dense_macs)
    pruned = runs[runs.kind.isin(["pruned", "dual", "dual_control"])]
    element = pruned[pruned.prune_structure == "element"]
    assert (element.weight_sparsity >= 0.5 - 1e-6).all() and (pruned.prune_rate == 0.5).all()
    assert set(pruned.prune_structure) == {"element", "block16"}
    assert runs[~runs.kind.isin(["pruned", "dual", "dual_control"])].prune_structure.isna().all()
    block = pruned[pruned.prune_structure == "block16"]
    assert block.run_dir.str.startswith("lenet5_mnist/dual/block16-prune0.5/").all()
    assert (block.groupby("kind").size() == pruned[pruned.prune_structure == "element"]
            .groupby("kind").size()).all()  # the same stage 2 and 3 runs as unstructured
    tl1 = runs[(runs.method == "tl1") & (runs.experiment == "lenet5_mnist")]
    assert set(tl1[tl1.kind == "actreg"].beta) == {0.5, 2.0} and tl1.lam.notna().all()
    assert set(runs.groupby("experiment").seed.nunique()) == {2}

    layers = pd.read_csv(results / "tables/layers.csv")
    assert list(layers.columns) == LAYER_COLUMNS
    assert set(layers.run_dir) == set(runs.run_dir)
    # block pruning leaves the image layer and the classifier dense (dual.block_exclude in the
    # smoke config); the rate holds over the other layers, weighted by their sizes
    lenet5 = build_model("lenet5", (1, 28, 28), 10)
    sizes = {n: m.weight.numel() for n, m in weighted_layers(lenet5)}
    for run_dir, lay in layers[layers.run_dir.isin(block.run_dir)].groupby("run_dir"):
        ws = dict(zip(lay.layer, lay.weight_sparsity, strict=True))
        assert ws["conv1"] == ws["fc3"] == 0.0, run_dir
        inner = [n for n in sizes if n not in ("conv1", "fc3")]
        zeroed = sum(ws[n] * sizes[n] for n in inner) / sum(sizes[n] for n in inner)
        assert zeroed >= 0.5 - 1e-6, run_dir
    lenet = layers[layers.run_dir == "lenet5_mnist/baseline/seed0"]
    assert list(lenet.layer) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert math.isnan(lenet.activation_sparsity.iloc[0])  # the image is not an activation map
    totals = layers.groupby("run_dir")[["dense_macs", "effective_macs"]].sum()
    merged = runs.set_index("run_dir").join(totals.add_suffix("_layers"))
    assert (merged.dense_macs - merged.dense_macs_layers).abs().max() < 1e-6
    assert (merged.effective_macs - merged.effective_macs_layers).abs().max() < 1e-3


def test_absurd_lambda_is_kept_as_a_diverged_row(smoke):
    results, _ = smoke
    runs = pd.read_csv(results / "tables/runs.csv")
    bad = runs[runs.lam > 1e20]
    assert len(bad) == 2 and (bad.status == "diverged").all()  # one per seed
    assert (bad.diverged_epoch == 1).all() and bad.divergence_reason.str.contains("non-finite").all()
    assert (runs[runs.lam.fillna(0) < 1e20].status == "completed").all()


def test_every_rule_wrote_a_log(smoke):
    results, _ = smoke
    logs = list((results / "logs").rglob("*.log"))
    assert len(logs) >= 10 and all(p.stat().st_size > 0 for p in logs if "aggregate" not in p.name)
    assert list((results / "benchmarks").rglob("*.tsv"))


def test_second_run_has_nothing_to_do(smoke):
    _, cfg = smoke
    proc = snakemake("all", "-n", "--cores", "2", "--configfile", str(cfg))
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_adding_a_lambda_runs_only_the_new_jobs(smoke, tmp_path):
    results, cfg = smoke
    config = yaml.safe_load(cfg.read_text())
    config["experiments"][0]["regularizers"]["hoyer"]["lams"].append(3.0e-3)
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(config, sort_keys=False))  # the smoke run's key order
    proc = snakemake("all", "-n", "--cores", "2", "--configfile", str(more))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts.pop("finetune_actreg") == 2  # one per seed
    assert counts.pop("aggregate") == 1 and counts.pop("all") == 1
    # the report, and the latency of the (possibly new) best TL1 model, follow the new table;
    # Hoyer runs do not feed stage 3's TL1 choice, so no dual run is redone
    assert set(counts) <= {"report", "measure_latency"}, counts


def test_an_added_experiment_and_a_deleted_run_are_run(smoke, tmp_path):
    """Both sit behind stage 3's checkpoint, where Snakemake 9 alone would find nothing to do."""
    results, cfg = smoke
    config = yaml.safe_load(cfg.read_text())
    config["experiments"].append({**config["experiments"][0], "name": "lenet5_again",
                                  "seeds": [0]})
    more = tmp_path / "more_experiments.yaml"
    more.write_text(yaml.safe_dump(config, sort_keys=False))
    control = results / "lenet5_mnist/none/lam0/seed1/metrics.json"  # stage 3's choice reads it
    moved = control.with_name("metrics.json.moved")
    control.rename(moved)
    try:
        proc = snakemake("all", "-n", "--cores", "2", "--configfile", str(more))
    finally:
        moved.rename(control)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_baseline"] == 1 and counts["choose_dual_tl1"] == 2, counts
    assert "lenet5_mnist/none/lam0/seed1/metrics.json" in proc.stdout


def test_adding_a_tl1_lambda_redoes_the_stage_3_choice(smoke, tmp_path):
    results, cfg = smoke
    config = yaml.safe_load(cfg.read_text())
    config["experiments"][0]["regularizers"]["tl1"]["sweeps"][0]["lams"].append(3.0e-3)
    more = tmp_path / "more_tl1.yaml"
    more.write_text(yaml.safe_dump(config, sort_keys=False))  # the smoke run's key order
    proc = snakemake("all", "-n", "--cores", "2", "--configfile", str(more))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["finetune_actreg"] == 2 and counts["choose_dual_tl1"] == 1


def test_paper_config_resolves_the_whole_dag():
    proc = snakemake("all", "-n", "--cores", "8", "--configfile", "config/paper.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_baseline"] == 10  # lenet5 x 3 seeds + 5 CIFAR-100 + 2 ImageNet
    assert counts["prepare_data"] == 3
    assert counts["finetune_actreg"] > 100 and counts["dual_control"] > 20
    # stage 3's TL1 runs follow the choice each experiment's checkpoint makes
    assert counts["choose_dual_tl1"] == 8 and "dual_tl1" not in counts


def test_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout


def test_bad_config_stops_snakemake_with_one_line(tmp_path):
    bad = smoke_config(tmp_path / "r")
    bad["experiments"][0]["regularizers"]["tl1"]["betas"] = [-1.0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake("all", "-n", "--configfile", str(path))
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert ("invalid config: config.experiments[0].regularizers.tl1.betas[0]: -1.0 is not "
            "allowed; expected a number > 0\n") in output
    assert "Traceback" not in output and 'File "' not in output and "Error" not in output
    assert not (tmp_path / "r").exists()


def test_stage_3_runs_the_tl1_choice_of_the_documented_rule(smoke):
    results, cfg = smoke
    tolerance = yaml.safe_load(cfg.read_text())["report"]["tolerance_pp"]
    choice = json.loads((results / "lenet5_mnist/dual/tl1_choice.json").read_text())
    runs = pd.read_csv(results / "tables/runs.csv")
    lenet = runs[(runs.experiment == "lenet5_mnist") & (runs.status == "completed")]
    target = 100 * lenet[lenet.kind == "baseline"].top1.mean() - tolerance
    frontier = pd.read_csv(results / "tables/frontier.csv")
    at = frontier[(frontier.experiment == "lenet5_mnist") & (frontier.method == "tl1")
                  & (frontier.accuracy_drop_pp == tolerance) & frontier.bracketed]
    if len(at):  # rule 1: the β with the best frontier at the tolerance
        assert choice["beta"] == at.sort_values("sparsity_mean").beta.iloc[-1]
    sweep = lenet[(lenet.kind == "actreg") & (lenet.method == "tl1")
                  & (lenet.beta == choice["beta"])].groupby("lam").top1.mean() * 100
    within = sweep[sweep >= target - 1e-9].index
    expected = [within.max(), *[lam for lam in sweep.index if lam > within.max()][:1]] \
        if len(within) else [sweep.index.min()]
    assert choice["lams"] == pytest.approx(expected)
    dual = runs[runs.kind == "dual"]
    assert set(dual.beta) == {choice["beta"]} and set(dual.lam) == set(choice["lams"])
    for _, structure in dual.groupby("prune_structure"):  # element and block16: same choice
        assert len(structure) == 2 * len(choice["lams"])  # every seed
