"""The paper's quantitative claims (Yu & Tian 2024) against this reproduction.

:func:`paper_vs_reproduced` gives one row per claim, reading and reference, whether or not this
configuration ran the claim. The claims are about the paper's method, :data:`PROPOSED` (TL1):
its frontier (best β) at the accuracy tolerance, against the dense baseline or the λ = 0
control, and against the best other registered regulariser. Accuracies and sparsities are
percentages; gains are percentage points (``points``) or percent of the reference
(``relative``).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd

from dstcore.analysis.aggregate import seed_summary
from dstcore.analysis.frontier import (
    baseline_top1,
    best_sweep,
    completed,
    frontier_table,
    frontier_values,
    per_seed,
    tl1_vs_best_other,
)
from dstcore.analysis.stats import (
    Interval,
    bootstrap_interval,
    claim_status,
    ordering_status,
    paired,
    relative,
    seeds_needed,
    sign_test_p,
    stratified_bootstrap_interval,
    t_interval,
    t_test_p,
)
from dstcore.analysis.tables import best_dual, on_dual_seeds
from dstcore.core.runs import ELEMENT, RunKind, structure_family
from dstcore.sparsity.regularizers import PROPOSED, method_label

SPARSITY_CLAIMS = [  # (claim, model, dataset, paper value): TL1's activation-sparsity gain
    ("Activation sparsity gain of TL1, LeNet5 / MNIST", "lenet5", "mnist", 44.04),
    ("Activation sparsity gain of TL1, ResNet18 / ImageNet", "resnet18", "imagenet", 27.52),
]
MOST_CLAIM = ("More than 20% more activation sparsity on most models", 20.0)
MAC_CLAIMS = [  # (claim, model, paper value): 1 - effective / dense multiplications, in %
    ("Fewer multiplications with dual sparse training, ResNet18", "resnet18", 81.7),
    ("Fewer multiplications with dual sparse training, ResNet50", "resnet50", 84.13),
]
READINGS = ("points", "relative")
REFERENCES = (RunKind.BASELINE, RunKind.CONTROL)  # the runs a gain is taken against
CLAIM_COLUMNS = ["claim", "paper_value", "reading", "reference", "reproduced_mean", "ci_low",
                 "ci_high", "seeds", "status", "experiment", "computed_as", "rule", "detail",
                 "seeds_needed", "boot_low", "boot_high"]
# How each kind of row is computed (``rule`` of a row; ``{drop}``: the accuracy tolerance in pp,
# ``{name}``: the proposed method). A row's ``detail`` holds what is particular to it, and its
# ``computed_as`` both, for readers of the CSV.
CLAIM_RULES = {
    "gain": "{name}'s frontier sparsity (its best β) at top-1 {drop:g} pp below the baseline's "
            "mean, minus the reference's sparsity, per seed: in points (pp), or relative "
            "(divided by the reference's sparsity, × 100, in %); 95% t interval over seeds. "
            "Reproduced when the interval contains the paper's value or lies above it.",
    "most": "The median over experiments (one architecture on one dataset each) of the mean "
            "{name} gain (as in the gain rule); reproduced when strictly more than half the "
            "experiments reproduce the paper's value (a tie is not a majority; an experiment "
            "whose frontier is not bracketed counts as not reproducing).",
    "macs": "1 − effective / dense multiplications per image of the dual sparse model with "
            "unstructured pruning that has the largest mean reduction among those whose mean "
            "top-1 is within {drop:g} pp of the baseline's; 95% t interval over seeds.",
    "ordering": "{name} (its best β) minus the best other method (by mean) frontier sparsity at "
                "{drop:g} pp below the baseline, paired by seed: holds when the 95% t interval "
                "lies above 0, does not hold below 0, undecided when it spans 0; an undecided "
                "row gives the seeds a paired t test would need to decide it with 80% power if "
                "the per-seed differences kept their mean and spread (column seeds_needed).",
    "pooled": "Per experiment (one architecture on one dataset), the mean over seeds of the "
              "ordering rule's paired difference ({name} minus the best other method at "
              "{drop:g} pp below the baseline); then over experiments: holds when the 95% t "
              "interval of those means lies above 0 (a one-sample t test over architectures, "
              "two-sided p < 0.05), does not hold below 0, undecided when it spans 0. Beside "
              "it a one-sided sign test over the experiments and rliable's stratified bootstrap "
              "(seeds resampled within each experiment). An undecided row gives the number of "
              "architectures the t test would need (80% power) at the observed mean and spread.",
    "not run": "The configuration has no experiment with the claim's model and dataset.",
}


def paper_vs_reproduced(runs: pd.DataFrame, tolerance_pp: float,
                        frontier: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (claim, reading, reference), whether or not this config ran the claim.

    Gains are TL1's frontier sparsity at ``tolerance_pp`` below the baseline's mean top-1 (best
    β) minus the reference's sparsity, per seed: ``points`` in pp, ``relative`` as gain /
    reference sparsity × 100. ``status`` follows :func:`dstcore.analysis.stats.claim_status`; the
    ordering rows follow :func:`dstcore.analysis.stats.ordering_status`. ``rule`` names the
    :data:`CLAIM_RULES` entry a row is computed by, ``detail`` what is particular to the row.
    """
    frontier = frontier_table(runs, (tolerance_pp,)) if frontier is None else frontier
    models = runs.groupby("experiment")[["model", "dataset"]].first()
    methods = {e: frontier[frontier.experiment == e].method for e in models.index}
    proposed_exps = [e for e in models.index if (methods[e] == PROPOSED).any()]
    rows = []
    for claim, model, dataset, value in SPARSITY_CLAIMS:
        exps = [e for e in proposed_exps if tuple(models.loc[e]) == (model, dataset)]
        for reading, reference in product(READINGS, REFERENCES):
            row = {"claim": claim, "paper_value": value, "reading": reading,
                   "reference": str(reference), **_not_run(model, dataset)}
            if exps:
                row.update(_gain_claim(runs, frontier, exps[0], tolerance_pp, reading,
                                       reference, value))
            rows.append(row)
    rows += _most_claim(runs, frontier, proposed_exps, tolerance_pp)
    rows += _mac_claims(runs, models, tolerance_pp)
    compared = [e for e in proposed_exps if (methods[e] != PROPOSED).any()]
    orderings = {e: tl1_vs_best_other(runs, frontier, e, tolerance_pp) for e in compared}
    rows += [_ordering_claim(e, found, tolerance_pp) for e, found in orderings.items()]
    rows.append(_pooled_claim(orderings, tolerance_pp))
    table = pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS)
    table["computed_as"] = [_computed_as(r.rule, r.detail, tolerance_pp)
                            for r in table.itertuples()]
    return table


def _computed_as(rule: str, detail: str, drop: float) -> str:
    text = CLAIM_RULES[rule].format(name=method_label(PROPOSED), drop=drop)
    return f"{text} Here: {detail}." if detail else text


def _not_run(model: str, dataset: str | None = None) -> dict:
    what = f"{model} / {dataset}" if dataset else model
    return {"status": "not run", "rule": "not run",
            "detail": f"no {what} experiment in this configuration"}


def tl1_gains(runs: pd.DataFrame, frontier: pd.DataFrame, experiment: str, drop: float,
              reading: str, reference: str) -> tuple[dict[int, float], float] | None:
    """({seed: gain of the proposed method (TL1)}, best β) at ``drop``, or None when its
    frontier is not bracketed."""
    best = best_sweep(frontier, experiment, drop, PROPOSED)
    if best is None:
        return None
    rows = completed(runs, experiment)
    values = frontier_values(rows, PROPOSED, best.beta, baseline_top1(rows) - drop)
    ref = per_seed(rows, "sparsity_pct", kind=reference)
    gain = paired(values, ref)
    return (relative(gain, ref) if reading == "relative" else gain), best.beta


def _gain_claim(runs, frontier, experiment, drop, reading, reference, value) -> dict:
    found = tl1_gains(runs, frontier, experiment, drop, reading, reference)
    if found is None:
        return {"experiment": experiment, "status": "not bracketed", "rule": "gain",
                "detail": f"the {method_label(PROPOSED)} λ grid does not bracket that accuracy"}
    gains, beta = found
    ci = t_interval(gains.values())
    row = {"experiment": experiment, "reproduced_mean": ci.mean, "ci_low": ci.low,
           "ci_high": ci.high, "seeds": ci.n, "status": claim_status(value, ci),
           "rule": "gain", "detail": f"β = {beta:g}"}
    return with_bootstrap(row, gains.values(), lambda boot: claim_status(value, boot))


def with_bootstrap(row: dict, values, status_of) -> dict:
    """``row`` with the percentile bootstrap interval of its per-seed ``values`` (``boot_low``,
    ``boot_high``); where that interval gives another status (``status_of``) than the t
    interval, ``detail`` says so."""
    values = list(values)
    low, high = bootstrap_interval(values)
    out = {**row, "boot_low": low, "boot_high": high}
    if math.isnan(low):
        return out
    boot = status_of(Interval(row["reproduced_mean"], low, high, len(values)))
    if boot != row["status"]:
        width = row["ci_high"] - row["ci_low"]
        out["detail"] += (f"; the bootstrap interval [{low:.2f}, {high:.2f}] would say "
                          f"{boot} (width {high - low:.2f} vs the t interval's {width:.2f}, "
                          f"{len(values)} seeds)")
    return out


def _most_claim(runs, frontier, experiments, drop) -> list[dict]:
    claim, value = MOST_CLAIM
    rows = []
    for reading, reference in product(READINGS, REFERENCES):
        row = {"claim": claim, "paper_value": value, "reading": reading,
               "reference": str(reference), "status": "not run", "rule": "not run",
               "detail": f"no experiment compares {method_label(PROPOSED)} with a baseline"}
        parts, means, statuses, seeds = [], [], [], []
        for exp in experiments:
            found = tl1_gains(runs, frontier, exp, drop, reading, reference)
            if found is None:
                parts.append(f"{exp}: not bracketed")
                statuses.append("not bracketed")
                continue
            ci = t_interval(found[0].values())
            means.append(ci.mean)
            seeds.append(ci.n)
            statuses.append(claim_status(value, ci))
            parts.append(f"{exp} {statuses[-1]}")
        if experiments:
            n_ok = statuses.count("reproduced")
            row.update(reproduced_mean=float(np.median(means)) if means else math.nan,
                       seeds=min(seeds) if seeds else 0, experiment=", ".join(experiments),
                       status="reproduced" if n_ok > len(experiments) / 2 else "not reproduced",
                       rule="most", detail=f"{n_ok} of {len(experiments)} reproduce: "
                                           + ", ".join(parts))
        rows.append(row)
    return rows


def _mac_claims(runs: pd.DataFrame, models: pd.DataFrame, drop: float) -> list[dict]:
    """The paper's dual sparse claims, and analogue rows for the dual experiments run here (the
    paper's method: unstructured weight pruning, so only ``element`` runs count)."""
    element = (runs.kind == RunKind.DUAL) & (structure_family(runs) == ELEMENT)
    dual_exps = [e for e in models.index if (element & (runs.experiment == e)).any()]
    rows = []
    common = {"reading": "relative", "reference": RunKind.BASELINE.value}
    for claim, model, value in MAC_CLAIMS:
        row = {"claim": claim, "paper_value": value, **common, **_not_run(model)}
        exps = [e for e in dual_exps if models.loc[e, "model"] == model]
        if exps:
            row.update(_mac_claim(runs, exps[0], drop, value))
        rows.append(row)
    claim, _, value = MAC_CLAIMS[0]
    for exp in dual_exps:
        if models.loc[exp, "model"] in [m for _, m, _ in MAC_CLAIMS]:
            continue
        name = f"{models.loc[exp, 'model']} / {models.loc[exp, 'dataset']}"
        rows.append({"claim": f"Fewer multiplications with dual sparse training, {name} "
                              f"(analogue of the paper's ResNet18 / ResNet50 claims, compared "
                              f"with ResNet18's {value:g}%)",
                     "paper_value": value, **common, **_mac_claim(runs, exp, drop, value)})
    return rows


def _mac_claim(runs: pd.DataFrame, experiment: str, drop: float, value: float) -> dict:
    """The unstructured dual sparse configuration with the largest mean reduction of
    multiplications whose mean top-1 is within ``drop`` of the baseline's (:func:`best_dual`),
    with its interval over the seeds that ran the dual stages."""
    s = seed_summary(on_dual_seeds(runs[runs.experiment == experiment]))
    base = s[s.kind == RunKind.BASELINE].top1_mean.iloc[0]
    best, within = best_dual(s[(s.kind == RunKind.DUAL) & (structure_family(s) == ELEMENT)],
                             base, drop)
    note = "" if within else f"; no dual run within {drop:g} pp: largest reduction shown"
    ci = Interval(best.mac_reduction_pct, best.mac_reduction_ci_low, best.mac_reduction_ci_high,
                  int(best.seeds))
    return {"experiment": experiment, "reproduced_mean": ci.mean, "ci_low": ci.low,
            "ci_high": ci.high, "seeds": ci.n,
            "status": claim_status(value, ci) if within else "not reproduced", "rule": "macs",
            "detail": f"prune rate {best.prune_rate:g}, {method_label(PROPOSED)} "
                      f"λ = {best.lam:g}, β = {best.beta:g}{note}"}


def _ordering_claim(experiment: str, found: dict, drop: float) -> dict:
    """The ordering row of ``experiment`` from its :func:`tl1_vs_best_other` at ``drop``."""
    name = method_label(PROPOSED)
    row = {"claim": f"{name} gives the sparsest activations at matched accuracy ({drop:g} pp "
                    f"below the baseline)", "paper_value": math.nan, "reading": "points",
           "reference": "best other method", "experiment": experiment, "rule": "ordering"}
    if found["interval"] is None:
        return {**row, "status": "undecided",
                "detail": "a frontier is not bracketed at that accuracy: no comparison"}
    ci = found["interval"]
    status = ordering_status(ci)
    detail = f"{name} β = {found['tl1_beta']:g} minus {method_label(found['other'])}"
    needed = seeds_needed(ci) if status == "undecided" else None
    if status == "undecided":
        detail += (f"; {needed} seeds would decide it at this mean and spread (paired t, 80% "
                   f"power)" if needed is not None else "; no seed count would decide it at "
                   "this mean and spread")
    row = {**row, "reproduced_mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
           "seeds": ci.n, "status": status, "detail": detail,
           "seeds_needed": math.nan if needed is None else needed}
    return with_bootstrap(row, found["differences"].values(), ordering_status)


def _pooled_claim(orderings: dict[str, dict], drop: float) -> dict:
    """"TL1 adapts to different network structures": the ordering differences of every
    experiment ({experiment: its :func:`tl1_vs_best_other` at ``drop``}) pooled over
    experiments (the ``pooled`` rule of :data:`CLAIM_RULES`)."""
    experiments = list(orderings)
    row = {"claim": f"{method_label(PROPOSED)} adapts to different network structures: "
                    f"sparsest at matched accuracy across architectures ({drop:g} pp below the "
                    f"baseline)",
           "paper_value": math.nan, "reading": "points", "reference": "best other method",
           "experiment": ", ".join(experiments), "rule": "pooled"}
    diffs, parts = {}, []
    for exp, found in orderings.items():
        if found["interval"] is None:
            parts.append(f"{exp}: not bracketed, left out")
            continue
        diffs[exp] = found["differences"]
        parts.append(f"{exp} {found['interval'].mean:+.2f}")
    means = [t_interval(d.values()).mean for d in diffs.values()]
    if not experiments:
        return {**row, "status": "not run", "rule": "not run",
                "detail": f"no experiment compares {method_label(PROPOSED)} with another method"}
    if len(means) < 2:
        return {**row, "status": "undecided", "seeds": len(means),
                "detail": "fewer than two architectures with bracketed frontiers"
                          + (f" ({'; '.join(parts)})" if parts else "")}
    ci = t_interval(means)
    status = ordering_status(ci)
    ahead = sum(m > 0 for m in means)
    detail = (f"{ahead} of {len(means)} architectures have {method_label(PROPOSED)} ahead "
              f"({'; '.join(parts)}); t test over architecture means p = {t_test_p(means):.3g}, "
              f"sign test (one-sided) p = {sign_test_p(means):.3g}")
    if status == "undecided":
        needed = seeds_needed(ci)
        detail += (f"; {needed} architectures would decide it at this mean and spread (t, "
                   f"80% power); more seeds narrow each architecture's mean, not the spread "
                   f"between architectures" if needed is not None
                   else "; no number of architectures would decide it at this mean and spread")
    low, high = stratified_bootstrap_interval([d.values() for d in diffs.values()])
    row = {**row, "reproduced_mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
           "seeds": min(len(d) for d in diffs.values()), "status": status, "detail": detail,
           "boot_low": low, "boot_high": high}
    boot = ordering_status(Interval(ci.mean, low, high, len(means)))
    if not math.isnan(low) and boot != status:
        row["detail"] += (f"; the stratified bootstrap interval [{low:.2f}, {high:.2f}] would "
                          f"say {boot}")
    return row
