# Stage 1 (dense baseline) and the activation-regulariser comparison (l1/hoyer/tl1 and lam=0).
# Runs resume from their own checkpoint.pt, which Snakemake does not delete on failure. Each run
# ends with the full evaluation of its model (metrics.json: accuracy, activation and weight
# sparsity, dense and effective MACs), measured on the last epoch's single test pass.


rule train_baseline:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
    output:
        model=run_file(RunKind.BASELINE, "model.pt"),
        summary=run_file(RunKind.BASELINE, "train.json"),
        metrics=run_file(RunKind.BASELINE, "metrics.json"),
    log:
        run_file(RunKind.BASELINE, ".log", "logs"),
    benchmark:
        run_file(RunKind.BASELINE, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.BASELINE),
    threads: config["threads_per_job"]
    priority: run_priority(RunKind.BASELINE)
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli train --out $(dirname {output.model}) --resume "
        "--allow-divergence --threads {threads} {params.args} > {log} 2>&1"


rule finetune_actreg:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=baseline_model,
    output:
        model=run_file(RunKind.ACTREG, "model.pt"),
        summary=run_file(RunKind.ACTREG, "train.json"),
        metrics=run_file(RunKind.ACTREG, "metrics.json"),
    log:
        run_file(RunKind.ACTREG, ".log", "logs"),
    benchmark:
        run_file(RunKind.ACTREG, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.ACTREG),
    threads: config["threads_per_job"]
    priority: run_priority(RunKind.ACTREG)
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli finetune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"


rule threshold_activations:
    # FATReLU: per-layer activation thresholds searched on the lam = 0 control (the same
    # fine-tune every regulariser had) within an accuracy budget; no weight changes
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=control_model,
    output:
        model=run_file(RunKind.THRESHOLD, "model.pt"),
        summary=run_file(RunKind.THRESHOLD, "train.json"),
        metrics=run_file(RunKind.THRESHOLD, "metrics.json"),
    log:
        run_file(RunKind.THRESHOLD, ".log", "logs"),
    benchmark:
        run_file(RunKind.THRESHOLD, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.THRESHOLD),
    threads: config["threads_per_job"]
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli threshold --from {input.parent} "
        "--out $(dirname {output.model}) --resume --threads {threads} {params.args} > {log} 2>&1"
