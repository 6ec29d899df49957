# Workflow entry point. Default: the demo configuration (experiments/demo.yaml).
import os
import sys

from snakemake.utils import validate

configfile: "experiments/demo.yaml"
validate(config, "experiments/schema/demo.schema.yaml")

PY = sys.executable  # the interpreter that runs Snakemake, so the installed dti is used
OUT = f"{config['results_dir']}/{config['name']}"
RUNS = f"{OUT}/runs"
SETS = " ".join(f"--set {k}={v}" for k, v in sorted(config.get("set", {}).items()))
ALL_METHODS = config["methods"] + (["ti_rescaled"] if "ti" in config["methods"] else [])
RUN_FILES = expand(f"{RUNS}/{{method}}/learned_embeds.safetensors", method=ALL_METHODS)  # what analyses wait for
RUN_DIRS = " ".join(f"{RUNS}/{m}" for m in ALL_METHODS)  # what they read
# A training job asks for every core it is given, so local trainings run one at a time,
# and its torch threads never exceed the machine's cores (--cores 8 on a 2-core laptop).
TORCH_THREADS = f"OMP_NUM_THREADS={min(workflow.cores, os.cpu_count())}"


rule all:
    input:
        f"{OUT}/figures/norm_growth.png",
        f"{OUT}/figures/cosine_drift.png",
        f"{OUT}/figures/vocab_norms.png",
        f"{OUT}/tables/nearest_words.csv",
        f"{OUT}/figures/positional_probe.png",
        f"{OUT}/figures/residual_stagnation.png",
        f"{OUT}/figures/contextual_map.png",


rule base_model:
    output: directory(f"{OUT}/base")
    log: f"{OUT}/logs/base_model.log"
    shell: "{PY} -c \"from dti import tiny; tiny.build_sd('{output}')\" > {log} 2>&1"


rule reference_images:
    output: directory(f"{OUT}/images")
    params: n=config["reference_images"], seed=config["seed"]
    shell: "{PY} -c \"from dti import tiny; tiny.write_reference_images('{output}', n={params.n}, seed={params.seed})\""


rule train:
    input: base=rules.base_model.output, images=rules.reference_images.output
    output: f"{RUNS}/{{method}}/learned_embeds.safetensors"
    wildcard_constraints: method="ti|crossinit|dti"
    params: run=f"{RUNS}/{{method}}"
    threads: workflow.cores
    log: f"{OUT}/logs/train_{{method}}.log"
    shell:
        "{TORCH_THREADS} {PY} -m dti train --model {input.base} --method {wildcards.method}"
        " --images {input.images} --placeholder '{config[placeholder]}' --initializer '{config[initializer]}'"
        " --steps {config[steps]} --seed {config[seed]} --out {params.run} --resume {SETS} > {log} 2>&1"


rule rescale:
    input: f"{RUNS}/ti/learned_embeds.safetensors"
    output: f"{RUNS}/ti_rescaled/learned_embeds.safetensors"
    params: stat=config.get("rescale_stat", "mean")
    shell: "{PY} -m dti rescale --run {RUNS}/ti --stat {params.stat} --out {RUNS}/ti_rescaled"


rule training_curves:
    input: RUN_FILES
    output:
        f"{OUT}/figures/norm_growth.png",
        f"{OUT}/figures/cosine_drift.png",
        f"{OUT}/tables/training_curves.csv",
        f"{OUT}/tables/final_norms.csv",
    shell:
        "{PY} -m analysis.training_curves --runs {RUN_DIRS} --figures {OUT}/figures --tables {OUT}/tables"


rule vocab_norms:
    input: base=rules.base_model.output, runs=RUN_FILES
    output: f"{OUT}/figures/vocab_norms.png", f"{OUT}/tables/vocab_norms.csv", f"{OUT}/tables/learned_norms.csv"
    shell: "{PY} -m analysis.vocab_norms --model {input.base} --runs {RUN_DIRS} --figures {OUT}/figures --tables {OUT}/tables"


rule nearest_words:
    input: base=rules.base_model.output, runs=RUN_FILES
    output: f"{OUT}/tables/nearest_words.csv"
    shell: "{PY} -m analysis.nearest_words --model {input.base} --runs {RUN_DIRS} --tables {OUT}/tables"


rule positional_probe:
    input: base=rules.base_model.output, runs=RUN_FILES
    output: f"{OUT}/figures/positional_probe.png", f"{OUT}/tables/positional_probe.csv"
    threads: workflow.cores
    shell: "{TORCH_THREADS} {PY} -m analysis.positional_probe --model {input.base} --runs {RUN_DIRS} --seed {config[seed]} --figures {OUT}/figures --tables {OUT}/tables"


rule residual_stagnation:
    input: base=rules.base_model.output, runs=RUN_FILES
    output: f"{OUT}/figures/residual_stagnation.png", f"{OUT}/tables/residual_stagnation.csv"
    shell: "{PY} -m analysis.residual_stagnation --model {input.base} --runs {RUN_DIRS} --initializer '{config[initializer]}' --figures {OUT}/figures --tables {OUT}/tables"


rule contextual_map:
    input: base=rules.base_model.output, runs=RUN_FILES
    output: f"{OUT}/figures/contextual_map.png", f"{OUT}/tables/contextual_map.csv"
    shell: "{PY} -m analysis.contextual_map --model {input.base} --runs {RUN_DIRS} --figures {OUT}/figures --tables {OUT}/tables"
