import json
import subprocess
import sys

import pytest

from dstcore.cli import main
from dstcore.core.records import RECORD_VERSION

DIGITS = ["--dataset", "digits", "--model", "lenet5", "--threads", "1", "--test-subset", "100"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "base"
    assert main(["train", "--out", str(out), *DIGITS, "--epochs", "2", "--batch-size", "32",
                 "--tag", "experiment=x", "--tag", "kind=baseline"]) == 0
    return out


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "alexnet"], "model.name: 'alexnet' is not allowed"),
    (["train", "--dataset", "svhn"], "data.dataset: 'svhn' is not allowed"),
    (["train", "--method", "l1", "--lam", "-1"], "reg.lam: -1.0 is not allowed"),
    (["train", "--method", "tl1", "--lam", "1", "--beta", "0"], "reg.beta: 0.0 is not allowed"),
    (["train", "--method", "l3", "--lam", "1"], "reg.method: 'l3' is not allowed"),
    (["train", "--set", "train.epochz=3"], "unknown config key 'train.epochz'"),
    (["finetune", "--from", "missing/model.pt"], "checkpoint missing/model.pt does not exist"),
    (["train", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
    (["train", "--seed", "99999999999999999999"],  # found by make fuzz: torch overflowed
     "train.seed: 99999999999999999999 is not allowed; expected an integer in [0, 4294967295]"),
    (["train", "--threads", "-1"], "train.threads: -1 is not allowed"),
    (["train", "--set", "prune.structure=rows"], "prune.structure: 'rows' is not allowed"),
    (["train", "--set", "prune.block_out=-16"], "prune.block_out: -16 is not allowed"),
    (["train", "--set", "data.dataset=\x0c"], "override 'data.dataset=\\x0c': value is not valid"),
    (["train", "--set", "train.precision=tf32", "--set", "train.device=cpu"],
     "train.precision: 'tf32' needs a CUDA device (train.device resolved to cpu)"),
])
def test_bad_input_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = main([argv[0], "--out", str(out), *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_finetune_inherits_model_and_data_from_its_parent(base, tmp_path):
    out = tmp_path / "tl1"
    assert main(["finetune", "--from", str(base / "model.pt"), "--out", str(out), "--method",
                 "tl1", "--lam", "0.001", "--lr", "0.01", "--epochs", "1", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["dataset"], metrics["config"]["reg"]["method"]) == (
        "lenet5", "digits", "tl1")
    assert metrics["format_version"] == RECORD_VERSION
    assert metrics["test_images"] == 100  # test_subset inherited from the parent


def test_divergence_exit_codes(base, tmp_path, capsys):
    argv = ["finetune", "--from", str(base / "model.pt"), "--method", "l1", "--lam", "1e38",
            "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 3
    assert "DIVERGED at epoch 1 (lam=1e+38)" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--allow-divergence"]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["status"] == "diverged"


def test_evaluate_rewrites_metrics_of_a_run(base, tmp_path):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(base), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    first = json.loads((base / "metrics.json").read_text())
    assert again["accuracy"] == first["accuracy"]
    assert again["macs"]["effective"] == first["macs"]["effective"]


def test_console_script_prepare(tmp_path, data_root):
    out = tmp_path / "mnist.json"
    proc = subprocess.run([sys.executable, "-m", "dstcore.cli", "prepare", "--dataset", "mnist",
                           "--data-root", str(data_root), "--no-download", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert manifest["train_size"] == 60000 and manifest["train_pixel_mean"] == 0.1307


def test_choose_tl1_from_runs_without_tl1_is_one_line(base, tmp_path, capsys):
    out = tmp_path / "choice.json"
    code = main(["choose-tl1", "--experiment", "x", "--results", str(base.parent), "--out",
                 str(out), str(base / "metrics.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err == "dst choose-tl1: error: x: dual.tl1_beta is auto but no TL1 run completed"


@pytest.mark.parametrize("tags, message", [
    (["kind=baseline"], "need experiment and kind"),
    (["experiment=x", "kind=actreg"], "method 'none' does not fit the kind"),
    (["experiment=x", "kind=baseline", "colour=red"], "take only experiment, kind"),
    (["experiment=x", "kind=pruned", "method=none", "prune_rate=0.5"],
     "kind=pruned is made by dst prune, not dst train"),
])
def test_tags_that_name_no_run_are_refused_before_training(tmp_path, capsys, tags, message):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *DIGITS, *[f"--tag={t}" for t in tags]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_choose_tl1_rejects_a_beta_that_is_not_a_number(base, tmp_path, capsys):
    code = main(["choose-tl1", "--experiment", "x", "--results", str(base.parent), "--beta",
                 "large", "--out", str(tmp_path / "c.json"), str(base / "metrics.json")])
    assert code == 2 and "'large' is not 'auto' or a number" in capsys.readouterr().err
