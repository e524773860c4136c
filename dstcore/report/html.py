"""HTML for the report notebook: tables that fit the page, intervals rounded to what they
justify, status badges, collapsed sections and the page's style sheet."""

from __future__ import annotations

import html as _html
import math

import pandas as pd

# Status words of the claims table (dstcore.analysis.claims) and their badge colours.
BADGE_COLORS = {"reproduced": "#1a7f37", "holds": "#1a7f37", "not reproduced": "#cf222e",
                "does not hold": "#cf222e", "undecided": "#9a6700", "not bracketed": "#9a6700",
                "depends on the reading": "#8250df", "not run": "#6e7781"}

STYLE = """<style>
.dst-table { border-collapse: collapse; font-size: 12.5px; margin: 4px 0 12px 0;
             max-width: 100%; table-layout: auto; }
.dst-table th { font-weight: 600; text-align: right; vertical-align: bottom; padding: 3px 6px;
                border-bottom: 1px solid #888; white-space: normal; max-width: 9em; }
.dst-table td { text-align: right; padding: 2px 6px; white-space: nowrap; }
.dst-table td.dst-wrap { white-space: normal; }
.dst-nw { white-space: nowrap; }
.dst-table td.dst-text { text-align: left; white-space: normal; max-width: 26em; }
.dst-table th.dst-text { text-align: left; }
.dst-table tbody tr:nth-child(odd) { background: #f6f8fa; }
.dst-badge { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff;
             font-size: 11.5px; font-weight: 600; line-height: 18px; white-space: nowrap; }
#verdicts { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; margin: 6px 0;
            background: #fbfcfd; font-size: 14px; }
#verdicts ul { margin: 4px 0; padding-left: 18px; }
#verdicts li { margin: 3px 0; }
details.dst-full > summary { cursor: pointer; color: #0969da; margin: 4px 0 8px 0; }
.dst-note { font-size: 12.5px; color: #444; }
.jp-RenderedImage img, .output_png img { max-width: 100%; height: auto; }
</style>"""

# Header labels of the tables' columns (a column not named here shows its own name, with
# underscores as spaces so that headers wrap).
LABELS = {
    "experiment": "experiment", "lam": "λ (FATReLU: budget, pp)", "beta": "β",
    "prune_rate": "prune rate",
    "prune_structure": "structure", "seeds": "seeds", "accuracy_drop_pp": "drop (pp)",
    "top1": "top-1 % [95% CI]", "sparsity": "act. sparsity % [95% CI]",
    "gain_vs_baseline": "gain vs baseline (pp)", "gain_vs_control": "gain vs λ=0 control (pp)",
    "gain_vs_best_other": "gain vs best other (pp)", "mac_reduction": "fewer mult. % [95% CI]",
    "weight_sparsity_mean": "weight sparsity %", "grid_max_drop_pp": "grid reaches (pp)",
    "lams_tried": "grid points", "dense_macs": "dense mult.", "effective_macs": "effective mult.",
    "top1_drop_pp": "top-1 drop (pp)", "stage2_top1_mean": "stage 2 top-1 %",
    "stage2_weight_sparsity_mean": "stage 2 weight sparsity %",
}
TEXT_COLUMNS = {"experiment", "claim", "note", "row", "method", "detail", "kind", "role",
                "model", "reason", "divergence_reason", "run_dir", "reading", "reference",
                "rule"}


def decimals(half_width: float) -> int:
    """Decimal places that keep two significant digits of an interval's half-width (0 to 3);
    1 when there is no interval (one seed, or all seeds equal)."""
    if not math.isfinite(half_width) or half_width <= 0:
        return 1
    return max(0, min(3, 1 - math.floor(math.log10(half_width))))


def interval_text(mean: float, low: float, high: float) -> str:
    """``mean [low, high]`` rounded to what the interval justifies (:func:`decimals`); the mean
    alone when there is no interval; empty when there is no mean."""
    if mean is None or not math.isfinite(mean):
        return ""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{decimals(math.nan)}f}"
    d = decimals((high - low) / 2)
    return f"{mean:.{d}f} [{low:.{d}f}, {high:.{d}f}]"


def signed_interval_text(mean: float, low: float, high: float) -> str:
    """:func:`interval_text` with an explicit sign on the mean (``+3.1 [0.2, 6.0]``)."""
    text = interval_text(mean, low, high)
    return f"+{text}" if text and mean >= 0 else text


def _cell(value, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in ("lam", "beta", "prune_rate"):
        return f"{value:g}"
    if column in ("dense_macs", "effective_macs"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and column == "seeds" else f"{value:.2f}"
    return str(value)


def _number_cell(text: str) -> str:
    """A number's cell; ``mean [low, high]`` and ``ms (ratio×)`` may break before the bracket
    (a narrow table instead of a wide one), never inside a part."""
    for mark in (" [", " ("):
        first, found, rest = text.partition(mark)
        if found:
            return (f'<td class="dst-wrap"><span class="dst-nw">{_html.escape(first)}</span> '
                    f'<span class="dst-nw">{_html.escape(found.strip() + rest)}</span></td>')
    return f"<td>{_html.escape(text)}</td>"


def html_table(table: pd.DataFrame, table_id: str, caption: str = "",
               raw: tuple[str, ...] = ()) -> str:
    """``table`` as an HTML table with an id and readable, wrapping headers (:data:`LABELS`);
    λ/β in %g, other floats with 2 decimals, text cells left-aligned and wrapping. Cells of
    the ``raw`` columns are HTML already (a badge); all others are escaped."""
    head = "".join(
        f'<th class="{"dst-text" if c in TEXT_COLUMNS else ""}" data-column="{c}">'
        f"{_html.escape(LABELS.get(c, c.replace('_', ' ')))}</th>" for c in table.columns)
    body = []
    for row in table.itertuples(index=False):
        cells = []
        for column, value in zip(table.columns, row, strict=True):
            text = _cell(value, column)
            if column in raw:
                cells.append(f"<td>{text}</td>")
            elif column in TEXT_COLUMNS:
                cells.append(f'<td class="dst-text">{_html.escape(text)}</td>')
            else:
                cells.append(_number_cell(text))
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<h4>{_html.escape(caption)}</h4>\n" if caption else ""
    return (f'{title}<table id="{table_id}" class="dst-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def collapsed(summary: str, body: str) -> str:
    """``body`` inside a ``<details>`` element, closed until the reader opens it."""
    return (f'<details class="dst-full"><summary>{_html.escape(summary)}</summary>\n{body}\n'
            f"</details>")


def badge(status: str) -> str:
    """A coloured badge with a status word of the claims table."""
    color = BADGE_COLORS.get(status, "#6e7781")
    return (f'<span class="dst-badge" data-status="{_html.escape(status)}" '
            f'style="background:{color}">{_html.escape(status)}</span>')
