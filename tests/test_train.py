"""Training stages on the bundled digits data (fast, offline)."""

import json
import math

import pytest
import torch

import dstcore.training.callbacks as callbacks_mod
import dstcore.training.loop as train_mod
from dstcore import DstError
from dstcore.data.datasets import load_dataset
from dstcore.models.checkpoint import load_model, read_model
from dstcore.training.config import from_dict
from dstcore.training.loop import run
from dstcore.training.runtime import cpu_has_native_bf16


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", test_subset=200)


def cfg(**sections):
    base = {"data": {"dataset": "digits", "test_subset": 200},
            "model": {"name": "lenet5"},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "threads": 1}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return from_dict(base)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("runs") / "base"
    run(cfg(), "train", out, bundle=digits)
    return out


def state(path):
    return read_model(path)["state_dict"]


def test_run_directory_contents(baseline):
    assert {p.name for p in baseline.iterdir()} == {"config.yaml", "log.jsonl", "model.pt",
                                                    "train.json", "metrics.json"}
    lines = [json.loads(line) for line in (baseline / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert {"train_ce", "train_reg", "test_top1", "activation_sparsity",
            "train_seconds"} <= set(lines[0])
    metrics = json.loads((baseline / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["accuracy"]["top1"] > 0.5
    assert metrics["macs"]["dense"] == 416_520 and metrics["macs"]["flop_counter_agrees"]
    prov = metrics["provenance"]
    assert prov["versions"]["torch"] and prov["seed"] == 0 and prov["device"] == "cpu"
    assert "commit" in prov["git"] and metrics["train"]["wall_seconds"] > 0


def test_cpu_runs_are_bit_identical(tmp_path, digits, baseline):
    run(cfg(), "train", tmp_path / "again", bundle=digits)
    a, b = state(baseline / "model.pt"), state(tmp_path / "again" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_gives_identical_weights(tmp_path, digits, baseline,
                                                           monkeypatch):
    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(), "train", tmp_path / "r", bundle=digits)
    assert (tmp_path / "r" / "checkpoint.pt").exists() and not (tmp_path / "r" / "model.pt").exists()
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    with pytest.raises(DstError, match="already holds a run"):
        run(cfg(), "train", tmp_path / "r", bundle=digits)
    run(cfg(), "train", tmp_path / "r", resume=True, bundle=digits)
    a, b = state(baseline / "model.pt"), state(tmp_path / "r" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert len((tmp_path / "r" / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("method, lam", [("l1", 1e-3), ("hoyer", 1e-3), ("tl1", 1e-2)])
def test_activation_regularisers_raise_sparsity(tmp_path, digits, baseline, method, lam):
    control = tmp_path / "none"
    run(cfg(train={"epochs": 2, "lr": 0.01}), "finetune", control, init=baseline / "model.pt",
        bundle=digits)
    reg = tmp_path / method
    run(cfg(train={"epochs": 2, "lr": 0.01}, reg={"method": method, "lam": lam}), "finetune",
        reg, init=baseline / "model.pt", bundle=digits)
    sp = [json.loads((d / "metrics.json").read_text())["activation_sparsity"]["overall"]
          for d in (control, reg)]
    assert sp[1] > sp[0] + 0.02


def test_prune_then_dual_keeps_masks_and_real_zeros(tmp_path, digits, baseline):
    pruned = tmp_path / "prune"
    run(cfg(train={"lr": 0.01}, prune={"rate": 0.8, "l1_epochs": 1, "finetune_epochs": 1}),
        "prune", pruned, init=baseline / "model.pt", bundle=digits)
    model, meta = load_model(pruned / "model.pt")
    assert meta["masks_fixed"]
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if hasattr(m, "weight")
                and m.weight is not None and m.weight.dim() > 1)
    total = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight")
                and m.weight is not None and m.weight.dim() > 1)
    assert zeros == round(0.8 * total)
    dual = tmp_path / "dual"
    run(cfg(train={"lr": 0.01}, reg={"method": "tl1", "lam": 1e-2}), "finetune", dual,
        init=pruned / "model.pt", bundle=digits)
    before, after = state(pruned / "model.pt"), state(dual / "model.pt")
    for key, w in before.items():
        if key.endswith("weight") and w.dim() > 1:
            assert torch.all(after[key][w == 0] == 0)
    metrics = json.loads((dual / "metrics.json").read_text())
    assert metrics["weight_sparsity"]["overall"] >= 0.8
    # weight zeros alone bound the products; activation zeros must remove more
    weight_bound = sum(metrics["macs"]["layers"][name]["dense"] * (1 - layer["sparsity"])
                       for name, layer in metrics["weight_sparsity"]["layers"].items())
    assert metrics["macs"]["effective"] < 0.8 * weight_bound


def test_block_pruning_then_tl1_keeps_whole_units_zero(tmp_path, digits, baseline):
    """Stage 2 with block units (8 output channels x 1 input channel), then a stage 3 TL1
    fine-tune: every unit is all zero or has no forced zero, and zero units stay zero."""
    pruned = tmp_path / "prune"
    run(cfg(train={"lr": 0.01}, prune={"rate": 0.6, "l1_epochs": 0, "finetune_epochs": 1,
                                       "structure": "block", "block_out": 8}),
        "prune", pruned, init=baseline / "model.pt", bundle=digits)
    dual = tmp_path / "dual"
    run(cfg(train={"lr": 0.01, "epochs": 2}, reg={"method": "tl1", "lam": 1e-2}), "finetune",
        dual, init=pruned / "model.pt", bundle=digits)
    before, after = state(pruned / "model.pt"), state(dual / "model.pt")
    zeros = total = 0
    for key, w in before.items():
        if not (key.endswith("weight") and w.dim() > 1):
            continue
        for b in range(0, w.shape[0], 8):
            for c in range(w.shape[1]):
                unit, later = w[b:b + 8, c], after[key][b:b + 8, c]
                assert unit.all() or not unit.any(), (key, b, c)
                if not unit.any():
                    assert not later.any(), (key, b, c)  # masks stayed fixed in stage 3
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    assert zeros >= 0.6 * total
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])  # stage 3 did train


def test_absurd_lambda_diverges_cleanly(tmp_path, digits, baseline):
    out = tmp_path / "boom"
    summary = run(cfg(reg={"method": "l1", "lam": 1e38}), "finetune", out,
                  init=baseline / "model.pt", bundle=digits)
    assert summary["status"] == "diverged"
    assert summary["divergence"]["epoch"] == 1 and summary["divergence"]["lam"] == 1e38
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    model, meta = load_model(out / "model.pt")
    assert meta["status"] == "diverged"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checks_happen_before_the_run_directory_exists(tmp_path, digits):
    with pytest.raises(DstError, match="does not exist"):
        run(cfg(), "finetune", tmp_path / "x", init=tmp_path / "missing.pt", bundle=digits)
    with pytest.raises(DstError, match="reg.beta"):
        run(cfg(reg={"method": "tl1", "lam": 1.0, "beta": -1}), "train", tmp_path / "y",
            bundle=digits)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_learning_rate_schedules():
    c = cfg(train={"lr": 1.0, "schedule": "cosine", "warmup_epochs": 2})
    lrs = [train_mod.lr_at(c, e, 6) for e in range(6)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    s = cfg(train={"lr": 1.0, "schedule": "step", "milestones": [2, 4], "gamma": 0.1})
    assert [train_mod.lr_at(s, e, 6) for e in range(6)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_eval_every_skips_test_passes_but_not_the_last(tmp_path, digits, baseline):
    out = tmp_path / "sparse_eval"
    run(cfg(train={"eval_every": 0}), "train", out, bundle=digits)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["test_top1"] is None for line in lines] == [True, True, False]
    assert [line["eval_seconds"] == 0 for line in lines] == [True, True, False]
    # evaluation changes nothing in training: same weights and metrics as evaluating each epoch
    a, b = state(baseline / "model.pt"), state(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((baseline / "metrics.json").read_text())
    for key in ("accuracy", "activation_sparsity", "weight_sparsity", "macs"):
        assert ours[key] == theirs[key], key
    assert lines[-1]["test_top1"] == ours["accuracy"]["top1"]


def test_the_last_epochs_evaluation_is_the_full_one(tmp_path, digits, baseline, monkeypatch):
    calls = []
    real = callbacks_mod.full_metrics  # every test pass of a run goes through callbacks
    monkeypatch.setattr(callbacks_mod, "full_metrics",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(callbacks_mod, "evaluate", lambda *a, **k: pytest.fail("second test pass"))
    run(cfg(train={"eval_every": 0}), "train", tmp_path / "one_pass", bundle=digits)
    assert calls == [1]  # one pass over the test set for the whole run


def test_eval_every_two_evaluates_epochs_two_and_the_last(tmp_path, digits):
    out = tmp_path / "every2"
    run(cfg(train={"eval_every": 2, "epochs": 3}), "train", out, bundle=digits)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["test_top1"] is not None for line in lines] == [False, True, True]


def test_curve_images_logs_a_point_per_epoch_and_changes_nothing(tmp_path, digits, baseline):
    out = tmp_path / "curves"
    run(cfg(train={"curve_images": 50}), "train", out, bundle=digits)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0 <= line["curve_top1"] <= 1 and 0 <= line["curve_sparsity"] <= 1
               for line in lines) and len(lines) == 3
    # the slice is evaluated after each epoch: the same weights, a separate key, the same hash
    a, b = state(baseline / "model.pt"), state(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cfg(train={"curve_images": 50}).semantic_hash() == cfg().semantic_hash()
    # the whole test subset as the slice gives the test evaluation's numbers
    full = tmp_path / "whole"
    run(cfg(train={"curve_images": 200, "epochs": 1}), "train", full, bundle=digits)
    line = json.loads((full / "log.jsonl").read_text())
    assert line["curve_top1"] == line["test_top1"]
    assert line["curve_sparsity"] == pytest.approx(line["activation_sparsity"])


def test_compiled_fine_tunes_repeat_bit_identical_and_step_as_eager(tmp_path, digits,
                                                                    baseline):
    """train.compile traces the penalty's hooks into the graph: one step's loss and gradients
    equal eager's up to float order, and a rerun (the on-disk cache warm) gives the same
    weights."""
    from dstcore.sparsity.activations import activation_layers
    from dstcore.sparsity.regularizers import ActivationPenalty

    model, _ = load_model(baseline / "model.pt")
    x, y = next(iter(torch.utils.data.DataLoader(digits.train, batch_size=64)))
    penalty = ActivationPenalty(activation_layers(model, digits.input_shape), "tl1", 0.5)
    losses, grads = [], []
    with penalty:
        for step_model in (model, torch.compile(model, dynamic=False)):
            model.zero_grad()
            loss = torch.nn.functional.cross_entropy(step_model(x), y) + 1e-2 * penalty.pop()
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    tuned = {"data": {"train_subset": 256}, "reg": {"method": "tl1", "lam": 1e-2, "beta": 0.5}}
    compiled = cfg(train={"epochs": 1, "batch_size": 64, "compile": True}, **tuned)
    for name in ("c1", "c2"):
        run(compiled, "finetune", tmp_path / name, init=baseline / "model.pt")
    a, b = state(tmp_path / "c1" / "model.pt"), state(tmp_path / "c2" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert compiled.semantic_hash() != cfg(train={"epochs": 1, "batch_size": 64},
                                           **tuned).semantic_hash()


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="needs a CPU with native bfloat16")
def test_bf16_on_the_cpu_trains_close_to_fp32(tmp_path, digits, baseline):
    tuned = {"reg": {"method": "tl1", "lam": 1e-2, "beta": 1.0}}
    fp32 = run(cfg(train={"epochs": 1}, **tuned), "finetune", tmp_path / "fp32",
               init=baseline / "model.pt", bundle=digits)["final"]
    bf16 = run(cfg(train={"epochs": 1, "precision": "bf16"}, **tuned), "finetune",
               tmp_path / "bf16", init=baseline / "model.pt", bundle=digits)["final"]
    assert bf16["train_reg"] > 0
    assert abs(bf16["test_top1"] - fp32["test_top1"]) <= 0.03
    assert abs(bf16["activation_sparsity"] - fp32["activation_sparsity"]) <= 0.03


def test_deterministic_flags_set_without_importing_inductor_when_nothing_compiles():
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from dstcore.training.runtime import configure_runtime\n"
            "configure_runtime(1, True, torch.device('cpu'), compiles=False)\n"
            "print(torch.are_deterministic_algorithms_enabled(),\n"
            "      torch.is_deterministic_algorithms_warn_only_enabled(),\n"
            "      'torch._inductor.config' in sys.modules)\n"
            "configure_runtime(1, False, torch.device('cpu'), compiles=True)\n"
            "print(torch.are_deterministic_algorithms_enabled(),\n"
            "      'torch._inductor.config' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "False", "False", "True"]
