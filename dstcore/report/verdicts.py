"""The verdict block at the top of the report: one quotable line per claim of the paper, made
from the claims table (:func:`dstcore.analysis.claims.paper_vs_reproduced`) alone."""

from __future__ import annotations

import html as _html
import math

import pandas as pd

from dstcore.core.runs import RunKind
from dstcore.report.html import badge, signed_interval_text

UNITS = {"points": " pp", "relative": "%"}
READING_WORDS = {"points": "in points", "relative": "as relative gain"}


def value_text(row, unit: str) -> str:
    """A claims row's reproduced value as ``+42.5% [6.3, 78.7]`` (unit after the mean; no
    interval with one seed or for a median over experiments)."""
    text = signed_interval_text(row.reproduced_mean, row.ci_low, row.ci_high)
    if not text:
        return "no value"
    mean, _, rest = text.partition(" [")
    return f"{mean}{unit}" + (f" [{rest}" if rest else "")


def _seeds(seeds: pd.Series) -> str:
    seeds = seeds[seeds > 0].dropna()
    if seeds.empty:
        return ""
    low, high = int(seeds.min()), int(seeds.max())
    return f"{low} seeds" if low == high else f"{low}-{high} seeds"


def overall(statuses: list[str]) -> str:
    """One status for several readings of a claim: theirs when they agree."""
    return statuses[0] if len(set(statuses)) == 1 else "depends on the reading"


def _gain_line(claim: str, rows: pd.DataFrame) -> str:
    """A gain or "most models" claim: both readings against the baseline, then the control's."""
    value = rows.paper_value.iloc[0]
    base = rows[rows.reference == RunKind.BASELINE.value]
    control = rows[rows.reference == RunKind.CONTROL.value]
    parts = []
    for r in base.itertuples():
        what = value_text(r, UNITS[r.reading])
        if r.rule == "most" and math.isnan(r.reproduced_mean):
            what = r.detail  # no experiment has a value: which were not bracketed
        elif r.rule == "most":
            what = f"median {what} over experiments, {r.detail.partition(':')[0]}"
        elif r.status == "not bracketed":
            what = r.detail
        parts.append(f"{badge(r.status)} {READING_WORDS[r.reading]}, {_html.escape(what)}")
    against = "; ".join(f"{r.status} {READING_WORDS[r.reading]}" for r in control.itertuples())
    seeds = _seeds(base.seeds)
    return (f"{badge(overall(list(base.status)))} <b>{_html.escape(claim)}</b>, "
            f"+{value:g}% claimed: " + "; ".join(parts)
            + f"; against the dense baseline{', ' + seeds if seeds else ''}."
            + (f" Against the λ = 0 control: {_html.escape(against)}." if against else ""))


def _single_line(claim: str, r, unit: str, claimed: str) -> str:
    if r.status in ("not bracketed", "undecided") and math.isnan(r.reproduced_mean):
        what = r.detail
    else:
        what = f"{value_text(r, unit)}, {_seeds(pd.Series([r.seeds]))} ({r.detail})"
    return (f"{badge(r.status)} <b>{_html.escape(claim)}</b>{claimed}: "
            f"{_html.escape(what)}.")


def verdict_lines(claims: pd.DataFrame) -> tuple[list[str], str]:
    """(one HTML line per claim that ran, one HTML line on the claims not run and why)."""
    lines, not_run, reasons = [], [], []
    for claim, rows in claims.groupby("claim", sort=False):
        ran = rows[rows.status != "not run"]
        if ran.empty:
            not_run.append(claim)
            reasons += list(dict.fromkeys(d for d in rows.detail if d not in reasons))
            continue
        rule = ran.rule.iloc[0]
        if rule in ("gain", "most"):
            lines.append(_gain_line(claim, ran))
        elif rule == "macs":
            r = ran.iloc[0]
            lines.append(_single_line(claim, r, "%", f", {r.paper_value:g}% claimed"))
        elif rule == "pooled":
            r = ran.iloc[0]
            what = (r.detail if math.isnan(r.reproduced_mean) else
                    f"{value_text(r, ' pp')} over architectures ({r.detail})")
            lines.append(f"{badge(r.status)} <b>{_html.escape(claim)}</b>: "
                         f"{_html.escape(what)}.")
        else:  # ordering: one row per experiment
            lines += [_single_line(f"{claim}, {r.experiment}", r, " pp", "")
                      for r in ran.itertuples()]
    skipped = ""
    if not_run:
        skipped = (f"{badge('not run')} Not run ({len(not_run)}): "
                   + _html.escape("; ".join(not_run)) + " — "
                   + _html.escape("; ".join(reasons)) + ".")
    return lines, skipped


def verdict_block(claims: pd.DataFrame, tolerance_pp: float) -> str:
    """The report's first block: the verdict lines as a list, the not-run line under it."""
    lines, skipped = verdict_lines(claims)
    items = "".join(f"<li>{line}</li>" for line in lines) or "<li>No claim could be run.</li>"
    return (f'<div id="verdicts"><b>Does the paper hold here?</b> Each claim at {tolerance_pp:g} '
            f"pp below the baseline's top-1; 95% t intervals over seeds "
            f"(from <code>paper_vs_reproduced.csv</code>, section 2)."
            f"<ul>{items}</ul>{f'<div>{skipped}</div>' if skipped else ''}</div>")
