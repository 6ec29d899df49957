# Evaluation: sample every run's prompt set, score it, aggregate, and write the main table.
# Sample and score are generic over the folder holding the runs ({prefix}: the main table's or
# one ablation cell's), so both tables are made by the same rules.
SAMPLES = "{prefix}/samples/{method}/{subject}/seed{seed}"  # one run's images and manifest.csv
SCORES = "{prefix}/scores/{method}/{subject}/seed{seed}.csv"  # one run's scores


rule sample:
    input: run=run_embeds("{method}", "{subject}", "{seed}", prefix="{prefix}"), world=WORLD_FILES
    output: manifest=f"{SAMPLES}/manifest.csv"
    wildcard_constraints: seed=r"\d+", method=r"[a-z_]+", subject=r"[^/]+"
    params:
        run=lambda wildcards, input: os.path.dirname(input.run),
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        settings=settings(config["sample"].get("settings")),
        prompts=(f"--prompts {shlex.quote(DATA['prompt_set'])} --prompts-file {shlex.quote(DATA['prompts_file'])}"
                 f" --subjects-file {shlex.quote(DATA['subjects_file'])}"),
        seeds=SAMPLE_SEEDS,
        env=torch_env("sample"),
        gpu=gpu_wrap("sample"),
    threads: threads("sample")
    resources: **job_resources("sample")
    log: "{prefix}/logs/sample/{method}_{subject}_seed{seed}.log"
    benchmark: "{prefix}/benchmarks/sample/{method}_{subject}_seed{seed}.tsv"
    conda: CONDA_ENV
    shell:
        "{params.env} {params.gpu} python -m dti sample --run {params.run:q} --out {params.out:q}"
        " --subject {wildcards.subject:q} {params.prompts} --seeds {params.seeds} {params.settings} > {log:q} 2>&1"


rule score:
    input: manifest=rules.sample.output.manifest, images=IMAGES_INPUT
    output: SCORES
    wildcard_constraints: seed=r"\d+", method=r"[a-z_]+", subject=r"[^/]+"
    params:
        env=torch_env("score"), gpu=gpu_wrap("score"), device=SCORE.get("device", "auto"),
        protocol=SCORE["protocol"], options=" ".join(filter(None, [MODEL_IDS, ATTRIBUTES, MASKS])),
    threads: threads("score")
    resources: **job_resources("score")
    log: "{prefix}/logs/score/{method}_{subject}_seed{seed}.log"
    benchmark: "{prefix}/benchmarks/score/{method}_{subject}_seed{seed}.tsv"
    conda: CONDA_ENV
    shell:
        "{params.env} {params.gpu} python -m dti score --manifest {input.manifest:q} --references {input.images:q}"
        " --protocol {params.protocol:q} {params.options} --device {params.device:q} --out {output:q} > {log:q} 2>&1"


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
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}",
        label=config["name"],
        paper=PAPER_OPTION,
        preset=PRESET_OPTION,
        out=lambda wildcards, output: os.path.dirname(output.md),
    log: log_of("main_table.log")
    conda: CONDA_ENV
    shell:
        "python -m dti tables main --summary {input:q} {params.metrics} --model-label {params.label:q}"
        " {params.paper} {params.preset} --out {params.out:q} > {log:q} 2>&1"
