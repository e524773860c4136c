"""The rendered report: every table and figure present, numbers equal to a recomputation."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest
import yaml
from bs4 import BeautifulSoup

from dstcore import DstError
from dstcore.render import render
from tests.conftest import ROOT


def html_table(soup: BeautifulSoup, table_id: str) -> pd.DataFrame:
    table = soup.find("table", id=table_id)
    assert table is not None, f"table {table_id} missing from the HTML"
    head = [th.get_text(strip=True) for th in table.find("thead").find_all("th")]
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")]
            for tr in table.find("tbody").find_all("tr")]
    return pd.DataFrame(rows, columns=head)


@pytest.fixture(scope="module")
def rendered(smoke):
    results, cfg = smoke
    config = yaml.safe_load(cfg.read_text())
    soup = BeautifulSoup((results / "report/report.html").read_text(), "html.parser")
    runs = pd.read_csv(results / "tables/runs.csv")
    return results, config, soup, runs


def recompute_best(runs: pd.DataFrame, tolerance: float) -> dict:
    """(experiment, method) -> (lam, top1 %, sparsity %) by the rule the report states."""
    done = runs[runs.status == "completed"]
    out = {}
    for exp, rows in done.groupby("experiment"):
        base = rows[rows.kind == "baseline"]
        base_top1 = 100 * base.top1.mean()
        out[(exp, "baseline")] = (None, base_top1, 100 * base.activation_sparsity.mean())
        for method in ("l1", "hoyer", "tl1"):
            cand = rows[(rows.kind == "actreg") & (rows.method == method)]
            cand = cand.groupby("lam")[["top1", "activation_sparsity"]].mean() * 100
            cand = cand[cand.top1 >= base_top1 - tolerance]
            if len(cand):
                lam = cand.activation_sparsity.idxmax()
                out[(exp, method)] = (lam, cand.top1[lam], cand.activation_sparsity[lam])
    return out


def test_activation_table_matches_recomputation(rendered):
    _, config, soup, runs = rendered
    shown = html_table(soup, "activation-sparsity")
    expected = recompute_best(runs, config["report"]["tolerance_pp"])
    for (exp, method), (lam, top1, sparsity) in expected.items():
        row = shown[(shown.experiment == exp) & (shown.method == method)]
        assert len(row) == 1, (exp, method)
        row = row.iloc[0]
        assert float(row.top1_mean) == pytest.approx(top1, abs=0.006)
        assert float(row.sparsity_mean) == pytest.approx(sparsity, abs=0.006)
        if lam is not None:
            assert float(row.lam) == pytest.approx(lam)
            base_sparsity = expected[(exp, "baseline")][2]
            assert float(row.gain_vs_baseline_pp) == pytest.approx(sparsity - base_sparsity,
                                                                   abs=0.011)
    csv = pd.read_csv(rendered[0] / "tables/activation_sparsity.csv")
    assert len(csv) == len(shown)


def test_dual_table_matches_recomputation(rendered):
    results, _, soup, runs = rendered
    shown = html_table(soup, "dual-sparse")
    dual = runs[(runs.kind == "dual") & (runs.status == "completed")]
    assert len(shown[shown.kind == "dual"]) == len(dual)
    shown_dual = shown[shown.kind == "dual"]
    for _, run in dual.iterrows():
        row = shown_dual[shown_dual.lam.astype(float) == run.lam].iloc[0]
        assert float(row.effective_macs) == pytest.approx(run.effective_macs, abs=0.5)
        assert float(row.mac_reduction_pct) == pytest.approx(
            100 * (1 - run.effective_macs / run.dense_macs), abs=0.006)
        assert float(row.weight_sparsity_mean) == pytest.approx(100 * run.weight_sparsity,
                                                                abs=0.006)


def test_paper_vs_reproduced_has_every_claim(rendered):
    _, config, soup, runs = rendered
    shown = html_table(soup, "paper-vs-reproduced")
    assert list(shown.paper.astype(float)) == [44.04, 27.52, 20.0, 81.7, 84.13]
    lenet = shown.iloc[0]
    expected = recompute_best(runs, config["report"]["tolerance_pp"])
    gain = expected[("lenet5_mnist", "tl1")][2] - expected[("lenet5_mnist", "baseline")][2]
    assert float(lenet.reproduced) == pytest.approx(gain, abs=0.006)
    assert lenet.status in ("reproduced", "not reproduced") and "baseline" in lenet.computed_as
    assert (shown.status.iloc[[1, 3, 4]] == "not run in this configuration").all()


def test_diverged_run_is_listed_not_plotted(rendered):
    _, _, soup, runs = rendered
    shown = html_table(soup, "diverged")
    assert list(shown.status) == ["diverged"] and float(shown.lam.iloc[0]) == 1e30
    activation = html_table(soup, "activation-sparsity")
    assert not (activation.lam == "1e+30").any()


def test_every_figure_is_in_the_html_and_on_disk(rendered):
    results, config, soup, _ = rendered
    stems = []
    for exp in config["experiments"]:
        if exp.get("regularizers"):
            stems += [f"{exp['name']}_tradeoff", f"{exp['name']}_layer_sparsity"]
        if exp.get("dual"):
            stems.append(f"{exp['name']}_dual_macs")
        if config["latency"]["enabled"] and exp.get("latency"):
            stems.append(f"{exp['name']}_latency")
    images = soup.find_all("img")
    assert len(images) == len(stems)
    text = soup.get_text()
    for stem in stems:
        assert stem in text
        for ext in ("png", "svg"):
            assert (results / "figures" / f"{stem}.{ext}").stat().st_size > 1000


def test_latency_table_matches_the_latency_csv(rendered):
    results, config, soup, runs = rendered
    shown = html_table(soup, "latency")
    lat = pd.concat([pd.read_csv(p) for p in sorted((results / "latency").rglob("seed*.csv"))])
    model = lat[lat.scope == "model"]
    assert set(model.role) == {"baseline", "best_tl1", "best_dual"}
    assert set(model.kernel) == {"dense", "weight_sparse", "act_sparse", "dual_sparse",
                                 "onnxruntime"}
    assert len(shown) == len(model)
    for _, row in model.iterrows():
        match = shown[(shown.role == row.role) & (shown.kernel == row.kernel)
                      & (shown.batch.astype(int) == row.batch)]
        assert float(match.speedup.iloc[0]) == pytest.approx(row.speedup, abs=0.006)
        assert float(match.ideal_speedup.iloc[0]) == pytest.approx(row.ideal_speedup, abs=0.006)
    chosen = json.loads((results / "latency/lenet5_mnist/seed0.meta.json").read_text())["runs"]
    assert chosen["baseline"] == "lenet5_mnist/baseline/seed0"
    assert chosen["best_dual"].startswith("lenet5_mnist/dual/prune0.5/lam")
    assert (lat.max_abs_err < 1e-3).all()


def test_html_hides_code(rendered):
    _, _, soup, _ = rendered
    assert "import pandas" not in soup.get_text()
    assert "Paper vs reproduced" in soup.get_text()


def test_committed_notebooks_have_no_outputs():
    notebooks = list((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert ["parameters"] in tags, f"{path} has no cell tagged parameters"


def test_failing_notebook_fails_and_leaves_no_html(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise ValueError(f'broken {x}')")]
    nb.metadata["kernelspec"] = {"name": "dstcore", "display_name": "dstcore",
                                 "language": "python"}
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    html = tmp_path / "out.html"
    html.write_text("stale")
    with pytest.raises(DstError, match="ValueError: broken 2"):
        render(path, tmp_path / "executed.ipynb", html, {"x": 2})
    assert not html.exists() and not (tmp_path / "executed.ipynb").exists()
    executed = json.loads((tmp_path / "executed.failed.ipynb").read_text())
    assert any(o.get("ename") == "ValueError" for c in executed["cells"]
               for o in c.get("outputs", []))
