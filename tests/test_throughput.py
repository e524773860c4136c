"""The training-throughput benchmark's measurement (timings themselves are not tested)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from dstcore import DstError
from dstcore.cli import main
from dstcore.training.throughput import BenchCell, TimedBatches, phases, run_bench, step_flops


def test_a_training_step_of_a_linear_layer_costs_six_flops_per_weight_and_image():
    """Forward 2·B·I·O, gradients of input and weight 2·B·I·O each (no bias)."""
    layer = nn.Linear(5, 3, bias=False)
    x, y = torch.randn(4, 5, requires_grad=True), torch.tensor([0, 1, 2, 0])
    assert step_flops(layer, x, y) == 6 * 4 * 5 * 3


def test_waiting_for_data_is_the_time_spent_in_next():
    import time

    class Slow:
        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(3):
                time.sleep(0.02)
                yield i

    timed = TimedBatches(Slow())
    t0 = time.perf_counter()
    assert list(timed) == [0, 1, 2] and len(timed) == 3
    assert 0.055 <= timed.waited <= time.perf_counter() - t0


def test_phases_are_plain_each_regulariser_and_masked():
    assert phases()[0] == "plain" and phases()[-1] == "masked"
    assert {"l1", "hoyer", "tl1"} <= set(phases())


@pytest.mark.parametrize("data", ["resident", "loader"])
def test_every_cell_is_measured_through_the_training_step(tmp_path, data):
    cells = [BenchCell("lenet5", (3, 28, 28), 8, phase) for phase in ("plain", "tl1", "masked")]
    table = run_bench(cells, tmp_path / "t.csv", device="cpu", threads=1, steps=2,
                      warmup_steps=1, rounds=1, data=data, workers=1)
    assert list(table.phase) == ["plain", "tl1", "masked"]
    assert (table.images_per_s > 0).all() and (table.gflops > 0).all()
    assert table.data_wait_fraction.between(0, 1).all()
    assert table.vs_plain.iloc[0] == 1.0 and set(table.data) == {data}
    assert len(pd.read_csv(tmp_path / "t.csv")) == 3
    assert (tmp_path / "t.meta.json").exists()


def test_bench_refuses_bad_input_in_one_line(capsys):
    assert main(["bench-train", "--models", "alexnet"]) == 2
    assert "--models: unknown alexnet" in capsys.readouterr().err
    assert main(["bench-train", "--phases", "l7"]) == 2
    assert "--phases: l7 unknown" in capsys.readouterr().err
    with pytest.raises(DstError, match="needs a CUDA device"):
        run_bench([], None, device="cpu", precision="tf32")
