# Evaluation: sample every run's prompt set, score it, aggregate, and write the main table.
# Sample and score are generic over the folder holding the runs ({prefix}: the main table's or
# one ablation cell's), so both tables are made by the same rules.


rule sample:
    input: run="{prefix}/runs/{method}/{subject}/seed{seed}/learned_embeds.safetensors", world=WORLD_FILES
    output: "{prefix}/samples/{method}/{subject}/seed{seed}/manifest.csv"
    wildcard_constraints: seed=r"\d+", method=r"[a-z_]+", subject=r"[^/]+"
    params:
        run=lambda w: f"{w.prefix}/runs/{w.method}/{w.subject}/seed{w.seed}",
        out=lambda w: f"{w.prefix}/samples/{w.method}/{w.subject}/seed{w.seed}",
        settings=settings(config["sample"].get("settings")),
        env=torch_env("sample"),
        gpu=gpu_wrap("sample"),
    threads: threads("sample")
    resources: **job_resources("sample")
    log: "{prefix}/logs/sample/{method}_{subject}_seed{seed}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti sample --run {params.run} --out {params.out} --subject {wildcards.subject}"
        " --prompts {DATA[prompt_set]} --prompts-file {DATA[prompts_file]} --subjects-file {DATA[subjects_file]}"
        " --seeds {SAMPLE_SEEDS} {params.settings} > {log} 2>&1"


rule score:
    input: manifest="{prefix}/samples/{method}/{subject}/seed{seed}/manifest.csv", images=IMAGES_INPUT
    output: "{prefix}/scores/{method}/{subject}/seed{seed}.csv"
    wildcard_constraints: seed=r"\d+", method=r"[a-z_]+", subject=r"[^/]+"
    params: env=torch_env("score"), gpu=gpu_wrap("score"), device=SCORE.get("device", "auto")
    threads: threads("score")
    resources: **job_resources("score")
    log: "{prefix}/logs/score/{method}_{subject}_seed{seed}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti score --manifest {input.manifest} --references {input.images} --protocol {SCORE[protocol]}"
        " {MODEL_IDS} {ATTRIBUTES} {MASKS} --device {params.device} --out {output} > {log} 2>&1"


def scores_of(prefix, methods, subjects):
    return expand(f"{prefix}/scores/{{method}}/{{subject}}/seed{{seed}}.csv", method=methods, subject=subjects,
                  seed=SEEDS)


rule aggregate_main:
    localrule: True
    input: scores_of(OUT, ALL_METHODS, SUBJECTS)
    output: f"{OUT}/tables/main_scores/summary.csv", f"{OUT}/tables/main_scores/per_subject.csv"
    params: out=f"{OUT}/tables/main_scores", subjects=" ".join(SUBJECTS)
    shell: "{PY} -m dti aggregate --scores {input} --subject-names {params.subjects} --out {params.out}"


rule main_table:
    localrule: True
    input: rules.aggregate_main.output[0]
    output: report(f"{OUT}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
            f"{OUT}/tables/main.csv", f"{OUT}/tables/main.tex"
    params: paper=f"--paper {config['paper_numbers']}" if config.get("paper_numbers") else ""
    shell:
        "{PY} -m dti tables main --summary {input} --image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}"
        " --model-label '{config[name]}' {params.paper} --out {OUT}/tables"
