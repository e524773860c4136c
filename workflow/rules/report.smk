# The report: papermill runs notebooks/report.ipynb on the aggregated tables, nbconvert turns it
# into HTML (code hidden). Tables and figures are also written as files and registered with
# report() so that `snakemake --report report.html` works too.


rule report:
    conda:
        "../../environment.yml"
    input:
        notebook="notebooks/report.ipynb",
        runs=f"{RESULTS}/tables/runs.csv",
        layers=f"{RESULTS}/tables/layers.csv",
        curves=f"{RESULTS}/tables/curves.csv",
        latency=latency_targets(),
    output:
        notebook=f"{RESULTS}/report/report.ipynb",
        html=report(f"{RESULTS}/report/report.html", category="1. Report"),
        tables=[
            report(f"{RESULTS}/tables/{name}.csv", category="2. Tables")
            for name in REPORT_TABLES
        ],
        png=[
            report(f"{RESULTS}/figures/{stem}.png", category="3. Figures")
            for stem in report_figures()
        ],
        svg=[f"{RESULTS}/figures/{stem}.svg" for stem in report_figures()],
    log:
        f"{RESULTS}/logs/report.log",
    params:
        tolerance=config["report"]["tolerance_pp"],
        drops="[" + ", ".join(map(str, config["report"]["frontier_drops_pp"])) + "]",
        latency=lambda wildcards, input: "[" + ", ".join(input.latency) + "]",
        configs="[" + ", ".join(config_files_in_merge_order()) + "]",
        benchmarks=f"{RESULTS}/benchmarks",
        tables=lambda wildcards, output: os.path.dirname(output.tables[0]),
        figures=lambda wildcards, output: os.path.join(
            os.path.dirname(os.path.dirname(output.html)), "figures"
        ),
    shell:
        "python -m dstcore.cli render --notebook {input.notebook} --out {output.notebook} "
        "--html {output.html} -p runs_csv {input.runs} -p layers_csv {input.layers} "
        "-p curves_csv {input.curves} "
        "-p tables_dir {params.tables} -p figures_dir {params.figures} "
        "-p tolerance_pp {params.tolerance} -p frontier_drops_pp '{params.drops}' "
        "-p latency_csvs '{params.latency}' -p config_files '{params.configs}' "
        "-p benchmarks_dir {params.benchmarks} > {log} 2>&1"
