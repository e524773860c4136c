"""A run's identity (dstcore.core.runs.RunSpec) and its record (metrics.json) round trip."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from dstcore import DstError
from dstcore.cli import parse_tags
from dstcore.core.records import RECORD_VERSION, make_record, read_record, write_record
from dstcore.core.runs import PATH_TEMPLATES, RunKind, RunSpec
from dstcore.training.config import apply_overrides, from_dict
from dstcore.workflow.checks import validate_config
from dstcore.workflow.grid import choice_specs, run_args, run_specs, stage3_specs

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"

SPECS = [
    RunSpec("lenet5_mnist", RunKind.BASELINE, 0),
    RunSpec("lenet5_mnist", RunKind.CONTROL, 1, lam=0.0),
    RunSpec("lenet5_mnist", RunKind.ACTREG, 2, "l1", 1e-5),
    RunSpec("lenet5_mnist", RunKind.ACTREG, 0, "tl1", 0.003, 0.1),
    RunSpec("r20", RunKind.PRUNED, 0, prune_rate=0.9),
    RunSpec("r20", RunKind.PRUNED, 1, prune_rate=0.8, prune_structure="block16"),
    RunSpec("r20", RunKind.DUAL_CONTROL, 2, lam=0.0, prune_rate=0.9),
    RunSpec("r20", RunKind.DUAL, 3, "tl1", 3e-5, 0.1, 0.8, "block16"),
]


def smoke_config() -> dict:
    return validate_config(yaml.safe_load((ROOT / "config/smoke.yaml").read_text()), SCHEMA)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.path())
def test_spec_path_and_tags_round_trip(spec):
    assert RunSpec.from_path(spec.path()) == spec
    assert RunSpec.from_tags(spec.tags(), spec.seed) == spec
    assert RunSpec.from_tags(parse_tags([f"{k}={v}" for k, v in spec.tags().items()]),
                             spec.seed) == spec


def test_paths_and_tags_are_the_ones_the_pipeline_always_wrote():
    by_hand = ["lenet5_mnist/baseline/seed0", "lenet5_mnist/none/lam0/seed1",
               "lenet5_mnist/l1/lam1e-05/seed2", "lenet5_mnist/tl1-beta0.1/lam0.003/seed0",
               "r20/dual/prune0.9/stage2/seed0", "r20/dual/block16-prune0.8/stage2/seed1",
               "r20/dual/prune0.9/lam0/seed2", "r20/dual/block16-prune0.8/tl1-beta0.1/lam3e-05/seed3"]
    assert [s.path() for s in SPECS] == by_hand
    assert SPECS[1].tags() == {"experiment": "lenet5_mnist", "kind": "control", "method": "none",
                               "lam": "0"}
    # element pruning carries no prune_structure tag: runs made before block pruning have none
    assert SPECS[4].tags() == {"experiment": "r20", "kind": "pruned", "method": "none",
                               "prune_rate": "0.9"}
    assert list(SPECS[7].tags()) == ["experiment", "kind", "method", "lam", "beta", "prune_rate",
                                     "prune_structure"]


def test_numbers_are_canonical_so_every_form_reads_back_equal():
    spec = RunSpec("e", RunKind.ACTREG, 0, "l1", 1.234567891e-3)
    assert spec.lam == 0.00123457 and RunSpec.from_path(spec.path()) == spec


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": RunKind.BASELINE, "lam": 0.1}, "λ"),
    ({"kind": RunKind.ACTREG, "lam": 0.1}, "method 'none' does not fit"),
    ({"kind": RunKind.CONTROL, "lam": 0.5}, "must be >= 0 \\(0 for a control\\)"),
    ({"kind": RunKind.PRUNED}, "pruning rate"),
    ({"kind": RunKind.DUAL, "method": "l1", "lam": 1.0, "beta": 1.0, "prune_rate": 0.5},
     "stage 3 runs tl1"),
    ({"kind": RunKind.ACTREG, "method": "dual", "lam": 1.0}, "reserved"),
    ({"kind": RunKind.PRUNED, "prune_rate": 0.5, "prune_structure": "rows"}, "not 'element'"),
])
def test_impossible_specs_are_one_line_errors(kwargs, message):
    with pytest.raises(DstError, match=message):
        RunSpec("e", seed=0, **kwargs)


def test_paths_that_are_not_runs_are_refused():
    for path in ["e/latency/seed0", "e/dual/prune0.5/seed0", "e/baseline", "e/l1/seed0"]:
        with pytest.raises(DstError, match="is not a run directory"):
            RunSpec.from_path(path)


def test_every_kind_has_a_rule_and_a_template_the_rules_use():
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    for kind in RunKind:
        assert re.search(rf"^(rule|checkpoint) {kind.rule}:", rules, re.M), kind
        assert f"run_file(RunKind.{kind.name}" in rules or kind is RunKind.CONTROL
        assert set(re.findall(r"{(\w+)}", PATH_TEMPLATES[kind])) <= {
            "exp", "seed", "variant", "lam", "structure", "rate", "beta"}


def test_the_grid_lists_each_run_once_and_command_lines_parse_back_to_the_spec():
    config = smoke_config()
    for exp in config["experiments"]:
        specs = run_specs(exp)
        if exp.get("dual"):
            specs += stage3_specs(exp, {"beta": 2.0, "lams": [0.01, 0.1]})
        assert len({s.path() for s in specs}) == len(specs)
        assert set(choice_specs(exp)) <= set(specs)
        for spec in specs:
            args = run_args(spec, exp, config).split()
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            tags = [args[i + 1] for i, a in enumerate(args) if a == "--tag"]
            cfg = from_dict(apply_overrides({}, [s.replace("'", "") for s in sets]))
            assert RunSpec.from_tags(parse_tags(tags), cfg.train.seed) == spec
            assert (cfg.model.name, cfg.data.dataset) == (exp["model"], exp["dataset"])
            if spec.kind.penalised or spec.kind in (RunKind.CONTROL, RunKind.DUAL_CONTROL):
                assert cfg.reg.method == spec.method
            if spec.kind is RunKind.THRESHOLD:  # FATReLU's sweep value is its budget
                assert (cfg.reg.method, cfg.fatrelu.budget_pp) == ("none", spec.lam)
            elif spec.lam is not None and spec.kind is not RunKind.DUAL_CONTROL:
                assert cfg.reg.lam == spec.lam
            if spec.beta is not None:
                assert cfg.reg.beta == spec.beta
            if spec.kind is RunKind.PRUNED:
                assert cfg.prune.rate == spec.prune_rate
                assert (cfg.prune.structure == "block") == (spec.prune_structure != "element")


def _record(tmp_path: Path, **changes) -> Path:
    evaluation = {"accuracy": {"top1": 0.9}, "test_loss": 0.3, "eval_seconds": 1.0,
                  "activation_sparsity": {"overall": 0.5, "layers": {}},
                  "weight_sparsity": {"overall": 0.0, "layers": {}},
                  "macs": {"dense": 10, "effective": 5, "reduction_pct": 50.0, "layers": {}}}
    summary = {"status": "completed", "stage": "finetune", "tags": SPECS[3].tags(),
               "config": {"model": {"name": "lenet5"}, "data": {"dataset": "mnist"},
                          "reg": {"method": "tl1", "lam": 0.003, "beta": 0.1},
                          "train": {"seed": 0}},
               "provenance": {}, **{k: None for k in ("from", "parent_status", "epochs_planned",
                                                      "epochs_completed", "divergence", "final",
                                                      "train_seconds_per_epoch",
                                                      "wall_seconds")}}
    record = {**make_record(evaluation, summary), **changes}
    path = tmp_path / "metrics.json"
    write_record(path, {k: v for k, v in record.items() if v is not None})
    return path


def test_a_record_reads_back_into_its_spec(tmp_path):
    record = read_record(_record(tmp_path))
    assert record.spec == SPECS[3] and record.data["format_version"] == RECORD_VERSION


def test_records_from_before_the_version_field_still_read(tmp_path):
    """Version 1 (no format_version; method/lam/beta repeated at the top level) reads the same."""
    path = _record(tmp_path, format_version=None, method="tl1", lam=0.003, beta=0.1)
    assert "format_version" not in json.loads(path.read_text())
    assert read_record(path).spec == SPECS[3]


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "format version 99 is not one this dstcore reads"),
    ({"tags": {}}, "has no identity"),
    ({"tags": {"experiment": "e", "kind": "sideways"}}, "kind 'sideways' is not one of"),
    ({"macs": None}, "missing macs"),
])
def test_bad_records_are_refused_in_one_line_naming_the_file(tmp_path, changes, message):
    path = _record(tmp_path, **changes)
    with pytest.raises(DstError, match=message) as err:
        read_record(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_runs_csv_identity_columns_come_from_the_spec():
    columns = SPECS[0].columns()
    assert math.isnan(columns["lam"]) and columns["prune_structure"] == ""
    assert SPECS[4].columns()["prune_structure"] == "element"
