"""FATReLU: the threshold search by hand, thresholds in the graph, saved, lowered and exported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstcore import DstError
from dstcore.data.datasets import load_dataset
from dstcore.data.loaders import held_out_slice
from dstcore.kernels.onnxrt import OrtRunner
from dstcore.kernels.runner import compile_model
from dstcore.models import build_model
from dstcore.models.checkpoint import load_model, save_model
from dstcore.sparsity.activations import activation_layers
from dstcore.sparsity.fatrelu import (
    CutGraph,
    _quantiles,
    apply_thresholds,
    bisect_level,
    search_thresholds,
    slice_top1,
    thresholds_of,
)

# Four images, one non-zero feature each (its class); a third class wins when both are cut, so
# an image stays correct exactly while its value is above the threshold.
IMAGES = torch.tensor([[0.2, 0.0], [0.0, 0.4], [0.6, 0.0], [0.0, 0.8]])
LABELS = torch.tensor([0, 1, 0, 1])


def _linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def toy(hidden_layers: int) -> nn.Sequential:
    """image -> identity -> ReLU (-> identity -> ReLU)* -> [h0, h1, 0.05]."""
    eye = [[1.0, 0.0], [0.0, 1.0]]
    parts = [_linear(eye, [0.0, 0.0]), nn.ReLU()]
    for _ in range(hidden_layers - 1):
        parts += [_linear(eye, [0.0, 0.0]), nn.ReLU()]
    parts.append(_linear([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, 0.05]))
    return nn.Sequential(*parts).eval()


def test_bisection_finds_the_largest_admissible_level_by_hand():
    # 0.5 no, 0.25 yes, 0.375 no, 0.3125 no, 0.28125 yes, 0.296875 yes
    assert bisect_level(lambda level: level <= 0.3, 6) == 0.296875
    assert bisect_level(lambda level: level <= 1.0, 6) == 1.0
    assert bisect_level(lambda level: level == 0.0, 6) == 0.0


@pytest.mark.parametrize("budget, threshold, level, top1", [
    (0.0, None, 0.0, 100.0),
    # floor 70 %: one image may be cut. Levels: 1 (0 %), 0.5 (25 %), 0.25 (50 %) fail;
    # 0.125, 0.1875, 0.21875, 0.234375 cut ordered[0] = 0.2 only (75 %)
    (30.0, 0.2, 0.234375, 75.0),
    # floor 40 %: two may be cut: 0.5 fails; 0.25, 0.375, 0.4375, 0.46875, 0.484375 cut
    # ordered[1] = 0.4 (50 %)
    (60.0, 0.4, 0.484375, 50.0),
])
def test_search_on_one_layer_by_hand(budget, threshold, level, top1):
    chosen, steps, start = search_thresholds(toy(1), IMAGES, LABELS, budget, steps=6)
    assert start == 100.0 and [s.layer for s in steps] == ["2"]
    assert chosen == ({} if threshold is None else {"2": pytest.approx(threshold)})
    assert steps[0].level == level and steps[0].top1_pct == top1
    assert steps[0].floor_pct == 100.0 - budget


def test_the_budget_is_shared_out_over_the_layers_in_forward_order():
    # budget 60 over 2 layers: layer "2" may reach 70 % (cuts 0.2, as above); layer "4" sees
    # 0.4, 0.6, 0.8 and may reach 40 %: 0.25 (50 %), 0.3125 and 0.328125 cut ordered[0] = 0.4
    chosen, steps, _ = search_thresholds(toy(2), IMAGES, LABELS, 60.0, steps=6)
    assert [(s.layer, s.floor_pct) for s in steps] == [("2", 70.0), ("4", 40.0)]
    assert chosen == {"2": pytest.approx(0.2), "4": pytest.approx(0.4)}
    assert [s.level for s in steps] == [0.234375, 0.328125]
    assert [s.top1_pct for s in steps] == [75.0, 50.0]
    assert slice_top1(apply_thresholds(toy(2), chosen), IMAGES, LABELS) == 50.0


def test_a_layer_fed_negative_values_gets_no_threshold():
    model = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
                          _linear([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, 0.05]))
    images = IMAGES - 0.1  # the second layer's inputs can be negative
    chosen, steps, _ = search_thresholds(model.eval(), images, LABELS, 100.0)
    assert chosen == {} and steps[0].threshold == 0.0


class _InPlaceBlock(nn.Module):
    """conv -> ReLU -> (x.add_(conv(x))) -> pool -> fc: the suffix adds into a value the prefix
    computed, so a cut graph that reused it without a copy would drift between evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x.add_(self.conv2(x))
        return self.fc(torch.relu(x).mean((2, 3)))


def _reference_search(model, images, labels, budget_pp, steps):
    """The search with every evaluation a whole forward pass of a freshly built model."""
    layers = [n for n, _ in activation_layers(model, tuple(images.shape[1:]))]
    start, chosen, log = slice_top1(model, images, labels, 3), {}, []
    for i, layer in enumerate(layers):
        floor = start - budget_pp * (i + 1) / len(layers)
        threshold, level, top1 = _reference_layer(model, chosen, layer, images, labels, floor,
                                                  steps)
        if threshold:
            chosen[layer] = threshold
        log.append((layer, threshold, level, top1, floor))
    return chosen, log, start


def _reference_layer(model, chosen, layer, images, labels, floor, steps):
    """(threshold, level, slice top-1) of one layer by whole forward passes."""
    current = apply_thresholds(model, chosen)
    seen = []
    handle = current.get_submodule(layer).register_forward_pre_hook(
        lambda m, a: seen.append(a[0].clone()))
    slice_top1(current, images, labels, 3)
    handle.remove()
    values = torch.cat([a[a > 0].flatten() for a in seen])
    if not all(bool((a >= 0).all()) for a in seen) or not values.numel():
        return 0.0, 0.0, slice_top1(current, images, labels, 3)
    quantile = _quantiles(values)

    def score(level):
        cut = apply_thresholds(model, {**chosen, layer: quantile(level)})
        return slice_top1(cut, images, labels, 3)

    level = bisect_level(lambda lv: score(lv) >= floor, steps)
    if level == 0:
        return 0.0, 0.0, slice_top1(current, images, labels, 3)
    return quantile(level), level, score(level)


@pytest.mark.parametrize("name", ["resnet8", "densenet_small", "inplace"])
def test_the_cut_graph_search_equals_whole_forward_passes(name, monkeypatch):
    torch.manual_seed(0)
    model = _InPlaceBlock() if name == "inplace" else build_model(name, (1, 28, 28), 10)
    model.eval()
    images, labels = torch.rand(7, 1, 28, 28), torch.randint(0, 10, (7,))
    layer = activation_layers(model, (1, 28, 28))[0][0]
    graph = CutGraph(model, {}, layer, images, labels, batch_size=3)  # batches of 3, 3, 1
    for t in (None, 0.05, 0.3, None):  # again after a threshold: the kept values are unchanged
        cut = apply_thresholds(model, {layer: t}) if t else model
        assert graph.top1(t) == slice_top1(cut, images, labels, 3)
    fresh = CutGraph(model, {}, layer, images, labels, batch_size=3)
    by_name = lambda kept: {n.name: v for n, v in kept.items()}  # noqa: E731
    for used, unused in zip(graph.kept, fresh.kept, strict=True):
        assert by_name(used).keys() == by_name(unused).keys()
        assert all(torch.equal(v, by_name(unused)[k]) for k, v in by_name(used).items())
    # the search, evaluated on batches of 3, against the reference with whole passes
    monkeypatch.setattr(CutGraph.__init__, "__defaults__", (3,))
    labels = model(images).argmax(1)  # a slice the model gets right, so thresholds can cost
    chosen, steps, start = search_thresholds(model, images, labels, 30.0, steps=4)
    expected = _reference_search(model, images, labels, 30.0, 4)
    assert (chosen, start) == (expected[0], expected[2]) and chosen
    assert [(s.layer, s.threshold, s.level, s.top1_pct, s.floor_pct) for s in steps] == expected[1]


def test_thresholds_live_in_the_graph_and_keep_parameter_names():
    model = build_model("resnet8", (1, 28, 28), 10).eval()
    cut = apply_thresholds(model, {"layers.0.conv2": 0.3, "fc": 0.1})
    assert thresholds_of(cut) == {"layers.0.conv2": pytest.approx(0.3), "fc": pytest.approx(0.1)}
    assert thresholds_of(model) == {} and set(cut.state_dict()) == set(model.state_dict())
    again = apply_thresholds(cut, {"fc": 0.2})  # replaces one, keeps the other
    assert thresholds_of(again) == {"layers.0.conv2": pytest.approx(0.3), "fc": pytest.approx(0.2)}
    seen = {}
    conv = cut.get_submodule("layers.0.conv2")
    handle = conv.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    cut(torch.randn(2, 1, 28, 28))
    handle.remove()
    x = seen["x"]
    assert ((x == 0) | (x > 0.3)).all() and (x > 0.3).any()
    with pytest.raises(DstError, match="does not call"):
        apply_thresholds(model, {"nope": 0.1})


def test_saved_thresholds_are_restored_by_load_model(tmp_path):
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    cut = apply_thresholds(model, {"fc1": 0.25})
    save_model(tmp_path / "model.pt", cut, model_name="lenet5", dataset="mnist",
               input_shape=(1, 28, 28), num_classes=10, masks_fixed=False,
               config={"data": {}, "model": {}}, stage="threshold", status="completed",
               act_thresholds=thresholds_of(cut))
    loaded, meta = load_model(tmp_path / "model.pt")
    x = torch.randn(3, 1, 28, 28)
    assert meta["act_thresholds"] == {"fc1": pytest.approx(0.25)}
    assert torch.equal(loaded.eval()(x), cut(x)) and not torch.equal(model(x), cut(x))


def test_the_runner_and_onnx_runtime_apply_the_thresholds():
    torch.manual_seed(0)
    model = build_model("resnet8", (1, 28, 28), 10).eval()
    cut = apply_thresholds(model, {"layers.0.conv1": 0.5, "layers.1.shortcut.0": 0.4, "fc": 0.2})
    x = torch.randn(4, 1, 28, 28)
    want = cut(x).detach()
    assert (want - model(x)).abs().max() > 1e-2  # the thresholds change the output
    for kind in ("dense", "act_sparse"):
        got = torch.as_tensor(compile_model(cut, kind, batch_size=4, input_shape=(1, 28, 28))(x))
        assert torch.allclose(got, want, atol=1e-3), kind
    assert torch.allclose(OrtRunner(cut, x)(x), want, atol=1e-4)


def test_the_search_slice_is_held_out_from_the_training_subset():
    bundle = load_dataset("digits", train_subset=600)
    images, labels, where = held_out_slice(bundle, 300, seed=0)
    assert where == "held-out" and images.shape == (300, 1, 28, 28) and len(labels) == 300
    assert images.dtype == torch.float32 and set(labels.tolist()) == set(range(10))
    base = bundle.train.dataset
    trained, _ = base.batch(torch.as_tensor(bundle.train.indices))
    everything, _ = base.batch(torch.arange(len(base)))
    as_set = lambda batch: {x.numpy().tobytes() for x in batch}  # noqa: E731
    assert as_set(images) <= as_set(everything) and not as_set(images) & as_set(trained)
    _, _, where = held_out_slice(load_dataset("digits"), 300, seed=0)
    assert where == "training"  # every training image is trained on: the record says so


def test_dst_threshold_then_a_finetune_that_keeps_the_thresholds(tmp_path, capsys):
    from dstcore.cli import main
    from dstcore.core.io import read_json

    common = ["--dataset", "digits", "--model", "lenet5", "--threads", "1"]
    assert main(["train", "--out", str(tmp_path / "base"), "--epochs", "2", *common]) == 0
    cut = tmp_path / "cut"
    assert main(["threshold", "--from", str(tmp_path / "base/model.pt"), "--out", str(cut),
                 "--budget", "2", "--search-images", "200", "--threads", "1"]) == 0
    search = read_json(cut / "train.json")["search"]
    saved = load_model(cut / "model.pt")[1]["act_thresholds"]
    assert search["slice"] == "training" and search["images"] == 200
    assert saved == {s["layer"]: s["threshold"] for s in search["layers"] if s["threshold"] > 0}
    assert read_json(cut / "metrics.json")["activation_sparsity"]["overall"] > \
        read_json(tmp_path / "base/metrics.json")["activation_sparsity"]["overall"]
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--from", str(cut / "model.pt"), "--out", str(tuned),
                 "--epochs", "1", "--lr", "0.001", "--threads", "1"]) == 0
    assert load_model(tuned / "model.pt")[1]["act_thresholds"] == saved
    capsys.readouterr()
    assert main(["threshold", "--from", str(cut / "model.pt"), "--out", str(tmp_path / "x")]) == 2
    assert main(["threshold", "--from", str(tmp_path / "base/model.pt"), "--out",
                 str(tmp_path / "y"), "--set", "reg.method=l1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "already has FATReLU thresholds" in errors[0]
    assert "not taken by dst threshold" in errors[1] and not (tmp_path / "y").exists()
