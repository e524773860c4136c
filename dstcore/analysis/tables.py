"""The report's tables, computed from the aggregated tables only (never from models).

Inputs are ``runs.csv`` and ``layers.csv`` (see :mod:`dstcore.analysis.aggregate`), the frontier
table (:func:`dstcore.analysis.frontier.frontier_table`) and the latency CSVs. Accuracies and
sparsities are percentages; gains are percentage points (pp). Runs whose status is not
``completed`` are never selected; :func:`diverged_table` lists them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dstcore.analysis.aggregate import best_within_tolerance, seed_summary
from dstcore.analysis.frontier import completed, per_seed
from dstcore.analysis.stats import paired, t_interval
from dstcore.core.runs import NO_METHOD, RunKind, method_kind, structure_family
from dstcore.sparsity.regularizers import REGISTRY, compared_methods, method_label

# Weight-pruning structures (families of runs.csv's prune_structure), in the order tables show them.
STRUCTURE_ORDER = {"": 0, "element": 1, "block": 2}
_STATS = ("seeds", "top1_mean", "top1_ci_low", "top1_ci_high", "top1_std", "sparsity_mean",
          "sparsity_ci_low", "sparsity_ci_high", "sparsity_std")
_GAINS = ("vs_baseline", "vs_control", "vs_best_other")
ACTIVATION_COLUMNS = [
    "experiment", "row", "method", "lam", "beta", *_STATS,
    *(f"gain_{g}{part}" for g in _GAINS for part in ("_pp", "_ci_low", "_ci_high")),
    "lams_tried", "grid_max_drop_pp", "note"]


def has_beta(method: str) -> bool:
    """Whether ``method`` is a registered regulariser with a shape parameter β (one sweep per β)."""
    return method in REGISTRY and REGISTRY[method].shape_parameter


# ------------------------------------------------------------------------------ grid points


def activation_table(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """The grid-point comparison, one block per experiment (secondary to the frontier).

    Rows: baseline, λ = 0 control, then for each method (and β of a method with one) the grid λ
    with the highest mean activation sparsity whose mean top-1 stays within ``tolerance_pp`` of
    the baseline's. Means over seeds with 95% t intervals; gains (pp of sparsity) against the
    baseline, the control and the best other method are differences per seed, paired by seed.
    ``grid_max_drop_pp`` is the largest mean accuracy drop the λ grid reaches; the note flags a
    grid that never reaches 1 pp, whose "best" λ may just be its last point.
    """
    rows = []
    for exp, s in seed_summary(runs).groupby("experiment", sort=True):
        base = s[s.kind == RunKind.BASELINE]
        if not base.empty:
            rows += _experiment_rows(exp, s, base.iloc[0], completed(runs, exp), tolerance_pp)
    return pd.DataFrame(rows, columns=ACTIVATION_COLUMNS)


def _experiment_rows(exp: str, s: pd.DataFrame, base: pd.Series, per_run: pd.DataFrame,
                     tolerance_pp: float) -> list[dict]:
    """One experiment's block of :func:`activation_table` (``s``: its seed summary)."""
    base_seeds = per_seed(per_run, "sparsity_pct", kind=RunKind.BASELINE)
    control = s[s.kind == RunKind.CONTROL]
    control_seeds = per_seed(per_run, "sparsity_pct", kind=RunKind.CONTROL)
    picks = _picks(s, per_run, base.top1_mean, tolerance_pp)
    common = {"experiment": exp}
    rows = [{**common, "row": "baseline", "method": RunKind.BASELINE.value, **_stats(base)}]
    if not control.empty:
        rows.append({**common, "row": "control", "method": NO_METHOD, "lam": 0.0,
                     **_stats(control.iloc[0]), **_gain("vs_baseline", control_seeds, base_seeds)})
    for pick in picks:
        others = [(b, sd) for m, _, b, _, sd in picks if m != pick[0] and b is not None]
        rows.append(_best_row({**common, "row": "best"}, pick, others, base.top1_mean,
                              (base_seeds, control_seeds), tolerance_pp))
    return rows


def _picks(s: pd.DataFrame, per_run: pd.DataFrame, base_top1: float, tolerance_pp: float
           ) -> list[tuple]:
    """(method, β, best grid point or None, the sweep's grid points, {seed: sparsity of the
    best}) per regulariser sweep of one experiment's seed summary ``s``."""
    picks = []
    for method in compared_methods():
        cand = s[(s.kind == method_kind(method)) & (s.method == method)]
        betas = sorted(cand.beta.dropna().unique()) if has_beta(method) else []
        for beta in betas or [math.nan]:
            subset = cand if math.isnan(beta) else cand[cand.beta == beta]
            if subset.empty:
                continue
            best = best_within_tolerance(subset, base_top1, tolerance_pp)
            seeds = {} if best is None else per_seed(
                per_run, "sparsity_pct", kind=method_kind(method), method=method, lam=best.lam,
                beta=beta)
            picks.append((method, beta, best, subset, seeds))
    return picks


def _best_row(row: dict, pick: tuple, others: list, base_top1: float,
              references: tuple[dict, dict], tolerance_pp: float) -> dict:
    """The ``best`` row of one sweep: its best λ, stats and paired gains (``references``: the
    baseline's and the control's {seed: sparsity}; ``others``: (best, seeds) of the other
    methods' sweeps)."""
    method, beta, best, subset, seeds = pick
    reach = base_top1 - subset.top1_mean.min()
    row = {**row, "method": method, "beta": beta, "lams_tried": len(subset),
           "grid_max_drop_pp": reach}
    notes = [] if reach >= 1.0 else [f"grid reaches only {reach:.2f} pp below the "
                                     f"baseline (does not bracket 1 pp)"]
    if best is None:
        return {**row, "note": "; ".join([f"no λ within {tolerance_pp:g} pp of the baseline",
                                          *notes])}
    other_seeds = max(others, key=lambda o: o[0].sparsity_mean)[1] if others else {}
    base_seeds, control_seeds = references
    return {**row, "lam": best.lam, **_stats(best), **_gain("vs_baseline", seeds, base_seeds),
            **_gain("vs_control", seeds, control_seeds),
            **_gain("vs_best_other", seeds, other_seeds), "note": "; ".join(notes)}


def _stats(row: pd.Series) -> dict:
    return {k: row[k] for k in _STATS}


def _gain(name: str, values: dict[int, float], reference: dict[int, float]) -> dict:
    """Paired gain columns ``gain_{name}_pp`` / ``_ci_low`` / ``_ci_high`` (NaN without pairs)."""
    ci = t_interval(paired(values, reference).values())
    return {f"gain_{name}_pp": ci.mean, f"gain_{name}_ci_low": ci.low,
            f"gain_{name}_ci_high": ci.high}


# ------------------------------------------------------------------------------ dual sparse


def on_dual_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the (experiment, seed) pairs that ran the dual sparse stages (``dual.seeds``
    may be fewer than the experiment's), so that every dual sparse row is compared with the
    baseline of the same seeds."""
    dual = runs.kind.isin([RunKind.PRUNED, RunKind.DUAL_CONTROL, RunKind.DUAL])
    seeds = runs.loc[dual, ["experiment", "seed"]].drop_duplicates()
    return runs.merge(seeds, on=["experiment", "seed"])


def dual_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Dual sparse results: the baseline, then per pruning structure (unstructured ``element``
    first, then ``block16``) stage 2 and every stage 3 run, with multiplications (means over
    the seeds that ran the dual stages, with 95% t intervals)."""
    summary = seed_summary(on_dual_seeds(runs))
    order = {RunKind.BASELINE: 0, RunKind.PRUNED: 1, RunKind.DUAL_CONTROL: 2, RunKind.DUAL: 3}
    keep = summary[summary.kind.isin(list(order))]
    keep = keep[keep.experiment.isin(summary[summary.kind == RunKind.PRUNED].experiment)]
    keep = keep.assign(_o=keep.kind.map(order), _s=structure_family(keep).map(STRUCTURE_ORDER))
    keep = keep.sort_values(["experiment", "_s", "prune_structure", "prune_rate", "_o", "beta",
                             "lam"], na_position="first")
    out = keep[["experiment", "kind", "prune_structure", "prune_rate", "lam", "beta", "seeds",
                "weight_sparsity_mean", "sparsity_mean", "sparsity_ci_low", "sparsity_ci_high",
                "top1_mean", "top1_ci_low", "top1_ci_high", "top1_std", "dense_macs",
                "effective_macs", "mac_reduction_pct", "mac_reduction_ci_low",
                "mac_reduction_ci_high"]]
    return out.reset_index(drop=True)


def best_dual(dual: pd.DataFrame, base_top1: float, drop: float) -> tuple[pd.Series, bool]:
    """The dual sparse configuration (a row of ``dual``, a seed summary) with the largest mean
    reduction of multiplications whose mean top-1 is within ``drop`` pp of ``base_top1``, or
    the largest reduction when none is; and whether it is within."""
    within = dual[dual.top1_mean >= base_top1 - drop - 1e-9]
    best = (within if not within.empty else dual).sort_values("mac_reduction_pct").iloc[-1]
    return best, not within.empty


DUAL_STRUCTURE_COLUMNS = [
    "experiment", "prune_structure", "prune_rate", "lam", "beta", "seeds", "top1_mean",
    "top1_ci_low", "top1_ci_high", "top1_drop_pp", "sparsity_mean", "sparsity_ci_low",
    "sparsity_ci_high", "weight_sparsity_mean", "mac_reduction_pct", "mac_reduction_ci_low",
    "mac_reduction_ci_high", "stage2_top1_mean", "stage2_weight_sparsity_mean", "note"]


def dual_structure_table(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """Unstructured (``element``) and block-structured weight pruning side by side: per
    experiment and pruning structure, the dual sparse TL1 configuration chosen by
    :func:`best_dual` at ``tolerance_pp``, its accuracy, activation and weight sparsity and
    reduction of multiplications (means over seeds with 95% t intervals), and its stage 2
    model's accuracy and weight sparsity (over the seeds that ran the dual stages)."""
    rows = []
    summary = seed_summary(on_dual_seeds(runs))
    summary = summary.assign(_s=structure_family(summary).map(STRUCTURE_ORDER))
    for exp, s in summary.groupby("experiment", sort=True):
        base, dual = s[s.kind == RunKind.BASELINE], s[s.kind == RunKind.DUAL]
        if base.empty or dual.empty:
            continue
        base_top1 = base.top1_mean.iloc[0]
        for structure, cand in dual.sort_values("_s").groupby("prune_structure", sort=False):
            best, within = best_dual(cand, base_top1, tolerance_pp)
            stage2 = s[(s.kind == RunKind.PRUNED) & (s.prune_structure == structure)
                       & np.isclose(s.prune_rate, best.prune_rate)]
            rows.append({
                "experiment": exp, "prune_structure": structure, "prune_rate": best.prune_rate,
                "lam": best.lam, "beta": best.beta, "seeds": best.seeds,
                **{k: best[k] for k in ("top1_mean", "top1_ci_low", "top1_ci_high")},
                "top1_drop_pp": base_top1 - best.top1_mean,
                **{k: best[k] for k in ("sparsity_mean", "sparsity_ci_low", "sparsity_ci_high",
                                        "weight_sparsity_mean", "mac_reduction_pct",
                                        "mac_reduction_ci_low", "mac_reduction_ci_high")},
                "stage2_top1_mean": stage2.top1_mean.iloc[0] if len(stage2) else math.nan,
                "stage2_weight_sparsity_mean": stage2.weight_sparsity_mean.iloc[0]
                if len(stage2) else math.nan,
                "note": "" if within else f"no dual run within {tolerance_pp:g} pp: largest "
                                          f"reduction shown"})
    return pd.DataFrame(rows, columns=DUAL_STRUCTURE_COLUMNS)


# ------------------------------------------------------------------------------ other tables


def diverged_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not complete, with where and why they stopped."""
    bad = runs[runs.status != "completed"]
    return bad[["experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure",
                "seed", "status",
                "diverged_epoch", "divergence_reason", "run_dir"]].reset_index(drop=True)


LATENCY_COLUMNS = ["experiment", "role", "activation_sparsity_pct", "weight_sparsity_pct",
                   "kernel", "device", "batch", "threads", "median_ms", "speedup",
                   "speedup_vs_ort", "ideal_speedup"]


def latency_table(latency: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """End-to-end latency per model role, engine ('kernel'), device ('cpu' or the GPU's name),
    batch and thread count (median over seeds): the measured speedup over torch eager, or on a
    GPU over ``cuda_eager`` ('speedup'), and over ONNX Runtime ('speedup_vs_ort', CPU only),
    and the ideal one (dense / effective multiplications)."""
    if latency.empty:
        return pd.DataFrame(columns=LATENCY_COLUMNS)
    if "device" not in latency:
        latency = latency.assign(device="cpu")
    model = latency[latency.scope == "model"].drop(
        columns=["activation_sparsity", "weight_sparsity", "act_sparsity"], errors="ignore").merge(
        runs[["run_dir", "activation_sparsity", "weight_sparsity"]], on="run_dir", how="left")
    model = model.assign(activation_sparsity_pct=100 * model.activation_sparsity,
                         weight_sparsity_pct=100 * model.weight_sparsity)
    keys = ["experiment", "role", "kernel", "device", "batch", "threads"]
    out = model.groupby(keys, sort=False).agg(
        activation_sparsity_pct=("activation_sparsity_pct", "mean"),
        weight_sparsity_pct=("weight_sparsity_pct", "mean"), median_ms=("median_ms", "median"),
        speedup=("speedup", "median"), speedup_vs_ort=("speedup_vs_ort", "median"),
        ideal_speedup=("ideal_speedup", "median")).reset_index()
    return out[LATENCY_COLUMNS]


def grid_flags(frontier: pd.DataFrame) -> list[str]:
    """One line per method (and β) whose λ grid does not bracket the largest accuracy drop of
    the frontier table in every seed."""
    if frontier.empty:
        return []
    worst = frontier[frontier.accuracy_drop_pp == frontier.accuracy_drop_pp.max()]
    flags = []
    for r in worst[~worst.bracketed].itertuples():
        beta = f" (β={r.beta:g})" if has_beta(r.method) else ""
        flags.append(f"{r.experiment}, {method_label(r.method)}{beta}: the λ grid does not "
                     f"reach both sides of {r.accuracy_drop_pp:g} pp below the baseline in "
                     f"every seed ({r.seeds} seed(s) bracket it); its frontier stops there")
    return flags
