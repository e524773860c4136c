"""The pipeline config schema: every bad value is one line naming key, value and what is allowed."""

import copy

import pytest
import yaml

from dstcore import DstError
from dstcore.data.datasets import DATASETS
from dstcore.models import MODELS
from dstcore.workflow.checks import validate_config
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def smoke() -> dict:
    return yaml.safe_load((ROOT / "config/smoke.yaml").read_text())


def edit(path: str, value, delete: bool = False) -> dict:
    """The smoke config with ``path`` (dots; ints index lists) set to ``value``."""
    config = smoke()
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = config
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return config


CASES = [
    ("experiments.0.model", "vgg16", r"config.experiments\[0\].model: 'vgg16' is not allowed; "
                                     r"expected one of lenet5, resnet8"),
    ("experiments.0.dataset", "svhn", r"experiments\[0\].dataset: 'svhn' is not allowed; "
                                      r"expected one of mnist"),
    ("experiments.0.regularizers.l2", {"lams": [1.0]}, r"experiments\[0\].regularizers: unknown "
                                                       r"key 'l2'; allowed keys: hoyer, l1, tl1"),
    ("experiments.0.regularizers.l1.lams", [0.1, -1.0],
     r"regularizers.l1.lams\[1\]: -1.0 is not allowed; expected a number >= 0"),
    ("experiments.0.regularizers.tl1.betas", [0.0],
     r"regularizers.tl1.betas\[0\]: 0.0 is not allowed; expected a number > 0"),
    ("experiments.0.regularizers.hoyer.lams", [], r"regularizers.hoyer.lams: \[\] is not allowed; "
                                                  r"expected at least 1 item"),
    ("experiments.0.baseline.epochs", 2.5, r"baseline.epochs: 2.5 is not allowed; expected type "
                                           r"integer"),
    ("experiments.0.baseline.epochs", 0, r"baseline.epochs: 0 is not allowed; expected a number >= 1"),
    ("experiments.0.finetune.batch_size", -32, r"finetune.batch_size: -32 is not allowed"),
    ("experiments.0.seeds", [-1], r"seeds\[0\]: -1 is not allowed; expected a number >= 0"),
    ("experiments.0.seeds", [1.5], r"seeds\[0\]: 1.5 is not allowed; expected type integer"),
    ("experiments.0.dual.prune_rates", [1.0], r"dual.prune_rates\[0\]: 1.0 is not allowed; "
                                              r"expected a number < 1"),
    ("experiments.0.dual.prune_rates", [-0.1], r"dual.prune_rates\[0\]: -0.1 is not allowed"),
    ("experiments.0.baseline.lr", 0, r"baseline.lr: 0 is not allowed; expected a number > 0"),
    ("experiments.0.baseline.schedule", "linear", r"baseline.schedule: 'linear' is not allowed; "
                                                  r"expected one of cosine, step, constant"),
    ("experiments.0.baseline.lerning_rate", 0.1, r"baseline: unknown key 'lerning_rate'"),
    ("reslts_dir", "x", r"config: unknown key 'reslts_dir'; allowed keys: cache_dir"),
    ("threads_per_job", 0, r"config.threads_per_job: 0 is not allowed; expected a number >= 1"),
    ("device", "tpu", r"config.device: 'tpu' is not allowed; expected one of auto, cpu, cuda"),
    ("experiments", [], r"config.experiments: \[\] is not allowed; expected at least 1 item"),
    ("experiments.0.name", "has space", r"experiments\[0\].name: 'has space' does not match"),
    ("report.tolerance_pp", -1, r"report.tolerance_pp: -1 is not allowed"),
    ("report.frontier_drops_pp", [-0.5], r"frontier_drops_pp\[0\]: -0.5 is not allowed"),
    ("experiments.0.dual.tl1_beta", "best", r"dual.tl1_beta: 'best' is not allowed; expected "
                                            r"'auto' or a number > 0"),
    ("experiments.0.dual.tl1_lams", 3, r"dual.tl1_lams: 3 is not allowed; expected 'auto' or a "
                                       r"list of numbers >= 0"),
    ("experiments.0.regularizers.tl1.sweeps", [{"beta": 1.0}],
     r"tl1.sweeps\[0\]: 'lams' is a required property"),
    ("experiments.0.regularizers.tl1.sweeps", [{"beta": 0.0, "lams": [1.0]}],
     r"tl1.sweeps\[0\].beta: 0.0 is not allowed; expected a number > 0"),
    ("experiments.0.regularizers.tl1.lams", [1.0],
     r"regularizers.tl1: give either lams \(with betas\) or sweeps .*not both"),
    ("experiments.0.regularizers.tl1.sweeps", [{"beta": 1.0, "lams": [1.0]},
                                               {"beta": 1.0, "lams": [2.0]}],
     r"regularizers.tl1: β values \[1.0, 1.0\] repeat"),
    ("experiments.0.finetune.eval_every", -1, r"finetune.eval_every: -1 is not allowed"),
    ("experiments.0.dual.structures", ["element", "channel"],
     r"dual.structures\[1\]: 'channel' is not allowed; expected one of element, block"),
    ("experiments.0.dual.structures", [], r"dual.structures: \[\] is not allowed; expected at "
                                          r"least 1 item"),
    ("experiments.0.dual.structures", ["block", "block"], r"dual.structures: .*non-unique"),
    ("experiments.0.dual.structures", "block", r"dual.structures: 'block' is not allowed; "
                                               r"expected type array"),
    ("experiments.0.dual.block_out", 0, r"dual.block_out: 0 is not allowed; expected a number >= 1"),
    ("experiments.0.dual.block_out", 8.5, r"dual.block_out: 8.5 is not allowed; expected type "
                                          r"integer"),
    ("experiments.0.dual.block_out", 5000, r"dual.block_out: 5000 is not allowed; expected a "
                                           r"number <= 4096"),
    ("experiments.0.dual.block_exclude", ["middle"], r"dual.block_exclude\[0\]: 'middle' is not "
                                                     r"allowed; expected one of first, last"),
    ("experiments.0.dual.block_scope", "model", r"dual.block_scope: 'model' is not allowed"),
]


@pytest.mark.parametrize("path, value, message", CASES, ids=[c[0] + "=" + str(c[1]) for c in CASES])
def test_schema_rejects_with_one_line(path, value, message):
    with pytest.raises(DstError, match=message) as err:
        validate_config(edit(path, value), SCHEMA)
    assert "\n" not in str(err.value)


def test_missing_required_key():
    with pytest.raises(DstError, match=r"config.experiments\[0\]: 'baseline' is a required"):
        validate_config(edit("experiments.0.baseline", None, delete=True), SCHEMA)


def test_duplicate_experiment_names():
    config = smoke()
    config["experiments"].append(copy.deepcopy(config["experiments"][0]))
    with pytest.raises(DstError, match="duplicate experiment name.*lenet5_mnist"):
        validate_config(config, SCHEMA)


def test_auto_stage3_choice_needs_tl1_sweeps():
    config = edit("experiments.0.regularizers.tl1", None, delete=True)
    with pytest.raises(DstError, match=r"experiments\[0\].dual: tl1_beta/tl1_lams 'auto' "
                                       r"choose from the TL1 sweeps"):
        validate_config(config, SCHEMA)
    config["experiments"][0]["dual"].update(tl1_beta=1.0, tl1_lams=[1.0e-3])
    validate_config(config, SCHEMA)  # fixed numbers need no sweep


def test_tl1_grids_expand_per_beta():
    from dstcore.workflow.checks import regularizer_sweeps

    exp = {"regularizers": {"l1": {"lams": [1.0]},
                            "tl1": {"sweeps": [{"beta": 0.1, "lams": [1.0, 2.0]},
                                               {"beta": 10.0, "lams": [3.0]}]}}}
    assert regularizer_sweeps(exp) == [("l1", None, [1.0]), ("tl1", 0.1, [1.0, 2.0]),
                                       ("tl1", 10.0, [3.0])]
    shared = {"regularizers": {"tl1": {"lams": [1.0], "betas": [0.5, 2.0]}}}
    assert regularizer_sweeps(shared) == [("tl1", 0.5, [1.0]), ("tl1", 2.0, [1.0])]
    assert regularizer_sweeps({"regularizers": {"tl1": {"lams": [1.0]}}}) == [("tl1", 1.0, [1.0])]


def test_default_config_runs_three_seeds_and_three_betas_over_two_decades():
    from dstcore.workflow.checks import regularizer_sweeps

    config = validate_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()), SCHEMA)
    for exp in config["experiments"]:
        assert len(exp["seeds"]) >= 3, exp["name"]
        betas = [b for m, b, _ in regularizer_sweeps(exp) if m == "tl1"]
        assert len(betas) >= 3 and max(betas) / min(betas) >= 100, exp["name"]
        assert exp["dual"]["tl1_beta"] == "auto"
    smoke_seeds = [len(e["seeds"]) for e in smoke()["experiments"]]
    assert min(smoke_seeds) == 2


def test_data_root_must_exist(tmp_path):
    with pytest.raises(DstError, match=r"config.data_root: '.*nope' is not an existing directory"):
        validate_config(edit("data_root", str(tmp_path / "nope")), SCHEMA)


def test_schema_enums_match_the_registries():
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["$defs"]["experiment"]["properties"]
    assert props["model"]["enum"] == list(MODELS)
    assert props["dataset"]["enum"] == list(DATASETS)


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_shipped_configs_are_valid_and_get_defaults(name):
    config = validate_config(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA)
    assert all(exp["seeds"] for exp in config["experiments"])
    assert config["latency"]["repeats"] >= 1


def test_pruning_structures_name_the_run_paths():
    from dstcore.workflow.checks import prune_structures, structure_of_prefix, structure_prefix

    config = validate_config(smoke(), SCHEMA)
    dual = config["experiments"][0]["dual"]
    assert prune_structures(dual) == ["element", "block16"]
    assert [structure_prefix(label) for label in prune_structures(dual)] == ["", "block16-"]
    assert structure_of_prefix("") == ("element", None)
    assert structure_of_prefix("block8-") == ("block", 8)
    assert prune_structures({"prune_rates": [0.5]}) == ["element"]  # the default: as before
