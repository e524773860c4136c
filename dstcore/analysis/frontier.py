"""Accuracy–sparsity frontiers of the activation regularisers, per seed, from ``runs.csv``.

A method's sweep in one seed is the polyline through its completed fine-tunes in λ order,
starting at the λ = 0 control (the same fine-tune without a penalty). Its frontier value at
an accuracy drop d is the activation sparsity where that polyline meets top-1 = (mean
baseline top-1 over seeds) − d, interpolated linearly and never extrapolated
(:func:`dstcore.analysis.stats.interpolate_at`). Values are computed per seed and summarised with a
t interval over seeds; they are reported only when every seed's sweep brackets the drop.
TL1 is one sweep per β. Accuracies and sparsities are percentages.
"""

from __future__ import annotations

import math

import pandas as pd

from dstcore.analysis.stats import Interval, interpolate_at, paired, t_interval
from dstcore.core.runs import RunKind, method_kind
from dstcore.sparsity.regularizers import PROPOSED, REGISTRY, compared_methods

DROPS_PP = (0.0, 0.5, 1.0)
FRONTIER_COLUMNS = ["experiment", "method", "beta", "accuracy_drop_pp", "target_top1",
                    "sparsity_mean", "sparsity_ci_low", "sparsity_ci_high", "seeds",
                    "bracketed", "best_beta"]


def completed(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Completed runs of ``experiment`` with ``top1_pct`` and ``sparsity_pct`` columns added."""
    rows = runs[(runs.experiment == experiment) & (runs.status == "completed")]
    return rows.assign(top1_pct=100 * rows.top1, sparsity_pct=100 * rows.activation_sparsity)


def baseline_seeds(rows: pd.DataFrame) -> list[int]:
    """Seeds with a completed dense baseline, the seeds every comparison is over."""
    return sorted(int(s) for s in rows[rows.kind == RunKind.BASELINE].seed.unique())


def per_seed(rows: pd.DataFrame, column: str, **match) -> dict[int, float]:
    """{seed: value of ``column``} of the runs whose columns equal ``match`` (NaN-aware)."""
    sel = rows
    for key, value in match.items():
        sel = sel[sel[key].isna()] if _isnan(value) else sel[sel[key] == value]
    return {int(s): float(v) for s, v in zip(sel.seed, sel[column], strict=True)}


def sweep_keys(rows: pd.DataFrame) -> list[tuple[str, float]]:
    """(method, beta) of every compared method's sweep in ``rows`` (the regularisers' and
    FATReLU's; beta NaN except for TL1)."""
    keys = []
    for method in compared_methods():
        cand = rows[(rows.kind == method_kind(method)) & (rows.method == method)]
        betas = sorted(cand.beta.dropna().unique()) if REGISTRY[method].shape_parameter else []
        keys += [(method, float(b)) for b in betas] or ([(method, math.nan)] if len(cand) else [])
    return keys


def sweep(rows: pd.DataFrame, method: str, beta: float, seed: int) -> pd.DataFrame:
    """One seed's sweep: the λ = 0 control, then the method's runs in increasing λ (FATReLU:
    budget)."""
    seed_rows = rows[rows.seed == seed]
    runs = seed_rows[(seed_rows.kind == method_kind(method)) & (seed_rows.method == method)]
    if not _isnan(beta):
        runs = runs[runs.beta == beta]
    control = seed_rows[seed_rows.kind == RunKind.CONTROL]
    return pd.concat([control, runs.sort_values("lam")])[["lam", "top1_pct", "sparsity_pct"]]


def frontier_values(rows: pd.DataFrame, method: str, beta: float, target: float
                    ) -> dict[int, float]:
    """{seed: sparsity on the frontier at top-1 = target} (NaN where not bracketed)."""
    out = {}
    for seed in baseline_seeds(rows):
        points = sweep(rows, method, beta, seed)
        out[seed] = interpolate_at(list(points.top1_pct), list(points.sparsity_pct), target)
    return out


def baseline_top1(rows: pd.DataFrame) -> float:
    """Mean top-1 (%) of the dense baselines over seeds."""
    return float(rows[rows.kind == RunKind.BASELINE].top1_pct.mean())


def summarise(values: dict[int, float]) -> tuple[Interval, bool]:
    """(t interval over seeds, bracketed in every seed) of per-seed frontier values."""
    finite = {s: v for s, v in values.items() if not _isnan(v)}
    bracketed = bool(values) and len(finite) == len(values)
    if not bracketed:
        return Interval(math.nan, math.nan, math.nan, len(finite)), False
    return t_interval(finite.values()), True


def frontier_table(runs: pd.DataFrame, drops: tuple[float, ...] = DROPS_PP) -> pd.DataFrame:
    """``frontier.csv``: one row per experiment, method (and TL1 β) and accuracy drop."""
    rows_out = []
    for experiment in sorted(runs.experiment.unique()):
        rows = completed(runs, experiment)
        if rows[rows.kind == RunKind.BASELINE].empty:
            continue
        reference = baseline_top1(rows)
        for drop in drops:
            block = []
            for method, beta in sweep_keys(rows):
                values = frontier_values(rows, method, beta, reference - drop)
                ci, bracketed = summarise(values)
                block.append({"experiment": experiment, "method": method, "beta": beta,
                              "accuracy_drop_pp": drop, "target_top1": reference - drop,
                              "sparsity_mean": ci.mean, "sparsity_ci_low": ci.low,
                              "sparsity_ci_high": ci.high, "seeds": ci.n,
                              "bracketed": bracketed, "best_beta": False})
            tl1 = [r for r in block if r["method"] == PROPOSED and r["bracketed"]]
            if tl1:
                max(tl1, key=lambda r: r["sparsity_mean"])["best_beta"] = True
            rows_out += block
    return pd.DataFrame(rows_out, columns=FRONTIER_COLUMNS)


def best_sweep(frontier: pd.DataFrame, experiment: str, drop: float, method: str
               ) -> pd.Series | None:
    """The bracketed frontier row of ``method`` (its best β for TL1) at ``drop``, or None."""
    sel = frontier[(frontier.experiment == experiment) & (frontier.method == method)
                   & (frontier.accuracy_drop_pp == drop) & frontier.bracketed]
    return None if sel.empty else sel.sort_values("sparsity_mean").iloc[-1]


def tl1_vs_best_other(runs: pd.DataFrame, frontier: pd.DataFrame, experiment: str,
                      drop: float) -> dict:
    """Paired per-seed difference of TL1's frontier (best β) minus the best other method's
    (by mean) at ``drop``: its t ``interval`` (None when a frontier is not bracketed) and the
    per-seed ``differences``."""
    rows = completed(runs, experiment)
    target = baseline_top1(rows) - drop
    tl1 = best_sweep(frontier, experiment, drop, PROPOSED)
    others = [r for m in compared_methods() if m != PROPOSED
              if (r := best_sweep(frontier, experiment, drop, m)) is not None]
    out = {"tl1_beta": None if tl1 is None else tl1.beta, "other": None, "interval": None,
           "differences": {}}
    if tl1 is None or not others:
        return out
    other = max(others, key=lambda r: r.sparsity_mean)
    diff = paired(frontier_values(rows, PROPOSED, tl1.beta, target),
                  frontier_values(rows, other.method, other.beta, target))
    return {**out, "other": other.method, "interval": t_interval(diff.values()),
            "differences": diff}


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def choose_dual_tl1(runs: pd.DataFrame, experiment: str, tolerance_pp: float,
                    beta: float | str = "auto", lams: list[float] | str = "auto") -> dict:
    """Stage 3's TL1 β and λ values for ``experiment``, by the documented rule.

    β (``auto``): the TL1 β whose frontier has the highest mean sparsity ``tolerance_pp`` below
    the baseline's mean top-1; when no β's sweep brackets that accuracy, the β of the TL1 grid
    point with the highest mean sparsity within the tolerance; failing that, the smallest β.
    λ (``auto``): from that β's sweep (means over seeds), the largest λ within the tolerance
    and the next larger λ (one on each side of the tolerance); the smallest λ when none is
    within. Fixed values in the config are passed through.
    """
    rows = completed(runs, experiment)
    tl1 = rows[(rows.kind == RunKind.ACTREG) & (rows.method == PROPOSED)]
    if beta == "auto" and tl1.empty:
        raise ValueError(f"{experiment}: dual.tl1_beta is auto but no TL1 run completed")
    target = baseline_top1(rows) - tolerance_pp
    means = tl1.groupby(["beta", "lam"])[["top1_pct", "sparsity_pct"]].mean().reset_index()
    if beta != "auto":
        chosen, beta_rule = float(beta), "fixed in the config"
    else:
        chosen, beta_rule = _auto_beta(rows, means, target, tolerance_pp)
    if lams != "auto":
        chosen_lams, lam_rule = [float(v) for v in lams], "fixed in the config"
    else:
        sweep_means = means[means.beta == chosen].sort_values("lam")
        if sweep_means.empty:
            raise ValueError(f"{experiment}: dual.tl1_lams is auto but no TL1 run at β = "
                             f"{chosen:g} completed to choose from")
        within = sweep_means[sweep_means.top1_pct >= target - 1e-9]
        if within.empty:
            chosen_lams = [float(sweep_means.lam.iloc[0])]
            lam_rule = f"no TL1 λ at β = {chosen:g} within {tolerance_pp:g} pp: the smallest"
        else:
            top = float(within.lam.max())
            chosen_lams = [top, *[float(v) for v in sweep_means.lam if v > top][:1]]
            lam_rule = (f"the largest λ of the β = {chosen:g} sweep within {tolerance_pp:g} pp "
                        f"of the baseline (mean over seeds) and the next larger λ")
    return {"experiment": experiment, "beta": chosen, "lams": chosen_lams,
            "tolerance_pp": tolerance_pp, "target_top1": target, "beta_rule": beta_rule,
            "lams_rule": lam_rule, "seeds": baseline_seeds(rows)}


def _auto_beta(rows: pd.DataFrame, means: pd.DataFrame, target: float, tolerance_pp: float
               ) -> tuple[float, str]:
    scores = {}
    for b in sorted(means.beta.unique()):
        ci, bracketed = summarise(frontier_values(rows, PROPOSED, float(b), target))
        if bracketed:
            scores[float(b)] = ci.mean
    if scores:
        best = max(scores, key=scores.get)
        return best, (f"highest mean TL1 frontier sparsity {tolerance_pp:g} pp below the "
                      f"baseline: " + ", ".join(f"β={b:g}: {v:.2f}%" for b, v in scores.items()))
    within = means[means.top1_pct >= target - 1e-9]
    if not within.empty:
        best = float(within.sort_values("sparsity_pct").beta.iloc[-1])
        return best, (f"no β's frontier brackets {tolerance_pp:g} pp: the β of the sparsest TL1 "
                      f"grid point within it")
    return float(means.beta.min()), f"no TL1 run within {tolerance_pp:g} pp: the smallest β"
