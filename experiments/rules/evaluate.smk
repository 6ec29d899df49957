# Evaluation: sample every run's prompt set, score it, aggregate, and write the main table. Sampling and
# scoring run in groups (common.smk): one job per method and part of its runs (the training groups), here for
# the main table's runs, in ablation.smk for each cell's.
for _k, _part in enumerate(TRAIN_PARTS):

    rule:
        name: part_rule_name("sample", _k, TRAIN_PARTS)
        input: runs=[run_embeds("{method}", subject, seed) for subject, seed in _part], world=WORLD_FILES
        output: manifests=[os.path.join(folder, MANIFEST) for folder in run_files(SAMPLES, OUT, "{method}", _part)]
        wildcard_constraints: method=r"[a-z_]+"
        params: **sample_params(OUT, "{method}", _part)
        threads: threads("sample")
        resources: **job_resources("sample")
        log: f"{OUT}/logs/sample/{{method}}_part{_k}.log"
        benchmark: f"{OUT}/benchmarks/sample/{{method}}_part{_k}.tsv"
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: SAMPLE_COMMAND

    rule:
        name: part_rule_name("score", _k, TRAIN_PARTS)
        input: manifests=[os.path.join(folder, MANIFEST) for folder in run_files(SAMPLES, OUT, "{method}", _part)],
               images=IMAGES_INPUT
        output: scores=run_files(SCORES, OUT, "{method}", _part)
        wildcard_constraints: method=r"[a-z_]+"
        params: **score_params(OUT, "{method}", _part)
        threads: threads("score")
        resources: **job_resources("score")
        log: f"{OUT}/logs/score/{{method}}_part{_k}.log"
        benchmark: f"{OUT}/benchmarks/score/{{method}}_part{_k}.tsv"
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: SCORE_COMMAND


MAIN_SCORES = f"{OUT}/tables/main_scores"  # the main table's aggregated scores


rule aggregate_main:
    localrule: True
    input: scores_of(OUT, ALL_METHODS, SUBJECTS)
    output: summary=f"{MAIN_SCORES}/summary.csv", per_subject=f"{MAIN_SCORES}/per_subject.csv",
            paired=[f"{MAIN_SCORES}/paired.csv"] if "dti" in METHODS else []  # DTI minus each other method
    params: **aggregate_params(SUBJECTS, paired_against="dti" if "dti" in METHODS else None)
    log: log_of("aggregate_main.log")
    conda: CONDA_ENV
    shell: AGGREGATE_COMMAND


rule main_table:
    localrule: True
    input: rules.aggregate_main.output.summary
    output: md=report(f"{OUT}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
            csv=f"{OUT}/tables/main.csv", tex=f"{OUT}/tables/main.tex"
    params:
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}"
                + "".join(f" --extra-metric {m}" for m in EXTRA_MAIN_METRICS),
        label=config["name"],
        paper=PAPER_OPTION,
        preset=PRESET_OPTION,
        out=lambda wildcards, output: os.path.dirname(output.md),
    log: log_of("main_table.log")
    conda: CONDA_ENV
    shell:
        "python -m dti tables main --summary {input:q} {params.metrics} --model-label {params.label:q}"
        " {params.paper} {params.preset} --out {params.out:q} > {log:q} 2>&1"
