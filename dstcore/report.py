"""Report tables and figures, computed from the aggregated tables only (never from models).

Inputs are ``runs.csv`` and ``layers.csv`` (see :mod:`dstcore.aggregate`). Accuracies and
sparsities in the tables are percentages; gains are percentage points (pp). Runs whose
status is not ``completed`` are never plotted or selected; they are listed as diverged.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures render without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dstcore.aggregate import best_within_tolerance, seed_summary  # noqa: E402
from dstcore.io import write_with  # noqa: E402

METHODS = ("l1", "hoyer", "tl1")
METHOD_LABELS = {"baseline": "baseline (dense)", "control": "λ = 0 fine-tune", "l1": "ℓ1",
                 "hoyer": "Hoyer-square", "tl1": "TL1", "dual": "dual sparse (TL1 + pruning)",
                 "dual_control": "pruned, λ = 0 fine-tune", "pruned": "pruned (stage 2)"}
_palette = sns.color_palette("colorblind", 8)
METHOD_COLORS = {"baseline": "#555555", "control": "#000000", "l1": _palette[0],
                 "hoyer": _palette[1], "tl1": _palette[2], "dual": _palette[4],
                 "dual_control": _palette[7], "pruned": _palette[5]}

# The paper's quantitative claims (Yu & Tian 2024): (claim, model, dataset or None, value).
PAPER_CLAIMS = [
    ("Activation sparsity gain of TL1, LeNet5 / MNIST", "lenet5", "mnist", 44.04, "sparsity"),
    ("Activation sparsity gain of TL1, ResNet18 / ImageNet", "resnet18", "imagenet", 27.52,
     "sparsity"),
    ("More than 20 pp more activation sparsity on most models", None, None, 20.0, "most"),
    ("Fewer multiplications with dual sparse training, ResNet18", "resnet18", None, 81.7, "macs"),
    ("Fewer multiplications with dual sparse training, ResNet50", "resnet50", None, 84.13, "macs"),
]


def activation_table(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """The paper's main comparison, one block per experiment.

    Rows: baseline, λ = 0 control, then for each method (and TL1 β) the λ with the highest
    activation sparsity whose top-1 stays within ``tolerance_pp`` of the baseline. Gains are
    sparsity differences in pp against the baseline, the control and the best other method.
    """
    summary = seed_summary(runs)
    rows = []
    for exp, s in summary.groupby("experiment", sort=True):
        base = s[s.kind == "baseline"]
        if base.empty:
            continue
        base = base.iloc[0]
        control = s[s.kind == "control"]
        control = control.iloc[0] if not control.empty else None
        picks = []
        for method in METHODS:
            cand = s[(s.kind == "actreg") & (s.method == method)]
            betas = sorted(cand.beta.dropna().unique()) or [math.nan]
            for beta in betas:
                subset = cand if math.isnan(beta) else cand[cand.beta == beta]
                if subset.empty:
                    continue
                best = best_within_tolerance(subset, base.top1_mean, tolerance_pp)
                picks.append((method, beta, best, len(subset)))
        common = {"experiment": exp}
        rows.append({**common, "row": "baseline", "method": "baseline", **_stats(base)})
        if control is not None:
            rows.append({**common, "row": "control", "method": "none", "lam": 0.0,
                         **_stats(control),
                         "gain_vs_baseline_pp": control.sparsity_mean - base.sparsity_mean})
        for method, beta, best, n in picks:
            row = {**common, "row": "best", "method": method, "beta": beta, "lams_tried": n}
            if best is None:
                row["note"] = f"no λ within {tolerance_pp:g} pp of the baseline"
                rows.append(row)
                continue
            others = [b.sparsity_mean for m, _, b, _ in picks if m != method and b is not None]
            row.update(lam=best.lam, **_stats(best),
                       gain_vs_baseline_pp=best.sparsity_mean - base.sparsity_mean,
                       gain_vs_control_pp=(best.sparsity_mean - control.sparsity_mean)
                       if control is not None else math.nan,
                       gain_vs_best_other_pp=(best.sparsity_mean - max(others))
                       if others else math.nan)
            rows.append(row)
    columns = ["experiment", "row", "method", "lam", "beta", "seeds", "top1_mean", "top1_std",
               "sparsity_mean", "sparsity_std", "gain_vs_baseline_pp", "gain_vs_control_pp",
               "gain_vs_best_other_pp", "lams_tried", "note"]
    return pd.DataFrame(rows, columns=columns)


def _stats(row: pd.Series) -> dict:
    return {k: row[k] for k in ("seeds", "top1_mean", "top1_std", "sparsity_mean",
                                "sparsity_std")}


def dual_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Dual sparse results: the baseline, stage 2 and every stage 3 run, with multiplications."""
    summary = seed_summary(runs)
    keep = summary[summary.kind.isin(["baseline", "pruned", "dual_control", "dual"])]
    keep = keep[keep.experiment.isin(summary[summary.kind == "pruned"].experiment)]
    order = {"baseline": 0, "pruned": 1, "dual_control": 2, "dual": 3}
    keep = keep.assign(_o=keep.kind.map(order)).sort_values(
        ["experiment", "prune_rate", "_o", "lam"], na_position="first")
    out = keep[["experiment", "kind", "prune_rate", "lam", "beta", "seeds",
                "weight_sparsity_mean", "sparsity_mean", "top1_mean", "top1_std", "dense_macs",
                "effective_macs", "mac_reduction_pct"]]
    return out.reset_index(drop=True)


def diverged_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not complete, with where and why they stopped."""
    bad = runs[runs.status != "completed"]
    return bad[["experiment", "kind", "method", "lam", "beta", "prune_rate", "seed", "status",
                "diverged_epoch", "divergence_reason", "run_dir"]].reset_index(drop=True)


def paper_vs_reproduced(runs: pd.DataFrame, tolerance_pp: float) -> pd.DataFrame:
    """One row per quantitative claim of the paper, whether or not this config ran it."""
    act = activation_table(runs, tolerance_pp)
    dual = dual_table(runs)
    models = runs.groupby("experiment")[["model", "dataset"]].first()
    tl1 = act[(act.method == "tl1") & (act.row == "best")].dropna(subset=["sparsity_mean"])
    if not tl1.empty:  # one β per experiment: the best
        tl1 = tl1.sort_values("sparsity_mean").groupby("experiment").tail(1)
    tl1 = tl1.set_index("experiment")
    rows = []
    for claim, model, dataset, value, kind in PAPER_CLAIMS:
        row = {"claim": claim, "paper": value, "reproduced": math.nan, "experiments": "",
               "computed_as": "", "status": "not run in this configuration"}
        if kind == "sparsity":
            exps = [e for e in tl1.index if (models.loc[e, "model"], models.loc[e, "dataset"])
                    == (model, dataset)]
            if exps:
                r = tl1.loc[exps[0]]
                row.update(reproduced=r.gain_vs_baseline_pp, experiments=exps[0],
                           also_vs_control_pp=r.gain_vs_control_pp,
                           computed_as=f"activation sparsity of the best TL1 λ (top-1 within "
                                       f"{tolerance_pp:g} pp of the baseline) minus the dense "
                                       f"baseline's, in pp; the column also_vs_control_pp "
                                       f"uses the λ = 0 fine-tune instead",
                           status="reproduced" if r.gain_vs_baseline_pp >= value
                           else "not reproduced")
        elif kind == "most":
            if not tl1.empty:
                gains = tl1.gain_vs_baseline_pp
                n_over = int((gains > value).sum())
                row.update(reproduced=float(gains.median()), experiments=", ".join(tl1.index),
                           computed_as=f"median over experiments of the best TL1 λ's activation "
                                       f"sparsity gain over the baseline, in pp; {n_over} of "
                                       f"{len(gains)} experiments gain more than {value:g} pp",
                           status="reproduced" if n_over > len(gains) / 2 else "not reproduced")
        else:
            exps = [e for e in models.index if models.loc[e, "model"] == model]
            cand = dual[dual.experiment.isin(exps) & (dual.kind == "dual")]
            if not cand.empty:
                base_acc = dual[dual.experiment.isin(exps) & (dual.kind == "baseline")] \
                    .set_index("experiment").top1_mean
                cand = cand[cand.top1_mean >= cand.experiment.map(base_acc) - tolerance_pp]
            if not cand.empty:
                best = cand.sort_values("mac_reduction_pct").iloc[-1]
                row.update(reproduced=best.mac_reduction_pct, experiments=best.experiment,
                           computed_as=f"1 - effective / dense multiplications per image of "
                                       f"the dual sparse model with the largest reduction "
                                       f"whose top-1 is within {tolerance_pp:g} pp of the "
                                       f"baseline ({models.loc[best.experiment, 'dataset']})",
                           status="reproduced" if best.mac_reduction_pct >= value
                           else "not reproduced")
            elif exps:
                row.update(experiments=", ".join(exps), status="no dual run within tolerance")
        rows.append(row)
    columns = ["claim", "paper", "reproduced", "also_vs_control_pp", "status", "experiments",
               "computed_as"]
    return pd.DataFrame(rows).reindex(columns=columns)


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
    """Per-layer dense vs effective multiplications of the best dual sparse model."""
    dual = dual_table(runs)
    dual = dual[dual.experiment == experiment]
    base_acc = dual[dual.kind == "baseline"].top1_mean
    cand = dual[dual.kind == "dual"]
    if cand.empty:
        return message_figure(f"{experiment}: no completed dual sparse run to show")
    within = cand[cand.top1_mean >= (base_acc.iloc[0] if len(base_acc) else 0) - tolerance_pp]
    best = (within if not within.empty else cand).sort_values("mac_reduction_pct").iloc[-1]
    lay = layers[(layers.experiment == experiment) & (layers.kind == "dual")
                 & np.isclose(layers.prune_rate, best.prune_rate) & np.isclose(layers.lam, best.lam)]
    per_layer = lay.groupby(["position", "layer"])[["dense_macs", "effective_macs"]].mean()
    per_layer = per_layer.reset_index().sort_values("position")
    fig, ax = plt.subplots(figsize=(max(6.5, 0.3 * len(per_layer)), 4.5))
    x = np.arange(len(per_layer))
    ax.bar(x - 0.2, per_layer.dense_macs, 0.4, label="dense", color=METHOD_COLORS["baseline"])
    ax.bar(x + 0.2, per_layer.effective_macs, 0.4, label="effective (both operands non-zero)",
           color=METHOD_COLORS["dual"])
    ax.set_xticks(x, per_layer.layer, rotation=90 if len(x) > 8 else 0, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("multiplications per image")
    note = "" if not within.empty else " (none within tolerance: largest reduction shown)"
    ax.set_title(f"{experiment}: dual sparse, prune rate {best.prune_rate:g}, TL1 λ={best.lam:g}, "
                 f"−{best.mac_reduction_pct:.1f}% multiplications{note}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


KERNEL_COLORS = {"dense": "#555555", "weight_sparse": _palette[3], "act_sparse": _palette[2],
                 "dual_sparse": _palette[4], "onnxruntime": _palette[0]}


def latency_table(latency: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """End-to-end latency per model role, kernel, batch and thread count (median over seeds),
    with the measured and the ideal (dense / effective multiplications) speedup over dense."""
    if latency.empty:
        return pd.DataFrame(columns=["experiment", "role", "activation_sparsity_pct",
                                     "weight_sparsity_pct", "kernel", "batch", "threads",
                                     "median_ms", "speedup", "ideal_speedup"])
    model = latency[latency.scope == "model"].drop(
        columns=["activation_sparsity", "weight_sparsity", "act_sparsity"], errors="ignore").merge(
        runs[["run_dir", "activation_sparsity", "weight_sparsity"]], on="run_dir", how="left")
    model = model.assign(activation_sparsity_pct=100 * model.activation_sparsity,
                         weight_sparsity_pct=100 * model.weight_sparsity)
    keys = ["experiment", "role", "kernel", "batch", "threads"]
    out = model.groupby(keys, sort=False).agg(
        activation_sparsity_pct=("activation_sparsity_pct", "mean"),
        weight_sparsity_pct=("weight_sparsity_pct", "mean"), median_ms=("median_ms", "median"),
        speedup=("speedup", "median"), ideal_speedup=("ideal_speedup", "median")).reset_index()
    return out[["experiment", "role", "activation_sparsity_pct", "weight_sparsity_pct",
                "kernel", "batch", "threads", "median_ms", "speedup", "ideal_speedup"]]


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
