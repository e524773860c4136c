"""Two result folders of the same config compared run by run: a GPU run against a CPU run, or
any two machines (``dst compare``).

Floating point differs between devices (other kernels, other summation orders), so the
same seed gives slightly different models; what a user needs to know is by how much each
run's top-1 and activation sparsity moved and whether any claim's verdict changed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dstcore import DstError

MEASURES = ("top1", "activation_sparsity", "weight_sparsity")


def _read(results: Path, table: str) -> pd.DataFrame:
    path = results / table
    if not path.is_file():
        raise DstError(f"{path} does not exist (run the pipeline into {results} first)")
    return pd.read_csv(path)


def compare_runs(a: Path, b: Path) -> pd.DataFrame:
    """Per run present in both ``a/tables/runs.csv`` and ``b/tables/runs.csv``: each of
    :data:`MEASURES` in both and ``b - a`` (fractions), with the run's experiment, kind and
    status in each."""
    ra, rb = _read(a, "tables/runs.csv"), _read(b, "tables/runs.csv")
    cols = ["run_dir", "experiment", "kind", "status", *MEASURES]
    both = ra[cols].merge(rb[["run_dir", "status", *MEASURES]], on="run_dir",
                          suffixes=("_a", "_b"))
    for m in MEASURES:
        both[f"{m}_diff"] = both[f"{m}_b"] - both[f"{m}_a"]
    return both


def compare_claims(a: Path, b: Path) -> pd.DataFrame:
    """Every claim row of ``tables/paper_vs_reproduced.csv`` in both folders, side by
    side: status, reproduced mean and interval, and whether the status is the same."""
    key = ["claim", "experiment", "reading", "reference"]
    ca = _read(a, "tables/paper_vs_reproduced.csv")
    cb = _read(b, "tables/paper_vs_reproduced.csv")
    cols = [*key, "status", "reproduced_mean", "ci_low", "ci_high", "seeds"]
    both = ca[cols].merge(cb[cols], on=key, how="outer", suffixes=("_a", "_b"))
    both["same_status"] = both.status_a == both.status_b
    return both


def summary(runs: pd.DataFrame, claims: pd.DataFrame) -> list[str]:
    """The lines a reader needs: runs compared, largest differences, verdicts changed."""
    lines = [f"{len(runs)} runs in both; {int((runs.status_a != runs.status_b).sum())} with "
             f"another status"]
    for m in MEASURES:
        d = runs[f"{m}_diff"].abs()
        if d.notna().any():
            worst = runs.loc[d.idxmax()]
            lines.append(f"{m}: largest |difference| {100 * d.max():.2f} pp "
                         f"({worst.run_dir}), median {100 * d.median():.2f} pp")
    changed = claims[~claims.same_status]
    lines.append(f"{len(claims)} claim rows; {len(changed)} with another verdict")
    lines += [f"  {r.claim} ({r.experiment}, {r.reading}): {r.status_a} -> {r.status_b}"
              for r in changed.itertuples()]
    return lines
