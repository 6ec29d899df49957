# The experiment workflow: data -> train (method x subject x seed) -> rescale -> sample -> score
# -> tables, the ablation grid, and the analyses' figures. Rules live in experiments/rules/.
#   snakemake --cores 8                                        the mini world (experiments/mini.yaml)
#   snakemake --cores 8 --configfile experiments/sdxl.yaml     a paper configuration
#   snakemake --report report.html                            every table and figure on one page
from snakemake.utils import validate

if "model" not in config:  # no --configfile (every configuration names its model): the mini world
    configfile: "experiments/mini.yaml"  # (--config still overrides its keys)
validate(config, "experiments/schema/config.schema.yaml")
report: "experiments/report/workflow.rst"

include: "experiments/rules/common.smk"
include: "experiments/rules/data.smk"
include: "experiments/rules/train.smk"
include: "experiments/rules/evaluate.smk"
include: "experiments/rules/ablation.smk"
include: "experiments/rules/analyses.smk"
include: "experiments/rules/calibration.smk"
include: "experiments/rules/reference.smk"


rule all:
    input:
        rules.main_table.output,
        rules.ablation_table.output if ABLATION["cells"] else [],
        ANALYSIS_OUTPUTS,
        rules.job_costs.output,
        rules.claims.output,
        REFERENCE_OUTPUTS,
