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

from dstcore import DstError
from dstcore.cli.parser import (  # noqa: F401  (the parser's tables are part of the CLI's API)
    FINETUNE_SHORTCUTS,
    PRUNE_SHORTCUTS,
    SHORTCUTS,
    THRESHOLD_SHORTCUTS,
    build_parser,
)


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
    table = {**SHORTCUTS, **FINETUNE_SHORTCUTS, **PRUNE_SHORTCUTS, **THRESHOLD_SHORTCUTS}
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
    from dstcore.training.threshold import threshold_run

    cfg = resolve_config(args, stage)
    tags = parse_tags(args.tags)
    if tags:  # a run of the pipeline: its tags must name one (dstcore.core.runs.RunSpec)
        spec = RunSpec.from_tags(tags, cfg.train.seed)
        if spec.kind.command != stage:
            raise DstError(f"--tag kind={spec.kind} is made by dst {spec.kind.command}, "
                           f"not dst {stage}")
    if stage == "threshold":
        threshold_run(cfg, args.out, args.init, args.resume, not args.no_evaluate, tags)
        return 0
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
    configure_runtime(args.threads, True, compiles=False)
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
    if min(args.threads) < 0 or min(args.batch_sizes + args.gpu_batch_sizes) < 1 \
            or args.repeats < 1:
        raise DstError("--threads must be >= 0, --batch-sizes and --gpu-batch-sizes >= 1 and "
                       "--repeats >= 1")
    from dstcore.measure.experiment import measure_experiment

    threads = [t or None for t in args.threads]
    table = measure_experiment(
        args.runs, args.results, args.experiment, args.seed, args.out,
        tolerance_pp=args.tolerance_pp, batch_sizes=args.batch_sizes, thread_counts=threads,
        warmup=args.warmup, repeats=args.repeats, max_images=args.max_images,
        torch_compile=args.torch_compile, gpu=args.gpu, gpu_batch_sizes=args.gpu_batch_sizes,
        gpu_compile_mode=args.gpu_compile_mode, log=say)
    model = table[(table.scope == "model") & (table.batch == min(args.batch_sizes))]
    print(model[["role", "kernel", "device", "threads", "median_ms", "speedup",
                 "ideal_speedup"]]
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


def cmd_bench_train(args: argparse.Namespace) -> int:
    from dstcore.models import MODELS
    from dstcore.training.runtime import say
    from dstcore.training.throughput import BenchCell, phases, run_bench

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise DstError(f"--models: unknown {' '.join(unknown)}; choose from {', '.join(MODELS)}")
    chosen = args.phases or list(phases())
    if set(chosen) - set(phases()):
        raise DstError(f"--phases: {' '.join(sorted(set(chosen) - set(phases())))} unknown; "
                       f"choose from {', '.join(phases())}")
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.rounds < 1 or args.threads < 0:
        raise DstError("--batch-sizes, --steps and --rounds must be >= 1, --threads >= 0")

    def shape(model: str) -> tuple[int, int, int]:
        if args.input_shape:
            return tuple(args.input_shape)
        return (3, 32, 32) if model.startswith(("resnet18", "resnet34", "resnet50")) \
            else (1, 28, 28)

    cells = [BenchCell(m, shape(m), b, ph) for m in args.models for b in args.batch_sizes
             for ph in chosen]
    table = run_bench(cells, args.out, device=args.device, precision=args.precision,
                      layout=args.memory_format, threads=args.threads,
                      deterministic=args.deterministic, steps=args.steps,
                      warmup_steps=args.warmup_steps, rounds=args.rounds, data=args.data,
                      workers=args.workers, compiled=args.compile, log=say)
    print(table[["model", "batch", "phase", "device", "precision", "memory_format", "compiled",
                 "data", "images_per_s", "step_ms", "vs_plain", "data_wait_fraction", "gflops"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def cmd_check_report(args: argparse.Namespace) -> int:
    from dstcore.report import browser

    if not args.html.is_file():
        raise DstError(f"{args.html} does not exist (make all renders it)")
    chromium = browser.ensure_chromium()
    layout = browser.measure(args.html, chromium, args.width, args.height)
    view, verdicts = layout["viewport"], layout["verdicts"]
    print(f"viewport {view['width']} x {view['height']} px; page {layout['page_width']} px wide")
    if verdicts:
        print(f"verdict block: {verdicts['top']:.0f}-{verdicts['bottom']:.0f} px from the top")
    for t in layout["tables"]:
        where = " (collapsed by default)" if t["in_details"] else ""
        print(f"table {t['id']}: {t['scroll_width']} px wide{where}")
    loaded = sum(im["complete"] and im["natural_width"] > 0 for im in layout["images"])
    print(f"figures: {loaded} of {len(layout['images'])} loaded")
    if args.screenshot:
        png = browser.screenshot(args.html, args.screenshot, chromium, args.width, args.height)
        print(f"first screen -> {png}")
    found = browser.problems(layout)
    for line in found:
        print(f"problem: {line}")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad command line (already reported)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command in ("train", "finetune", "prune", "threshold"):
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
        if args.command == "bench-train":
            return cmd_bench_train(args)
        if args.command == "check-report":
            return cmd_check_report(args)
        if args.command == "choose-tl1":
            return cmd_choose_tl1(args)
        if args.command == "compare":
            from dstcore.analysis.compare import compare_claims, compare_runs, summary
            from dstcore.core.io import write_csv

            runs, claims = compare_runs(args.a, args.b), compare_claims(args.a, args.b)
            if args.out:
                write_csv(args.out, runs)
            print("\n".join(summary(runs, claims)))
            return 0
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
