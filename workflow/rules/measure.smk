# Accuracy, activation/weight sparsity and dense/effective MACs of every model, then tables.


rule evaluate:
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
        "OMP_NUM_THREADS={threads} dst evaluate --run $(dirname {input.model}) "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule aggregate:
    input:
        all_metrics(),
    output:
        runs=f"{RESULTS}/tables/runs.csv",
        layers=f"{RESULTS}/tables/layers.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        results=RESULTS,
    shell:
        "dst aggregate --results {params.results} --out-dir $(dirname {output.runs}) "
        "{input} > {log} 2>&1"
