import pytest

from dstcore import DstError
from dstcore.training.config import RunConfig, apply_overrides, from_dict, validate


def check(data: dict, stage: str = "train"):
    return validate(from_dict(data), stage)


@pytest.mark.parametrize("data, message", [
    ({"model": {"name": "vgg16"}}, r"model.name: 'vgg16' is not allowed; expected one of lenet5"),
    ({"data": {"dataset": "svhn"}}, r"data.dataset: 'svhn' is not allowed; expected one of mnist"),
    ({"reg": {"method": "l2", "lam": 1}}, r"reg.method: 'l2' is not allowed"),
    ({"reg": {"method": "l1", "lam": -0.1}}, r"reg.lam: -0.1 is not allowed; expected a number >= 0"),
    ({"reg": {"method": "tl1", "beta": 0}}, r"reg.beta: 0.0 is not allowed; expected a number > 0"),
    ({"reg": {"method": "none", "lam": 0.1}}, r"reg.lam: 0.1 is not allowed; expected 0 when"),
    ({"train": {"epochs": 0}}, r"train.epochs: 0 is not allowed; expected an integer >= 1"),
    ({"train": {"epochs": 2.5}}, r"train.epochs: 2.5 is not allowed; expected an integer"),
    ({"train": {"batch_size": -4}}, r"train.batch_size: -4 is not allowed"),
    ({"train": {"seed": -1}}, r"train.seed: -1 is not allowed"),
    ({"train": {"lr": "fast"}}, r"train.lr: 'fast' is not allowed; expected a number"),
    ({"train": {"lerning_rate": 0.1}}, r"unknown config key 'train.lerning_rate'"),
    ({"trian": {}}, r"unknown config section 'trian'"),
    ({"prune": {"rate": 1.0}}, r"prune.rate: 1.0 is not allowed; expected a number in \[0, 1\)"),
    ({"data": {"train_subset": 0}}, r"data.train_subset: 0 is not allowed"),
    ({"train": {"optimizer": "rmsprop"}}, r"train.optimizer: 'rmsprop' is not allowed"),
    ({"train": {"deterministic": "yes"}}, r"train.deterministic: 'yes' is not allowed"),
    ({"prune": {"structure": "channel"}}, r"prune.structure: 'channel' is not allowed; expected "
                                          r"one of element, block"),
    ({"prune": {"block_out": 0}}, r"prune.block_out: 0 is not allowed; expected an integer in "
                                  r"\[1, 4096\]"),
    ({"prune": {"block_out": 16.0}}, r"prune.block_out: 16.0 is not allowed; expected an integer"),
    ({"prune": {"exclude": ["middle"]}}, r"prune.exclude: \['middle'\] is not allowed; expected "
                                         r"a list of distinct items from first, last"),
    ({"prune": {"exclude": ["last", "last"]}}, r"prune.exclude: .* expected a list of distinct"),
    ({"prune": {"exclude": "last"}}, r"prune.exclude: 'last' is not allowed; expected a list of "
                                     r"a string"),
    ({"prune": {"structure": "block", "rate": None, "threshold": 0.1}},
     r"prune.threshold: 0.1 is not allowed; expected null when prune.structure is block"),
])
def test_bad_config_is_one_clear_line(data, message):
    with pytest.raises(DstError, match=message) as err:
        check(data)
    assert "\n" not in str(err.value)


def test_prune_needs_exactly_one_of_rate_and_threshold():
    with pytest.raises(DstError, match="exactly one of prune.rate and prune.threshold"):
        check({"prune": {"rate": 0.5, "threshold": 0.01}}, stage="prune")
    check({"prune": {"rate": None, "threshold": 0.01}}, stage="prune")


def test_defaults_are_valid_and_ints_are_accepted_for_floats():
    cfg = check({"train": {"lr": 1}, "reg": {"method": "tl1", "lam": 1, "beta": 2}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert validate(RunConfig())


def test_overrides_parse_yaml_values():
    data = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=5e-1", "data.train_subset=100",
                                                    "reg.layer_weights={fc1: 2}"])
    cfg = from_dict(data)
    assert cfg.train.lr == 0.5 and cfg.data.train_subset == 100
    assert cfg.reg.layer_weights == {"fc1": 2.0}
    with pytest.raises(DstError, match="section.key=value"):
        apply_overrides({}, ["lr=0.1"])


def test_semantic_hash_ignores_where_and_how_many_threads():
    a, b = RunConfig(), RunConfig()
    b.train.threads, b.data.data_root = 4, "/elsewhere"
    assert a.semantic_hash() == b.semantic_hash()
    b.train.lr = 0.01
    assert a.semantic_hash() != b.semantic_hash()


def test_semantic_hash_of_runs_from_before_prune_exclude_is_unchanged():
    # the default config's hash before prune.exclude existed, so their checkpoints still resume
    assert RunConfig().semantic_hash() == "4f50e7285a48b6ad"
    cfg = from_dict(apply_overrides({}, ["prune.exclude=[first,last]"]))
    assert cfg.prune.exclude == ["first", "last"]
    assert cfg.semantic_hash() != "4f50e7285a48b6ad"


# Every key with limits, a value outside them and the message's "expected ..." (pinned: the
# generic check of validate() must say exactly this).
LIMITS = [
    ("data.train_subset", 0, "null or an integer > 0"),
    ("data.test_subset", -5, "null or an integer > 0"),
    ("data.subset_seed", -1, "an integer in [0, 4294967295]"),
    ("data.num_workers", 1025, "an integer in [0, 1024]"),
    ("data.eval_batch_size", 0, "an integer > 0"),
    ("train.epochs", 0, "an integer >= 1"),
    ("train.batch_size", 0, "an integer > 0"),
    ("train.optimizer", "rmsprop", "one of sgd, adam"),
    ("train.lr", 0.0, "a number > 0"),
    ("train.momentum", 1.0, "a number in [0, 1)"),
    ("train.weight_decay", -1.0, "a number >= 0"),
    ("train.schedule", "linear", "one of cosine, step, constant"),
    ("train.milestones", [3, 0], "a list of epochs >= 1"),
    ("train.gamma", 0.0, "a number in (0, 1]"),
    ("train.warmup_epochs", -1, "an integer >= 0"),
    ("train.seed", 2**32, "an integer in [0, 4294967295]"),
    ("train.threads", -1, "an integer in [0, 1024]"),
    ("train.device", "tpu", "one of auto, cpu, cuda"),
    ("train.precision", "fp16", "one of fp32, tf32, bf16, auto"),
    ("train.memory_format", "nhwc", "one of auto, contiguous, channels_last"),
    ("train.collapse_factor", -0.5, "a number >= 0"),
    ("train.eval_every", -1, "an integer >= 0"),
    ("train.curve_images", -1, "an integer >= 0"),
    ("reg.lam", -0.1, "a number >= 0"),
    ("reg.beta", 0.0, "a number > 0"),
    ("reg.layer_weights", {"fc1": -1.0}, "weights >= 0"),
    ("fatrelu.budget_pp", -0.5, "a number >= 0"),
    ("fatrelu.search_images", 0, "an integer >= 1"),
    ("fatrelu.search_steps", 21, "an integer in [1, 20]"),
    ("prune.weight_l1", -1.0, "a number >= 0"),
    ("prune.l1_epochs", -1, "an integer >= 0"),
    ("prune.finetune_epochs", -1, "an integer >= 0"),
    ("prune.rate", 1.0, "a number in [0, 1)"),
    ("prune.threshold", -1.0, "a number >= 0"),
    ("prune.scope", "model", "one of global, layer"),
    ("prune.structure", "channel", "one of element, block"),
    ("prune.block_out", 4097, "an integer in [1, 4096]"),
    ("prune.exclude", ["middle"], "a list of distinct items from first, last"),
]


@pytest.mark.parametrize("key, value, allowed", LIMITS, ids=[k for k, _, _ in LIMITS])
def test_each_limit_says_what_is_allowed(key, value, allowed):
    section, name = key.split(".")
    with pytest.raises(DstError) as err:
        check({section: {name: value}})
    assert str(err.value) == f"{key}: {value!r} is not allowed; expected {allowed}"


def test_every_field_has_help_and_every_limit_is_pinned():
    import dataclasses

    from dstcore.training.config import SECTIONS, config_field, field_help

    limited = set()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert field_help(section, f.name).strip(), f"{section}.{f.name} has no help"
            meta = config_field(section, f.name).metadata
            if any(meta[k] is not None for k in ("ge", "gt", "le", "lt", "choices")):
                limited.add(f"{section}.{f.name}")
    assert limited == {k for k, _, _ in LIMITS}


def test_limits_hold_at_their_bounds_and_nan_is_out():
    check({"train": {"momentum": 0.0, "gamma": 1.0, "seed": 2**32 - 1, "threads": 1024},
           "prune": {"rate": 0.0, "block_out": 4096, "exclude": ["first", "last"]},
           "reg": {"method": "l1", "lam": 0.0, "layer_weights": {"fc1": 0.0}}})
    for key in ("lr", "momentum", "gamma", "weight_decay", "collapse_factor"):
        with pytest.raises(DstError, match=f"train.{key}: nan is not allowed"):
            check({"train": {key: float("nan")}})


def test_dst_prune_does_not_check_train_epochs():
    # its length is prune.l1_epochs + prune.finetune_epochs (as before the limits moved)
    check({"train": {"epochs": 0}}, stage="prune")
    check({"train": {"epochs": -3}}, stage="prune")


def test_list_defaults_are_not_shared():
    a, b = RunConfig(), RunConfig()
    a.train.milestones.append(3)
    a.prune.exclude.append("first")
    a.reg.layer_weights["fc1"] = 2.0
    assert b.train.milestones == [] and b.prune.exclude == [] and b.reg.layer_weights == {}


SHORTCUT_SAMPLES = {int: "3", float: "0.25", str: "sample"}


def test_every_shortcut_names_a_field_and_parses_to_its_type():
    from dstcore.cli import FINETUNE_SHORTCUTS, PRUNE_SHORTCUTS, SHORTCUTS, build_parser
    from dstcore.training.config import config_field, field_help, field_hint, shortcut_type

    parser = build_parser()
    for command, extra in (("train", FINETUNE_SHORTCUTS), ("finetune", FINETUNE_SHORTCUTS),
                           ("prune", PRUNE_SHORTCUTS)):
        sub = parser._subparsers._group_actions[0].choices[command]
        actions = {a.dest: a for a in sub._actions}
        for dest, (section, key) in {**SHORTCUTS, **extra}.items():
            config_field(section, key)  # raises KeyError for a key the config does not have
            typ = shortcut_type(section, key)
            assert typ in (int, float, str) and (typ is field_hint(section, key)
                                                 or typ in getattr(field_hint(section, key),
                                                                   "__args__", ()))
            assert field_help(section, key) in actions[dest].help
            argv = [command, "--out", "x", f"--{dest.replace('_', '-')}", SHORTCUT_SAMPLES[typ]]
            if command != "train":
                argv += ["--from", "m.pt"]
            value = getattr(parser.parse_args(argv), dest)
            assert type(value) is typ, (dest, value)
            cfg = from_dict({section: {key: value}})  # the field's own type check accepts it
            assert getattr(getattr(cfg, section), key) == value
