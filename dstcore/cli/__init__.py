"""The ``dst`` command line: prepare data, train, fine-tune, prune, evaluate.

Every training command takes an optional YAML config (sections data/model/train/reg/prune),
``--set section.key=value`` overrides and a few shortcut flags, and writes one run directory.
Errors a user can fix are printed as one line and exit with status 2; a run that diverges
exits with status 3 unless ``--allow-divergence`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dstcore import DstError, one_line

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
    parser = OneLineParser(prog="dst", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="locate, verify and describe a dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--out", type=Path, help="write the manifest (JSON) here")

    p = sub.add_parser("train", help="stage 1: dense baseline from scratch")
    _add_run_args(p, FINETUNE_SHORTCUTS)
    p = sub.add_parser("finetune", help="activation-regularised fine-tuning (stage 3 when the "
                                        "parent was pruned)")
    p.add_argument("--from", dest="init", required=True, type=Path, help="model.pt to start from")
    _add_run_args(p, FINETUNE_SHORTCUTS)
    p = sub.add_parser("prune", help="stage 2: weight l1, magnitude pruning, masked fine-tune")
    p.add_argument("--from", dest="init", required=True, type=Path, help="model.pt to start from")
    _add_run_args(p, PRUNE_SHORTCUTS)

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

    p = sub.add_parser("render", help="execute a report notebook (papermill) and write HTML")
    p.add_argument("--notebook", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="executed notebook to write")
    p.add_argument("--html", type=Path, required=True, help="HTML to write (code hidden)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="notebook parameter (value parsed as YAML)")

    p = sub.add_parser("latency", help="time the sparse kernels (a benchmark, not a test)")
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
    from dstcore.measure.settings import LatencySettings  # no torch: only the defaults

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

    p = sub.add_parser("aggregate", help="collect metrics.json files into tidy CSV tables")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.json files")
    p.add_argument("--results", type=Path, required=True, help="results folder (for run paths)")
    p.add_argument("--out-dir", type=Path, required=True, help="where runs.csv/layers.csv go")
    return parser


def resolve_config(args: argparse.Namespace, stage: str):
    """Merge parent checkpoint data/model, the YAML file, ``--set`` and shortcut flags."""
    from dstcore.models.checkpoint import read_model
    from dstcore.training.config import apply_overrides, from_dict, load_yaml

    data: dict = {}
    if stage != "train":
        parent = read_model(args.init)
        data = {"data": dict(parent["config"]["data"]), "model": dict(parent["config"]["model"])}
    if args.config:
        for section, values in load_yaml(args.config).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
    data = apply_overrides(data, args.overrides)
    table = {**SHORTCUTS, **FINETUNE_SHORTCUTS, **PRUNE_SHORTCUTS}
    for dest, (section, key) in table.items():
        value = getattr(args, dest, None)
        if value is not None:
            data.setdefault(section, {})[key] = value
    return from_dict(data)


def parse_tags(items: list[str]) -> dict[str, str]:
    """``key=value`` strings to a dict; keys must be identifiers."""
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise DstError(f"--tag '{item}' must look like key=value")
        tags[key] = value
    return tags


def cmd_prepare(args: argparse.Namespace) -> int:
    from dstcore.core.io import write_json
    from dstcore.data.datasets import describe, load_dataset

    bundle = load_dataset(args.dataset, args.data_root, args.cache_dir,
                          download=not args.no_download)
    manifest = describe(bundle)
    if args.out:
        write_json(args.out, manifest)
    print(f"{args.dataset}: {manifest['train_size']} train / {manifest['test_size']} test images "
          f"from {manifest['source']}")
    return 0


def cmd_run(args: argparse.Namespace, stage: str) -> int:
    from dstcore.core.runs import RunSpec
    from dstcore.training.loop import run

    cfg = resolve_config(args, stage)
    tags = parse_tags(args.tags)
    if tags:  # a run of the pipeline: its tags must name one (dstcore.core.runs.RunSpec)
        spec = RunSpec.from_tags(tags, cfg.train.seed)
        if spec.kind.command != stage:
            raise DstError(f"--tag kind={spec.kind} is made by dst {spec.kind.command}, "
                           f"not dst {stage}")
    summary = run(cfg, stage, args.out, init=getattr(args, "init", None), resume=args.resume,
                  final_eval=not args.no_evaluate, tags=tags)
    if summary["status"] == "diverged" and not args.allow_divergence:
        return 3
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dstcore.core.environment import provenance
    from dstcore.core.io import read_json, write_json
    from dstcore.core.records import make_record, write_record
    from dstcore.data.datasets import load_dataset
    from dstcore.measure.metrics import full_metrics
    from dstcore.models.checkpoint import load_model
    from dstcore.training.loop import configure_runtime, resolve_device

    path = args.run / "model.pt" if args.run else args.checkpoint
    out = args.out or ((args.run / "metrics.json") if args.run else None)
    if out is None:
        raise DstError("dst evaluate --checkpoint needs --out")
    model, meta = load_model(path)
    d = meta["config"]["data"]
    configure_runtime(args.threads, True)
    device = resolve_device(args.device)
    bundle = load_dataset(d["dataset"], args.data_root or d["data_root"], d["cache_dir"],
                          d["download"], d["verify"], d["train_subset"], args.test_subset or d["test_subset"],
                          d["subset_seed"])
    metrics = full_metrics(model, bundle, device, d["eval_batch_size"])
    train_json = path.parent / "train.json"
    if train_json.exists():
        summary = read_json(train_json)
        where = {**summary["provenance"], "evaluated_with": provenance(device)}
        write_record(out, make_record(metrics, summary, where))
    else:  # a bare model.pt: its evaluation, without a run's identity
        write_json(out, {"status": meta["status"], "stage": meta["stage"], "model": meta["model"],
                         "dataset": meta["dataset"], **metrics, "config": meta["config"],
                         "provenance": provenance(device)})
    acc, sp = metrics["accuracy"]["top1"], metrics["activation_sparsity"]["overall"]
    print(f"{path}: top1 {acc:.4f}, activation sparsity {sp:.4f}, "
          f"MACs {metrics['macs']['effective']:.0f}/{metrics['macs']['dense']:.0f} "
          f"(-{metrics['macs']['reduction_pct']:.1f}%)")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.what == "sweep":
        from dstcore.measure.synthetic import run_synthetic_sweep

        out = run_synthetic_sweep(args.out, quick=args.quick, log=say)
        print(out["crossover"].to_string(index=False))
        return 0
    if args.what == "resnets":
        return _latency_resnets(args, say)
    if min(args.threads) < 0 or min(args.batch_sizes) < 1 or args.repeats < 1:
        raise DstError("--threads must be >= 0, --batch-sizes >= 1 and --repeats >= 1")
    from dstcore.measure.experiment import measure_experiment

    threads = [t or None for t in args.threads]
    table = measure_experiment(
        args.runs, args.results, args.experiment, args.seed, args.out,
        tolerance_pp=args.tolerance_pp, batch_sizes=args.batch_sizes, thread_counts=threads,
        warmup=args.warmup, repeats=args.repeats, max_images=args.max_images,
        torch_compile=args.torch_compile, log=say)
    model = table[(table.scope == "model") & (table.batch == min(args.batch_sizes))]
    print(model[["role", "kernel", "threads", "median_ms", "speedup", "ideal_speedup"]]
          .to_string(index=False))
    return 0


def _latency_resnets(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from dstcore.measure.latency_models import run_model_sweep

    if not set(args.models) <= {"resnet18", "resnet34", "resnet50"}:
        raise DstError(f"--models: torchvision ResNets only (resnet18, resnet34, resnet50), "
                       f"got {' '.join(args.models)}")
    if not all(0 <= s < 1 for s in [*args.sparsities, *args.weight_sparsities]):
        raise DstError("--sparsities and --weight-sparsities must be in [0, 1)")
    if min(args.threads) < 1 or min(args.batch_sizes) < 1 or args.repeats < 1 or args.size < 32:
        raise DstError("--threads, --batch-sizes and --repeats must be >= 1, --size >= 32")
    out = run_model_sweep(args.out, models=args.models, sparsities=args.sparsities,
                          weight_sparsities=args.weight_sparsities,
                          batch_sizes=args.batch_sizes, thread_counts=args.threads,
                          size=args.size, repeats=args.repeats,
                          torch_compile=args.torch_compile, log=say,
                          grid_sparsity=None if args.grid_sparsity < 0 else args.grid_sparsity)
    print(out["crossover"].to_string(index=False))
    return 0


def cmd_choose_tl1(args: argparse.Namespace) -> int:
    from dstcore.analysis.aggregate import collect
    from dstcore.analysis.frontier import choose_dual_tl1
    from dstcore.core.io import write_json

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise DstError(f"'{text}' is not 'auto' or a number") from None

    beta = args.beta if args.beta == "auto" else number(args.beta)
    lams = "auto" if args.lams == ["auto"] else [number(v) for v in args.lams]
    runs, _ = collect(args.metrics, args.results)
    try:
        choice = choose_dual_tl1(runs, args.experiment, args.tolerance_pp, beta, lams)
    except ValueError as err:
        raise DstError(str(err)) from None
    write_json(args.out, choice)
    print(f"{args.experiment}: stage 3 TL1 beta {choice['beta']:g} ({choice['beta_rule']}), "
          f"lams {', '.join(f'{v:g}' for v in choice['lams'])} ({choice['lams_rule']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad command line (already reported)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command in ("train", "finetune", "prune"):
            return cmd_run(args, args.command)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "render":
            import yaml

            from dstcore.report.render import render

            params = {name: yaml.safe_load(value) for name, value in args.parameter}
            render(args.notebook, args.out, args.html, params)
            print(f"{args.notebook} -> {args.html}")
            return 0
        if args.command == "latency":
            return cmd_latency(args)
        if args.command == "choose-tl1":
            return cmd_choose_tl1(args)
        if args.command == "aggregate":
            from dstcore.analysis.aggregate import write_tables

            runs = write_tables(args.metrics, args.results, args.out_dir)
            print(f"{len(runs)} runs -> {args.out_dir}")
            return 0
    except DstError as err:
        print(f"dst {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dst {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
