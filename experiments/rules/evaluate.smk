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
        run=lambda wildcards: run_dir(wildcards.method, wildcards.subject, wildcards.seed, prefix=wildcards.prefix),
        out=lambda wildcards: SAMPLES.format(**wildcards),
        settings=settings(config["sample"].get("settings")),
        env=torch_env("sample"),
        gpu=gpu_wrap("sample"),
    threads: threads("sample")
    resources: **job_resources("sample")
    log: "{prefix}/logs/sample/{method}_{subject}_seed{seed}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti sample --run {params.run:q} --out {params.out:q}"
        " --subject {wildcards.subject:q}"
        " --prompts {DATA[prompt_set]:q} --prompts-file {DATA[prompts_file]:q} --subjects-file {DATA[subjects_file]:q}"
        " --seeds {SAMPLE_SEEDS} {params.settings} > {log:q} 2>&1"


rule score:
    input: manifest=rules.sample.output.manifest, images=IMAGES_INPUT
    output: SCORES
    wildcard_constraints: seed=r"\d+", method=r"[a-z_]+", subject=r"[^/]+"
    params: env=torch_env("score"), gpu=gpu_wrap("score"), device=SCORE.get("device", "auto")
    threads: threads("score")
    resources: **job_resources("score")
    log: "{prefix}/logs/score/{method}_{subject}_seed{seed}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti score --manifest {input.manifest:q} --references {input.images:q}"
        " --protocol {SCORE[protocol]:q}"
        " {MODEL_IDS} {ATTRIBUTES} {MASKS} --device {params.device:q} --out {output:q} > {log:q} 2>&1"


MAIN_SCORES = f"{OUT}/tables/main_scores"  # the main table's aggregated scores


def scores_of(prefix, methods, subjects):
    """Every seed's scores of the given methods and subjects, under ``prefix``."""
    return expand(SCORES, prefix=prefix, method=methods, subject=subjects, seed=SEEDS)


rule aggregate_main:
    localrule: True
    input: scores_of(OUT, ALL_METHODS, SUBJECTS)
    output: summary=f"{MAIN_SCORES}/summary.csv", per_subject=f"{MAIN_SCORES}/per_subject.csv"
    params: **aggregate_params(MAIN_SCORES, SUBJECTS)
    shell: AGGREGATE_COMMAND


rule main_table:
    localrule: True
    input: rules.aggregate_main.output.summary
    output: report(f"{OUT}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
            f"{OUT}/tables/main.csv", f"{OUT}/tables/main.tex"
    params: paper=f"--paper {shlex.quote(config['paper_numbers'])}" if config.get("paper_numbers") else ""
    shell:
        "{PY} -m dti tables main --summary {input:q} --image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}"
        " --model-label {config[name]:q} {params.paper} {PRESET_OPTION} --out {OUT:q}/tables"
