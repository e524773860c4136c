# dstcore: dual sparse training reproduction pipeline.
#   snakemake --cores 8 all                                   # default config (CPU; README, "Measured")
#   snakemake --cores 8 --configfile config/families.yaml all # and three more architectures
#   snakemake --cores 8 --configfile config/paper.yaml all    # the paper's grid (GPUs)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sparsify.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/report.smk"


rule all:
    # Every run is a target of its own, not only an input of the tables: Snakemake 9 does not
    # look for missing inputs behind an existing output whose DAG passes a checkpoint (stage 3's
    # TL1 choice; snakemake issues 3870, 3879), so an added experiment or a deleted run would
    # otherwise print "Nothing to be done".
    default_target: True
    input:
        all_targets(),
        known_metrics,
        **stage3_metrics(),


rule latency:
    # `make bench`: the per-model latency tables (trains what they need first)
    input:
        latency_targets(),
