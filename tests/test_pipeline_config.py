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
                                     r"expected one of lenet5, (.+, )?resnet8"),
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
    from dstcore.workflow.grid import regularizer_sweeps

    exp = {"regularizers": {"l1": {"lams": [1.0]},
                            "tl1": {"sweeps": [{"beta": 0.1, "lams": [1.0, 2.0]},
                                               {"beta": 10.0, "lams": [3.0]}]}}}
    assert regularizer_sweeps(exp) == [("l1", None, [1.0]), ("tl1", 0.1, [1.0, 2.0]),
                                       ("tl1", 10.0, [3.0])]
    shared = {"regularizers": {"tl1": {"lams": [1.0], "betas": [0.5, 2.0]}}}
    assert regularizer_sweeps(shared) == [("tl1", 0.5, [1.0]), ("tl1", 2.0, [1.0])]
    assert regularizer_sweeps({"regularizers": {"tl1": {"lams": [1.0]}}}) == [("tl1", 1.0, [1.0])]


def test_default_config_runs_three_seeds_and_betas_a_decade_apart():
    from dstcore.workflow.grid import regularizer_sweeps, selected_experiments

    config = validate_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()), SCHEMA)
    for exp in selected_experiments(config).values():
        assert len(exp["seeds"]) >= 3, exp["name"]
        betas = [b for m, b, _ in regularizer_sweeps(exp) if m == "tl1"]
        assert len(betas) >= 2 and max(betas) / min(betas) >= 10, exp["name"]
        assert exp["dual"]["tl1_beta"] == "auto"
    paper = validate_config(yaml.safe_load((ROOT / "config/paper.yaml").read_text()), SCHEMA)
    for exp in selected_experiments(paper).values():  # the paper config keeps two decades
        betas = [b for m, b, _ in regularizer_sweeps(exp) if m == "tl1"]
        assert len(betas) >= 3 and max(betas) / min(betas) >= 100, exp["name"]
    smoke_seeds = [len(e["seeds"]) for e in smoke()["experiments"]]
    assert min(smoke_seeds) == 2


def test_groups_choose_the_experiments_that_run():
    from dstcore.workflow.grid import selected_experiments

    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    families = {**copy.deepcopy(default), **yaml.safe_load((ROOT / "config/families.yaml").read_text())}
    assert list(selected_experiments(validate_config(default, SCHEMA))) == [
        "lenet5_mnist", "resnet20_fashion"]
    chosen = selected_experiments(validate_config(families, SCHEMA))
    assert [e["model"] for e in chosen.values()] == [
        "lenet5", "resnet20", "inception_small", "densenet_small", "resnet29_bottleneck"]
    assert all(len(e["seeds"]) >= 3 and e["fatrelu"] for e in chosen.values())
    assert list(selected_experiments(validate_config(smoke(), SCHEMA))) == [
        e["name"] for e in smoke()["experiments"]]  # no group: the default group
    with pytest.raises(DstError, match=r"config.groups: 'famlies' is no experiment's group "
                                       r"\(theirs: default, families\)"):
        validate_config({**default, "groups": ["default", "famlies"]}, SCHEMA)


def test_runs_stage3_waits_on_are_the_ones_scheduled_first():
    from dstcore.core.runs import RunKind
    from dstcore.workflow.grid import feeds_stage3, run_specs

    exp = {"name": "e", "seeds": [0, 1], "finetune": {},
           "regularizers": {"l1": {"lams": [1.0]},
                            "tl1": {"sweeps": [{"beta": 1.0, "lams": [1.0, 2.0]}]}},
           "fatrelu": {"budgets": [1.0]},
           "dual": {"prune_rates": [0.5], "structures": ["element"]}}
    first = {(s.kind, s.method, s.lam) for s in run_specs(exp) if feeds_stage3(s, exp)}
    later = {(s.kind, s.method, s.lam) for s in run_specs(exp) if not feeds_stage3(s, exp)}
    # per seed: baseline, λ = 0 control, 2 TL1 λ, stage 2 and its control; not ℓ1 or FATReLU
    assert sum(feeds_stage3(s, exp) for s in run_specs(exp)) == 2 * 6
    assert {k for k, _, _ in first} == {RunKind.BASELINE, RunKind.CONTROL, RunKind.ACTREG,
                                        RunKind.PRUNED, RunKind.DUAL_CONTROL}
    assert {m for _, m, _ in later} == {"l1", "fatrelu"}
    assert not any(feeds_stage3(s, {**exp, "dual": None}) for s in run_specs(exp))


def test_dual_seeds_choose_the_seeds_of_the_dual_stages():
    from dstcore.core.runs import RunKind
    from dstcore.workflow.grid import run_specs, stage3_specs

    exp = {"name": "e", "seeds": [0, 1, 2], "finetune": {},
           "dual": {"prune_rates": [0.5], "structures": ["element", "block"], "seeds": [0, 2]}}
    dual_kinds = (RunKind.PRUNED, RunKind.DUAL_CONTROL)
    assert sorted(s.seed for s in run_specs(exp) if s.kind in dual_kinds) == [0, 0, 0, 0,
                                                                              2, 2, 2, 2]
    assert [s.seed for s in run_specs(exp) if s.kind is RunKind.BASELINE] == [0, 1, 2]
    stage3 = stage3_specs(exp, {"beta": 1.0, "lams": [1e-3]})
    assert sorted(s.seed for s in stage3) == [0, 0, 2, 2]  # two structures
    full = {**exp, "dual": {**exp["dual"], "seeds": None}}
    assert len(stage3_specs(full, {"beta": 1.0, "lams": [1e-3]})) == 6
    validate_config(edit("experiments.0.dual.seeds", [0]), SCHEMA)
    for seeds in ([1], [0, 7]):  # the first seed (the latency table's) must be among them
        with pytest.raises(DstError, match=r"experiments\[0\].dual.seeds: .* must be some of "
                                           r"the experiment's seeds \[0, 1\], its first"):
            validate_config(edit("experiments.0.dual.seeds", seeds), SCHEMA)
    with pytest.raises(DstError, match=r"experiments\[0\].dual.seeds.*is not allowed"):
        validate_config(edit("experiments.0.dual.seeds", ["a"]), SCHEMA)  # as train.seed says


def test_data_root_must_exist(tmp_path):
    with pytest.raises(DstError, match=r"config.data_root: '.*nope' is not an existing directory"):
        validate_config(edit("data_root", str(tmp_path / "nope")), SCHEMA)


def test_schema_names_come_from_the_registries():
    from dstcore.sparsity.regularizers import regularizers
    from dstcore.workflow.checks import filled_schema

    props = filled_schema(SCHEMA)["$defs"]["experiment"]["properties"]
    assert props["model"]["enum"] == list(MODELS)
    assert props["dataset"]["enum"] == list(DATASETS)
    assert list(props["regularizers"]["properties"]) == list(regularizers())  # not FATReLU
    assert set(props["fatrelu"]["properties"]) == {"budgets", "search_images", "search_steps"}
    assert props["regularizers"]["properties"]["tl1"] == {"$ref": "#/$defs/shape_sweep"}


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_shipped_configs_are_valid_and_get_defaults(name):
    config = validate_config(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA)
    assert all(exp["seeds"] for exp in config["experiments"])
    assert config["latency"]["repeats"] >= 1


def test_pruning_structures_name_the_run_paths():
    from dstcore.core.runs import RunKind, RunSpec
    from dstcore.workflow.grid import prune_structures

    config = validate_config(smoke(), SCHEMA)
    dual = config["experiments"][0]["dual"]
    assert prune_structures(dual) == ["element", "block16"]
    paths = [RunSpec("e", RunKind.PRUNED, 0, prune_rate=0.5, prune_structure=label).path()
             for label in prune_structures(dual)]
    assert paths == ["e/dual/prune0.5/stage2/seed0", "e/dual/block16-prune0.5/stage2/seed0"]
    assert prune_structures({"prune_rates": [0.5]}) == ["element"]  # the default: as before


def _generated_keys(filled: dict) -> dict:
    """Every pipeline key filled in from a run-config field: where -> (section, key, its
    schema, whether the schema carries the field's default)."""
    from dstcore.workflow.checks import DATA_KEYS, DUAL_KEYS, SCHEDULE_KEYS, TOP_KEYS

    exp = filled["$defs"]["experiment"]["properties"]
    out = {f"schedule.{k}": ("train", k, filled["$defs"]["schedule"]["properties"][k], False)
           for k in SCHEDULE_KEYS}
    out.update({f"data.{k}": ("data", k, exp["data"]["properties"][k], False) for k in DATA_KEYS})
    out.update({f"dual.{k}": ("prune", k, exp["dual"]["properties"][k], True) for k in DUAL_KEYS})
    out.update({k: (section, k, filled["properties"][k], True) for k, section in TOP_KEYS.items()})
    out["seeds[]"] = ("train", "seed", exp["seeds"]["items"], False)
    return out


def _probes(f, hint) -> list:
    """Values of a field's own type on both sides of each of its bounds, and its choices."""
    import typing

    from dstcore.training.config import field_choices

    meta = f.metadata
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    container = typing.get_origin(hint) in (list, dict)
    scalar = args[0] if container or args else hint
    if scalar is bool:
        values = [True, False]
    elif scalar is str:
        values = [*(field_choices(f) or ("any", "")), "not-a-choice"]
    else:
        bounds = [meta[k] for k in ("ge", "gt", "le", "lt") if meta[k] is not None] or [0]
        steps = (-1, 0, 1) if scalar is int else (-0.5, -1e-9, 0.0, 1e-9, 0.5)
        values = [scalar(b + s) for b in bounds for s in steps]
    if typing.get_origin(hint) is list:
        return [[], *([v] for v in values), values[:1] * 2]
    return values + ([None] if type(None) in typing.get_args(hint) else [])


def test_schema_keys_from_the_run_config_agree_with_its_fields():
    """Defaults, limits and names the pipeline takes from dstcore.training.config agree with the
    dataclass fields, value by value on both sides of every bound; the only keys stricter than
    the run config are those of checks.STRICTER."""
    import jsonschema

    from dstcore.training import config as run_config
    from dstcore.workflow.checks import STRICTER, filled_schema

    filled = filled_schema(SCHEMA)
    disagree = set()
    for where, (section, key, schema, has_default) in _generated_keys(filled).items():
        f, hint = run_config.config_field(section, key), run_config.field_hint(section, key)
        assert schema["description"] == run_config.field_help(section, key), where
        if has_default:
            assert schema["default"] == run_config.field_default(f), where
        else:  # schedules and data pass only what an experiment sets: the run config's defaults
            assert "default" not in schema, where
        check = jsonschema.Draft202012Validator(schema)
        for value in _probes(f, hint):
            try:
                run_config.validate(run_config.from_dict({section: {key: value}}))
                ok = True
            except DstError:
                ok = False
            if check.is_valid(value) != ok:
                disagree.add((where.split("[")[0], value))
    assert disagree == {("dual.finetune_epochs", 0)}, disagree
    assert set(STRICTER) == {("dual", "finetune_epochs")}


def test_prune_names_of_the_dual_section_come_from_the_run_config():
    from dstcore.sparsity.pruning import EXCLUDABLE, SCOPES, STRUCTURES
    from dstcore.workflow.checks import filled_schema

    dual = filled_schema(SCHEMA)["$defs"]["experiment"]["properties"]["dual"]["properties"]
    assert dual["scope"]["enum"] == list(SCOPES)
    assert dual["structures"]["items"]["enum"] == list(STRUCTURES)
    assert dual["block_scope"]["anyOf"][1]["enum"] == list(SCOPES)
    assert dual["block_exclude"]["items"]["enum"] == list(EXCLUDABLE)


def test_schema_file_does_not_restate_run_config_keys():
    """Keys filled in from dstcore.training.config are not written in the YAML (where an edit
    would be overwritten without a word)."""
    from dstcore.workflow.checks import filled_schema

    raw = yaml.safe_load(SCHEMA.read_text())
    filled_from_fields = set(_generated_keys(filled_schema(SCHEMA)))
    exp = raw["$defs"]["experiment"]["properties"]
    written = {f"schedule.{k}" for k in raw["$defs"]["schedule"]["properties"]}
    written |= {f"data.{k}" for k in exp["data"]["properties"]}
    written |= {f"dual.{k}" for k in exp["dual"]["properties"]}
    written |= set(raw["properties"])
    assert not written & filled_from_fields
    assert set(exp["seeds"]["items"]) == {"description"}
