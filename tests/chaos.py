"""Kill pipeline jobs at random moments; after `--unlock` and a rerun nothing may be lost.

`make chaos` (python -m tests.chaos) runs the smoke DAG once without interruption, then again
while SIGKILLing the running job at random moments (training, evaluation, aggregation, latency
and report), each kill followed by `snakemake --unlock` and a rerun. After every kill, every
file left behind must be valid (no half-written metrics, tables, checkpoints or models); at the
end `runs.csv`, `layers.csv` (without the columns that time things) and every `model.pt` must
equal the uninterrupted run bit for bit. `tests/test_reliability.py` runs one kill of this kind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import torch
import yaml

from dstcore.analysis.aggregate import TIMING_COLUMNS
from dstcore.models.checkpoint import read_model
from tests.conftest import ROOT, smoke_config

# What a kill aims at: the `dst` subcommands of the jobs it may kill. Training kills aim at
# training jobs only: a kill of `dst prepare` before it wrote anything (seen once, when the
# machine was slow) tests nothing the other phases do not.
PHASES = {"training": ("train", "finetune", "prune"), "aggregate": ("aggregate",),
          "latency": ("latency",), "report": ("render",)}
# Rules re-run (--forcerun) to give a later phase another chance to be killed.
PHASE_RULES = {"aggregate": "aggregate", "latency": "measure_latency", "report": "report"}


@dataclass
class Kill:
    """One SIGKILL: which phase it aimed at, what it hit and after how many seconds."""

    phase: str
    command: str = ""
    after_s: float = 0.0
    files_checked: int = 0


@dataclass
class ChaosRun:
    results: Path
    config: Path
    kills: list[Kill] = field(default_factory=list)


def snakemake(config: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--configfile", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def dst_jobs(root: psutil.Process, commands: tuple[str, ...]) -> list[psutil.Process]:
    """The running `python -m dstcore.cli <command>` processes below ``root``, for any of
    ``commands``."""
    found = []
    for proc in root.children(recursive=True):
        try:
            line = proc.cmdline()
            command = line[line.index("dstcore.cli") + 1]
        except (psutil.Error, ValueError, IndexError):  # gone, or not a dst job
            continue
        if command in commands:
            found.append(proc)
    return found


def kill_one(run: ChaosRun, targets: list[str], phase: str, rng: random.Random,
             max_delay_s: float, forcerun: list[str]) -> Kill | None:
    """Start snakemake on ``targets``, SIGKILL one job of ``phase`` after a random delay,
    wait for snakemake to fail and unlock. None when no such job ran (or it finished first)."""
    args = [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile",
            str(run.config), *(["--forcerun", *forcerun] if forcerun else [])]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    root, kill = psutil.Process(proc.pid), None
    try:
        while proc.poll() is None and not dst_jobs(root, PHASES[phase]):
            time.sleep(0.02)
        delay, started = rng.uniform(0, max_delay_s), time.time()
        time.sleep(delay)
        while proc.poll() is None and kill is None:  # the job running now, or the next one
            jobs = dst_jobs(root, PHASES[phase])
            try:
                victim = rng.choice(jobs) if jobs else None
                if victim is not None:
                    line = victim.cmdline()
                    where = line[line.index("--out") + 1] if "--out" in line \
                        else " ".join(line[4:6])
                    command = f"{line[3]} {where}"
                    for child in [victim, *victim.children(recursive=True)]:
                        child.send_signal(signal.SIGKILL)
                    kill = Kill(phase, command, round(time.time() - started, 3))
            except psutil.NoSuchProcess:
                pass  # it ended between the listing and the kill: try again
            time.sleep(0.01)
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    unlock = snakemake(run.config, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    if kill is not None:
        kill.files_checked = check_left_behind(run.results)
    return kill


def check_left_behind(results: Path) -> int:
    """Every file a later step reads must be complete; return how many were checked."""
    checked = 0
    for path in results.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name == "model.pt":
            read_model(path)
        elif path.name == "checkpoint.pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), path
        else:
            continue
        checked += 1
    return checked


def plan(kills: int) -> list[str]:
    """The phase of each kill: most during training (where the time goes), at least two of
    each later phase, in pipeline order."""
    later = [p for p in PHASES if p != "training"]
    per_later = max(2, kills // 10)
    return ["training"] * max(1, kills - per_later * len(later)) + \
        [p for p in later for _ in range(per_later)]


def run_with_kills(run: ChaosRun, targets: list[str], phases: list[str], seed: int,
                   max_delay_s: float = 3.0, log=print) -> ChaosRun:
    """Kill one job per entry of ``phases`` (see :func:`plan`), then finish the run."""
    rng = random.Random(seed)
    for phase in phases:
        for attempt in range(10):
            forcerun = [PHASE_RULES[phase]] if phase in PHASE_RULES and attempt else []
            delay = max_delay_s if phase == "training" else 0.5 * max_delay_s / (attempt + 1)
            kill = kill_one(run, targets, phase, rng, delay, forcerun)
            if kill is not None:
                run.kills.append(kill)
                log(f"kill {len(run.kills)}: {phase}, {kill.command!r} after {kill.after_s} s; "
                    f"{kill.files_checked} files left behind, all valid")
                break
        else:
            raise RuntimeError(f"could not kill a {phase} job in 10 attempts")
    final = snakemake(run.config, *targets, "--cores", "2")
    assert final.returncode == 0, final.stderr[-3000:]
    return run


def assert_identical(a: Path, b: Path, tables: bool = True) -> int:
    """Every model.pt of results folder ``b`` equals the one in ``a``; with ``tables`` also
    runs.csv, layers.csv (without timing columns) and the set of models. Returns how many
    models were compared."""
    if tables:
        for name in ("runs", "layers"):
            x, y = (pd.read_csv(r / f"tables/{name}.csv") for r in (a, b))
            drop = [c for c in TIMING_COLUMNS if c in x]
            pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop))
    models = sorted(p.relative_to(b) for p in b.rglob("model.pt"))
    assert not tables or models == sorted(p.relative_to(a) for p in a.rglob("model.pt"))
    for model in models:
        x, y = read_model(a / model)["state_dict"], read_model(b / model)["state_dict"]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), model
    return len(models)


def setup(work: Path, name: str) -> ChaosRun:
    results, config = work / name / "results", work / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(smoke_config(results)))
    return ChaosRun(results, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / "results/chaos")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.environ.get("DST_DATA_ROOT"):
        print("DST_DATA_ROOT must point to the offline MNIST/Fashion-MNIST copies")
        return 2
    started = time.time()
    clean, chaos = setup(args.work, "clean"), setup(args.work, "chaos")
    print("clean run ...", flush=True)
    done = snakemake(clean.config, "all", "--cores", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"clean run done ({time.time() - started:.0f} s); chaos run ...", flush=True)
    run_with_kills(chaos, ["all"], plan(args.kills), args.seed)
    models = assert_identical(clean.results, chaos.results)
    phases = pd.Series([k.phase for k in chaos.kills]).value_counts().to_dict()
    print(f"PASS: {len(chaos.kills)} kills {phases} survived; runs.csv, layers.csv and "
          f"{models} model.pt files equal the uninterrupted run bit for bit "
          f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
