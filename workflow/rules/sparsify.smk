# Dual sparse training: stage 2 (weight l1 + magnitude pruning + masked fine-tune) and
# stage 3 (TL1 on the activations with the masks fixed; lam = 0 is the matching control).


rule prune_weights:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=baseline_model,
    output:
        model=f"{RESULTS}/{{exp}}/dual/prune{{rate}}/stage2/seed{{seed}}/model.pt",
        summary=f"{RESULTS}/{{exp}}/dual/prune{{rate}}/stage2/seed{{seed}}/train.json",
    log:
        f"{RESULTS}/logs/{{exp}}/dual/prune{{rate}}/stage2/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/dual/prune{{rate}}/stage2/seed{{seed}}.tsv"
    params:
        args=prune_args,
    threads: config["threads_per_job"]
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli prune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --no-evaluate --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"


rule dual_tl1:
    conda:
        "../../environment.yml"
    input:
        data=prepared_data,
        parent=stage2_model,
    output:
        model=f"{RESULTS}/{{exp}}/dual/prune{{rate}}/lam{{lam}}/seed{{seed}}/model.pt",
        summary=f"{RESULTS}/{{exp}}/dual/prune{{rate}}/lam{{lam}}/seed{{seed}}/train.json",
    log:
        f"{RESULTS}/logs/{{exp}}/dual/prune{{rate}}/lam{{lam}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/dual/prune{{rate}}/lam{{lam}}/seed{{seed}}.tsv"
    params:
        args=dual_args,
    threads: config["threads_per_job"]
    resources:
        mem_mb=resources_of("mem_mb", 4000),
        runtime=resources_of("runtime", 60),
        gpu=resources_of("gpu", 0),
    shell:
        "OMP_NUM_THREADS={threads} python -m dstcore.cli finetune --from {input.parent} "
        "--out $(dirname {output.model}) --resume --no-evaluate --allow-divergence "
        "--threads {threads} {params.args} > {log} 2>&1"
