"""The ``dst`` argument parser: sub-commands, run flags and config shortcut flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from dstcore import one_line

DESCRIPTION = "The ``dst`` command line: prepare data, train, fine-tune, prune, evaluate."

# shortcut flag -> (section, key); type and help come from the key's field in
# dstcore.training.config
SHORTCUTS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"), "dataset": ("data", "dataset"),
    "data_root": ("data", "data_root"), "train_subset": ("data", "train_subset"),
    "test_subset": ("data", "test_subset"), "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
    "threads": ("train", "threads"), "device": ("train", "device"),
}
FINETUNE_SHORTCUTS = {"method": ("reg", "method"), "lam": ("reg", "lam"), "beta": ("reg", "beta")}
PRUNE_SHORTCUTS = {"rate": ("prune", "rate"), "threshold": ("prune", "threshold"),
                   "scope": ("prune", "scope"), "structure": ("prune", "structure"),
                   "block_out": ("prune", "block_out"), "weight_l1": ("prune", "weight_l1"),
                   "l1_epochs": ("prune", "l1_epochs"),
                   "finetune_epochs": ("prune", "finetune_epochs")}
THRESHOLD_SHORTCUTS = {"budget": ("fatrelu", "budget_pp"),
                       "search_images": ("fatrelu", "search_images")}


def _add_shortcuts(parser: argparse.ArgumentParser, table: dict) -> None:
    from dstcore.training.config import field_help, shortcut_type

    for dest, (section, key) in table.items():
        parser.add_argument(f"--{dest.replace('_', '-')}", dest=dest,
                            type=shortcut_type(section, key), default=None,
                            help=f"{field_help(section, key)}; sets {section}.{key}"
                            .replace("%", "%%"))


def _add_run_args(parser: argparse.ArgumentParser, extra: dict) -> None:
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    parser.add_argument("--config", type=Path, help="YAML file with data/model/train/reg/prune")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config key (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt when it exists")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the final evaluation (metrics.json); use dst evaluate later")
    parser.add_argument("--allow-divergence", action="store_true",
                        help="exit 0 when the run diverges (it is still marked diverged)")
    parser.add_argument("--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE",
                        help="label stored with the run's metrics (repeatable), e.g. experiment=x")
    _add_shortcuts(parser, SHORTCUTS)
    _add_shortcuts(parser, extra)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``dst`` parser: every sub-command and its flags."""
    parser = OneLineParser(prog="dst", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_command(sub)
    _add_run_commands(sub)
    _add_evaluate_command(sub)
    _add_latency_commands(sub.add_parser(
        "latency", help="time the sparse kernels (a benchmark, not a test)"))
    _add_bench_command(sub)
    _add_table_commands(sub)
    return parser


def _add_bench_command(sub) -> None:
    from dstcore.training.config import DEVICES, MEMORY_FORMATS, PRECISIONS

    p = sub.add_parser("bench-train", help="training throughput per model and phase: images/s, "
                                           "GFLOP/s, time waiting for data (a benchmark)")
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape of every model (default: 1 28 28, or 3 32 32 for the "
                        "torchvision models)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--phases", nargs="+", help="plain, a regulariser (l1, hoyer, tl1, ...), "
                                               "masked (default: all)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                   help="let cuDNN autotune (train.deterministic: false)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs; the median is reported")
    p.add_argument("--data", choices=("resident", "loader"), default="resident",
                   help="resident: images held in memory on the device (MNIST's path); "
                        "loader: decoded and augmented in DataLoader workers (CIFAR's path)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (--data loader)")
    p.add_argument("--compile", action="store_true",
                   help="train the model under torch.compile (compiled in the warm-up steps)")
    p.add_argument("--out", type=Path, help="CSV to write (and its .meta.json)")


def _add_data_command(sub) -> None:
    p = sub.add_parser("prepare", help="locate, verify and describe a dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--out", type=Path, help="write the manifest (JSON) here")


def _add_run_commands(sub) -> None:
    p = sub.add_parser("train", help="stage 1: dense baseline from scratch")
    _add_run_args(p, FINETUNE_SHORTCUTS)
    p = sub.add_parser("finetune", help="activation-regularised fine-tuning (stage 3 when the "
                                        "parent was pruned)")
    p.add_argument("--from", dest="init", required=True, type=Path, help="model.pt to start from")
    _add_run_args(p, FINETUNE_SHORTCUTS)
    p = sub.add_parser("prune", help="stage 2: weight l1, magnitude pruning, masked fine-tune")
    p.add_argument("--from", dest="init", required=True, type=Path, help="model.pt to start from")
    _add_run_args(p, PRUNE_SHORTCUTS)
    p = sub.add_parser("threshold", help="FATReLU: per-layer activation thresholds searched "
                                         "within an accuracy budget (no weight changes)")
    p.add_argument("--from", dest="init", required=True, type=Path, help="model.pt to start from")
    _add_run_args(p, THRESHOLD_SHORTCUTS)


def _add_evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, sparsity and MACs of a saved model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run directory: reads model.pt (+ train.json), "
                                               "writes metrics.json there")
    src.add_argument("--checkpoint", type=Path, help="a model.pt")
    p.add_argument("--out", type=Path, help="metrics file to write (default RUN/metrics.json)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")


def _add_latency_commands(p: argparse.ArgumentParser) -> None:
    lat = p.add_subparsers(dest="what", required=True)
    q = lat.add_parser("sweep", help="synthetic layers x activation/weight sparsity grid")
    q.add_argument("--out", type=Path, required=True, help="folder for the CSVs")
    q.add_argument("--quick", action="store_true", help="a tiny grid (seconds)")
    q = lat.add_parser("resnets", help="whole ResNet18/50 at 224x224, synthetic sparsity: the "
                                       "runner vs torch eager and ONNX Runtime")
    q.add_argument("--out", type=Path, required=True, help="folder for the CSVs")
    q.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    q.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95],
                   help="input sparsity of every conv but the first")
    q.add_argument("--weight-sparsities", type=float, nargs="+", default=[0.0, 0.8],
                   help="block-pruned weight sparsity (0 = dense weights)")
    q.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    q.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    q.add_argument("--size", type=int, default=224, help="image height and width")
    q.add_argument("--repeats", type=int, default=4)
    q.add_argument("--grid-sparsity", type=float, default=0.9,
                   help="measure the batch sizes and thread counts after the first only at this "
                        "sparsity (the sweep over --sparsities runs at the first of each); "
                        "a negative value measures every combination")
    q.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile (inductor) as a peer; compiles per model, "
                        "batch and thread count (ResNet18 224x224: ~25 s the first time, "
                        "<1 s for further sparsities from inductor's cache)")
    from dstcore.measure.settings import (  # no torch: only the defaults
        COMPILE_MODES,
        GPU_MODES,
        LatencySettings,
    )

    lat_defaults = LatencySettings()
    q = lat.add_parser("models", help="baseline, best TL1 and best dual model of an experiment")
    q.add_argument("--runs", type=Path, required=True, help="runs.csv from dst aggregate")
    q.add_argument("--results", type=Path, required=True, help="results folder (run paths)")
    q.add_argument("--experiment", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=Path, required=True, help="CSV to write")
    q.add_argument("--tolerance-pp", type=float, default=lat_defaults.tolerance_pp)
    q.add_argument("--batch-sizes", type=int, nargs="+", default=list(lat_defaults.batch_sizes))
    q.add_argument("--threads", type=int, nargs="+", default=list(lat_defaults.threads),
                   help="thread counts to time; 0 = all cores")
    q.add_argument("--warmup", type=int, default=lat_defaults.warmup)
    q.add_argument("--repeats", type=int, default=lat_defaults.repeats)
    q.add_argument("--max-images", type=int, default=lat_defaults.max_images)
    q.add_argument("--torch-compile", action="store_true", default=lat_defaults.torch_compile,
                   help="also time torch.compile (inductor) end to end; compiles once per "
                        "model, batch and thread count")
    q.add_argument("--gpu", choices=GPU_MODES, default=lat_defaults.gpu,
                   help="auto: also time the GPU engines (cuDNN, bf16, torch.compile, CUDA "
                        "graphs, sparse CSR, 2:4) when CUDA is available; off: the CPU only")
    q.add_argument("--gpu-batch-sizes", type=int, nargs="+",
                   default=list(lat_defaults.gpu_batch_sizes), help="batch sizes on the GPU")
    q.add_argument("--gpu-compile-mode", choices=COMPILE_MODES,
                   default=lat_defaults.gpu_compile_mode, help="torch.compile's mode on the GPU")


def _add_table_commands(sub) -> None:
    p = sub.add_parser("render", help="execute a report notebook (papermill) and write HTML")
    p.add_argument("--notebook", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="executed notebook to write")
    p.add_argument("--html", type=Path, required=True, help="HTML to write (code hidden)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="notebook parameter (value parsed as YAML)")

    p = sub.add_parser("check-report", help="lay a rendered report out in headless Chromium "
                                            "(installed on demand): where the verdict block "
                                            "falls, every table's width, every figure loaded")
    p.add_argument("html", type=Path, help="the rendered report (report.html)")
    p.add_argument("--width", type=int, default=1200, help="viewport width, px")
    p.add_argument("--height", type=int, default=900, help="window height, px")
    p.add_argument("--screenshot", type=Path, help="also write a PNG of the first screen")

    p = sub.add_parser("choose-tl1", help="stage 3's TL1 beta and lams from the TL1 sweeps "
                                          "(dstcore.analysis.frontier.choose_dual_tl1)")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.json of the baselines, "
                                                         "controls and TL1 runs")
    p.add_argument("--experiment", required=True)
    p.add_argument("--results", type=Path, required=True, help="results folder (for run paths)")
    p.add_argument("--tolerance-pp", type=float, default=0.5)
    p.add_argument("--beta", default="auto", help="'auto' or a fixed beta")
    p.add_argument("--lams", nargs="+", default=["auto"], help="'auto' or fixed lambda values")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")

    p = sub.add_parser("compare", help="two result folders of one config, run by run (a GPU "
                                       "run against a CPU run): differences and verdicts")
    p.add_argument("a", type=Path, help="results folder (the reference, e.g. the CPU run)")
    p.add_argument("b", type=Path, help="results folder compared with it")
    p.add_argument("--out", type=Path, help="CSV of the per-run differences to write")

    p = sub.add_parser("aggregate", help="collect metrics.json files into tidy CSV tables")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.json files")
    p.add_argument("--results", type=Path, required=True, help="results folder (for run paths)")
    p.add_argument("--out-dir", type=Path, required=True, help="where runs.csv/layers.csv go")
