"""Report tables and figures, computed from the aggregated tables only (never from models).

Inputs are ``runs.csv`` and ``layers.csv`` (see :mod:`dstcore.analysis.aggregate`). Accuracies and
sparsities in the tables are percentages; gains are percentage points (pp). Runs whose
status is not ``completed`` are never plotted or selected; they are listed as diverged.
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures render without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dstcore.analysis.aggregate import best_within_tolerance, seed_summary, structure_family  # noqa: E402
from dstcore.analysis.frontier import (  # noqa: E402
    baseline_top1,
    best_sweep,
    completed,
    frontier_table,
    frontier_values,
    per_seed,
    summarise,
    sweep_keys,
    tl1_vs_best_other,
)
from dstcore.analysis.stats import (  # noqa: E402
    Interval,
    claim_status,
    ordering_status,
    paired,
    relative,
    t_interval,
)
from dstcore.core.io import write_with  # noqa: E402

METHODS = ("l1", "hoyer", "tl1")
METHOD_LABELS = {"baseline": "baseline (dense)", "control": "λ = 0 fine-tune", "l1": "ℓ1",
                 "hoyer": "Hoyer-square", "tl1": "TL1", "dual": "dual sparse (TL1 + pruning)",
                 "dual_control": "pruned, λ = 0 fine-tune", "pruned": "pruned (stage 2)"}
_palette = sns.color_palette("colorblind", 8)
METHOD_COLORS = {"baseline": "#555555", "control": "#000000", "l1": _palette[0],
                 "hoyer": _palette[1], "tl1": _palette[2], "dual": _palette[4],
                 "dual_control": _palette[7], "pruned": _palette[5]}
# Weight-pruning structures (families of runs.csv's prune_structure), in the order tables show them.
STRUCTURE_ORDER = {"": 0, "element": 1, "block": 2}
STRUCTURE_COLORS = {"element": _palette[4], "block": _palette[2]}

# The paper's quantitative claims (Yu & Tian 2024).
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
REFERENCES = ("baseline", "control")
CLAIM_COLUMNS = ["claim", "paper_value", "reading", "reference", "reproduced_mean", "ci_low",
                 "ci_high", "seeds", "status", "experiment", "computed_as"]


def activation_table(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """The grid-point comparison, one block per experiment (secondary to the frontier).

    Rows: baseline, λ = 0 control, then for each method (and TL1 β) the grid λ with the highest
    mean activation sparsity whose mean top-1 stays within ``tolerance_pp`` of the baseline's.
    Means over seeds with 95% t intervals; gains (pp of sparsity) against the baseline, the
    control and the best other method are differences per seed, paired by seed.
    ``grid_max_drop_pp`` is the largest mean accuracy drop the λ grid reaches; the note flags a
    grid that never reaches 1 pp, whose "best" λ may just be its last point.
    """
    summary = seed_summary(runs)
    rows = []
    for exp, s in summary.groupby("experiment", sort=True):
        base = s[s.kind == "baseline"]
        if base.empty:
            continue
        base = base.iloc[0]
        per_run = completed(runs, exp)
        base_seeds = per_seed(per_run, "sparsity_pct", kind="baseline")
        control = s[s.kind == "control"]
        control = control.iloc[0] if not control.empty else None
        control_seeds = per_seed(per_run, "sparsity_pct", kind="control")
        picks = []
        for method in METHODS:
            cand = s[(s.kind == "actreg") & (s.method == method)]
            for beta in sorted(cand.beta.dropna().unique()) or [math.nan]:
                subset = cand if math.isnan(beta) else cand[cand.beta == beta]
                if subset.empty:
                    continue
                best = best_within_tolerance(subset, base.top1_mean, tolerance_pp)
                seeds = {} if best is None else per_seed(
                    per_run, "sparsity_pct", kind="actreg", method=method, lam=best.lam, beta=beta)
                picks.append((method, beta, best, subset, seeds))
        common = {"experiment": exp}
        rows.append({**common, "row": "baseline", "method": "baseline", **_stats(base)})
        if control is not None:
            rows.append({**common, "row": "control", "method": "none", "lam": 0.0,
                         **_stats(control), **_gain("vs_baseline", control_seeds, base_seeds)})
        for method, beta, best, subset, seeds in picks:
            reach = base.top1_mean - subset.top1_mean.min()
            row = {**common, "row": "best", "method": method, "beta": beta,
                   "lams_tried": len(subset), "grid_max_drop_pp": reach}
            notes = [] if reach >= 1.0 else [f"grid reaches only {reach:.2f} pp below the "
                                             f"baseline (does not bracket 1 pp)"]
            if best is None:
                row["note"] = "; ".join([f"no λ within {tolerance_pp:g} pp of the baseline", *notes])
                rows.append(row)
                continue
            others = [(b, sd) for m, _, b, _, sd in picks if m != method and b is not None]
            other_seeds = max(others, key=lambda o: o[0].sparsity_mean)[1] if others else {}
            row.update(lam=best.lam, **_stats(best), **_gain("vs_baseline", seeds, base_seeds),
                       **_gain("vs_control", seeds, control_seeds),
                       **_gain("vs_best_other", seeds, other_seeds), note="; ".join(notes))
            rows.append(row)
    columns = ["experiment", "row", "method", "lam", "beta", "seeds", "top1_mean", "top1_ci_low",
               "top1_ci_high", "top1_std", "sparsity_mean", "sparsity_ci_low", "sparsity_ci_high",
               "sparsity_std"]
    for gain in ("vs_baseline", "vs_control", "vs_best_other"):
        columns += [f"gain_{gain}_pp", f"gain_{gain}_ci_low", f"gain_{gain}_ci_high"]
    return pd.DataFrame(rows, columns=[*columns, "lams_tried", "grid_max_drop_pp", "note"])


def _stats(row: pd.Series) -> dict:
    return {k: row[k] for k in ("seeds", "top1_mean", "top1_ci_low", "top1_ci_high", "top1_std",
                                "sparsity_mean", "sparsity_ci_low", "sparsity_ci_high",
                                "sparsity_std")}


def _gain(name: str, values: dict[int, float], reference: dict[int, float]) -> dict:
    """Paired gain columns ``gain_{name}_pp`` / ``_ci_low`` / ``_ci_high`` (NaN without pairs)."""
    ci = t_interval(paired(values, reference).values())
    return {f"gain_{name}_pp": ci.mean, f"gain_{name}_ci_low": ci.low,
            f"gain_{name}_ci_high": ci.high}


def dual_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Dual sparse results: the baseline, then per pruning structure (unstructured ``element``
    first, then ``block16``) stage 2 and every stage 3 run, with multiplications (means over
    seeds with 95% t intervals)."""
    summary = seed_summary(runs)
    keep = summary[summary.kind.isin(["baseline", "pruned", "dual_control", "dual"])]
    keep = keep[keep.experiment.isin(summary[summary.kind == "pruned"].experiment)]
    order = {"baseline": 0, "pruned": 1, "dual_control": 2, "dual": 3}
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


def dual_structure_table(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """Unstructured (``element``) and block-structured weight pruning side by side: per
    experiment and pruning structure, the dual sparse TL1 configuration chosen by
    :func:`best_dual` at ``tolerance_pp``, its accuracy, activation and weight sparsity and
    reduction of multiplications (means over seeds with 95% t intervals), and its stage 2
    model's accuracy and weight sparsity."""
    rows = []
    summary = seed_summary(runs)
    summary = summary.assign(_s=structure_family(summary).map(STRUCTURE_ORDER))
    for exp, s in summary.groupby("experiment", sort=True):
        base, dual = s[s.kind == "baseline"], s[s.kind == "dual"]
        if base.empty or dual.empty:
            continue
        base_top1 = base.top1_mean.iloc[0]
        for structure, cand in dual.sort_values("_s").groupby("prune_structure", sort=False):
            best, within = best_dual(cand, base_top1, tolerance_pp)
            stage2 = s[(s.kind == "pruned") & (s.prune_structure == structure)
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
    return pd.DataFrame(rows, columns=[
        "experiment", "prune_structure", "prune_rate", "lam", "beta", "seeds", "top1_mean",
        "top1_ci_low", "top1_ci_high", "top1_drop_pp", "sparsity_mean", "sparsity_ci_low",
        "sparsity_ci_high", "weight_sparsity_mean", "mac_reduction_pct", "mac_reduction_ci_low",
        "mac_reduction_ci_high", "stage2_top1_mean", "stage2_weight_sparsity_mean", "note"])


def diverged_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not complete, with where and why they stopped."""
    bad = runs[runs.status != "completed"]
    return bad[["experiment", "kind", "method", "lam", "beta", "prune_rate", "prune_structure",
                "seed", "status",
                "diverged_epoch", "divergence_reason", "run_dir"]].reset_index(drop=True)


def paper_vs_reproduced(runs: pd.DataFrame, tolerance_pp: float,
                        frontier: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (claim, reading, reference), whether or not this config ran the claim.

    Gains are TL1's frontier sparsity at ``tolerance_pp`` below the baseline's mean top-1 (best
    β) minus the reference's sparsity, per seed: ``points`` in pp, ``relative`` as gain /
    reference sparsity × 100. ``status`` follows :func:`dstcore.analysis.stats.claim_status`; the
    ordering rows follow :func:`dstcore.analysis.stats.ordering_status`.
    """
    frontier = frontier_table(runs, (tolerance_pp,)) if frontier is None else frontier
    models = runs.groupby("experiment")[["model", "dataset"]].first()
    tl1_exps = [e for e in models.index if (frontier[frontier.experiment == e].method == "tl1").any()]
    rows = []
    for claim, model, dataset, value in SPARSITY_CLAIMS:
        exps = [e for e in tl1_exps if tuple(models.loc[e]) == (model, dataset)]
        for reading, reference in product(READINGS, REFERENCES):
            row = {"claim": claim, "paper_value": value, "reading": reading,
                   "reference": reference, "status": "not run"}
            if exps:
                row.update(_gain_claim(runs, frontier, exps[0], tolerance_pp, reading,
                                       reference, value))
            rows.append(row)
    rows += _most_claim(runs, frontier, tl1_exps, tolerance_pp)
    rows += _mac_claims(runs, models, tolerance_pp)
    compared = [e for e in tl1_exps if (frontier[frontier.experiment == e].method != "tl1").any()]
    rows += [_ordering_claim(runs, frontier, e, tolerance_pp) for e in compared]
    return pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS)


def tl1_gains(runs: pd.DataFrame, frontier: pd.DataFrame, experiment: str, drop: float,
              reading: str, reference: str) -> tuple[dict[int, float], float] | None:
    """({seed: TL1 gain}, best β) at ``drop``, or None when TL1's frontier is not bracketed."""
    best = best_sweep(frontier, experiment, drop, "tl1")
    if best is None:
        return None
    rows = completed(runs, experiment)
    values = frontier_values(rows, "tl1", best.beta, baseline_top1(rows) - drop)
    ref = per_seed(rows, "sparsity_pct", kind=reference)
    gain = paired(values, ref)
    return (relative(gain, ref) if reading == "relative" else gain), best.beta


def _reading_text(reading: str, reference: str) -> str:
    what = "the dense baseline's" if reference == "baseline" else "the λ = 0 fine-tune control's"
    if reading == "points":
        return f"TL1 sparsity minus {what} sparsity, in percentage points"
    return f"(TL1 sparsity minus {what}) / {what} sparsity × 100, in percent"


def _gain_claim(runs, frontier, experiment, drop, reading, reference, value) -> dict:
    found = tl1_gains(runs, frontier, experiment, drop, reading, reference)
    where = f"TL1 frontier (best β) at top-1 {drop:g} pp below the baseline's mean"
    if found is None:
        return {"experiment": experiment, "status": "not bracketed",
                "computed_as": f"{where}: the TL1 λ grid does not bracket that accuracy"}
    gains, beta = found
    ci = t_interval(gains.values())
    return {"experiment": experiment, "reproduced_mean": ci.mean, "ci_low": ci.low,
            "ci_high": ci.high, "seeds": ci.n, "status": claim_status(value, ci),
            "computed_as": f"{where} (β = {beta:g}); {_reading_text(reading, reference)}; "
                           f"per seed, 95% t interval over seeds"}


def _most_claim(runs, frontier, experiments, drop) -> list[dict]:
    claim, value = MOST_CLAIM
    rows = []
    for reading, reference in product(READINGS, REFERENCES):
        row = {"claim": claim, "paper_value": value, "reading": reading, "reference": reference,
               "status": "not run"}
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
            parts.append(f"{exp}: {ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}] {statuses[-1]}")
        if experiments:
            n_ok = statuses.count("reproduced")
            row.update(reproduced_mean=float(np.median(means)) if means else math.nan,
                       seeds=min(seeds) if seeds else 0, experiment=", ".join(experiments),
                       status="reproduced" if n_ok > len(experiments) / 2 else "not reproduced",
                       computed_as=f"median over experiments of the mean TL1 gain (frontier at "
                                   f"{drop:g} pp, {_reading_text(reading, reference)}); "
                                   f"reproduced when more than half the experiments reproduce "
                                   f"{value:g} ({n_ok} of {len(experiments)}): "
                                   + "; ".join(parts))
        rows.append(row)
    return rows


def _mac_claims(runs: pd.DataFrame, models: pd.DataFrame, drop: float) -> list[dict]:
    """The paper's dual sparse claims, and analogue rows for the dual experiments run here (the
    paper's method: unstructured weight pruning, so only ``element`` runs count)."""
    element = (runs.kind == "dual") & (structure_family(runs) == "element")
    dual_exps = [e for e in models.index if (element & (runs.experiment == e)).any()]
    rows = []
    for claim, model, value in MAC_CLAIMS:
        row = {"claim": claim, "paper_value": value, "reading": "relative",
               "reference": "baseline", "status": "not run"}
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
                     "paper_value": value, "reading": "relative", "reference": "baseline",
                     **_mac_claim(runs, exp, drop, value)})
    return rows


def _mac_claim(runs: pd.DataFrame, experiment: str, drop: float, value: float) -> dict:
    """The unstructured dual sparse configuration with the largest mean reduction of
    multiplications whose mean top-1 is within ``drop`` of the baseline's (:func:`best_dual`),
    with its interval over seeds."""
    s = seed_summary(runs[runs.experiment == experiment])
    base = s[s.kind == "baseline"].top1_mean.iloc[0]
    best, within = best_dual(s[(s.kind == "dual") & (structure_family(s) == "element")], base,
                             drop)
    note = "" if within else f"; no dual run within {drop:g} pp: largest reduction shown"
    ci = Interval(best.mac_reduction_pct, best.mac_reduction_ci_low, best.mac_reduction_ci_high,
                  int(best.seeds))
    return {"experiment": experiment, "reproduced_mean": ci.mean, "ci_low": ci.low,
            "ci_high": ci.high, "seeds": ci.n,
            "status": claim_status(value, ci) if within else "not reproduced",
            "computed_as": f"1 − effective / dense multiplications per image of the dual sparse "
                           f"model with unstructured pruning (prune rate {best.prune_rate:g}, "
                           f"TL1 λ = {best.lam:g}, β = "
                           f"{best.beta:g}) with the largest mean reduction whose mean top-1 is "
                           f"within {drop:g} pp of the baseline's{note}"}


def _ordering_claim(runs: pd.DataFrame, frontier: pd.DataFrame, experiment: str,
                    drop: float) -> dict:
    found = tl1_vs_best_other(runs, frontier, experiment, drop)
    row = {"claim": f"TL1 gives the sparsest activations at matched accuracy ({drop:g} pp below "
                    f"the baseline)", "paper_value": math.nan, "reading": "points",
           "reference": "best other method", "experiment": experiment}
    if found["interval"] is None:
        return {**row, "status": "undecided",
                "computed_as": "a frontier is not bracketed at that accuracy: no comparison"}
    ci = found["interval"]
    return {**row, "reproduced_mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
            "seeds": ci.n, "status": ordering_status(ci),
            "computed_as": f"TL1 (β = {found['tl1_beta']:g}, the best β by mean) minus "
                           f"{METHOD_LABELS[found['other']]} (the best other method by mean) "
                           f"frontier sparsity, paired by seed; holds when the 95% t interval "
                           f"lies above 0, does not hold below 0, undecided when it spans 0"}


# ------------------------------------------------------------------------------ figures


def tradeoff_figure(runs: pd.DataFrame, experiment: str) -> plt.Figure:
    """Top-1 vs activation sparsity over the λ sweep, one curve per method (and β)."""
    s = seed_summary(runs[runs.experiment == experiment])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in METHODS:
        cand = s[(s.kind == "actreg") & (s.method == method)]
        for beta, group in cand.groupby(cand.beta.fillna(-1)):
            group = group.sort_values("lam")
            label = METHOD_LABELS[method] + (f" (β={beta:g})" if beta > 0 else "")
            ax.errorbar(group.sparsity_mean, group.top1_mean, yerr=group.top1_std.fillna(0),
                        marker="o", color=METHOD_COLORS[method], label=label, capsize=2)
            for _, r in group.iterrows():
                ax.annotate(f"{r.lam:g}", (r.sparsity_mean, r.top1_mean), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for kind, marker in (("baseline", "s"), ("control", "D")):
        ref = s[s.kind == kind]
        if not ref.empty:
            ax.scatter(ref.sparsity_mean, ref.top1_mean, marker=marker, s=60, zorder=5,
                       color=METHOD_COLORS[kind], label=METHOD_LABELS[kind])
    ax.set_xlabel("activation sparsity (% exact zeros)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{experiment}: accuracy vs activation sparsity (labels: λ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def frontier_figure(runs: pd.DataFrame, experiment: str, tolerance_pp: float,
                    max_drop_pp: float = 2.0) -> plt.Figure:
    """Each method's frontier (TL1: one per β): activation sparsity against the accuracy drop
    below the baseline's mean top-1, mean over seeds with its 95% t band, drawn only where
    every seed's λ sweep brackets the drop."""
    rows = completed(runs, experiment)
    if rows[rows.kind == "baseline"].empty:
        return message_figure(f"{experiment}: no completed baseline")
    reference = baseline_top1(rows)
    drops = np.linspace(0.0, max_drop_pp, 41)
    keys = sweep_keys(rows)
    tl1_betas = [b for m, b in keys if m == "tl1"]
    greens = sns.dark_palette(METHOD_COLORS["tl1"], n_colors=len(tl1_betas) + 1, reverse=True)
    dashes = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, beta in keys:
        values = [summarise(frontier_values(rows, method, beta, reference - d)) for d in drops]
        mean = np.array([ci.mean for ci, _ in values])
        low = np.array([ci.low if n_ok else np.nan for ci, n_ok in values])
        high = np.array([ci.high if n_ok else np.nan for ci, n_ok in values])
        index = tl1_betas.index(beta) if method == "tl1" else 0
        color = greens[index] if method == "tl1" else METHOD_COLORS[method]
        label = METHOD_LABELS[method] + (f" (β={beta:g})" if method == "tl1" else "")
        ax.plot(drops, mean, color=color, label=label, lw=1.8, ls=dashes[index % len(dashes)])
        ax.fill_between(drops, low, high, color=color, alpha=0.12, lw=0)
    base = rows[rows.kind == "baseline"].sparsity_pct.mean()
    ax.axhline(base, color=METHOD_COLORS["baseline"], ls="--", lw=1,
               label=f"{METHOD_LABELS['baseline']}: {base:.1f}%")
    ax.axvline(tolerance_pp, color="#999999", ls=":", lw=1)
    ax.set_xlabel(f"top-1 drop below the baseline's mean {reference:.2f}% (pp)")
    ax.set_ylabel("activation sparsity on the frontier (%)")
    ax.set_title(f"{experiment}: frontier per method (mean over seeds, 95% t band)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_sparsity_figure(runs: pd.DataFrame, layers: pd.DataFrame, experiment: str,
                          tolerance_pp: float) -> plt.Figure:
    """Per-layer activation sparsity of the baseline, the λ = 0 control and each method's best λ."""
    act = activation_table(runs, tolerance_pp)
    act = act[(act.experiment == experiment) & act.sparsity_mean.notna()]
    lay = layers[(layers.experiment == experiment) & (layers.status == "completed")
                 & layers.activation_sparsity.notna()]
    frames = []
    for _, row in act.iterrows():
        if row.row == "baseline":
            sel = lay[lay.kind == "baseline"]
            label = METHOD_LABELS["baseline"]
            key = "baseline"
        elif row.row == "control":
            sel = lay[lay.kind == "control"]
            label, key = METHOD_LABELS["control"], "control"
        else:
            sel = lay[(lay.kind == "actreg") & (lay.method == row.method)
                      & np.isclose(lay.lam, row.lam)]
            if not math.isnan(row.beta):
                sel = sel[np.isclose(sel.beta, row.beta)]
            label, key = f"{METHOD_LABELS[row.method]} λ={row.lam:g}", row.method
        per_layer = sel.groupby(["position", "layer"]).activation_sparsity.mean().reset_index()
        frames.append(per_layer.assign(run=label, key=key))
    data = pd.concat(frames) if frames else pd.DataFrame(
        columns=["position", "layer", "activation_sparsity", "run", "key"])
    data["activation_sparsity"] = 100 * data.activation_sparsity
    n_layers = data.layer.nunique()
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * n_layers * max(len(frames), 1) / 2), 4.5))
    palette = {r: METHOD_COLORS[k] for r, k in data[["run", "key"]].drop_duplicates().values}
    sns.barplot(data=data.sort_values("position"), x="layer", y="activation_sparsity",
                hue="run", hue_order=list(dict.fromkeys(data.run)), palette=palette, ax=ax)
    ax.set_xlabel("layer (input activation map of)")
    ax.set_ylabel("activation sparsity (% exact zeros)")
    ax.set_title(f"{experiment}: per-layer activation sparsity")
    ax.tick_params(axis="x", rotation=90 if n_layers > 8 else 0, labelsize=7)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def dual_macs_figure(runs: pd.DataFrame, layers: pd.DataFrame, experiment: str,
                     tolerance_pp: float) -> plt.Figure:
    """Per-layer dense vs effective multiplications of the best dual sparse model of each
    pruning structure (:func:`best_dual`: unstructured and block-structured side by side)."""
    s = seed_summary(runs[runs.experiment == experiment])
    base, dual = s[s.kind == "baseline"], s[s.kind == "dual"]
    if dual.empty:
        return message_figure(f"{experiment}: no completed dual sparse run to show")
    dual = dual.assign(_s=structure_family(dual).map(STRUCTURE_ORDER)).sort_values("_s")
    base_top1 = base.top1_mean.iloc[0] if len(base) else 0.0
    bars = {}
    for structure, cand in dual.groupby("prune_structure", sort=False):
        best, within = best_dual(cand, base_top1, tolerance_pp)
        lay = layers[(layers.experiment == experiment) & (layers.kind == "dual")
                     & (layers.prune_structure == structure)
                     & np.isclose(layers.prune_rate, best.prune_rate)
                     & np.isclose(layers.lam, best.lam)]
        per_layer = lay.groupby(["position", "layer"])[["dense_macs", "effective_macs"]].mean()
        label = (f"effective, {structure} (prune rate {best.prune_rate:g}, TL1 λ={best.lam:g}): "
                 f"−{best.mac_reduction_pct:.1f}%" + ("" if within else ", none within tolerance"))
        bars[label] = (structure, per_layer.reset_index().sort_values("position"))
    dense = next(iter(bars.values()))[1]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.3 * len(dense) * (1 + len(bars)) / 2), 4.5))
    x, width = np.arange(len(dense)), 0.8 / (1 + len(bars))
    ax.bar(x - 0.4 + width / 2, dense.dense_macs, width, label="dense",
           color=METHOD_COLORS["baseline"])
    for i, (label, (structure, per_layer)) in enumerate(bars.items(), start=1):
        color = STRUCTURE_COLORS.get(structure.rstrip("0123456789"), METHOD_COLORS["dual"])
        ax.bar(x - 0.4 + width * (i + 0.5), per_layer.effective_macs, width, label=label,
               color=color)
    ax.set_xticks(x, dense.layer, rotation=90 if len(x) > 8 else 0, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 10 ** (0.5 * (1 + len(bars))))  # room for the legend
    ax.set_ylabel("multiplications per image")
    ax.set_title(f"{experiment}: dual sparse, per-layer multiplications (effective = both "
                 f"operands non-zero)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


KERNEL_COLORS = {"dense": "#555555", "weight_sparse": _palette[3], "act_sparse": _palette[2],
                 "dual_sparse": _palette[4], "onnxruntime": _palette[0],
                 "runner_dense": _palette[1], "torch_compile": _palette[5]}


def latency_table(latency: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """End-to-end latency per model role, engine ('kernel'), batch and thread count (median
    over seeds): the measured speedup over torch eager ('speedup') and over ONNX Runtime
    ('speedup_vs_ort'), and the ideal one (dense / effective multiplications)."""
    columns = ["experiment", "role", "activation_sparsity_pct", "weight_sparsity_pct",
               "kernel", "batch", "threads", "median_ms", "speedup", "speedup_vs_ort",
               "ideal_speedup"]
    if latency.empty:
        return pd.DataFrame(columns=columns)
    model = latency[latency.scope == "model"].drop(
        columns=["activation_sparsity", "weight_sparsity", "act_sparsity"], errors="ignore").merge(
        runs[["run_dir", "activation_sparsity", "weight_sparsity"]], on="run_dir", how="left")
    model = model.assign(activation_sparsity_pct=100 * model.activation_sparsity,
                         weight_sparsity_pct=100 * model.weight_sparsity)
    keys = ["experiment", "role", "kernel", "batch", "threads"]
    out = model.groupby(keys, sort=False).agg(
        activation_sparsity_pct=("activation_sparsity_pct", "mean"),
        weight_sparsity_pct=("weight_sparsity_pct", "mean"), median_ms=("median_ms", "median"),
        speedup=("speedup", "median"), speedup_vs_ort=("speedup_vs_ort", "median"),
        ideal_speedup=("ideal_speedup", "median")).reset_index()
    return out[columns]


def latency_figure(latency: pd.DataFrame, experiment: str) -> plt.Figure:
    """Speedup over dense vs activation sparsity, per layer (batch 1, 1 thread), for each
    sparse kernel, with the ideal speedup (dense / effective multiplications) of each layer."""
    lat = latency[(latency.experiment == experiment) & (latency.scope == "layer")]
    if lat.empty:
        return message_figure(f"{experiment}: no latency measurements")
    lat = lat[(lat.batch == lat.batch.min()) & (lat.threads == lat.threads.min())]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"baseline": "o", "best_tl1": "^", "best_dual": "s"}
    for kernel in ("weight_sparse", "act_sparse", "dual_sparse"):
        k = lat[lat.kernel == kernel]
        for role, group in k.groupby("role"):
            ax.scatter(100 * group.act_sparsity, group.speedup, color=KERNEL_COLORS[kernel],
                       marker=markers.get(role, "o"), s=28, alpha=0.8,
                       label=f"{kernel}, {role}")
    ideal = lat[lat.kernel == "dense"].sort_values("act_sparsity")
    ax.scatter(100 * ideal.act_sparsity, ideal.ideal_speedup, color="black", marker="x", s=30,
               label="ideal (dense / effective multiplications)")
    grid = np.linspace(0, 99, 100)
    ax.plot(grid, 1 / (1 - grid / 100), color="black", lw=0.8, ls="--",
            label="ideal for a dense-weight layer: 1 / (1 − sparsity)")
    ax.axhline(1.0, color="#999999", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("input activation sparsity of the layer (% exact zeros)")
    ax.set_ylabel("speedup over dense torch (×, log)")
    b, t = int(lat.batch.min()), int(lat.threads.min())
    ax.set_title(f"{experiment}: per-layer kernel speedup, batch {b}, {t} thread(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def message_figure(text: str) -> plt.Figure:
    """A figure that says why there is nothing to plot (instead of a missing file)."""
    fig, ax = plt.subplots(figsize=(6.5, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


def html_table(table: pd.DataFrame, table_id: str, caption: str) -> str:
    """``table`` as an HTML table with an id: λ/β in %g, other floats with 2 decimals."""
    shown = table.copy()
    for col in shown.columns:
        if col in ("lam", "beta", "prune_rate"):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:g}")
        elif col in ("dense_macs", "effective_macs"):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
        elif pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    html = shown.to_html(index=False, table_id=table_id, na_rep="", border=0,
                         classes="dst-table")
    return f"<h3>{caption}</h3>\n{html}"


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically; close the figure."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{stem}.{ext}")
        write_with(path, lambda tmp, e=ext: fig.savefig(tmp, format=e, dpi=150))
        paths.append(path)
    plt.close(fig)
    return paths


def best_beta_table(frontier: pd.DataFrame) -> pd.DataFrame:
    """TL1's best β per experiment and accuracy drop (highest mean frontier sparsity), with
    every β's mean for comparison."""
    tl1 = frontier[frontier.method == "tl1"]
    rows = []
    for (exp, drop), group in tl1.groupby(["experiment", "accuracy_drop_pp"], sort=True):
        best = group[group.best_beta]
        means = ", ".join(f"β={r.beta:g}: " + (f"{r.sparsity_mean:.2f}" if r.bracketed
                                                 else "not bracketed")
                          for r in group.itertuples())
        row = {"experiment": exp, "accuracy_drop_pp": drop, "best_beta": math.nan,
               "sparsity_mean": math.nan, "sparsity_ci_low": math.nan,
               "sparsity_ci_high": math.nan, "all_betas": means}
        if not best.empty:
            b = best.iloc[0]
            row.update(best_beta=b.beta, sparsity_mean=b.sparsity_mean,
                       sparsity_ci_low=b.sparsity_ci_low, sparsity_ci_high=b.sparsity_ci_high)
        rows.append(row)
    return pd.DataFrame(rows, columns=["experiment", "accuracy_drop_pp", "best_beta",
                                       "sparsity_mean", "sparsity_ci_low", "sparsity_ci_high",
                                       "all_betas"])


def grid_flags(frontier: pd.DataFrame) -> list[str]:
    """One line per method (and β) whose λ grid does not bracket the largest accuracy drop of
    the frontier table in every seed."""
    if frontier.empty:
        return []
    worst = frontier[frontier.accuracy_drop_pp == frontier.accuracy_drop_pp.max()]
    flags = []
    for r in worst[~worst.bracketed].itertuples():
        beta = f" (β={r.beta:g})" if r.method == "tl1" else ""
        flags.append(f"{r.experiment}, {METHOD_LABELS[r.method]}{beta}: the λ grid does not "
                     f"reach both sides of {r.accuracy_drop_pp:g} pp below the baseline in "
                     f"every seed ({r.seeds} seed(s) bracket it); its frontier stops there")
    return flags
