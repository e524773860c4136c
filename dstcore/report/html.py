"""Tables as HTML for the report notebook."""

from __future__ import annotations

import pandas as pd


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
