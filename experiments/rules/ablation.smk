# The ablation grid: DTI with (direction optimizer, m*, kappa) per cell, each cell in its own
# folder named by its parameters, so that changing one cell reruns only that cell.
# One cell alone:  snakemake --cores 8 results/<name>/ablation/<cell>/tables/summary.csv

ABLATION = config.get("ablation", {"cells": []})
CELLS = Paramspace(pd.DataFrame(ABLATION["cells"], columns=["direction_optimizer", "m_star", "kappa"]),
                   filename_params="*")
ABLATION_SUBJECTS = ABLATION.get("subjects") or SUBJECTS
CELL = f"{OUT}/ablation/{CELLS.wildcard_pattern}"  # one cell's folder, with the cell's wildcards


rule train_ablation:
    input: MODEL_INPUT, images=IMAGES_INPUT
    output: embeds=run_embeds("dti", "{subject}", "{seed}", prefix=CELL)
    wildcard_constraints: seed=r"\d+"
    params:
        **train_params(run=lambda wildcards, output: os.path.dirname(output.embeds),
                       settings=lambda wildcards: settings({**method_train("dti"), **CELLS.instance(wildcards)}),
                       method="dti"),
    threads: threads("train")
    resources: **job_resources("train")
    log: log_of("ablation", CELLS.wildcard_pattern, "{subject}_seed{seed}.log")
    benchmark: benchmark_of("ablation", CELLS.wildcard_pattern, "{subject}_seed{seed}.tsv")
    conda: CONDA_ENV
    shell: train_command("dti")


rule ablation_cell:
    localrule: True
    input: lambda wildcards: scores_of(CELL.format(**wildcards), ["dti"], ABLATION_SUBJECTS)
    output: summary=cell_summary(CELLS.wildcard_pattern)
    params: **aggregate_params(ABLATION_SUBJECTS)
    log: log_of("ablation", CELLS.wildcard_pattern, "aggregate.log")
    conda: CONDA_ENV
    shell: AGGREGATE_COMMAND


rule ablation_default:
    # The default DTI cell on the ablation's subjects, from the main table's DTI runs.
    localrule: True
    input: scores_of(OUT, ["dti"], ABLATION_SUBJECTS)
    output: summary=cell_summary("default")
    params: **aggregate_params(ABLATION_SUBJECTS)
    log: log_of("ablation", "default", "aggregate.log")
    conda: CONDA_ENV
    shell: AGGREGATE_COMMAND


rule ablation_table:
    localrule: True
    input:
        default=rules.ablation_default.output.summary,
        cells=[cell_summary(pattern) for pattern in CELLS.instance_patterns],
    output:
        md=report(f"{OUT}/tables/ablation.md", caption="../report/ablation_table.rst", category="Tables"),
        csv=f"{OUT}/tables/ablation.csv",
        tex=f"{OUT}/tables/ablation.tex",
        summary=f"{OUT}/tables/ablation_summary.csv",
    params:
        cells=" ".join(f"--cell {shlex.quote(f'{cell_label(row)}={cell_summary(pattern)}')}"
                       for (_, row), pattern in zip(CELLS.iterrows(), CELLS.instance_patterns)),
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}",
        default_runs=[run_dir("dti", subject, seed) for subject in ABLATION_SUBJECTS for seed in SEEDS],
        paper=PAPER_OPTION,
        preset=PRESET_OPTION,
        out=lambda wildcards, output: os.path.dirname(output.md),
    log: log_of("ablation_table.log")
    conda: CONDA_ENV
    shell:
        "python -m dti tables ablation --summary {input.default:q} {params.cells} {params.metrics}"
        " --default-runs {params.default_runs:q}"
        " {params.paper} {params.preset} --out {params.out:q} > {log:q} 2>&1"
