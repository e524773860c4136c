rule prepare_data:
    conda:
        "../../environment.yml"
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    params:
        root=f"--data-root {config['data_root']}" if config["data_root"] else "",
        download="" if config["download"] else "--no-download",
        cache=config["cache_dir"],
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m dstcore.cli prepare --dataset {wildcards.dataset} {params.root} --cache-dir {params.cache} "
        "{params.download} --out {output} > {log} 2>&1"
