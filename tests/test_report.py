"""The rendered report: every table and figure present, numbers equal to a recomputation."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from bs4 import BeautifulSoup

from dstcore import DstError
from dstcore.report.html import decimals, interval_text, signed_interval_text
from dstcore.report.render import render
from tests.conftest import ROOT


def html_table(soup: BeautifulSoup, table_id: str) -> pd.DataFrame:
    """A table of the report by id, its columns named as the table's data-column attributes
    (the CSV's column names; an interval cell ``mean [low, high]`` is named by its stem)."""
    table = soup.find("table", id=table_id)
    assert table is not None, f"table {table_id} missing from the HTML"
    head = [th["data-column"] for th in table.find("thead").find_all("th")]
    rows = [[td.get_text(" ", strip=True) for td in tr.find_all("td")]
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
    """(experiment, method, beta) -> (lam, top1 %, sparsity %) by the rule the report states."""
    done = runs[runs.status == "completed"]
    out = {}
    for exp, rows in done.groupby("experiment"):
        base = rows[rows.kind == "baseline"]
        base_top1 = 100 * base.top1.mean()
        out[(exp, "baseline", None)] = (None, base_top1, 100 * base.activation_sparsity.mean())
        actreg = rows[rows.kind == "actreg"]
        for (method, beta), cand in actreg.groupby(["method", actreg.beta.fillna(-1)]):
            cand = cand.groupby("lam")[["top1", "activation_sparsity"]].mean() * 100
            cand = cand[cand.top1 >= base_top1 - tolerance]
            if len(cand):
                lam = cand.activation_sparsity.idxmax()
                key = (exp, method, None if beta == -1 else beta)
                out[key] = (lam, cand.top1[lam], cand.activation_sparsity[lam])
    return out


def shows(cells: pd.Series, csv: pd.DataFrame, stem: str) -> None:
    """The HTML cells of an interval column are the CSV's mean and bounds, rounded as the
    report states (two significant digits of the half-width)."""
    mean = next(c for c in (f"{stem}_mean", f"{stem}_pp", f"{stem}_pct") if c in csv)
    expected = [interval_text(m, lo, hi) for m, lo, hi in
                zip(csv[mean], csv[f"{stem}_ci_low"], csv[f"{stem}_ci_high"], strict=True)]
    assert list(cells) == expected, stem


def test_interval_text_keeps_two_significant_digits_of_the_half_width():
    assert interval_text(18.2245, -57.67, 94.12) == "18 [-58, 94]"  # half-width 75.9
    assert interval_text(73.3989, 71.4799, 75.3179) == "73.4 [71.5, 75.3]"  # 1.92
    assert interval_text(0.12345, 0.1, 0.15) == "0.123 [0.100, 0.150]"  # 0.025: capped at 3
    assert interval_text(89.9, 89.9, 89.9) == "89.9 [89.9, 89.9]"  # no spread: 1 decimal
    assert interval_text(42.0, math.nan, math.nan) == "42.0"  # one seed: no interval
    assert interval_text(math.nan, math.nan, math.nan) == ""
    assert signed_interval_text(2.94, -0.07, 5.94) == "+2.9 [-0.1, 5.9]"
    assert decimals(9.99) == 1 and decimals(10.0) == 0 and decimals(0.1) == 2


def test_activation_table_matches_recomputation(rendered):
    _, config, soup, runs = rendered
    csv = pd.read_csv(rendered[0] / "tables/activation_sparsity.csv")
    expected = recompute_best(runs, config["report"]["tolerance_pp"])
    assert len(expected) > 3
    for (exp, method, beta), (lam, top1, sparsity) in expected.items():
        row = csv[(csv.experiment == exp) & (csv.method == method)]
        if beta is not None:
            row = row[row.beta == beta]
        assert len(row) == 1, (exp, method, beta)
        row = row.iloc[0]
        assert row.top1_mean == pytest.approx(top1, abs=1e-6)
        assert row.sparsity_mean == pytest.approx(sparsity, abs=1e-6)
        if lam is not None:
            assert row.lam == pytest.approx(lam)
            base_sparsity = expected[(exp, "baseline", None)][2]
            assert row.gain_vs_baseline_pp == pytest.approx(sparsity - base_sparsity, abs=1e-6)
            assert row.gain_vs_baseline_ci_low <= row.gain_vs_baseline_pp
            assert row.sparsity_ci_low <= sparsity <= row.sparsity_ci_high
    shown = html_table(soup, "activation-sparsity")
    assert len(csv) == len(shown)
    for stem in ("top1", "sparsity", "gain_vs_baseline", "gain_vs_control", "gain_vs_best_other"):
        shows(shown[stem], csv, stem)
    assert list(shown.lam) == ["" if pd.isna(v) else f"{v:g}" for v in csv.lam]


def polyline_frontier(points: pd.DataFrame, target: float) -> float:
    """The frontier value by dense sampling of the polyline (independent of dstcore.analysis.stats)."""
    acc, spars = points.top1.to_numpy() * 100, points.activation_sparsity.to_numpy() * 100
    best = math.nan
    for i in range(len(acc) - 1):
        t = np.linspace(0, 1, 200_001)
        a = acc[i] + t * (acc[i + 1] - acc[i])
        hit = np.abs(a - target) <= max(abs(acc[i + 1] - acc[i]), 1e-12) / 200_000
        if hit.any():
            value = (spars[i] + t[hit] * (spars[i + 1] - spars[i])).max()
            best = value if math.isnan(best) else max(best, value)
    return best


def test_frontier_table_matches_recomputation(rendered):
    results, config, soup, runs = rendered
    frontier = pd.read_csv(results / "tables/frontier.csv")
    assert len(html_table(soup, "frontier")) == len(frontier)
    shows(html_table(soup, "frontier").sparsity, frontier, "sparsity")
    pivot = html_table(soup, "frontier-pivot")
    for r in frontier[frontier.bracketed].itertuples():  # every bracketed value is in the pivot
        cell = interval_text(r.sparsity_mean, r.sparsity_ci_low, r.sparsity_ci_high)
        column = pivot[f"{r.accuracy_drop_pp:g} pp"][pivot.experiment == r.experiment]
        assert (cell + (" ★" if r.best_beta else "")) in set(column), r
    done = runs[runs.status == "completed"]
    checked = 0
    for r in frontier.itertuples():
        rows = done[done.experiment == r.experiment]
        target = 100 * rows[rows.kind == "baseline"].top1.mean() - r.accuracy_drop_pp
        values = []
        for seed in sorted(rows[rows.kind == "baseline"].seed.unique()):
            kind = "threshold" if r.method == "fatrelu" else "actreg"
            sweep = rows[(rows.seed == seed) & (rows.kind == kind) & (rows.method == r.method)]
            if r.method == "tl1":
                sweep = sweep[sweep.beta == r.beta]
            control = rows[(rows.seed == seed) & (rows.kind == "control")]
            values.append(polyline_frontier(pd.concat([control, sweep.sort_values("lam")]), target))
        assert r.bracketed == (not any(math.isnan(v) for v in values))
        if r.bracketed:
            assert r.sparsity_mean == pytest.approx(np.mean(values), abs=1e-3)
            checked += 1
        else:
            assert math.isnan(r.sparsity_mean)
    assert checked > 0, "the smoke config should bracket at least one frontier value"


def test_dual_table_matches_recomputation(rendered):
    results, _, soup, runs = rendered
    shown = pd.read_csv(results / "tables/dual_sparse.csv")
    html = html_table(soup, "dual-sparse")
    assert len(html) == len(shown)
    shows(html.mac_reduction, shown, "mac_reduction")
    assert list(html.effective_macs) == [f"{v:,.0f}" for v in shown.effective_macs]
    dual = runs[(runs.kind == "dual") & (runs.status == "completed")]
    configs = dual.groupby(["prune_structure", "lam", "beta"])
    shown_dual = shown[shown.kind == "dual"]
    assert len(shown_dual) == configs.ngroups
    assert list(dict.fromkeys(shown_dual.prune_structure)) == ["element", "block16"]
    for (structure, lam, beta), seeds in configs:
        row = shown_dual[(shown_dual.prune_structure == structure) & (shown_dual.lam == lam)
                         & (shown_dual.beta == beta)].iloc[0]
        assert int(row.seeds) == len(seeds) == 2
        assert row.effective_macs == pytest.approx(seeds.effective_macs.mean(), abs=1e-6)
        reduction = 100 * (1 - seeds.effective_macs / seeds.dense_macs)
        assert row.mac_reduction_pct == pytest.approx(reduction.mean(), abs=1e-6)
        # two seeds: mean +- t(0.975, 1) * s / sqrt(2)
        half = 12.706205 * reduction.std(ddof=1) / math.sqrt(2)
        assert row.mac_reduction_ci_high == pytest.approx(reduction.mean() + half, abs=1e-4)
        assert row.weight_sparsity_mean == pytest.approx(100 * seeds.weight_sparsity.mean(),
                                                         abs=1e-6)


def test_paper_vs_reproduced_has_every_claim_in_both_readings(rendered):
    results, config, soup, runs = rendered
    shown = html_table(soup, "paper-vs-reproduced")
    csv = pd.read_csv(results / "tables/paper_vs_reproduced.csv")
    assert list(csv.columns[:9]) == ["claim", "paper_value", "reading", "reference",
                                     "reproduced_mean", "ci_low", "ci_high", "seeds", "status"]
    assert len(shown) == (csv.status != "not run").sum()  # claims not run: a note below
    assert set(shown.status) == {f"{s}" for s in csv.status[csv.status != "not run"]}
    assert "Not run (no rows above): Activation sparsity gain of TL1, ResNet18 / ImageNet" in \
        soup.get_text()
    lenet = csv[csv.claim == "Activation sparsity gain of TL1, LeNet5 / MNIST"]
    assert set(zip(lenet.reading, lenet.reference, strict=True)) == {
        ("points", "baseline"), ("points", "control"), ("relative", "baseline"),
        ("relative", "control")}
    imagenet = csv[csv.claim.str.contains("ImageNet")]
    assert len(imagenet) == 4 and (imagenet.status == "not run").all()
    assert (csv[csv.claim.str.endswith(("ResNet18", "ResNet50"))].status == "not run").all()
    analogue = csv[csv.claim.str.contains("analogue")]
    assert list(analogue.experiment) == ["lenet5_mnist"] and analogue.seeds.iloc[0] == 2
    ordering = csv[csv.claim.str.startswith("TL1 gives the sparsest")]
    # resnet8 has only TL1; densenet_small has TL1 and FATReLU
    assert set(ordering.experiment) == {"lenet5_mnist", "densenet_fashion"}
    assert set(ordering.status) <= {"holds", "does not hold", "undecided"}
    statuses = {"reproduced", "not reproduced", "not run", "not bracketed"}
    assert set(csv.status) - {"holds", "does not hold", "undecided"} <= statuses
    # the relative reading of every bracketed gain is points / reference sparsity, per seed
    frontier = pd.read_csv(results / "tables/frontier.csv")
    for r in lenet[lenet.status != "not bracketed"].itertuples():
        assert r.seeds == 2 and r.ci_low <= r.reproduced_mean <= r.ci_high
        assert r.status == ("reproduced" if r.ci_high >= 44.04 else "not reproduced")
    assert len(frontier)


def test_diverged_run_is_listed_not_plotted(rendered):
    _, _, soup, runs = rendered
    shown = html_table(soup, "diverged")
    assert list(shown.status) == ["diverged"] * 2  # one per seed
    assert (shown.lam.astype(float) == 1e30).all()
    activation = html_table(soup, "activation-sparsity")
    assert not (activation.lam == "1e+30").any()


def test_dual_structures_table_puts_block_next_to_element(rendered):
    results, config, soup, runs = rendered
    assert list(html_table(soup, "dual-structures").prune_structure) == ["element", "block16"]
    shown = pd.read_csv(results / "tables/dual_structures.csv")
    shows(html_table(soup, "dual-structures").top1, shown, "top1")
    tolerance = config["report"]["tolerance_pp"]
    done = runs[(runs.status == "completed") & (runs.experiment == "lenet5_mnist")]
    base_top1 = 100 * done[done.kind == "baseline"].top1.mean()
    for row in shown.itertuples():
        dual = done[(done.kind == "dual") & (done.prune_structure == row.prune_structure)]
        means = dual.groupby("lam")[["top1", "activation_sparsity", "weight_sparsity",
                                     "mac_reduction_pct"]].mean()
        means[["top1", "activation_sparsity", "weight_sparsity"]] *= 100
        within = means[means.top1 >= base_top1 - tolerance - 1e-9]
        best = (within if len(within) else means).sort_values("mac_reduction_pct").iloc[-1]
        assert row.top1_mean == pytest.approx(best.top1, abs=1e-6)
        assert row.sparsity_mean == pytest.approx(best.activation_sparsity, abs=1e-6)
        assert row.weight_sparsity_mean == pytest.approx(best.weight_sparsity, abs=1e-6)
        assert row.mac_reduction_pct == pytest.approx(best.mac_reduction_pct, abs=1e-6)


def test_every_figure_is_in_the_html_and_on_disk(rendered):
    results, config, soup, _ = rendered
    stems = []
    for exp in config["experiments"]:
        if exp.get("regularizers"):
            stems += [f"{exp['name']}_{kind}" for kind in ("frontier", "tradeoff",
                                                             "layer_sparsity", "convergence")]
        if exp.get("dual"):
            stems.append(f"{exp['name']}_dual_macs")
        if config["latency"]["enabled"] and exp.get("latency"):
            stems += [f"{exp['name']}_latency_vs_ort", f"{exp['name']}_latency"]
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
    assert set(model.role) == {"baseline", "best_tl1", "best_fatrelu", "best_dual",
                               "best_dual_block"}
    assert set(model.kernel) == {"dense", "runner_dense", "act_sparse", "dual_sparse",
                                 "onnxruntime"}
    assert len(shown) == len(model)
    for _, row in model.iterrows():
        match = shown[(shown.role == row.role) & (shown.kernel == row.kernel)
                      & (shown.batch.astype(int) == row.batch)]
        assert float(match.speedup.iloc[0]) == pytest.approx(row.speedup, abs=0.006)
        assert float(match.speedup_vs_ort.iloc[0]) == pytest.approx(row.speedup_vs_ort,
                                                                    abs=0.006)
        assert float(match.ideal_speedup.iloc[0]) == pytest.approx(row.ideal_speedup, abs=0.006)
    chosen = json.loads((results / "latency/lenet5_mnist/seed0.meta.json").read_text())["runs"]
    assert chosen["baseline"] == "lenet5_mnist/baseline/seed0"
    assert chosen["best_dual"].startswith("lenet5_mnist/dual/prune0.5/tl1-beta")
    assert chosen["best_dual_block"].startswith("lenet5_mnist/dual/block16-prune0.5/tl1-beta")
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


def test_report_says_how_its_numbers_were_made(rendered, smoke):
    results, config, soup, runs = rendered
    text = soup.get_text(" ")
    cfg = smoke[1]
    import hashlib

    import torch

    assert "How these numbers were made" in text
    assert f"sha256 {hashlib.sha256(cfg.read_bytes()).hexdigest()[:12]}" in text
    assert runs.git_commit.astype(str).iloc[0] in text
    assert set(runs.cpu_capability) == {torch.backends.cpu.get_cpu_capability()}
    assert f"vector extension {torch.backends.cpu.get_cpu_capability()}" in text
    assert "snakemake all --cores 2 --configfile" in text
    for rule in ("train_baseline", "finetune_actreg", "prune_weights", "dual_tl1"):
        assert rule in text


def test_latency_table_shows_torch_compile_beside_the_other_engines():
    from dstcore.analysis.tables import latency_table
    from dstcore.report.figures import KERNEL_COLORS
    from dstcore.report.html import html_table as to_html

    engines = ["dense", "onnxruntime", "runner_dense", "act_sparse", "torch_compile"]
    ms = {"dense": 2.0, "onnxruntime": 1.0, "runner_dense": 1.6, "act_sparse": 0.8,
          "torch_compile": 1.25}
    lat = pd.DataFrame([{"experiment": "e", "role": role, "run_dir": f"e/{role}",
                         "scope": "model", "kernel": k, "batch": 1, "threads": 1,
                         "median_ms": ms[k], "speedup": 2.0 / ms[k],
                         "speedup_vs_ort": 1.0 / ms[k], "ideal_speedup": 3.0,
                         "act_sparsity": 0.5}
                        for role in ("baseline", "best_dual") for k in engines])
    runs = pd.DataFrame({"run_dir": ["e/baseline", "e/best_dual"],
                         "activation_sparsity": [0.5, 0.8], "weight_sparsity": [0.0, 0.5]})
    table = latency_table(lat, runs)
    tc = table[table.kernel == "torch_compile"]
    assert len(table) == 2 * len(engines) and list(tc.role) == ["baseline", "best_dual"]
    assert tc.speedup.tolist() == [1.6, 1.6] and tc.speedup_vs_ort.tolist() == [0.8, 0.8]
    assert "torch_compile" in to_html(table, "latency", "End-to-end latency")
    assert set(engines) <= set(KERNEL_COLORS)


def test_a_method_registered_later_gets_rows_a_label_and_its_own_colour():
    import matplotlib.pyplot as plt

    from dstcore.analysis.tables import activation_table
    from dstcore.report import figures
    from dstcore.sparsity.regularizers import Method, l1, register, regularizers, unregister
    from tests.test_frontier import make_runs

    runs = make_runs()
    toy = runs[runs.method == "l1"].assign(method="toy", activation_sparsity=lambda r:
                                           r.activation_sparsity + 0.01)
    runs = pd.concat([runs, toy], ignore_index=True)
    register(Method("toy", l1, "Toy ℓ1"))
    try:
        assert regularizers()[-1] == "toy"
        table = activation_table(runs, tolerance_pp=1.0)
        assert "toy" in set(table.method)
        colours = [figures.method_color(m) for m in regularizers()]
        assert len(set(colours)) == len(colours)  # toy does not reuse l1/hoyer/tl1's colour
        assert colours[:3] == [figures._palette[i] for i in range(3)]
        fig = figures.frontier_figure(runs, "lenet5_mnist", 1.0)
        assert "Toy ℓ1" in fig.axes[0].get_legend_handles_labels()[1]
        plt.close(fig)
    finally:
        unregister("toy")


def test_report_opens_with_the_verdicts_and_each_section_with_its_figures(rendered):
    _, _, soup, _ = rendered
    verdicts = soup.find(id="verdicts")
    first = soup.find(["h2", "table", "img"])
    assert first in verdicts.find_all_next()  # before any section, table or figure
    assert len(verdicts.find_all("li")) >= 3 and "Not run (3)" in verdicts.get_text()
    sections: dict[str, list[str]] = {}
    for element in soup.find_all(["h2", "img", "table"]):
        if element.name == "h2":
            current = sections.setdefault(element.get_text(strip=True), [])
        elif sections:
            current.append(element.name)
    with_figures = [s for s, items in sections.items() if "img" in items]
    assert len(with_figures) == 5, sections  # frontiers, grid points, convergence, dual, latency
    for section in with_figures:
        assert sections[section][0] == "img", section
    for details in soup.find_all("details"):
        assert details.get("open") is None and details.find("table") is not None


def test_undecided_orderings_say_how_many_seeds_would_decide_them(rendered):
    """The smoke run's ordering rows: an undecided one carries the seeds a paired t test would
    need (80% power) in its CSV column and in the report's verdict text."""
    from dstcore.analysis.stats import Interval, seeds_needed

    results, _, soup, _ = rendered
    claims = pd.read_csv(results / "tables/paper_vs_reproduced.csv")
    undecided = claims[(claims.rule == "ordering") & (claims.status == "undecided")
                       & claims.seeds.ge(2)]
    assert not undecided.empty
    for r in undecided.itertuples():
        expect = seeds_needed(Interval(r.reproduced_mean, r.ci_low, r.ci_high, int(r.seeds)))
        assert r.seeds_needed == expect and expect >= 2
        assert f"{expect} seeds would decide it" in r.detail
        assert f"{expect} seeds would decide it" in soup.get_text()


def test_convergence_section_reads_the_curves_of_the_fine_tunes(rendered):
    results, config, soup, runs = rendered
    curves = pd.read_csv(results / "tables/curves.csv")
    assert set(curves.run_dir) <= set(runs.run_dir)
    lenet = curves[(curves.experiment == "lenet5_mnist") & (curves.kind == "actreg")]
    assert lenet.curve_top1.notna().all() and lenet.curve_sparsity.between(0, 1).all()
    table = pd.read_csv(results / "tables/convergence.csv")
    assert {"none", "tl1"} <= set(table.method)
    assert table.epochs.max() == 1 and not table.converged.any()  # smoke: one epoch
    assert soup.find("table", id="convergence") is not None or "convergence" in soup.get_text()
