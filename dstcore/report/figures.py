"""The report's figures, drawn from the aggregated tables only (never from models).

Colours: each registered regulariser takes a palette colour by its position in
:func:`~dstcore.sparsity.regularizers.compared_methods` (ℓ1, Hoyer-square, TL1, FATReLU);
the reference kinds (baseline, control, stage 2 and 3) have fixed colours. Runs whose status is
not ``completed`` are never plotted.
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

from dstcore.analysis.aggregate import seed_summary  # noqa: E402
from dstcore.analysis.frontier import (  # noqa: E402
    baseline_top1,
    completed,
    frontier_values,
    summarise,
    sweep_keys,
)
from dstcore.analysis.tables import (  # noqa: E402
    STRUCTURE_ORDER,
    activation_table,
    best_dual,
    has_beta,
    on_dual_seeds,
)
from dstcore.core.io import write_with  # noqa: E402
from dstcore.core.runs import RunKind, method_kind, structure_family  # noqa: E402
from dstcore.sparsity.regularizers import (  # noqa: E402
    PROPOSED,
    compared_methods,
    method_label,
    sweep_text,
)

_palette = sns.color_palette("colorblind", 10)
KIND_COLORS = {RunKind.BASELINE: "#555555", RunKind.CONTROL: "#000000", RunKind.DUAL: _palette[4],
               RunKind.DUAL_CONTROL: _palette[7], RunKind.PRUNED: _palette[5]}
# Palette entries the regularisers take in registration order (those of the kinds left out).
_METHOD_SLOTS = (0, 1, 2, 3, 6, 8, 9)
STRUCTURE_COLORS = {"element": _palette[4], "block": _palette[2]}
KERNEL_COLORS = {"dense": "#555555", "weight_sparse": _palette[3], "act_sparse": _palette[2],
                 "dual_sparse": _palette[4], "onnxruntime": _palette[0],
                 "runner_dense": _palette[1], "torch_compile": _palette[5]}


def method_color(method: str):
    """The colour of a regulariser: by its position among the registered ones (read now, so that
    a method registered after import gets one too); cycles past the last slot."""
    names = compared_methods()
    position = names.index(method) if method in names else len(names)
    return _palette[_METHOD_SLOTS[position % len(_METHOD_SLOTS)]]


def _beta_suffix(method: str, beta: float) -> str:
    return f" (β={beta:g})" if has_beta(method) else ""


def tradeoff_figure(runs: pd.DataFrame, experiment: str) -> plt.Figure:
    """Top-1 vs activation sparsity over the λ sweep (FATReLU: budget), one curve per method
    (and β)."""
    s = seed_summary(runs[runs.experiment == experiment])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in compared_methods():
        cand = s[(s.kind == method_kind(method)) & (s.method == method)]
        for beta, group in cand.groupby(cand.beta.fillna(-1)):
            group = group.sort_values("lam")
            label = method_label(method) + (f" (β={beta:g})" if beta > 0 else "")
            ax.errorbar(group.sparsity_mean, group.top1_mean, yerr=group.top1_std.fillna(0),
                        marker="o", color=method_color(method), label=label, capsize=2)
            for _, r in group.iterrows():
                ax.annotate(f"{r.lam:g}", (r.sparsity_mean, r.top1_mean), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for kind, marker in ((RunKind.BASELINE, "s"), (RunKind.CONTROL, "D")):
        ref = s[s.kind == kind]
        if not ref.empty:
            ax.scatter(ref.sparsity_mean, ref.top1_mean, marker=marker, s=60, zorder=5,
                       color=KIND_COLORS[kind], label=kind.label)
    ax.set_xlabel("activation sparsity (% exact zeros)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{experiment}: accuracy vs activation sparsity (labels: λ; FATReLU: "
                 f"budget, pp)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def frontier_figure(runs: pd.DataFrame, experiment: str, tolerance_pp: float,
                    max_drop_pp: float = 2.0) -> plt.Figure:
    """Each method's frontier (one per β of a method with β): activation sparsity against the
    accuracy drop below the baseline's mean top-1, mean over seeds with its 95% t band, drawn
    only where every seed's λ sweep brackets the drop."""
    rows = completed(runs, experiment)
    if rows[rows.kind == RunKind.BASELINE].empty:
        return message_figure(f"{experiment}: no completed baseline")
    reference = baseline_top1(rows)
    drops = np.linspace(0.0, max_drop_pp, 41)
    keys = sweep_keys(rows)
    betas = {m: [b for mm, b in keys if mm == m] for m, _ in keys if has_beta(m)}
    shades = {m: sns.dark_palette(method_color(m), n_colors=len(b) + 1, reverse=True)
              for m, b in betas.items()}
    dashes = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, beta in keys:
        values = [summarise(frontier_values(rows, method, beta, reference - d)) for d in drops]
        mean = np.array([ci.mean for ci, _ in values])
        low = np.array([ci.low if n_ok else np.nan for ci, n_ok in values])
        high = np.array([ci.high if n_ok else np.nan for ci, n_ok in values])
        index = betas[method].index(beta) if method in betas else 0
        color = shades[method][index] if method in shades else method_color(method)
        label = method_label(method) + _beta_suffix(method, beta)
        ax.plot(drops, mean, color=color, label=label, lw=1.8, ls=dashes[index % len(dashes)])
        ax.fill_between(drops, low, high, color=color, alpha=0.12, lw=0)
    base = rows[rows.kind == RunKind.BASELINE].sparsity_pct.mean()
    ax.axhline(base, color=KIND_COLORS[RunKind.BASELINE], ls="--", lw=1,
               label=f"{RunKind.BASELINE.label}: {base:.1f}%")
    ax.axvline(tolerance_pp, color="#999999", ls=":", lw=1)
    ax.set_xlabel(f"top-1 drop below the baseline's mean {reference:.2f}% (pp)")
    ax.set_ylabel("activation sparsity on the frontier (%)")
    ax.set_title(f"{experiment}: frontier per method (mean over seeds, 95% t band)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def convergence_figure(curve_means: pd.DataFrame, experiment: str) -> plt.Figure:
    """Activation sparsity and top-1 per fine-tune epoch (mean over seeds) of the λ each method
    (and β) is judged at (:mod:`dstcore.analysis.convergence`), beside the λ = 0 control."""
    sel = curve_means[curve_means.experiment == experiment]
    if sel.empty:
        return message_figure(f"{experiment}: no per-epoch curves (train.curve_images is 0)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    markers, seen = "os^Dv", {}
    for (method, beta, lam), group in sel.groupby(["method", "beta", "lam"], dropna=False):
        group = group.sort_values("epoch")
        control = method == "none"
        color = KIND_COLORS[RunKind.CONTROL] if control else method_color(method)
        label = (RunKind.CONTROL.label if control
                 else f"{method_label(method)}{_beta_suffix(method, beta)} λ={lam:g}")
        seen[method] = seen.get(method, -1) + 1
        style = {"color": color, "marker": markers[seen[method] % len(markers)], "ms": 4,
                 "lw": 1.5, "ls": "--" if control else "-"}
        left.plot(group.epoch, group.sparsity_pct, label=label, **style)
        right.plot(group.epoch, group.top1_pct, label=label, **style)
    for ax, what in ((left, "activation sparsity (%)"), (right, "top-1 accuracy (%)")):
        ax.set_xlabel("fine-tune epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    right.legend(fontsize=7, loc="best")
    fig.suptitle(f"{experiment}: fine-tune curves at the λ nearest the 1 pp drop (mean over "
                 f"seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def _layer_runs(lay: pd.DataFrame, row) -> tuple[pd.DataFrame, str, object]:
    """(layers of the runs, legend label, colour) of one row of :func:`activation_table`."""
    if row.row in ("baseline", "control"):
        kind = RunKind(row.row)
        return lay[lay.kind == kind], kind.label, KIND_COLORS[kind]
    sel = lay[(lay.kind == method_kind(row.method)) & (lay.method == row.method)
              & np.isclose(lay.lam, row.lam)]
    if not math.isnan(row.beta):
        sel = sel[np.isclose(sel.beta, row.beta)]
    return (sel, f"{method_label(row.method)} {sweep_text(row.method, row.lam)}",
            method_color(row.method))


def layer_sparsity_figure(runs: pd.DataFrame, layers: pd.DataFrame, experiment: str,
                          tolerance_pp: float) -> plt.Figure:
    """Per-layer activation sparsity of the baseline, the λ = 0 control and each method's best λ."""
    act = activation_table(runs, tolerance_pp)
    act = act[(act.experiment == experiment) & act.sparsity_mean.notna()]
    lay = layers[(layers.experiment == experiment) & (layers.status == "completed")
                 & layers.activation_sparsity.notna()]
    frames, colors = [], {}
    for _, row in act.iterrows():
        sel, label, color = _layer_runs(lay, row)
        per_layer = sel.groupby(["position", "layer"]).activation_sparsity.mean().reset_index()
        frames.append(per_layer.assign(run=label))
        if len(per_layer):
            colors[label] = color
    data = pd.concat(frames) if frames else pd.DataFrame(
        columns=["position", "layer", "activation_sparsity", "run"])
    data["activation_sparsity"] = 100 * data.activation_sparsity
    n_layers = data.layer.nunique()
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * n_layers * max(len(frames), 1) / 2), 4.5))
    sns.barplot(data=data.sort_values("position"), x="layer", y="activation_sparsity",
                hue="run", hue_order=list(dict.fromkeys(data.run)), palette=colors, ax=ax)
    ax.set_xlabel("layer (input activation map of)")
    ax.set_ylabel("activation sparsity (% exact zeros)")
    ax.set_title(f"{experiment}: per-layer activation sparsity")
    ax.tick_params(axis="x", rotation=90 if n_layers > 8 else 0, labelsize=7)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def _dual_bars(layers: pd.DataFrame, experiment: str, dual: pd.DataFrame, base_top1: float,
               tolerance_pp: float) -> dict[str, tuple[str, pd.DataFrame]]:
    """{legend label: (pruning structure, per-layer multiplications)} of the best dual sparse
    model of each structure (``dual``: the experiment's dual seed summaries)."""
    bars = {}
    for structure, cand in dual.groupby("prune_structure", sort=False):
        best, within = best_dual(cand, base_top1, tolerance_pp)
        lay = layers[(layers.experiment == experiment) & (layers.kind == RunKind.DUAL)
                     & (layers.prune_structure == structure)
                     & np.isclose(layers.prune_rate, best.prune_rate)
                     & np.isclose(layers.lam, best.lam)]
        per_layer = lay.groupby(["position", "layer"])[["dense_macs", "effective_macs"]].mean()
        label = (f"effective, {structure} (prune rate {best.prune_rate:g}, "
                 f"{method_label(PROPOSED)} λ={best.lam:g}): "
                 f"−{best.mac_reduction_pct:.1f}%" + ("" if within else ", none within tolerance"))
        bars[label] = (structure, per_layer.reset_index().sort_values("position"))
    return bars


def dual_macs_figure(runs: pd.DataFrame, layers: pd.DataFrame, experiment: str,
                     tolerance_pp: float) -> plt.Figure:
    """Per-layer dense vs effective multiplications of the best dual sparse model of each
    pruning structure (:func:`~dstcore.analysis.tables.best_dual`: unstructured and
    block-structured side by side), over the seeds that ran the dual stages."""
    s = seed_summary(on_dual_seeds(runs[runs.experiment == experiment]))
    base, dual = s[s.kind == RunKind.BASELINE], s[s.kind == RunKind.DUAL]
    if dual.empty:
        return message_figure(f"{experiment}: no completed dual sparse run to show")
    dual = dual.assign(_s=structure_family(dual).map(STRUCTURE_ORDER)).sort_values("_s")
    base_top1 = base.top1_mean.iloc[0] if len(base) else 0.0
    bars = _dual_bars(layers, experiment, dual, base_top1, tolerance_pp)
    dense = next(iter(bars.values()))[1]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.3 * len(dense) * (1 + len(bars)) / 2), 4.5))
    x, width = np.arange(len(dense)), 0.8 / (1 + len(bars))
    ax.bar(x - 0.4 + width / 2, dense.dense_macs, width, label="dense",
           color=KIND_COLORS[RunKind.BASELINE])
    for i, (label, (structure, per_layer)) in enumerate(bars.items(), start=1):
        color = STRUCTURE_COLORS.get(structure.rstrip("0123456789"), KIND_COLORS[RunKind.DUAL])
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


def latency_figure(latency: pd.DataFrame, experiment: str) -> plt.Figure:
    """Speedup over dense vs activation sparsity, per layer (batch 1, 1 thread), for each
    sparse kernel, with the ideal speedup (dense / effective multiplications) of each layer."""
    lat = latency[(latency.experiment == experiment) & (latency.scope == "layer")]
    if lat.empty:
        return message_figure(f"{experiment}: no latency measurements")
    lat = lat[(lat.batch == lat.batch.min()) & (lat.threads == lat.threads.min())]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"baseline": "o", "best_tl1": "^", "best_fatrelu": "v", "best_dual": "s"}  # roles
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


def latency_vs_ort_figure(lat_models: pd.DataFrame, experiment: str) -> plt.Figure:
    """Whole-model speedup over ONNX Runtime (ratio of medians) per model role and engine, one
    panel per batch size at the fewest threads measured (``lat_models``:
    :func:`~dstcore.analysis.tables.latency_table`)."""
    lat = lat_models[(lat_models.experiment == experiment) & (lat_models.device == "cpu")]
    if lat.empty:
        return message_figure(f"{experiment}: no whole-model latency measurements on the CPU")
    lat = lat[(lat.threads == lat.threads.min()) & (lat.kernel != "onnxruntime")]
    batches = sorted(lat.batch.unique())
    roles = list(dict.fromkeys(lat.role))
    engines = list(dict.fromkeys(lat.kernel))
    fig, axes = plt.subplots(1, len(batches), figsize=(3.6 * len(batches) + 1.2, 3.8),
                             sharey=True, squeeze=False)
    width = 0.8 / len(engines)
    for ax, batch in zip(axes[0], batches, strict=True):
        block = lat[lat.batch == batch]
        for i, engine in enumerate(engines):
            values = [block[(block.role == r) & (block.kernel == engine)].speedup_vs_ort
                      for r in roles]
            heights = [v.iloc[0] if len(v) else np.nan for v in values]
            ax.bar(np.arange(len(roles)) - 0.4 + width * (i + 0.5), heights, width,
                   color=KERNEL_COLORS.get(engine, "#999999"), label=engine)
        ax.axhline(1.0, color=KERNEL_COLORS["onnxruntime"], lw=1.2, ls="--",
                   label="ONNX Runtime (= 1)")
        ax.set_xticks(np.arange(len(roles)), roles, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"batch {int(batch)}, {int(lat.threads.min())} thread(s)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("speedup over ONNX Runtime (×, log)")
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.suptitle(f"{experiment}: whole-model latency against ONNX Runtime", fontsize=10)
    fig.tight_layout()
    return fig


def message_figure(text: str) -> plt.Figure:
    """A figure that says why there is nothing to plot (instead of a missing file)."""
    fig, ax = plt.subplots(figsize=(6.5, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically; close the figure."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{stem}.{ext}")
        write_with(path, lambda tmp, e=ext: fig.savefig(tmp, format=e, dpi=150))
        paths.append(path)
    plt.close(fig)
    return paths
