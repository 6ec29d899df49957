# The ablation grid: DTI with (direction optimizer, m*, kappa) per cell, each cell in its own
# folder named by its parameters, so that changing one cell reruns only that cell.
# One cell alone:  snakemake --cores 8 results/<name>/ablation/<cell>/tables/summary.csv

ABLATION = config.get("ablation", {"cells": []})
CELLS = Paramspace(pd.DataFrame(ABLATION["cells"], columns=["direction_optimizer", "m_star", "kappa"]),
                   filename_params="*")
ABLATION_SUBJECTS = ABLATION.get("subjects") or SUBJECTS
ABLATION_SEEDS = ABLATION.get("seeds") or SEEDS  # training seeds of the cells, and of the default row they meet
CELL = f"{OUT}/ablation/{CELLS.wildcard_pattern}"  # one cell's folder, with the cell's wildcards


ABLATION_PARTS = run_parts(ABLATION_SUBJECTS, ABLATION_SEEDS)

for _k, _part in enumerate(ABLATION_PARTS):

    rule:
        name: part_rule_name("train_ablation", _k, ABLATION_PARTS)
        input: MODEL_INPUT, images=IMAGES_INPUT
        output: embeds=[run_embeds("dti", subject, seed, prefix=CELL) for subject, seed in _part]
        params:
            **train_params(runs=lambda wildcards, part=_part: [("dti", subject,
                                                                run_dir("dti", subject, seed, CELL.format(**wildcards)),
                                                                seed)
                                                               for subject, seed in part],
                           settings=lambda wildcards: settings({**method_train("dti"), **CELLS.instance(wildcards)}),
                           seeds=ABLATION_SEEDS),
        threads: threads("train")
        resources: **train_resources(len(_part))
        priority: TRAIN_PRIORITY["ablation"]
        log: log_of("ablation", CELLS.wildcard_pattern, f"part{_k}.log")
        benchmark: benchmark_of("ablation", CELLS.wildcard_pattern, f"part{_k}.tsv")
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: TRAIN_COMMAND

    rule:
        name: part_rule_name("sample_ablation", _k, ABLATION_PARTS)
        input: runs=[run_embeds("dti", subject, seed, prefix=CELL) for subject, seed in _part], world=WORLD_FILES
        output: manifests=[os.path.join(folder, MANIFEST) for folder in run_files(SAMPLES, CELL, "dti", _part)]
        params: **sample_params(CELL, "dti", _part)
        threads: threads("sample")
        resources: **job_resources("sample")
        log: f"{CELL}/logs/sample/dti_part{_k}.log"
        benchmark: f"{CELL}/benchmarks/sample/dti_part{_k}.tsv"
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: SAMPLE_COMMAND

    rule:
        name: part_rule_name("score_ablation", _k, ABLATION_PARTS)
        input: manifests=[os.path.join(folder, MANIFEST) for folder in run_files(SAMPLES, CELL, "dti", _part)],
               images=IMAGES_INPUT
        output: scores=run_files(SCORES, CELL, "dti", _part)
        params: **score_params(CELL, "dti", _part)
        threads: threads("score")
        resources: **job_resources("score")
        log: f"{CELL}/logs/score/dti_part{_k}.log"
        benchmark: f"{CELL}/benchmarks/score/dti_part{_k}.tsv"
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: SCORE_COMMAND


rule ablation_cell:
    localrule: True
    input: lambda wildcards: scores_of(CELL.format(**wildcards), ["dti"], ABLATION_SUBJECTS, ABLATION_SEEDS)
    output: summary=cell_summary(CELLS.wildcard_pattern)
    params: **aggregate_params(ABLATION_SUBJECTS)
    log: log_of("ablation", CELLS.wildcard_pattern, "aggregate.log")
    conda: CONDA_ENV
    shell: AGGREGATE_COMMAND


rule ablation_default:
    # The default DTI cell on the ablation's subjects, from the main table's DTI runs.
    localrule: True
    input: scores_of(OUT, ["dti"], ABLATION_SUBJECTS, ABLATION_SEEDS)
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
        # each cell minus the default per metric, paired over subjects (from the cells' per_subject.csv)
        paired=f"{OUT}/tables/ablation_paired.csv", paired_md=f"{OUT}/tables/ablation_paired.md",
    params:
        cells=" ".join(f"--cell {shlex.quote(f'{cell_label(row)}={cell_summary(pattern)}')}"
                       for (_, row), pattern in zip(CELLS.iterrows(), CELLS.instance_patterns)),
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}",
        default_runs=[run_dir("dti", subject, seed) for subject in ABLATION_SUBJECTS for seed in ABLATION_SEEDS],
        paper=PAPER_OPTION,
        preset=PRESET_OPTION,
        out=lambda wildcards, output: os.path.dirname(output.md),
    log: log_of("ablation_table.log")
    conda: CONDA_ENV
    shell:
        "python -m dti tables ablation --summary {input.default:q} {params.cells} {params.metrics}"
        " --default-runs {params.default_runs:q}"
        " {params.paper} {params.preset} --out {params.out:q} > {log:q} 2>&1"
