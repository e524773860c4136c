"""Generated bad input (hypothesis): malformed pipeline configs and run command lines either
run or end with one line naming the key, exit status 2, and nothing written.

`make test` runs DST_FUZZ_EXAMPLES (default 500) of each with a fixed seed; `make fuzz` more.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

import dstcore.training.loop as train_module
from dstcore import DstError
from dstcore.cli import main
from dstcore.training.config import RunConfig
from dstcore.workflow.checks import validate_config
from dstcore.workflow.grid import regularizer_sweeps
from tests.conftest import ROOT

EXAMPLES = int(os.environ.get("DST_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
SMOKE = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())

# Values no config key expects, and a few it does (so some cases pass and run).
BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "auto", "tl1", "1e309", "-0", "☃", "name with spaces", "../../x"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4),
                                                              st.integers(), max_size=2),
)


def paths(tree, prefix=()):
    """Every key path of a nested dict/list config."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


PIPELINE_PATHS = list(paths(SMOKE))


def at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@st.composite
def malformed_pipeline_configs(draw) -> dict:
    """The smoke config with one to three mutations: a value replaced, a key removed, an
    unknown key added, or an experiment duplicated."""
    config = copy.deepcopy(SMOKE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "unknown", "duplicate"]))
        path = draw(st.sampled_from(PIPELINE_PATHS))
        try:
            parent = at(config, path[:-1])
            if kind == "replace":
                parent[path[-1]] = draw(BAD_VALUES)
            elif kind == "delete":
                del parent[path[-1]]
            elif kind == "unknown" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(BAD_VALUES)
            elif kind == "duplicate":
                config["experiments"].append(copy.deepcopy(config["experiments"][0]))
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # an earlier mutation removed or retyped the path: keep what we have
    return config


@FUZZ
@seed(20261124)
@given(config=malformed_pipeline_configs())
def test_malformed_pipeline_configs_fail_in_one_line_naming_the_key(config):
    config = copy.deepcopy(config)
    try:
        validate_config(config, SCHEMA)
    except DstError as err:
        message = str(err)
        assert "\n" not in message and message.startswith("config"), message
        event(f"refused: {message.split(':')[0].split('[')[0]}")
        return
    event("valid")
    for exp in config["experiments"]:  # what the Snakefile computes from a valid config
        regularizer_sweeps(exp)


def run_keys() -> list[str]:
    """Every ``section.key`` of the run config."""
    cfg = RunConfig()
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, section.name))]


RUN_KEYS = run_keys()
RAW = st.one_of(st.sampled_from(["-1", "0", "1e309", "nan", ".inf", "-.inf", "true", "null",
                                 "[]", "{}", "1e-30", "99999999999999999999", "'x'", ":", "- 1",
                                 "[1, 2", "digits", "lenet5", "tl1", "auto", "cpu"]),
                st.text(max_size=10), st.integers(-10**20, 10**20).map(str),
                st.floats().map(repr))
FLAGS = ["--epochs", "--batch-size", "--lr", "--seed", "--threads", "--device", "--dataset",
         "--model", "--train-subset", "--test-subset", "--method", "--lam", "--beta", "--rate",
         "--threshold", "--scope", "--weight-l1", "--l1-epochs", "--finetune-epochs", "--tag",
         "--config", "--set"]


@st.composite
def run_command_lines(draw) -> list[str]:
    """``dst train|finetune|prune`` with one to four bad --set overrides or flags."""
    argv = [draw(st.sampled_from(["train", "finetune", "prune"]))]
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            key = draw(st.one_of(st.sampled_from(RUN_KEYS), st.text(max_size=10)))
            argv += ["--set", f"{key}={draw(RAW)}"]
        else:
            argv += [draw(st.sampled_from(FLAGS)), draw(RAW)]
    return argv


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A real one-epoch LeNet5 on scikit-learn digits to fine-tune or prune from."""
    out = tmp_path_factory.mktemp("fuzz") / "parent"
    assert main(["train", "--out", str(out), "--dataset", "digits", "--model", "lenet5",
                 "--epochs", "1", "--threads", "1", "--test-subset", "50"]) == 0
    return out / "model.pt"


def test_malformed_run_command_lines_fail_in_one_line(parent, tmp_path):
    """Valid command lines start a run (training itself is stubbed: this is about input)."""
    from dstcore.data.datasets import load_dataset

    digits = load_dataset("digits")
    counter = iter(range(10**9))

    @FUZZ
    @seed(20261124)
    @given(argv=run_command_lines())
    def check(argv):
        out = tmp_path / f"run{next(counter)}"
        if argv[0] != "train":
            argv = [*argv, "--from", str(parent)]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, "--out", str(out), "--data-root", str(tmp_path / "none")])
        lines = err.getvalue().strip().splitlines()
        if code == 0:
            event("valid: the run started")
            return
        event("refused by " + ("argparse" if ": error: argument" in err.getvalue() else "dst"))
        assert code == 2, (argv, code, err.getvalue())
        assert len(lines) == 1 and ": error: " in lines[0], (argv, err.getvalue())
        assert not out.exists(), argv

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "load_dataset", lambda *a, **k: digits)
        mp.setattr(train_module, "train_epochs", lambda session, final_eval: None)
        mp.setattr(train_module, "finish", lambda *a, **k: {"status": "completed"})
        check()
