# Dual sparse training: stage 2 (weight l1 + magnitude pruning + masked fine-tune) and
# stage 3 (TL1 on the activations with the masks fixed, beside a lam = 0 control), for each
# pruning structure: {structure} is empty for element (unstructured) runs, whose paths predate
# block pruning, and e.g. block16- for block-structured ones (dual/block16-prune0.9/...). Stage 3's
# TL1 beta and lams are chosen from the activation-regulariser sweeps by a documented rule
# (dual.tl1_beta / dual.tl1_lams: auto), so they are a checkpoint's output.


rule prune_weights:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=baseline_model,
    output:
        model=run_file(RunKind.PRUNED, "model.pt"),
        summary=run_file(RunKind.PRUNED, "train.json"),
        metrics=run_file(RunKind.PRUNED, "metrics.json"),
    log:
        run_file(RunKind.PRUNED, ".log", "logs"),
    benchmark:
        run_file(RunKind.PRUNED, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.PRUNED),
    threads: config["threads_per_job"]
    priority: run_priority(RunKind.PRUNED)
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli prune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"


checkpoint choose_dual_tl1:
    conda:
        "../../environment.yml"
    input:
        tl1_choice_inputs,
    output:
        f"{RESULTS}/{{exp}}/dual/tl1_choice.json",
    log:
        f"{RESULTS}/logs/{{exp}}/dual/tl1_choice.log",
    params:
        # {results}/{exp}/dual/tl1_choice.json -> {results}
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(os.path.dirname(output[0]))),
        tolerance=config["report"]["tolerance_pp"],
        choice=dual_choice_params,
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m dstcore.cli choose-tl1 --experiment {wildcards.exp} --results {params.results} "
        "--tolerance-pp {params.tolerance} {params.choice} --out {output} {input} > {log} 2>&1"


rule dual_control:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=stage2_model,
    output:
        model=run_file(RunKind.DUAL_CONTROL, "model.pt"),
        summary=run_file(RunKind.DUAL_CONTROL, "train.json"),
        metrics=run_file(RunKind.DUAL_CONTROL, "metrics.json"),
    log:
        run_file(RunKind.DUAL_CONTROL, ".log", "logs"),
    benchmark:
        run_file(RunKind.DUAL_CONTROL, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.DUAL_CONTROL),
    threads: config["threads_per_job"]
    priority: run_priority(RunKind.DUAL_CONTROL)
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli finetune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"


rule dual_tl1:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=stage2_model,
    output:
        model=run_file(RunKind.DUAL, "model.pt"),
        summary=run_file(RunKind.DUAL, "train.json"),
        metrics=run_file(RunKind.DUAL, "metrics.json"),
    log:
        run_file(RunKind.DUAL, ".log", "logs"),
    benchmark:
        run_file(RunKind.DUAL, ".tsv", "benchmarks")
    params:
        args=spec_args(RunKind.DUAL),
    threads: config["threads_per_job"]
    priority: run_priority(RunKind.DUAL)
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli finetune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"
