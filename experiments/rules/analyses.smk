# Analyses of the learned tokens and the base model (analysis/): figures (PNG, PDF, caption)
# under figures/, tidy tables under tables/.

ANALYSES = config.get("analyses", {})
MAIN_RUNS = expand(run_embeds("{method}", "{subject}", "{seed}"), method=ALL_METHODS, subject=SUBJECTS, seed=SEEDS)
MAIN_RUN_DIRS = [os.path.dirname(f) for f in MAIN_RUNS]  # lists: `{X:q}` quotes each folder
# The nearest words and the residual analysis show one subject's tokens; the probe and the contextual map take
# every run, so that the claims resting on them have a token per subject and seed.
FIRST_RUN_DIRS = [run_dir(m, SUBJECTS[0], SEEDS[0]) for m in ALL_METHODS]
FIGURES, TABLES = f"{OUT}/figures", f"{OUT}/tables"
# What an analysis reads: the base model (a hub id or a folder), the folders of its `figure` and `table`
# outputs, and its threads.
ANALYSIS_PARAMS = {"model": lambda wildcards: config["model"], "env": torch_env("analysis"),
                   "figures": lambda wildcards, output: os.path.dirname(output.figure),
                   "tables": lambda wildcards, output: os.path.dirname(output.table)}


rule training_curves:
    localrule: True
    input: MAIN_RUNS
    output: figure=figure("norm_growth"), drift=figure("cosine_drift"), table=f"{TABLES}/training_curves.csv",
            norms=f"{TABLES}/final_norms.csv"
    params: runs=MAIN_RUN_DIRS, **ANALYSIS_PARAMS
    log: log_of("analyses", "training_curves.log")
    conda: CONDA_ENV
    shell:
        "python -m analysis.training_curves --runs {params.runs:q} --figures {params.figures:q}"
        " --tables {params.tables:q} > {log:q} 2>&1"


# The five analyses inside the text encoders share one process (analysis/token_analyses.py): the encoders
# load once. Each still writes its own figure and tables.
rule token_analyses:
    input: MODEL_INPUT, MAIN_RUNS
    output:
        vocab_norms=figure("vocab_norms"), vocab_table=f"{TABLES}/vocab_norms.csv",
        learned_norms=f"{TABLES}/learned_norms.csv",
        nearest_words=f"{TABLES}/nearest_words.csv",
        probe=figure("positional_probe"), probe_table=f"{TABLES}/positional_probe.csv",
        residual=figure("residual_stagnation"), residual_table=f"{TABLES}/residual_stagnation.csv",
        contextual=figure("contextual_map"), contextual_table=f"{TABLES}/contextual_map.csv",
    params:
        runs=MAIN_RUN_DIRS, first_runs=FIRST_RUN_DIRS, model=ANALYSIS_PARAMS["model"], env=ANALYSIS_PARAMS["env"],
        figures=lambda wildcards, output: os.path.dirname(output.probe),
        tables=lambda wildcards, output: os.path.dirname(output.probe_table),
        initializer=ANALYSES.get("initializer", initializer_of("dti", SUBJECTS[0])),
        words="".join(f" --{kind} {shlex.join(ANALYSES[f'{kind}_words'])}" for kind in ("related", "unrelated")
                      if f"{kind}_words" in ANALYSES),
        probe=f"--seed {SEEDS[0]}" + (" --train-rows {} --test-rows {}".format(*ANALYSES["probe_rows"])
                                      if "probe_rows" in ANALYSES else ""),
    threads: threads("analysis")
    resources: **job_resources("analysis")
    log: log_of("analyses", "token_analyses.log")
    conda: CONDA_ENV
    shell:
        "{params.env} python -m analysis.token_analyses --model {params.model:q} --runs {params.runs:q}"
        " --first-runs {params.first_runs:q} --initializer {params.initializer:q}{params.words}"
        " --figures {params.figures:q} --tables {params.tables:q} --probe {params.probe} > {log:q} 2>&1"


PAIR = ANALYSES.get("interpolation", SUBJECTS[:2])
INTERPOLATED = ["dti", "ti"]  # the methods whose two concepts are interpolated (slerp for DTI, lerp for TI)


rule interpolation:
    input: a=run_embeds("{method}", PAIR[0], SEEDS[0]), b=run_embeds("{method}", PAIR[1], SEEDS[0])
    output:
        grid=report(f"{FIGURES}/interpolation_{{method}}/interpolation_grid_{{method}}.png",
                    caption="../report/interpolation.rst", category="Figures"),
        scores=report(f"{FIGURES}/interpolation_{{method}}/interpolation_scores_{{method}}.png",
                      caption="../report/interpolation_scores.rst", category="Figures"),
        table=f"{TABLES}/interpolation_{{method}}/interpolation.csv",
    wildcard_constraints: method="|".join(INTERPOLATED)
    params:
        env=torch_env("sample"),
        gpu=gpu_wrap("sample"),
        settings=settings(config["sample"].get("settings")),
        a=lambda wildcards, input: os.path.dirname(input.a), b=lambda wildcards, input: os.path.dirname(input.b),
        refs=(f"--references-a {shlex.quote(os.path.join(DATA['images'], PAIR[0]))}"
              f" --references-b {shlex.quote(os.path.join(DATA['images'], PAIR[1]))}"),
        classes=f"--class-a {shlex.quote(TABLE[PAIR[0]]['class'])} --class-b {shlex.quote(TABLE[PAIR[1]]['class'])}",
        prompts=f"--prompts {shlex.quote(DATA['prompt_set'])} --prompts-file {shlex.quote(DATA['prompts_file'])}",
        seeds=SAMPLE_SEEDS,
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC} {MODEL_IDS}",
        figures=lambda wildcards, output: os.path.dirname(output.grid),
        tables=lambda wildcards, output: os.path.dirname(output.table),
        work=lambda wildcards: os.path.join(OUT, "interpolation", wildcards.method),
    threads: threads("sample")
    resources: **job_resources("sample")
    log: log_of("interpolation_{method}.log")
    conda: CONDA_ENV
    shell:
        "{params.env} {params.gpu} python -m analysis.interpolation --run-a {params.a:q} --run-b {params.b:q}"
        " {params.prompts} --seeds {params.seeds} {params.refs} {params.classes} {params.metrics} {params.settings}"
        " --figures {params.figures:q} --tables {params.tables:q} --work {params.work:q} > {log:q} 2>&1"


rule ablation_view:
    localrule: True
    input: main=rules.aggregate_main.output.summary, ablation=rules.ablation_table.output.summary
    output: figure=figure("ablation_view"), table=f"{TABLES}/ablation_view.csv"
    params:
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}",
        figures=ANALYSIS_PARAMS["figures"], tables=ANALYSIS_PARAMS["tables"],
    log: log_of("analyses", "ablation_view.log")
    conda: CONDA_ENV
    shell:
        "python -m analysis.ablation_view --main {input.main:q} --ablation {input.ablation:q} {params.metrics}"
        " --figures {params.figures:q} --tables {params.tables:q} > {log:q} 2>&1"


ABLATION_RUNS = [run_embeds("dti", subject, seed, prefix=f"{OUT}/ablation/{pattern}")
                 for pattern in CELLS.instance_patterns for subject in ABLATION_SUBJECTS for seed in ABLATION_SEEDS]


rule step_sizes:
    # Per run: the angle turned per step, and the vMF prior's weight against the data gradients (kappa / |dL/dv|).
    localrule: True
    input: MAIN_RUNS, ABLATION_RUNS
    output: table=f"{TABLES}/step_sizes.csv"
    params:
        runs=lambda wildcards, input: [os.path.dirname(f) for f in input],
        tables=ANALYSIS_PARAMS["tables"],
    log: log_of("analyses", "step_sizes.log")
    conda: CONDA_ENV
    shell: "python -m analysis.step_sizes --runs {params.runs:q} --tables {params.tables:q} > {log:q} 2>&1"


rule qualitative_grid:
    # The paper's qualitative figure: per subject, its references, then methods x prompts at one sampling seed.
    localrule: True
    input:
        manifests=expand(f"{SAMPLES}/manifest.csv", prefix=OUT, method=ALL_METHODS, subject=SUBJECTS, seed=SEEDS[0]),
        images=IMAGES_INPUT,
    output:
        figures=[report(f"{FIGURES}/qualitative_grid_{subject}.png", caption="../report/qualitative_grid.rst",
                        category="Figures", subcategory="Qualitative") for subject in SUBJECTS],
        table=f"{TABLES}/qualitative_grid.csv",
    params:
        samples=lambda wildcards, input: str(Path(input.manifests[0]).parents[3]),  # <results>/samples
        subjects=SUBJECTS, methods=ALL_METHODS, train_seed=SEEDS[0], seed=config["sample"]["seeds"][0],
        figures=lambda wildcards, output: os.path.dirname(output.figures[0]),
        tables=ANALYSIS_PARAMS["tables"],
    log: log_of("analyses", "qualitative_grid.log")
    conda: CONDA_ENV
    shell:
        "python -m analysis.qualitative_grid --samples {params.samples:q} --references {input.images:q}"
        " --subjects {params.subjects:q} --methods {params.methods:q} --train-seed {params.train_seed}"
        " --seed {params.seed} --figures {params.figures:q} --tables {params.tables:q} > {log:q} 2>&1"


ANALYSIS_OUTPUTS = [rules.training_curves.output, rules.token_analyses.output,
                    expand(rules.interpolation.output, method=[m for m in INTERPOLATED if m in METHODS]),
                    rules.qualitative_grid.output, rules.step_sizes.output,
                    rules.ablation_view.output if ABLATION["cells"] else []]


rule job_costs:
    # Last: the time and memory of every training, sampling and scoring job (their benchmark files).
    localrule: True
    input: rules.main_table.output, rules.ablation_table.output if ABLATION["cells"] else [], ANALYSIS_OUTPUTS
    output: figure=figure("job_costs"), table=f"{TABLES}/job_costs.csv"
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.table)),
        figures=ANALYSIS_PARAMS["figures"], tables=ANALYSIS_PARAMS["tables"],
    log: log_of("analyses", "job_costs.log")
    conda: CONDA_ENV
    shell:
        "python -m analysis.job_costs --results {params.results:q} --figures {params.figures:q}"
        " --tables {params.tables:q} > {log:q} 2>&1"


rule claims:
    # The claims table: each claim of the paper this run can test, from the tables above, with a verdict.
    localrule: True
    input: rules.main_table.output, rules.ablation_table.output if ABLATION["cells"] else [], ANALYSIS_OUTPUTS
    output: md=report(f"{TABLES}/claims.md", caption="../report/claims.rst", category="Tables"), csv=f"{TABLES}/claims.csv"
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.csv)),
        tables=lambda wildcards, output: os.path.dirname(output.csv),
        paper=config.get("paper_numbers") or "sdxl",  # the mini world: the SDXL numbers, as the nearest setting
        metrics=f"--image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC}",
    log: log_of("claims.log")
    conda: CONDA_ENV
    shell:
        "python -m dti claims --results {params.results:q} --out {params.tables:q} --paper {params.paper:q}"
        " {params.metrics} > {log:q} 2>&1"
