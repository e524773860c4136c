"""The CUDA path, as far as a CPU runs it: precision and layout keys, the refusals, loaders that
hold data on a device or keep workers, the GPU latency engines that need no GPU (the others are
left out with their reason), and, only where CUDA is available, the GPU itself."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset, Subset

from dstcore import DstError
from dstcore.core.runs import RunKind
from dstcore.data.datasets import DataBundle, TensorImages, get_spec
from dstcore.data.loaders import TrainLoader, hold_on_device, item_seed, make_loader
from dstcore.measure import gpu_latency
from dstcore.measure.gpu_latency import build_engines, two_four_layers, two_four_mask
from dstcore.training import runtime
from dstcore.training.config import RunConfig, from_dict
from dstcore.training.runtime import check_precision, configure_runtime, memory_format
from dstcore.workflow.checks import validate_config
from dstcore.workflow.grid import run_args, run_specs
from tests.conftest import ROOT

CUDA = torch.cuda.is_available()
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


# ----------------------------------------------------------------------------- config


def test_precision_enters_the_hash_and_the_layout_does_not():
    base = RunConfig().semantic_hash()
    assert from_dict({"train": {"precision": "fp32"}}).semantic_hash() == base
    assert from_dict({"train": {"memory_format": "channels_last"}}).semantic_hash() == base
    assert from_dict({"train": {"precision": "bf16"}}).semantic_hash() != base
    assert from_dict({"train": {"precision": "tf32"}}).semantic_hash() not in (
        base, from_dict({"train": {"precision": "bf16"}}).semantic_hash())


def test_precisions_the_cpu_lacks_are_refused_in_one_line(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(DstError) as err:
        check_precision("tf32", cpu)
    assert str(err.value) == ("train.precision: 'tf32' needs a CUDA device (train.device "
                              "resolved to cpu); use fp32")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(DstError) as err:
        check_precision("bf16", cpu)
    assert str(err.value) == ("train.precision: 'bf16' needs a CUDA device or a CPU with native "
                              "bfloat16 (AVX512_BF16 or AMX) (train.device resolved to cpu); "
                              "use fp32")
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    check_precision("bf16", cpu)
    check_precision("fp32", cpu)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision("tf32", cpu) == "tf32"


def test_auto_precision_is_recorded_resolved(tmp_path):
    from dstcore.training.loop import run

    cfg = from_dict({"data": {"dataset": "digits", "test_subset": 100},
                     "train": {"epochs": 1, "batch_size": 64, "threads": 1, "device": "cpu",
                               "precision": "auto"}, "model": {"name": "lenet5"}})
    summary = run(cfg, "train", tmp_path / "run", final_eval=False)
    expected = "bf16" if runtime.cpu_has_native_bf16() else "fp32"
    assert summary["config"]["train"]["precision"] == expected
    assert f"precision: {expected}" in (tmp_path / "run" / "config.yaml").read_text()


def test_compile_enters_the_hash_only_when_on():
    base = RunConfig().semantic_hash()
    assert from_dict({"train": {"compile": False}}).semantic_hash() == base
    assert from_dict({"train": {"compile": True}}).semantic_hash() != base


def test_auto_layout_is_channels_last_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format("auto", cpu) is torch.contiguous_format
    assert memory_format("auto", cuda) is torch.channels_last
    assert memory_format("channels_last", cpu) is torch.channels_last
    assert memory_format("contiguous", cuda) is torch.contiguous_format


def test_deterministic_switches_torch_and_cudnn_together():
    try:
        configure_runtime(0, False, torch.device("cpu"))
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        configure_runtime(0, True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        configure_runtime(0, True, torch.device("cpu"))


def _config(**top) -> dict:
    return validate_config({**yaml.safe_load((ROOT / "config/smoke.yaml").read_text()), **top},
                           SCHEMA)


def test_pipeline_runtime_keys_reach_the_runs_only_when_set():
    """Defaults leave every run's command as it was (no rerun of finished runs); a GPU
    config's precision, layout and determinism reach every training command."""
    default, gpu = _config(), _config(precision="bf16", memory_format="channels_last",
                                      deterministic=False)
    exp = default["experiments"][0]
    for spec in run_specs(exp):
        plain = run_args(spec, exp, default)
        assert "precision" not in plain and "memory_format" not in plain
        assert "deterministic" not in plain
        set_on_gpu = run_args(spec, exp, gpu)
        assert "--set train.precision='bf16'" in set_on_gpu
        assert "--set train.memory_format='channels_last'" in set_on_gpu
        assert "--set train.deterministic=False" in set_on_gpu
    assert any(s.kind is RunKind.BASELINE for s in run_specs(exp))
    with pytest.raises(DstError, match="config.precision: 'fp16' is not allowed"):
        _config(precision="fp16")


def test_a_stage_sets_its_own_runtime_keys_over_the_top_level_ones():
    """An experiment's fine-tune block may ask for bf16 and torch.compile (the default config's
    ResNet-20 does); its baseline keeps the top-level values."""
    config = _config(compile=True)
    exp = {**config["experiments"][0]}
    exp["finetune"] = {**exp["finetune"], "precision": "bf16", "compile": False}
    specs = run_specs(exp)
    base = next(s for s in specs if s.kind is RunKind.BASELINE)
    tuned = next(s for s in specs if s.kind is not RunKind.BASELINE)
    assert "--set train.compile=True" in run_args(base, exp, config)
    assert "precision" not in run_args(base, exp, config)
    assert "--set train.precision='bf16'" in run_args(tuned, exp, config)
    assert "--set train.compile=False" in run_args(tuned, exp, config)
    assert "--set train.compile=True" not in run_args(tuned, exp, config)


# ----------------------------------------------------------------------------- loaders


class RandomItems(Dataset):
    """Items drawn from torch's global generator, as torchvision's random transforms are."""

    targets = [0, 1] * 12

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        return torch.rand(3), i % 2


def _epoch(loader) -> list[torch.Tensor]:
    return [x.clone() for x, _ in loader]


def test_augmentation_depends_on_the_epoch_seed_and_item_only():
    """The same epoch seed gives the same batches whatever came before, with or without
    workers; another seed gives others; the caller's generator is left untouched."""
    data = RandomItems()
    first = _epoch(make_loader(data, 5, shuffle=True, seed=7))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = _epoch(make_loader(data, 5, shuffle=True, seed=7))
    assert torch.equal(torch.get_rng_state(), state)
    persistent = TrainLoader(data, 5, num_workers=2)
    _epoch(persistent.epoch(3))
    with_workers = _epoch(persistent.epoch(7))
    other = _epoch(make_loader(data, 5, shuffle=True, seed=8))
    for a, b, c in zip(first, again, with_workers, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert persistent.loader._iterator is not None  # the workers stayed up between epochs


def test_item_seed_is_distinct_per_item_and_epoch():
    seeds = {item_seed(e, i) for e in range(50) for i in range(200)}
    assert len(seeds) == 50 * 200 and all(0 <= s < 2**63 for s in seeds)


def _images(n: int = 10) -> TensorImages:
    images = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return TensorImages(images, torch.arange(n) % 3, (0.5,), (0.25,))


def test_in_memory_batches_come_from_the_subset_in_the_seeded_order():
    subset = Subset(_images(), [1, 4, 6, 9])
    loader = TrainLoader(subset, 3)
    assert loader.loader is None  # no DataLoader: batches by indexing
    xs = torch.cat([x for x, _ in loader.epoch(5)])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    expect = (torch.tensor([1, 4, 6, 9])[perm].float().view(-1, 1, 1, 1) * 4
              + torch.arange(4).view(1, 1, 2, 2)) / 255
    assert torch.allclose(xs, (expect - 0.5) / 0.25)


def test_holding_on_the_cpu_changes_nothing_and_a_device_gets_the_subset_only():
    bundle = DataBundle(get_spec("digits"), Subset(_images(), [2, 3]), _images(4), 3, "test")
    assert hold_on_device(bundle, torch.device("cpu")) is bundle
    moved = hold_on_device(bundle, torch.device("meta"))
    assert moved.train.images.device.type == "meta" and len(moved.train) == 2
    assert moved.test.images.shape == (4, 1, 2, 2)


def test_channels_last_trains_on_the_cpu_close_to_contiguous(tmp_path):
    """The layout changes float order only: the same run, top-1 and loss within noise."""
    from dstcore.training.loop import run

    got = {}
    for layout in ("contiguous", "channels_last"):
        cfg = from_dict({"data": {"dataset": "digits", "test_subset": 200},
                         "train": {"epochs": 1, "batch_size": 64, "threads": 1,
                                   "memory_format": layout, "device": "cpu"},
                         "model": {"name": "lenet5"}})
        got[layout] = run(cfg, "train", tmp_path / layout)["final"]
    a, b = got["contiguous"], got["channels_last"]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
    assert abs(a["test_top1"] - b["test_top1"]) <= 0.01


# ----------------------------------------------------------------------------- GPU latency


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 1.0, 1.0, -1.0],
                      [0.0, 0.0, 0.0, 0.0, -3.0, 2.0, 0.1, -0.2]])
    keep = two_four_mask(w)
    assert keep.tolist() == [[False, True, True, False, True, True, False, False],
                             [True, True, False, False, True, True, False, False]]
    with pytest.raises(ValueError, match="multiple of 4"):
        two_four_mask(torch.ones(2, 6))


def test_two_four_takes_the_gemms_of_its_shapes():
    """out x in (C·R·S for a conv) multiples of 32 x 64, one group."""
    model = nn.Sequential(nn.Conv2d(64, 32, 1), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 32, 3),
                          nn.Conv2d(64, 64, 3, groups=2), nn.Flatten(), nn.Linear(128, 64),
                          nn.Linear(64, 10))
    assert two_four_layers(model) == ["0", "2", "5"]


@pytest.mark.parametrize("layer", [nn.Conv2d(64, 32, 3, stride=2, padding=1),
                                   nn.Conv2d(64, 32, 1), nn.Linear(64, 32)],
                         ids=["3x3-stride2", "1x1", "linear"])
def test_the_two_four_gemm_equals_the_layer_with_the_pruned_weight(monkeypatch, layer):
    """The im2col / pointwise arithmetic, with the semi-structured conversion (CUDA-only)
    replaced by the dense pruned weight: the same output as the layer itself pruned 2:4."""
    import torch.sparse as tsp

    monkeypatch.setattr(tsp, "to_sparse_semi_structured", lambda w: w)
    torch.manual_seed(0)
    gemm = gpu_latency.SemiStructuredGemm(layer)
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_((w * two_four_mask(w)).float().reshape(layer.weight.shape))
    x = torch.randn(2, 64, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(5, 64)
    with torch.no_grad():
        got, want = gemm(x.to(torch.bfloat16)).float(), layer(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=0.15, rtol=0.05)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_engines_that_need_cuda_are_left_out_on_the_cpu_with_the_reason():
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        built, left = build_engines(_tiny(), x, torch.device("cpu"),
                                    ["cuda_eager", "cuda_bf16", "cuda_graph", "cuda_sparse_csr",
                                     "cuda_2:4_synthetic"], "default")
    assert set(built) == {"cuda_eager", "cuda_bf16"}
    assert left == {name: f"RuntimeError: {name} needs a CUDA device"
                    for name in ("cuda_graph", "cuda_sparse_csr", "cuda_2:4_synthetic")}
    assert len(got) == 3 and all("\n" not in str(w.message) for w in got)


def test_gpu_rows_join_the_latency_table_with_the_gpu_name(tmp_path, monkeypatch):
    """measure_model_latency's GPU rows, made here with the engines a CPU can build."""
    from dstcore.measure import model_latency

    real = gpu_latency.time_gpu_engines

    def on_cpu(model, batches, device, **kw):
        return real(model, batches, torch.device("cpu"), engines=("cuda_bf16",), **kw)

    monkeypatch.setattr(model_latency, "gpu_wanted", lambda mode: mode == "auto")
    monkeypatch.setattr(model_latency, "gpu_name", lambda device: "Fake GPU")
    monkeypatch.setattr(model_latency, "time_gpu_engines", on_cpu)
    df = model_latency.measure_model_latency(
        _tiny(), torch.randn(4, 1, 8, 8), tmp_path / "lat.csv", kinds=(), batch_sizes=(2,),
        thread_counts=(1,), include_ort=False, runner_kinds=(), per_layer=False, warmup=1,
        repeats=2, rounds=1, gpu="auto", gpu_batch_sizes=(2, 3))
    gpu = df[df.device == "Fake GPU"]
    assert set(gpu.kernel) == {"cuda_eager", "cuda_bf16"} and set(gpu.threads) == {0}
    assert sorted(gpu.batch) == [2, 2, 3, 3] and set(df[df.device == "cpu"].batch) == {2}
    assert (gpu[gpu.kernel == "cuda_eager"].speedup == 1.0).all()
    assert gpu.max_abs_err.max() < 0.1 and gpu.speedup_vs_ort.isna().all()
    assert set(df[df.device == "cpu"].kernel) == {"dense"}
    back = pd.read_csv(tmp_path / "lat.csv")
    assert set(back.device) == {"cpu", "Fake GPU"}


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_every_gpu_engine_builds_and_agrees_on_a_gpu():
    from dstcore.models import build_model

    model = build_model("resnet20", (1, 28, 28), 10).eval()
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    res = gpu_latency.time_gpu_engines(model, batches, torch.device("cuda"),
                                       compile_mode="default", warmup=1, repeats=2, rounds=1)
    assert {"cuda_eager", "cuda_bf16", "cuda_compile", "cuda_graph", "cuda_sparse_csr"} <= set(res)
    for name in ("cuda_compile", "cuda_graph", "cuda_sparse_csr"):
        assert res[name]["max_abs_err"] < 1e-2, name
    assert np.isfinite(res["cuda_bf16"]["median_ms"])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_trains_on_the_gpu_with_its_data_held_there(tmp_path, precision):
    from dstcore.training.loop import run

    cfg = from_dict({"data": {"dataset": "digits", "test_subset": 200},
                     "train": {"epochs": 2, "batch_size": 64, "device": "cuda",
                               "precision": precision}, "model": {"name": "lenet5"}})
    summary = run(cfg, "train", tmp_path / precision)
    assert summary["status"] == "completed" and summary["final"]["test_top1"] > 0.5


# ----------------------------------------------------------------------------- device run


def test_the_gpu_overlay_config_is_valid_and_trains_every_run_on_cuda():
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "tests/gpu/config_gpu.yaml").read_text())
    merged = {**default, **overlay, "latency": {**default["latency"], **overlay["latency"]}}
    config = validate_config(merged, SCHEMA)
    assert config["experiments"] == default["experiments"]
    exp = config["experiments"][0]
    assert all("--set train.device='cuda'" in run_args(s, exp, config) for s in run_specs(exp))


def test_the_carried_packages_are_pinned_once_each():
    lines = [ln for ln in (ROOT / "tests/gpu/packages.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    names = [ln.split("==")[0] for ln in lines]
    assert all("==" in ln for ln in lines) and len(set(names)) == len(names)
    assert {"snakemake", "papermill", "nbconvert", "ipykernel"} <= set(names)


def test_compare_shows_each_moved_run_and_changed_verdict(smoke, tmp_path):
    import shutil

    from dstcore.analysis.compare import compare_claims, compare_runs, summary

    results, _ = smoke
    same = summary(compare_runs(results, results), compare_claims(results, results))
    assert same[0].endswith("0 with another status") and "largest |difference| 0.00 pp" in same[1]
    assert same[-1].endswith("0 with another verdict")
    other = tmp_path / "other"
    shutil.copytree(results / "tables", other / "tables")
    runs = pd.read_csv(other / "tables/runs.csv")
    runs.loc[0, "top1"] += 0.0123
    runs.to_csv(other / "tables/runs.csv", index=False)
    claims = pd.read_csv(other / "tables/paper_vs_reproduced.csv")
    claims.loc[0, "status"] = "flipped"
    claims.to_csv(other / "tables/paper_vs_reproduced.csv", index=False)
    diff = compare_runs(results, other)
    assert diff.top1_diff.abs().max() == pytest.approx(0.0123)
    lines = summary(diff, compare_claims(results, other))
    assert f"top1: largest |difference| 1.23 pp ({runs.run_dir[0]})" in lines[1]
    assert lines[-2].endswith("1 with another verdict") and lines[-1].endswith("-> flipped")
