# The tables of every run's metrics.json (written by the training rules), and kernel latency.


rule aggregate:
    conda:
        "../../environment.yml"
    input:
        known=known_metrics,
        **stage3_metrics(),
    output:
        runs=f"{RESULTS}/tables/runs.csv",
        layers=f"{RESULTS}/tables/layers.csv",
        curves=f"{RESULTS}/tables/curves.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.runs)),
    shell:
        "python -m dstcore.cli aggregate --results {params.results} --out-dir $(dirname {output.runs}) "
        "{input} > {log} 2>&1"


# Kernel latency of the baseline, best TL1 and best dual model (chosen from runs.csv). The job
# takes every core so that nothing else runs while it times.
rule measure_latency:
    conda:
        "../../environment.yml"
    input:
        runs=f"{RESULTS}/tables/runs.csv",
    output:
        csv=f"{RESULTS}/latency/{{exp}}/seed{{seed}}.csv",
        meta=f"{RESULTS}/latency/{{exp}}/seed{{seed}}.meta.json",
    log:
        f"{RESULTS}/logs/{{exp}}/latency/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/latency/seed{{seed}}.tsv"
    threads: latency_threads()
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=latency_gpus,
    params:
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input.runs)),
        tolerance=config["report"]["tolerance_pp"],
        batch_sizes=" ".join(map(str, config["latency"]["batch_sizes"])),
        threads=" ".join(map(str, config["latency"]["threads"])),
        repeats=config["latency"]["repeats"],
        warmup=config["latency"]["warmup"],
        images=config["latency"]["max_images"],
        torch_compile="--torch-compile" if config["latency"]["torch_compile"] else "",
        gpu=config["latency"]["gpu"],
        gpu_batch_sizes=" ".join(map(str, config["latency"]["gpu_batch_sizes"])),
        gpu_compile_mode=config["latency"]["gpu_compile_mode"],
    shell:
        "python -m dstcore.cli latency models --runs {input.runs} --results {params.results} "
        "--experiment {wildcards.exp} --seed {wildcards.seed} --out {output.csv} "
        "--tolerance-pp {params.tolerance} --batch-sizes {params.batch_sizes} "
        "--threads {params.threads} --repeats {params.repeats} --warmup {params.warmup} "
        "--max-images {params.images} {params.torch_compile} --gpu {params.gpu} "
        "--gpu-batch-sizes {params.gpu_batch_sizes} --gpu-compile-mode {params.gpu_compile_mode} "
        "> {log} 2>&1"
