"""A regulariser added through the public registry (a $DST_PLUGINS module, as docs/extending.md
shows) runs from the grid through training, the smoke DAG's aggregation and the report."""

from __future__ import annotations

import shlex
import shutil
import sys

import pandas as pd
import pytest
import torch
import yaml

from dstcore.cli import main
from dstcore.core.runs import RunKind
from dstcore.sparsity import regularizers
from dstcore.workflow.checks import validate_config
from dstcore.workflow.grid import run_args, run_specs
from tests.conftest import ROOT

PLUGIN = '''
from dstcore.sparsity.regularizers import Method, register


def squares(a, beta=0.0):
    """Toy penalty: sum a^2 per sample."""
    return a.pow(2).sum() / a.shape[0]


register(Method("squares", squares, "Toy ℓ2²"))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Register the toy method in this process and in every child (papermill's kernel)."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "dst_toy_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{ROOT}")
    monkeypatch.setenv(regularizers.PLUGINS_ENV, "dst_toy_plugin")
    assert regularizers.load_plugins() == ["dst_toy_plugin"]
    yield regularizers.REGISTRY["squares"]
    regularizers.unregister("squares")
    sys.modules.pop("dst_toy_plugin", None)


def test_the_toy_formula_by_hand(toy):
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0]])  # (1 + 4 + 0 + 9) / 2 images
    assert float(toy.formula(a, 0.0)) == pytest.approx(7.0)


def test_a_registered_method_runs_through_grid_aggregation_and_report(toy, smoke, tmp_path):
    smoke_results, cfg = smoke
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results, ignore=shutil.ignore_patterns("report", "figures"))
    config = yaml.safe_load(cfg.read_text())
    config["results_dir"] = str(results)
    exp = next(e for e in config["experiments"] if e["name"] == "lenet5_mnist")
    exp["regularizers"]["squares"] = {"lams": [1e-5, 1e-3]}
    config = validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")
    exp = config["experiments"][0]
    new = [s for s in run_specs(exp) if s.method == "squares"]
    assert [s.path() for s in new] == [f"lenet5_mnist/squares/lam{lam}/seed{seed}"
                                       for seed in (0, 1) for lam in ("1e-05", "0.001")]
    for spec in new:
        parent = results / f"lenet5_mnist/baseline/seed{spec.seed}/model.pt"
        argv = [spec.kind.command, "--from", str(parent), "--out", str(results / spec.path()),
                "--threads", "1", "--allow-divergence", *shlex.split(run_args(spec, exp, config)),
                "--set", "data.train_subset=500"]
        assert main(argv) == 0
    metrics = sorted(str(p) for p in results.rglob("metrics.json"))
    assert main(["aggregate", *metrics, "--results", str(results),
                 "--out-dir", str(results / "tables")]) == 0
    runs = pd.read_csv(results / "tables/runs.csv")
    toy_runs = runs[runs.method == "squares"]
    assert len(toy_runs) == 4 and set(toy_runs.kind) == {str(RunKind.ACTREG)}

    html = tmp_path / "report.html"
    assert main(["render", "--notebook", str(ROOT / "notebooks/report.ipynb"),
                 "--out", str(tmp_path / "report.ipynb"), "--html", str(html),
                 "-p", "runs_csv", str(results / "tables/runs.csv"),
                 "-p", "layers_csv", str(results / "tables/layers.csv"),
                 "-p", "tables_dir", str(tmp_path / "tables"),
                 "-p", "figures_dir", str(tmp_path / "figures"),
                 "-p", "tolerance_pp", "2.0", "-p", "frontier_drops_pp", "[0.0, 2.0]",
                 "-p", "latency_csvs", "[]", "-p", "config_files", "[]",
                 "-p", "benchmarks_dir", str(results / "benchmarks")]) == 0
    frontier = pd.read_csv(tmp_path / "tables/frontier.csv")
    assert "squares" in set(frontier.method)
    activation = pd.read_csv(tmp_path / "tables/activation_sparsity.csv")
    assert "squares" in set(activation.method)
    assert "Toy ℓ2²" in html.read_text()
