"""``dst threshold``: FATReLU's one-shot threshold search on a saved model, as one run.

The run directory holds what every run's does: ``config.yaml``, ``model.pt`` (the parent's
weights with ``act_thresholds``), ``train.json`` (with the search: each layer's threshold,
quantile level and slice top-1) and ``metrics.json``. No weight changes, so there is no epoch
and nothing to resume: a rerun repeats the search, which is deterministic. Fine-tuning with
the thresholds fixed is ``dst finetune --from`` this run's ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dstcore import DstError
from dstcore.core.environment import provenance
from dstcore.core.io import write_json, write_yaml
from dstcore.core.records import make_record, write_record
from dstcore.data.datasets import load_dataset
from dstcore.data.loaders import held_out_slice
from dstcore.measure.metrics import full_metrics
from dstcore.models.checkpoint import model_from_payload, save_model
from dstcore.sparsity.fatrelu import apply_thresholds, search_thresholds
from dstcore.training.config import RunConfig, validate
from dstcore.training.runtime import configure_runtime, resolve_device, say
from dstcore.training.session import load_parent

STAGE = "threshold"


def threshold_run(cfg: RunConfig, out_dir: str | Path, init: str | Path, resume: bool = False,
                  final_eval: bool = True, tags: dict[str, str] | None = None) -> dict:
    """Search FATReLU thresholds on the model at ``init`` within ``cfg.fatrelu.budget_pp``
    and write the run to ``out_dir``; returns its ``train.json`` summary. ``resume`` lets a
    directory that holds a run be written again (the search is repeated)."""
    validate(cfg, STAGE)
    if cfg.reg.method != "none":
        raise DstError(f"reg.method: {cfg.reg.method!r} is not taken by dst threshold (it "
                       f"changes no weight); leave it none")
    out_dir, init = Path(out_dir), Path(init)
    if not resume and (out_dir / "model.pt").exists():
        raise DstError(f"{out_dir} already holds a run; pass --resume to search again or "
                       f"choose another output directory")
    parent = load_parent(init, cfg, STAGE)
    if parent.get("act_thresholds"):
        raise DstError(f"{init} already has FATReLU thresholds; search on the model they were "
                       f"searched on")
    device = resolve_device(cfg.train.device)
    configure_runtime(cfg.train.threads, cfg.train.deterministic, device, compiles=False)
    d = cfg.data
    bundle = load_dataset(d.dataset, d.data_root, d.cache_dir, d.download, d.verify,
                          d.train_subset, d.test_subset, d.subset_seed)
    f = cfg.fatrelu
    images, labels, where = held_out_slice(bundle, f.search_images, d.subset_seed)
    model = model_from_payload(parent, init).to(device)  # read once, by load_parent
    t0 = time.perf_counter()
    thresholds, steps, start = search_thresholds(model, images.to(device), labels.to(device),
                                                 f.budget_pp, f.search_steps)
    model = apply_thresholds(model, thresholds)
    seconds = time.perf_counter() - t0
    say(f"{out_dir}: FATReLU thresholds on {len(thresholds)} of {len(steps)} layers, slice "
        f"top-1 {start:.2f}% -> {steps[-1].top1_pct if steps else start:.2f}% "
        f"({where} slice of {len(labels)}, {seconds:.1f}s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(out_dir / "config.yaml", {"stage": STAGE, "from": str(init), **cfg.to_dict()})
    summary = _summary(cfg, init, parent, tags or {}, bundle.source, device, seconds)
    summary["search"] = {"slice": where, "images": len(labels), "slice_top1_before": start,
                         "layers": [dataclasses.asdict(s) for s in steps]}
    save_model(out_dir / "model.pt", model, model_name=cfg.model.name, dataset=d.dataset,
               input_shape=bundle.input_shape, num_classes=bundle.num_classes,
               masks_fixed=bool(parent["masks_fixed"]), config=cfg.to_dict(), stage=STAGE,
               status="completed", final_top1=parent.get("final_top1"),
               act_thresholds=thresholds)
    write_json(out_dir / "train.json", summary)
    if final_eval:
        evaluation = full_metrics(model, bundle, device, d.eval_batch_size, d.num_workers)
        write_record(out_dir / "metrics.json", make_record(evaluation, summary))
    return summary


def _summary(cfg: RunConfig, init: Path, parent: dict, tags: dict[str, str], source: str,
             device, seconds: float) -> dict:
    """``train.json`` of a threshold run: a run's summary with no epochs."""
    return {"status": "completed", "stage": STAGE, "tags": tags, "from": str(init),
            "parent_status": parent.get("status"), "epochs_planned": 0, "epochs_completed": 0,
            "divergence": None, "final": None, "train_seconds_per_epoch": None,
            "wall_seconds": seconds, "config": cfg.to_dict(), "data_source": source,
            "provenance": provenance(device, cfg.train.seed)}
