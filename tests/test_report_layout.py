"""The report's reader-facing layout, on hand-made tables: the verdict lines, the pivoted
frontier and latency tables, the claims view and the provenance's config paths."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dstcore.analysis.provenance import how_made, shown_path
from dstcore.report.display import claims_view, frontier_pivot, latency_pivots
from dstcore.report.verdicts import overall, verdict_block, verdict_lines

NAN = math.nan


def claim_rows() -> pd.DataFrame:
    gain = "Activation sparsity gain of TL1, LeNet5 / MNIST"
    rows = [
        (gain, 44.04, "points", "baseline", 25.3, 9.5, 41.0, 3, "not reproduced", "gain", "β = 0.5"),
        (gain, 44.04, "points", "control", 20.0, 5.0, 35.0, 3, "not reproduced", "gain", "β = 0.5"),
        (gain, 44.04, "relative", "baseline", 42.5, 6.3, 78.7, 3, "reproduced", "gain", "β = 0.5"),
        (gain, 44.04, "relative", "control", 30.0, 1.0, 59.0, 3, "reproduced", "gain", "β = 0.5"),
        ("Fewer multiplications with dual sparse training, ResNet18", 81.7, "relative",
         "baseline", NAN, NAN, NAN, NAN, "not run", "not run",
         "no resnet18 experiment in this configuration"),
        ("TL1 gives the sparsest activations at matched accuracy (0.5 pp below the baseline)",
         NAN, "points", "best other method", 2.94, -0.07, 5.94, 3, "undecided", "ordering",
         "TL1 β = 0.5 minus Hoyer-square"),
    ]
    columns = ["claim", "paper_value", "reading", "reference", "reproduced_mean", "ci_low",
               "ci_high", "seeds", "status", "rule", "detail"]
    table = pd.DataFrame(rows, columns=columns)
    return table.assign(experiment=["lenet5_mnist"] * 4 + [NAN, "lenet5_mnist"])


def plain(html: str) -> str:
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "html.parser").get_text()


def test_a_gain_claim_reads_as_one_quotable_line_per_claim():
    lines, skipped = verdict_lines(claim_rows())
    assert len(lines) == 2
    assert plain(lines[0]) == (
        "depends on the reading Activation sparsity gain of TL1, LeNet5 / MNIST, +44.04% "
        "claimed: not reproduced in points, +25 pp [10, 41]; reproduced as relative gain, "
        "+42% [6, 79]; against the dense baseline, 3 seeds. Against the λ = 0 control: "
        "not reproduced in points; reproduced as relative gain.")
    assert 'data-status="depends on the reading"' in lines[0]
    assert plain(lines[1]) == (
        "undecided TL1 gives the sparsest activations at matched accuracy (0.5 pp below the "
        "baseline), lenet5_mnist: +2.9 pp [-0.1, 5.9], 3 seeds (TL1 β = 0.5 minus "
        "Hoyer-square).")
    assert plain(skipped) == ("not run Not run (1): Fewer multiplications with dual sparse "
                              "training, ResNet18 — no resnet18 experiment in this "
                              "configuration.")


def test_the_verdict_block_has_an_id_and_says_its_tolerance():
    block = verdict_block(claim_rows(), 0.5)
    assert block.startswith('<div id="verdicts">') and "at 0.5 pp below" in block
    assert block.count("<li>") == 2
    assert overall(["reproduced", "reproduced"]) == "reproduced"
    assert overall(["reproduced", "not reproduced"]) == "depends on the reading"


def test_claims_view_moves_rows_not_run_into_a_note_and_explanations_into_footnotes():
    view, note = claims_view(claim_rows(), {"gain": "1", "not run": "2", "ordering": "3"})
    assert len(view) == 5 and "computed_as" not in view.columns
    assert list(view.reproduced[:2]) == ["+25 [10, 41]", "+20 [5, 35]"]
    assert view.detail.iloc[0] == "β = 0.5 [1]" and view.detail.iloc[-1].endswith("[3]")
    assert 'data-status="undecided"' in view.status.iloc[-1]
    assert note == ("Not run (no rows above): Fewer multiplications with dual sparse training, "
                    "ResNet18 (no resnet18 experiment in this configuration) [2]")


def frontier_rows() -> pd.DataFrame:
    rows = []
    for drop, l1, tl1_a, tl1_b in ((0.0, None, (70.0, 60.0, 80.0), None),
                                   (0.5, (75.0, 71.0, 79.0), (80.0, 78.0, 82.0),
                                    (78.0, 77.0, 79.0))):
        for method, beta, value in (("l1", NAN, l1), ("tl1", 0.5, tl1_a), ("tl1", 2.0, tl1_b),
                                    ("hoyer", NAN, None)):
            mean, low, high = value or (NAN, NAN, NAN)
            rows.append({"experiment": "e", "method": method, "beta": beta,
                         "accuracy_drop_pp": drop, "target_top1": 90.0 - drop,
                         "sparsity_mean": mean, "sparsity_ci_low": low,
                         "sparsity_ci_high": high, "seeds": 3, "bracketed": value is not None,
                         "best_beta": method == "tl1" and beta == 0.5})
    return pd.DataFrame(rows)


def test_the_frontier_pivot_has_a_column_per_drop_and_notes_what_is_not_bracketed():
    pivot, notes = frontier_pivot(frontier_rows())
    assert list(pivot.columns) == ["experiment", "method", "0 pp", "0.5 pp"]
    assert list(pivot.method) == ["ℓ1", "TL1 (β=0.5)", "TL1 (β=2)"]  # Hoyer: never bracketed
    assert pivot.set_index("method").loc["TL1 (β=0.5)"].tolist()[1:] == [
        "70 [60, 80] ★", "80.0 [78.0, 82.0] ★"]
    assert pivot.set_index("method").loc["ℓ1", "0 pp"] == "–"
    assert notes == ["Not bracketed at 0 pp (3): e ℓ1, e TL1 (β=2), e Hoyer-square",
                     "Not bracketed at 0.5 pp (1): e Hoyer-square"]
    rows = frontier_rows()
    rows.loc[rows.accuracy_drop_pp == 0.0, "bracketed"] = False
    pivot, notes = frontier_pivot(rows)  # a drop bracketed nowhere: its column leaves
    assert list(pivot.columns) == ["experiment", "method", "0.5 pp"]
    assert notes[0] == "Not bracketed at 0 pp for any method of any experiment (column left out)"


def test_latency_pivots_give_one_table_per_device_batch_and_thread_count():
    rows = [{"experiment": "e", "role": role, "activation_sparsity_pct": 50.0,
             "weight_sparsity_pct": 0.0, "kernel": kernel, "device": "cpu", "batch": batch,
             "threads": 1, "median_ms": ms * batch, "speedup": 1.0, "speedup_vs_ort": 2.0 / ms,
             "ideal_speedup": 2.0}
            for batch in (1, 16) for role in ("baseline", "best_tl1")
            for kernel, ms in (("act_sparse", 1.0), ("onnxruntime", 2.0), ("dense", 4.0))]
    rows += [{"experiment": "e", "role": "baseline", "activation_sparsity_pct": 50.0,
              "weight_sparsity_pct": 0.0, "kernel": kernel, "device": "GPU X", "batch": 1,
              "threads": 0, "median_ms": ms, "speedup": 0.5 / ms, "speedup_vs_ort": np.nan,
              "ideal_speedup": 2.0} for kernel, ms in (("cuda_eager", 0.5), ("cuda_graph", 0.1))]
    pivots = latency_pivots(pd.DataFrame(rows))
    assert list(pivots) == [("cpu", 1, 1), ("cpu", 16, 1), ("GPU X", 1, 0)]
    table = pivots[("cpu", 16, 1)]
    assert list(table.columns) == ["experiment", "role", "act. sparsity %", "weight sparsity %",
                                   "dense", "onnxruntime", "act_sparse"]
    assert table.iloc[0].tolist() == ["e", "baseline", "50.0", "0.0", "64 ms (0.50×)",
                                      "32 ms (1.00×)", "16 ms (2.00×)"]
    gpu = pivots[("GPU X", 1, 0)]  # the GPU's ratio is over cuda_eager; no CPU engine column
    assert gpu.iloc[0].tolist()[4:] == ["0.5 ms (1.00×)", "0.1 ms (5.00×)"]
    assert list(gpu.columns)[4:] == ["cuda_eager", "cuda_graph"]


def test_config_files_are_listed_once_relative_to_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    config = project / "config" / "config.yaml"
    config.write_text("seed: 1\n")
    monkeypatch.chdir(project)
    assert shown_path(config) == "config/config.yaml"
    assert shown_path(Path.home() / "x" / "y.yaml", project) == "~/x/y.yaml"
    runs = pd.DataFrame({"kind": ["baseline"], "experiment": ["e"], "seed": [0]})
    text = how_made(runs, [str(config), "config/config.yaml", "./config/../config/config.yaml"],
                    "snakemake all")
    digest = hashlib.sha256(b"seed: 1\n").hexdigest()[:12]
    assert f"- **Config**: `config/config.yaml` (sha256 {digest})\n" in text
    assert str(tmp_path) not in text


def test_a_most_models_claim_without_values_says_what_was_not_bracketed():
    most = "More than 20% more activation sparsity on most models"
    rows = pd.DataFrame([(most, 20.0, reading, reference, NAN, NAN, NAN, 0, "not reproduced",
                          "most", "0 of 1 reproduce: e: not bracketed", "e")
                         for reading in ("points", "relative")
                         for reference in ("baseline", "control")],
                        columns=[*claim_rows().columns[:-1], "experiment"])
    lines, skipped = verdict_lines(rows)
    assert skipped == "" and plain(lines[0]) == (
        "not reproduced More than 20% more activation sparsity on most models, +20% claimed: "
        "not reproduced in points, 0 of 1 reproduce: e: not bracketed; not reproduced as "
        "relative gain, 0 of 1 reproduce: e: not bracketed; against the dense baseline. Against "
        "the λ = 0 control: not reproduced in points; not reproduced as relative gain.")
