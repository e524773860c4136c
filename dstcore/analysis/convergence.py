"""Have the fine-tunes converged? Per-epoch curves of ``curves.csv`` at the λ nearest a drop.

For each experiment and compared method (TL1: each β), the fine-tune λ whose mean top-1 over
seeds lies nearest ``DROP_PP`` below the mean baseline is the one judged (the λ = 0 control is
shown beside it). Its per-epoch activation sparsity and top-1 come from the fixed test slice of
``train.curve_images`` (``curve_*`` columns), else from the epochs the full test set was
evaluated (``test_*``). The rule (config/README.md, "Fine-tune lengths"): a fine-tune has
converged when its activation sparsity changed by less than ``CONVERGED_PP`` points over the
last epoch, in the mean over seeds. Accuracies and sparsities are percentages.
"""

from __future__ import annotations

import math

import pandas as pd

from dstcore.analysis.frontier import baseline_top1, completed, sweep_keys
from dstcore.analysis.stats import t_interval
from dstcore.core.runs import RunKind, method_kind

DROP_PP = 1.0  # the λ judged: mean top-1 nearest this many points below the baseline
CONVERGED_PP = 1.0  # converged: |sparsity change over the last epoch| below this (points)
CONVERGENCE_COLUMNS = [
    "experiment", "method", "beta", "lam", "drop_pp", "seeds", "epochs", "source",
    "sparsity_last_pct", "sparsity_change_pp", "sparsity_change_ci_low",
    "sparsity_change_ci_high", "top1_last_pct", "top1_change_pp", "converged", "note"]
CURVE_MEAN_COLUMNS = ["experiment", "method", "beta", "lam", "epoch", "seeds", "sparsity_pct",
                      "top1_pct"]


def top1_by_lam(rows: pd.DataFrame, kind: str, method: str, beta: float) -> pd.Series:
    """Mean top-1 (%) over seeds per λ of the completed ``kind`` runs of ``method`` (β)."""
    runs = rows[(rows.kind == kind) & (rows.method == method)]
    if not math.isnan(beta):
        runs = runs[runs.beta == beta]
    return runs.groupby("lam").top1_pct.mean()


def judged_lam(rows: pd.DataFrame, method: str, beta: float, base_top1: float) -> float | None:
    """The λ of ``method`` (β) whose mean completed top-1 is nearest ``DROP_PP`` below
    ``base_top1`` (None when the method has no completed fine-tune)."""
    top1 = top1_by_lam(rows, method_kind(method), method, beta)
    if top1.empty:
        return None
    return float((base_top1 - top1 - DROP_PP).abs().idxmin())


def seed_curves(curves: pd.DataFrame, experiment: str, kind: str, method: str, beta: float,
                lam: float) -> tuple[pd.DataFrame, str]:
    """(epoch x seed table of (sparsity, top-1) in %, source) of one configuration's fine-tunes:
    the curve slice when recorded, else the full test evaluations."""
    sel = curves[(curves.experiment == experiment) & (curves.kind == kind)
                 & (curves.method == method) & (curves.status == "completed")]
    sel = sel[sel.lam == lam] if not math.isnan(lam) else sel
    sel = sel[sel.beta == beta] if not math.isnan(beta) else sel
    source, prefix = "curve slice", "curve"
    if sel.curve_sparsity.isna().all():
        source, prefix = "test set", "test"
    sel = sel.dropna(subset=[f"{prefix}_sparsity"])
    out = pd.DataFrame({"seed": sel.seed.astype(int), "epoch": sel.epoch.astype(int),
                        "sparsity_pct": 100 * sel[f"{prefix}_sparsity"],
                        "top1_pct": 100 * sel[f"{prefix}_top1"]})
    return out, source


def last_epoch_change(curve: pd.DataFrame, column: str) -> dict[int, float]:
    """{seed: ``column`` at its last epoch minus at the epoch before} (seeds with two points)."""
    out = {}
    for seed, points in curve.sort_values("epoch").groupby("seed"):
        if len(points) >= 2:
            out[int(seed)] = float(points[column].iloc[-1] - points[column].iloc[-2])
    return out


def convergence_row(curve: pd.DataFrame, source: str, key: dict) -> dict:
    """One row of the convergence table from one configuration's :func:`seed_curves`."""
    change = last_epoch_change(curve, "sparsity_pct")
    top1_change = last_epoch_change(curve, "top1_pct")
    last = curve[curve.epoch == curve.epoch.max()] if not curve.empty else curve
    ci = t_interval(change.values())
    mean = ci.mean if change else math.nan
    note = "" if change else "fewer than two evaluated epochs: convergence not measurable"
    return {**key, "seeds": len(change) or curve.seed.nunique(),
            "epochs": int(curve.epoch.max()) if not curve.empty else 0, "source": source,
            "sparsity_last_pct": float(last.sparsity_pct.mean()) if len(last) else math.nan,
            "sparsity_change_pp": mean, "sparsity_change_ci_low": ci.low,
            "sparsity_change_ci_high": ci.high,
            "top1_last_pct": float(last.top1_pct.mean()) if len(last) else math.nan,
            "top1_change_pp": (sum(top1_change.values()) / len(top1_change)
                               if top1_change else math.nan),
            "converged": bool(change) and abs(mean) < CONVERGED_PP, "note": note}


def _configurations(rows: pd.DataFrame, base_top1: float) -> list[tuple[str, str, float, float]]:
    """(kind, method, beta, lam) judged in one experiment: the control, then each sweep's λ."""
    out = [(RunKind.CONTROL, "none", math.nan, 0.0)]
    for method, beta in sweep_keys(rows):
        if method_kind(method) != RunKind.ACTREG:
            continue  # a threshold search has no epochs (its optional fine-tune is a control)
        lam = judged_lam(rows, method, beta, base_top1)
        if lam is not None:
            out.append((RunKind.ACTREG, method, beta, lam))
    return out


def convergence_tables(runs: pd.DataFrame, curves: pd.DataFrame
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(convergence table: one row per experiment and judged configuration; the per-epoch means
    over seeds of those configurations, for the figure)."""
    rows_out, means = [], []
    for experiment in sorted(runs.experiment.unique()):
        rows = completed(runs, experiment)
        if not (rows.kind == RunKind.BASELINE).any():
            continue
        base = baseline_top1(rows)
        for kind, method, beta, lam in _configurations(rows, base):
            curve, source = seed_curves(curves, experiment, kind, method, beta, lam)
            if curve.empty:
                continue
            drop = base - top1_by_lam(rows, kind, method, beta)[lam]
            key = {"experiment": experiment, "method": method, "beta": beta, "lam": lam,
                   "drop_pp": float(drop)}
            rows_out.append(convergence_row(curve, source, key))
            by_epoch = curve.groupby("epoch").agg(seeds=("seed", "nunique"),
                                                  sparsity_pct=("sparsity_pct", "mean"),
                                                  top1_pct=("top1_pct", "mean")).reset_index()
            means.append(by_epoch.assign(**{k: key[k] for k in ("experiment", "method", "beta",
                                                               "lam")}))
    mean_table = pd.concat(means)[CURVE_MEAN_COLUMNS] if means else pd.DataFrame(
        columns=CURVE_MEAN_COLUMNS)
    return pd.DataFrame(rows_out, columns=CONVERGENCE_COLUMNS), mean_table.reset_index(drop=True)
