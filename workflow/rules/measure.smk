# Accuracy, activation/weight sparsity and dense/effective MACs of every model, then tables.


rule evaluate:
    conda:
        "../../environment.yml"
    input:
        model="{run}/model.pt",
        summary="{run}/train.json",
    output:
        "{run}/metrics.json",
    log:
        "{run}/evaluate.log",
    threads: config["threads_per_job"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        device=config["device"],
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli evaluate --run $(dirname {input.model}) "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule aggregate:
    conda:
        "../../environment.yml"
    input:
        all_metrics(),
    output:
        runs=f"{RESULTS}/tables/runs.csv",
        layers=f"{RESULTS}/tables/layers.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.runs)),
    shell:
        "python -m dstcore.cli aggregate --results {params.results} --out-dir $(dirname {output.runs}) "
        "{input} > {log} 2>&1"
