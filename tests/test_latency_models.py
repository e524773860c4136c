"""Synthetic-sparsity ResNets and the whole-network crossover (no timings asserted)."""

import numpy as np
import pandas as pd
import pytest
import torch

from dstcore.measure.latency_models import input_sparsity, model_crossover, synthetic_model


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_set_input_sparsity_reaches_the_target_on_new_images(name):
    model = synthetic_model(name, 0.8, 0.0, size=64, calib_images=2)
    torch.manual_seed(1)  # a fresh batch, not the calibration one
    measured = input_sparsity(model, torch.randn(2, 3, 64, 64))
    convs = list(measured.values())[1:-1]  # not the image layer, not the final linear
    assert convs and np.mean(convs) == pytest.approx(0.8, abs=0.05)
    assert min(convs) > 0.6 and list(measured.values())[0] < 0.05


def test_block_pruned_synthetic_model_has_empty_units():
    model = synthetic_model("resnet18", 0.5, 0.8, size=32, calib_images=2)
    w = model.layer2[0].conv2.weight.detach()
    units = w.reshape(w.shape[0] // 16, 16, w.shape[1], -1).ne(0).any(-1).any(1)
    assert 1 - units.float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert model.conv1.weight.ne(0).all()  # the image layer is not pruned


def test_model_crossover_interpolates_and_reports_never():
    x = [0.5, 0.7, 0.8, 0.9]
    rows = [{"model": "m", "weight_sparsity": 0.0, "batch": 1, "threads": 1, "kernel": k,
             "act_sparsity": s, "speedup_vs_ort": v}
            for k, ys in (("act_sparse", [0.5, 0.9, 1.1, 1.5]),
                          ("dual_sparse", [0.5, 0.6, 0.7, 0.9]),
                          ("onnxruntime", [1, 1, 1, 1]))
            for s, v in zip(x, ys, strict=True)]
    out = model_crossover(pd.DataFrame(rows)).set_index("kernel")
    assert set(out.index) == {"act_sparse", "dual_sparse"}
    assert out.loc["act_sparse", "crossover_sparsity_vs_onnxruntime"] == pytest.approx(0.75)
    assert np.isnan(out.loc["dual_sparse", "crossover_sparsity_vs_onnxruntime"])
    assert out.loc["act_sparse", "speedup_at_max_sparsity"] == pytest.approx(1.5)


def test_sweep_measures_the_batch_thread_grid_at_one_sparsity(tmp_path):
    """The sparsity sweep runs at the first batch size / thread count; the other batch sizes
    only at grid_sparsity. Every engine has a row, and the files are written."""
    from dstcore.measure.latency_models import run_model_sweep

    out = run_model_sweep(tmp_path, models=["resnet18"], sparsities=[0.5, 0.9],
                          weight_sparsities=[0.0], batch_sizes=[1, 2], thread_counts=[1],
                          size=32, warmup=0, repeats=1, rounds=1, grid_sparsity=0.9)
    df = out["models"]
    cells = set(zip(df.target_sparsity, df.batch, strict=True))
    assert cells == {(0.5, 1), (0.9, 1), (0.9, 2)}
    assert set(df.kernel) == {"dense", "onnxruntime", "runner_dense", "act_sparse"}
    assert (df.max_abs_err < 1e-3).all()
    assert {p.name for p in tmp_path.iterdir()} >= {"models.csv", "models_crossover.csv"}
