"""The convergence table (dstcore.analysis.convergence) on hand-made runs and curves."""

import math

import pandas as pd
import pytest

from dstcore.analysis.aggregate import CURVE_COLUMNS, curve_rows
from dstcore.analysis.convergence import convergence_tables, judged_lam, last_epoch_change
from dstcore.analysis.frontier import completed


def _run(kind, method, lam, beta, seed, top1):
    return {"experiment": "e", "kind": kind, "method": method, "lam": lam, "beta": beta,
            "seed": seed, "status": "completed", "top1": top1, "activation_sparsity": 0.5}


def _runs():
    rows = []
    for seed in (0, 1):
        rows += [_run("baseline", "none", math.nan, math.nan, seed, 0.90),
                 _run("control", "none", 0.0, math.nan, seed, 0.901),
                 _run("actreg", "tl1", 1e-3, 1.0, seed, 0.892),   # drop 0.8 pp: judged
                 _run("actreg", "tl1", 1e-2, 1.0, seed, 0.87),    # drop 3 pp
                 _run("actreg", "l1", 1e-4, math.nan, seed, 0.895)]  # drop 0.5 pp: its only λ
    return pd.DataFrame(rows)


def _curve(kind, method, lam, beta, seed, sparsities, top1s, on_slice=True):
    return [{"experiment": "e", "kind": kind, "method": method, "lam": lam, "beta": beta,
             "seed": seed, "status": "completed", "epoch": epoch + 1,
             "curve_sparsity": s / 100 if on_slice else math.nan,
             "curve_top1": t / 100 if on_slice else math.nan,
             "test_sparsity": s / 100, "test_top1": t / 100}
            for epoch, (s, t) in enumerate(zip(sparsities, top1s, strict=True))]


def _curves():
    rows = []
    rows += _curve("control", "none", 0.0, math.nan, 0, [40, 40.2, 40.3], [88, 89, 90])
    rows += _curve("control", "none", 0.0, math.nan, 1, [41, 41.1, 41.5], [88, 89, 89])
    rows += _curve("actreg", "tl1", 1e-3, 1.0, 0, [50, 58, 60.5], [80, 85, 89])
    rows += _curve("actreg", "tl1", 1e-3, 1.0, 1, [52, 57, 58.5], [81, 86, 89.4])
    rows += _curve("actreg", "tl1", 1e-2, 1.0, 0, [70, 80, 90], [70, 80, 87])  # not judged
    rows += _curve("actreg", "l1", 1e-4, math.nan, 0, [45, 46], [89, 89.5], on_slice=False)
    rows += _curve("actreg", "l1", 1e-4, math.nan, 1, [45, 45.5], [89, 89.3], on_slice=False)
    return pd.DataFrame(rows)


def test_judged_lam_is_nearest_the_one_point_drop():
    rows = completed(_runs(), "e")
    assert judged_lam(rows, "tl1", 1.0, 90.0) == 1e-3
    assert judged_lam(rows, "l1", math.nan, 90.0) == 1e-4
    assert judged_lam(rows, "hoyer", math.nan, 90.0) is None


def test_last_epoch_change_per_seed():
    curve = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 2], "epoch": [3, 1, 2, 1, 2, 1],
                          "sparsity_pct": [60.5, 50, 58, 52, 57, 9]})
    assert last_epoch_change(curve, "sparsity_pct") == {0: pytest.approx(2.5), 1: 5.0}


def test_convergence_table_by_hand():
    table, means = convergence_tables(_runs(), _curves())
    rows = {(r.method, r.lam): r for r in table.itertuples()}
    assert set(rows) == {("none", 0.0), ("tl1", 1e-3), ("l1", 1e-4)}
    tl1 = rows[("tl1", 1e-3)]
    # changes over the last epoch: 60.5 - 58 = 2.5 and 58.5 - 57 = 1.5 -> mean 2.0
    assert tl1.sparsity_change_pp == pytest.approx(2.0) and not tl1.converged
    assert tl1.drop_pp == pytest.approx(0.8) and tl1.epochs == 3 and tl1.seeds == 2
    assert tl1.sparsity_last_pct == pytest.approx(59.5) and tl1.source == "curve slice"
    assert tl1.top1_change_pp == pytest.approx((4 + 3.4) / 2)
    # t interval of (2.5, 1.5): 2.0 +- t(0.975, 1) * 0.7071 / sqrt(2) = 2.0 +- 6.353
    assert tl1.sparsity_change_ci_low == pytest.approx(2.0 - 12.7062 * 0.5, abs=1e-3)
    control = rows[("none", 0.0)]
    assert control.sparsity_change_pp == pytest.approx(0.25) and control.converged
    l1 = rows[("l1", 1e-4)]  # no curve slice: the full test evaluations
    assert l1.source == "test set" and l1.sparsity_change_pp == pytest.approx(0.75)
    assert l1.converged
    judged = means[(means.method == "tl1")]
    assert list(judged.sparsity_pct) == pytest.approx([51, 57.5, 59.5])


def test_a_one_epoch_fine_tune_is_not_called_converged():
    curves = _curves()
    curves = curves[curves.epoch == 1]
    table, _ = convergence_tables(_runs(), curves)
    assert not table.converged.any() and table.note.str.contains("fewer than two").all()


def test_curve_rows_read_log_jsonl(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "phase": "finetune", "train_loss": 0.5, "test_top1": null, '
                   '"activation_sparsity": null, "curve_top1": 0.8, "curve_sparsity": 0.6}\n'
                   '{"epoch": 2, "phase": "finetune", "train_loss": 0.4, "test_top1": 0.9, '
                   '"activation_sparsity": 0.7, "curve_top1": 0.85, "curve_sparsity": 0.65}\n')
    row = {k: "x" for k in CURVE_COLUMNS[:10]}
    rows = curve_rows(log, row)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["curve_sparsity"] == 0.65
    assert math.isnan(rows[0]["test_top1"]) and rows[1]["test_sparsity"] == 0.7
    assert curve_rows(tmp_path / "missing.jsonl", row) == []
