"""Provenance for the report: per-rule compute from benchmark files, mixing warnings, summary."""

import pandas as pd
import torch

from dstcore.analysis import provenance
from dstcore.analysis.aggregate import provenance_columns
from dstcore.core.environment import provenance as capture


def runs(**changes) -> pd.DataFrame:
    """Three baseline/fine-tune rows made on this machine from one clean commit."""
    prov = capture(torch.device("cpu"), seed=0)
    row = {"experiment": "e", "kind": "baseline", "seed": 0, **provenance_columns(prov),
           "git_dirty": False}
    frame = pd.DataFrame([row, {**row, "seed": 1}, {**row, "kind": "actreg"}])
    for column, values in changes.items():
        frame[column] = values
    return frame


def test_rule_times_sums_wall_and_cpu_time_per_rule(tmp_path):
    def bench(relative, seconds, cpu):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{seconds}\t0:00:00\t1.0\t{cpu}\n")

    bench("e/baseline/seed0.tsv", 3600, 1800)
    bench("e/baseline/seed1.tsv", 1800, 1800)
    bench("e/tl1-beta0.1/lam0.001/seed0.tsv", 360, 720)
    bench("e/dual/prune0.9/stage2/seed0.tsv", 36, 36)
    bench("e/dual/prune0.9/lam0/seed0.tsv", 72, 72)
    bench("e/dual/prune0.9/tl1-beta1/lam0.01/seed0.tsv", 72, 36)
    bench("e/latency/seed0.tsv", 180, 360)
    bench("e/stray/file.tsv", 1, 1)
    table = provenance.rule_times(tmp_path).set_index("rule")
    assert table.loc["train_baseline"].tolist() == [2, 1.5, 1.0]
    assert table.loc["finetune_actreg"].tolist() == [1, 0.1, 0.2]
    assert table.loc["prune_weights", "wall_hours"] == 0.01
    assert table.loc["dual_control", "jobs"] == 1 and table.loc["dual_tl1", "cpu_hours"] == 0.01
    assert table.loc["measure_latency", "cpu_hours"] == 0.1
    assert table.loc["other", "jobs"] == 1  # not a run's or a latency table's benchmark
    assert provenance.rule_times(tmp_path / "none").empty


def test_mixing_warnings_name_every_field_that_differs():
    assert provenance.mixing_warnings(runs()) == []
    mixed = provenance.mixing_warnings(runs(cpu_capability=["AVX512", "AVX2", "AVX2"],
                                            git_commit=["a", "b", "b"], git_dirty=[False, True, 0]))
    assert mixed[0] == "the tables mix runs from 2 commits: a (1 runs); b (2 runs)"
    assert mixed[1].startswith("the tables mix runs from 2 CPU capabilities: AVX2 (2 runs)")
    assert mixed[2].startswith("1 runs were made from a git tree with uncommitted changes")


def test_how_made_names_commit_config_hash_seeds_and_machine(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seeds: [0, 1]\n")
    text = provenance.how_made(runs(), [str(config)], "snakemake all --cores 2")
    prov = capture(torch.device("cpu"))
    assert "sha256 043cf370b59f" in text  # printf 'seeds: [0, 1]\n' | sha256sum
    assert "**Seeds**: e: 0, 1" in text and "`snakemake all --cores 2`" in text
    assert f"vector extension {torch.backends.cpu.get_cpu_capability()}" in text
    assert f"torch {torch.__version__.split('+')[0]}" in text
    assert (prov["git"]["commit"] or "not recorded") in text


def test_runs_table_keeps_every_provenance_column():
    from dstcore.analysis.aggregate import RUN_COLUMNS

    prov = capture(torch.device("cpu"))
    assert set(provenance_columns(prov)) <= set(RUN_COLUMNS)
