"""What the recorded provenance of a set of runs says, and where it is mixed (for the report)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from dstcore import DstError
from dstcore.core.environment import PACKAGES
from dstcore.core.runs import LATENCY_RULE, RunKind, RunSpec

if TYPE_CHECKING:
    import pandas as pd

# runs.csv columns whose values must agree for the tables to be comparable.
MUST_AGREE = {"git_commit": "commits", "host": "machines", "cpu": "CPU models",
              "cpu_capability": "CPU capabilities", "device": "devices"}


def rule_of_benchmark(relative: str) -> str:
    """The rule that wrote a benchmark file, from its path relative to results/benchmarks
    without ``.tsv``: a run's (its RunSpec's kind), a latency table's, or ``other``."""
    try:
        return RunSpec.from_path(relative).kind.rule
    except DstError:
        parts = relative.split("/")
        return LATENCY_RULE if len(parts) == 3 and parts[1] == "latency" else "other"


def rule_times(benchmarks_dir: str | Path) -> pd.DataFrame:
    """Per rule: jobs, wall time (hours, sum over jobs) and CPU time (hours) from Snakemake's
    benchmark files; columns ``rule, jobs, wall_hours, cpu_hours``."""
    import pandas as pd

    rows = []
    folder = Path(benchmarks_dir)
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        rule = rule_of_benchmark(path.relative_to(folder).with_suffix("").as_posix())
        table = pd.read_csv(path, sep="\t")
        rows.append({"rule": rule, "wall_hours": float(table["s"].iloc[0]) / 3600,
                     "cpu_hours": float(table.get("cpu_time", pd.Series([0.0])).iloc[0]) / 3600})
    frame = pd.DataFrame(rows, columns=["rule", "wall_hours", "cpu_hours"])
    out = frame.groupby("rule").agg(jobs=("wall_hours", "size"), wall_hours=("wall_hours", "sum"),
                                    cpu_hours=("cpu_hours", "sum")).reset_index()
    return out.sort_values("wall_hours", ascending=False, ignore_index=True)


def mixing_warnings(runs: pd.DataFrame) -> list[str]:
    """One sentence per provenance field on which the runs disagree (or a dirty tree)."""
    warnings = []
    for column, what in MUST_AGREE.items():
        values = distinct(runs, column)
        if len(values) > 1:
            counts = runs[column].astype(str).value_counts()
            warnings.append(f"the tables mix runs from {len(values)} {what}: "
                            + "; ".join(f"{v} ({counts.get(v, 0)} runs)" for v in values))
    dirty = _dirty(runs)
    if dirty.any():
        warnings.append(f"{int(dirty.sum())} runs were made from a git tree with uncommitted "
                        "changes: their commit does not fully describe their code")
    return warnings


def how_made(runs: pd.DataFrame, config_files: list[str], command: str) -> str:
    """Markdown: commit, config (with content hash), seeds, command, dates, versions, machine."""
    def values(column: str) -> str:
        return ", ".join(distinct(runs, column)) or "not recorded"

    configs = [f"`{shown_path(f)}` (sha256 {hashlib.sha256(Path(f).read_bytes()).hexdigest()[:12]})"
               if Path(f).is_file() else f"`{shown_path(f)}` (not found)"
               for f in dict.fromkeys(str(Path(f).resolve()) for f in config_files)]
    seeds = runs[runs.kind == RunKind.BASELINE].groupby("experiment").seed.unique()
    dirty = _dirty(runs)
    lines = [
        f"- **Code**: git {values('git_commit')}"
        + (f" (uncommitted changes in {int(dirty.sum())} runs)" if dirty.any() else ", clean tree"),
        f"- **Config**: {', then '.join(configs) or 'not given'}"
        + (" (each file's keys override the earlier ones)" if len(configs) > 1 else ""),
        "- **Seeds**: " + "; ".join(f"{e}: {', '.join(map(str, sorted(s)))}"
                                    for e, s in seeds.items()),
        f"- **Command**: `{command or 'not recorded'}`",
        f"- **Runs finished** between {values_range(runs, 'finished_at')} (UTC)",
        "- **Versions**: " + "; ".join(f"{name} {values('version_' + name)}" for name in PACKAGES),
        f"- **Machine**: CPU {values('cpu')}, {values('cpu_count')} cores, vector extension "
        f"{values('cpu_capability')} (`torch.backends.cpu.get_cpu_capability()`), "
        f"{values('threads')} thread(s) per job, device {values('device')}, "
        f"GPU {', '.join(distinct(runs, 'gpu')) or 'none'}, host {values('host')}",
    ]
    return "\n".join(lines)


def shown_path(path: str | Path, project: str | Path | None = None) -> str:
    """``path`` as a reader wants it: relative to the project folder (the working directory by
    default) when inside it, with the home folder as ``~`` when inside that, else absolute."""
    resolved = Path(path).resolve()
    for base, prefix in ((Path(project or Path.cwd()).resolve(), ""), (Path.home(), "~/")):
        if resolved.is_relative_to(base):
            return prefix + resolved.relative_to(base).as_posix()
    return resolved.as_posix()


def values_range(runs: pd.DataFrame, column: str) -> str:
    """``first and last`` of a column of ISO timestamps (or "not recorded")."""
    found = distinct(runs, column)
    return f"{found[0]} and {found[-1]}" if found else "not recorded"


def distinct(runs: pd.DataFrame, column: str) -> list[str]:
    """The sorted distinct non-empty values of ``column`` as text ([] when it is missing)."""
    if column not in runs:
        return []
    def text(value) -> str:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return sorted({text(v) for v in runs[column].dropna()} - {"", "nan"})


def _dirty(runs: pd.DataFrame) -> pd.Series:
    """Per run: made from a git tree with uncommitted changes."""
    import pandas as pd

    if "git_dirty" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["git_dirty"].astype(str).str.lower() == "true"
