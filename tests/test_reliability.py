"""Interruptions, parallel runs and corrupt inputs: nothing lost, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dstcore.cli import main
from dstcore.models.checkpoint import read_model
from tests.conftest import ROOT, smoke_config, snakemake
from tests.fakes import write_idx


def test_prepare_with_corrupt_data_leaves_no_manifest(tmp_path, data_root, no_data_env):
    import shutil

    import numpy as np

    shutil.copytree(data_root / "mnist", tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(60000, np.uint8))
    out = tmp_path / "prepared" / "mnist.json"
    assert main(["prepare", "--dataset", "mnist", "--data-root", str(tmp_path),
                 "--cache-dir", str(tmp_path / "cache"), "--no-download", "--out",
                 str(out)]) == 2
    assert not out.exists() and not out.parent.exists()


def baseline_only_config(results) -> dict:
    """One LeNet5/MNIST baseline whose epochs last a couple of seconds each."""
    config = smoke_config(results)
    exp = config["experiments"][0]
    for key in ("finetune", "regularizers", "fatrelu", "dual"):
        exp.pop(key, None)
    exp["data"] = {"train_subset": 12000, "test_subset": 500}
    exp["baseline"] = {"epochs": 3, "batch_size": 32, "lr": 0.05}
    config["experiments"] = [exp]
    return config


def test_sigkill_mid_epoch_then_rerun_resumes_bit_identical(tmp_path, data_root):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cfgs = {}
    for name, results in (("killed", killed), ("clean", clean)):
        cfgs[name] = tmp_path / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(baseline_only_config(results)))
    run_dir = killed / "lenet5_mnist/baseline/seed0"
    target = str(run_dir / "model.pt")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", target, "--cores", "1",
                             "--configfile", str(cfgs["killed"])], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        log = run_dir / "log.jsonl"
        while time.time() < deadline and not (log.exists() and log.read_text().strip()):
            assert proc.poll() is None, "snakemake ended before the first epoch"
            time.sleep(0.05)
        time.sleep(0.5)  # well into the second epoch
        assert proc.poll() is None, "training finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "model.pt").exists()

    assert snakemake("--unlock", "--configfile", str(cfgs["killed"])).returncode == 0
    rerun = snakemake(target, "--cores", "1", "--configfile", str(cfgs["killed"]))
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    job_log = (killed / "logs/lenet5_mnist/baseline/seed0.log").read_text()
    assert "resuming after epoch 1" in job_log or "resuming after epoch 2" in job_log

    ok = snakemake(str(clean / "lenet5_mnist/baseline/seed0/model.pt"), "--cores", "1",
                   "--configfile", str(cfgs["clean"]))
    assert ok.returncode == 0, ok.stderr[-2000:]
    a = read_model(run_dir / "model.pt")["state_dict"]
    b = read_model(clean / "lenet5_mnist/baseline/seed0/model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 3


# A slice of the smoke DAG that covers every kind of training job (baseline, control, each
# regulariser, stage 2 in both structures, stage 3's control) of both experiments.
SERIAL_SLICE = ["lenet5_mnist/baseline/seed1", "lenet5_mnist/none/lam0/seed1",
                "lenet5_mnist/l1/lam0.0001/seed1", "lenet5_mnist/hoyer/lam0.001/seed1",
                "lenet5_mnist/tl1-beta2/lam0.001/seed1", "lenet5_mnist/dual/prune0.5/stage2/seed1",
                "lenet5_mnist/dual/block16-prune0.5/lam0/seed1",
                "resnet8_fashion/tl1-beta1/lam1e-05/seed1"]


def test_parallel_run_equals_serial_run(smoke, tmp_path):
    """The smoke DAG's jobs, run two at a time, equal the same jobs run one by one (a slice of
    the DAG with every kind of training job: the whole DAG again would cost five minutes)."""
    results, _ = smoke
    serial = tmp_path / "serial"
    cfg = tmp_path / "serial.yaml"
    cfg.write_text(yaml.safe_dump(smoke_config(serial)))
    targets = [str(serial / run / "metrics.json") for run in SERIAL_SLICE]
    proc = snakemake(*targets, "--cores", "1", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run_dir in SERIAL_SLICE:
        a = json.loads((results / run_dir / "metrics.json").read_text())
        b = json.loads((serial / run_dir / "metrics.json").read_text())
        for key in ("status", "accuracy", "activation_sparsity", "weight_sparsity", "macs",
                    "tags"):
            assert a[key] == b[key], (run_dir, key)
        x = read_model(results / run_dir / "model.pt")["state_dict"]
        y = read_model(serial / run_dir / "model.pt")["state_dict"]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), run_dir


def test_threads_per_job_are_honoured(smoke):
    results, cfg = smoke
    threads = yaml.safe_load(cfg.read_text())["threads_per_job"]
    for path in results.rglob("metrics.json"):
        prov = json.loads(path.read_text())["provenance"]
        assert prov["torch_threads"] == threads, path


def test_prepare_runs_once_per_dataset():
    from tests.conftest import job_counts

    proc = snakemake("all", "-n", "--configfile", "config/smoke.yaml", "--config",
                     "results_dir=results/dry-run-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job_counts(proc.stdout)["prepare_data"] == 2  # mnist and fashion-mnist


@pytest.mark.parametrize("writer", ["json", "csv"])
def test_atomic_writes_leave_nothing_when_interrupted(tmp_path, writer):
    from dstcore.core.io import write_json, write_with

    target = tmp_path / f"out.{writer}"

    def explode(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_with(target, explode)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(tmp_path / "ok.json", {"a": float("nan")})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"a": None}


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Results are shared: an atomically written file is readable by others (umask 022 -> 0644),
    not left with mkstemp's private 0600."""
    from dstcore.core.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644


def test_one_kill_at_a_random_moment_loses_nothing(smoke, tmp_path):
    """The bounded version of `make chaos`: a baseline and a fine-tune of the smoke DAG, one job
    SIGKILLed at a seeded random moment, unlock, rerun; equal to the uninterrupted smoke run."""
    from tests.chaos import assert_identical, run_with_kills, setup

    reference, _ = smoke
    run = setup(tmp_path, "chaos")
    targets = [str(run.results / f"lenet5_mnist/{d}/seed0/model.pt")
               for d in ("baseline", "l1/lam0.0001")]
    run_with_kills(run, targets, ["training"], seed=20261124, max_delay_s=4.0, log=lambda m: None)
    assert len(run.kills) == 1 and run.kills[0].files_checked >= 1
    assert assert_identical(reference, run.results, tables=False) == 2
