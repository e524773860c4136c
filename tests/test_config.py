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
