"""No file the pipeline reads can run code: crafted, truncated and foreign files are refused."""

import io
import pickle

import pytest
import torch
import yaml

from dstcore import DstError
from dstcore.cli import main
from dstcore.data.datasets import load_dataset
from dstcore.models.checkpoint import load_model
from dstcore.training.config import from_dict
from dstcore.training.loop import CHECKPOINT_FORMAT
from tests.fakes import fake_cifar

DIGITS = ["--dataset", "digits", "--model", "lenet5", "--threads", "1", "--test-subset", "100",
          "--batch-size", "64"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted(kind: str, marker) -> bytes:
    """The bytes of a file that is not a valid checkpoint, of the given ``kind``."""
    buffer = io.BytesIO()
    if kind == "pickle":  # a plain pickle whose loading runs code
        return pickle.dumps({"format": CHECKPOINT_FORMAT, "x": Payload(marker)})
    if kind == "torch":  # torch's zip format with the same payload inside
        torch.save({"format": CHECKPOINT_FORMAT, "x": Payload(marker)}, buffer)
    elif kind == "truncated":
        torch.save({"format": CHECKPOINT_FORMAT, "model": {"w": torch.zeros(4096)}}, buffer)
        return buffer.getvalue()[: len(buffer.getvalue()) // 2]
    elif kind == "foreign":  # a valid torch file of another layout
        torch.save({"epoch": 1, "model_state": {"w": torch.zeros(3)}}, buffer)
    elif kind == "mistyped":
        torch.save({"format": CHECKPOINT_FORMAT, "epoch": "1", "model": [], "history": 3}, buffer)
    return buffer.getvalue()


KINDS = ["pickle", "torch", "truncated", "foreign", "mistyped"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("safe") / "base"
    assert main(["train", "--out", str(out), *DIGITS, "--epochs", "1"]) == 0
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_resume_moves_a_bad_checkpoint_aside_and_starts_over(tmp_path, capsys, base, kind):
    marker, out = tmp_path / "marker", tmp_path / "run"
    out.mkdir()
    bad = crafted(kind, marker)
    (out / "checkpoint.pt").write_bytes(bad)
    assert main(["train", "--out", str(out), *DIGITS, "--epochs", "1", "--resume"]) == 0
    assert not marker.exists()
    assert (out / "checkpoint.pt.rejected").read_bytes() == bad
    warning = [line for line in capsys.readouterr().err.splitlines() if "not a valid" in line]
    assert len(warning) == 1 and "moved to checkpoint.pt.rejected, starting over" in warning[0]
    fresh, again = torch.load(base / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(fresh["state_dict"][k], again["state_dict"][k])
               for k in fresh["state_dict"])  # started over from the same seeded init


def test_resume_rejects_weights_that_do_not_fit_the_model(tmp_path, capsys, base):
    out = tmp_path / "run"
    out.mkdir()
    run_config = yaml.safe_load((base / "config.yaml").read_text())
    del run_config["stage"], run_config["from"]
    state = {"format": CHECKPOINT_FORMAT, "epoch": 1, "model": {"conv.weight": torch.zeros(1)},
             "optimizer": {}, "history": '[{"epoch": 1}]', "elapsed": 1.0, "stage": "train",
             "config_hash": from_dict(run_config).semantic_hash(), "pruned": False}
    torch.save(state, out / "checkpoint.pt")
    assert main(["train", "--out", str(out), *DIGITS, "--epochs", "1", "--resume"]) == 0
    assert (out / "checkpoint.pt.rejected").exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["finetune", "prune", "evaluate", "load_model"])
def test_model_loaders_refuse_bad_files_in_one_line(tmp_path, capsys, kind, command):
    marker, run = tmp_path / "marker", tmp_path / "parent"
    run.mkdir()
    (run / "model.pt").write_bytes(crafted(kind, marker))
    if command == "load_model":  # what `dst latency models` and the report's helpers use
        with pytest.raises(DstError, match="model.pt"):
            load_model(run / "model.pt")
    else:
        argv = {"evaluate": ["evaluate", "--run", str(run)]}.get(
            command, [command, "--from", str(run / "model.pt"), "--out", str(tmp_path / "o")])
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(run / "model.pt") in err
        assert not (tmp_path / "o").exists()
    assert not marker.exists()


def test_cifar_batches_are_read_without_running_code(tmp_path, no_data_env):
    marker = tmp_path / "marker"
    fake_cifar(tmp_path, 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}))
    with pytest.raises(DstError, match="not a valid cifar10.*refusing to load io.open"):
        load_dataset("cifar10", data_root=tmp_path, cache_dir=tmp_path / "c", download=False,
                     verify=False)
    assert not marker.exists()
