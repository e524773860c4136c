"""The one real-data test: LeNet-5 on real MNIST, a few hundred steps, > 95% test accuracy."""

import json

from dstcore.training.config import from_dict
from dstcore.training.loop import run


def test_lenet5_learns_real_mnist(tmp_path, data_root):
    cfg = from_dict({
        "data": {"dataset": "mnist", "data_root": str(data_root), "download": False,
                 "train_subset": 12800},
        "model": {"name": "lenet5"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "threads": 2},
    })  # 2 x 200 = 400 steps, evaluated on all 10,000 test images
    run(cfg, "train", tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_images"] == 10000
    assert metrics["accuracy"]["top1"] > 0.95
    assert 0.2 < metrics["activation_sparsity"]["overall"] < 0.95
