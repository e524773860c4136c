"""The report's tables as a reader sees them: long tables pivoted, mean and interval in one cell
rounded to what the interval justifies, empty rows moved into a one-line note.

Each function takes a table of :mod:`dstcore.analysis` (the CSVs the report writes, which keep
every column) and returns a table of text cells for :func:`dstcore.report.html.html_table`.
"""

from __future__ import annotations

import math

import pandas as pd

from dstcore.analysis.tables import has_beta
from dstcore.measure.gpu_latency import GPU_ENGINES
from dstcore.report.html import badge, interval_text, signed_interval_text
from dstcore.sparsity.regularizers import method_label

# Engines of the latency tables in the order their columns appear (others follow).
ENGINE_ORDER = ["dense", "onnxruntime", "torch_compile", "runner_dense", "act_sparse",
                "dual_sparse", *GPU_ENGINES]
NOT_BRACKETED = "–"


def method_text(method: str, beta: float) -> str:
    """``TL1 (β=0.5)`` / ``ℓ1``: a method's label, with β when it has one."""
    label = method_label(method)
    return f"{label} (β={beta:g})" if has_beta(method) and not pd.isna(beta) else label


def frontier_pivot(frontier: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows = experiment × method (and β), columns = accuracy drop, cells = frontier sparsity
    ``mean [95% CI]`` (★: the proposed method's best β at that drop). Rows bracketed at no drop
    and drops bracketed in no row are left out; the notes (one line per drop) say which cells
    are not bracketed."""
    drops = sorted(frontier.accuracy_drop_pp.unique())
    rows, notes = [], {d: [] for d in drops}
    for (exp, method, beta), group in frontier.groupby(
            ["experiment", "method", frontier.beta.fillna(-1)], sort=False):
        name = method_text(method, beta if beta != -1 else math.nan)
        cells = {}
        for r in group.itertuples():
            if not r.bracketed:
                notes[r.accuracy_drop_pp].append(f"{exp} {name}")
                cells[r.accuracy_drop_pp] = NOT_BRACKETED
                continue
            text = interval_text(r.sparsity_mean, r.sparsity_ci_low, r.sparsity_ci_high)
            cells[r.accuracy_drop_pp] = text + (" ★" if r.best_beta else "")
        if any(v != NOT_BRACKETED for v in cells.values()):
            rows.append({"experiment": exp, "method": name,
                         **{f"{d:g} pp": cells.get(d, "") for d in drops}})
    table = pd.DataFrame(rows, columns=["experiment", "method", *(f"{d:g} pp" for d in drops)])
    empty = [d for d in drops if (table[f"{d:g} pp"] == NOT_BRACKETED).all()]
    lines = [f"Not bracketed at {d:g} pp for any method of any experiment (column left out)"
             if d in empty else f"Not bracketed at {d:g} pp ({len(names)}): " + ", ".join(names)
             for d, names in notes.items() if names]
    return table.drop(columns=[f"{d:g} pp" for d in empty]), lines


def frontier_long(frontier: pd.DataFrame) -> pd.DataFrame:
    """The frontier table row for row, method and β in one cell, the interval in another."""
    view = frontier.assign(method=[method_text(m, b) for m, b in
                                   zip(frontier.method, frontier.beta, strict=True)])
    view = view.drop(columns=["beta"]).assign(best_beta=frontier.best_beta.map({True: "★",
                                                                                 False: ""}))
    return _merged(view, {"sparsity": "sparsity"})


def claims_view(claims: pd.DataFrame, rule_marks: dict[str, str]
                ) -> tuple[pd.DataFrame, str]:
    """The claims table without its repeated explanations: value and interval in one cell, the
    status as a badge (HTML), the rule as a footnote mark after the row's particulars
    (``detail``); rows of claims not run leave the table for the one-line note returned."""
    ran = claims[claims.status != "not run"]
    view = ran[["claim", "paper_value", "reading", "reference"]].copy()
    view["reproduced"] = [signed_interval_text(m, lo, hi) for m, lo, hi in
                          zip(ran.reproduced_mean, ran.ci_low, ran.ci_high, strict=True)]
    if "boot_low" in ran:
        view["bootstrap"] = [signed_interval_text(m, lo, hi) for m, lo, hi in
                             zip(ran.reproduced_mean, ran.boot_low, ran.boot_high, strict=True)]
    view["seeds"] = ran.seeds
    view["status"] = [badge(s) for s in ran.status]
    view["experiment"] = ran.experiment.fillna("")
    view["detail"] = [f"{d} [{rule_marks[r]}]" for d, r in zip(ran.detail, ran.rule, strict=True)]
    skipped = claims[claims.status == "not run"].groupby("claim", sort=False).detail.first()
    note = ("Not run (no rows above): " + "; ".join(f"{c} ({d})" for c, d in skipped.items())
            + f" [{rule_marks['not run']}]") if len(skipped) else ""
    return view, note


def _merged(table: pd.DataFrame, stems: dict[str, str]) -> pd.DataFrame:
    """``table`` with ``{label: stem}`` columns ``stem_mean|_pp|_pct``, ``stem_ci_low`` and
    ``stem_ci_high`` merged into one interval cell named ``label``."""
    out = table.copy()
    for name, stem in stems.items():
        mean = next(c for c in (f"{stem}_mean", f"{stem}_pp", f"{stem}_pct") if c in table)
        low, high = f"{stem}_ci_low", f"{stem}_ci_high"
        out[mean] = [interval_text(m, lo, hi)
                     for m, lo, hi in zip(table[mean], table[low], table[high], strict=True)]
        out = out.drop(columns=[low, high]).rename(columns={mean: name})
    return out


def activation_view(activation: pd.DataFrame) -> pd.DataFrame:
    """The grid-point table with intervals merged, β in the method's name, standard deviations
    left to the CSV."""
    names = {"baseline": "baseline", "control": "λ = 0 control"}
    view = activation.assign(
        method=[names.get(row, method_text(m, b)) for row, m, b in
                zip(activation.row, activation.method, activation.beta, strict=True)],
        lams_tried=activation.lams_tried.map(lambda v: "" if pd.isna(v) else f"{v:.0f}"))
    view = view.drop(columns=["top1_std", "sparsity_std", "row", "beta"])
    return _merged(view, {"top1": "top1", "sparsity": "sparsity",
                          "gain_vs_baseline": "gain_vs_baseline",
                          "gain_vs_control": "gain_vs_control",
                          "gain_vs_best_other": "gain_vs_best_other"})


def dual_view(dual: pd.DataFrame) -> pd.DataFrame:
    """The dual sparse run table with intervals merged."""
    view = dual.drop(columns=["top1_std"])
    return _merged(view, {"sparsity": "sparsity", "top1": "top1",
                          "mac_reduction": "mac_reduction"})


def structures_view(structures: pd.DataFrame) -> pd.DataFrame:
    """The per-structure best dual model table with intervals merged."""
    return _merged(structures, {"top1": "top1", "sparsity": "sparsity",
                                "mac_reduction": "mac_reduction"})


def _engines(kernels) -> list[str]:
    present = list(dict.fromkeys(kernels))
    return [k for k in ENGINE_ORDER if k in present] + [k for k in present
                                                        if k not in ENGINE_ORDER]


def latency_pivots(latency: pd.DataFrame) -> dict[tuple[str, int, int], pd.DataFrame]:
    """One table per (device, batch, threads), the CPU's first: rows = experiment × model
    role with its sparsities, columns = engine, cells = ``median ms (speedup ×)``: over ONNX
    Runtime on the CPU, over ``cuda_eager`` on a GPU."""
    out = {}
    engines = _engines(latency.kernel)
    blocks = dict(list(latency.groupby(["device", "batch", "threads"])))
    for device, batch, threads in sorted(blocks, key=lambda k: (k[0] != "cpu", k)):
        block = blocks[(device, batch, threads)]
        ratio = "speedup_vs_ort" if device == "cpu" else "speedup"
        shown = [e for e in engines if e in set(block.kernel)]
        rows = []
        for (exp, role), g in block.groupby(["experiment", "role"], sort=False):
            first = g.iloc[0]
            row = {"experiment": exp, "role": role,
                   "act. sparsity %": f"{first.activation_sparsity_pct:.1f}",
                   "weight sparsity %": f"{first.weight_sparsity_pct:.1f}"}
            by_engine = g.set_index("kernel")
            for engine in shown:
                if engine in by_engine.index:
                    r = by_engine.loc[engine]
                    row[engine] = f"{r.median_ms:.3g} ms ({r[ratio]:.2f}×)"
                else:
                    row[engine] = ""
            rows.append(row)
        out[(str(device), int(batch), int(threads))] = pd.DataFrame(rows)
    return out


def convergence_view(convergence: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment and judged fine-tune: its λ and drop, the last epoch's sparsity
    and top-1, their change over the last epoch (sparsity: mean [95% CI] over seeds), and
    whether the rule of :mod:`dstcore.analysis.convergence` calls it converged."""
    rows = []
    for r in convergence.itertuples():
        control = r.method == "none"
        rows.append({
            "experiment": r.experiment,
            "fine-tune": "λ = 0 control" if control else method_text(r.method, r.beta),
            "λ": "" if control else f"{r.lam:g}", "drop (pp)": f"{r.drop_pp:.2f}",
            "seeds": int(r.seeds), "epochs": int(r.epochs), "evaluated on": r.source,
            "sparsity, last epoch (%)": f"{r.sparsity_last_pct:.2f}",
            "sparsity change, last epoch (pp)": signed_interval_text(
                r.sparsity_change_pp, r.sparsity_change_ci_low, r.sparsity_change_ci_high),
            "top-1 change, last epoch (pp)": ("" if pd.isna(r.top1_change_pp)
                                              else f"{r.top1_change_pp:+.2f}"),
            "converged": "yes" if r.converged else ("–" if r.note else "no"),
        })
    return pd.DataFrame(rows)
