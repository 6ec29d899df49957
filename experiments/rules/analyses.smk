# Analyses of the learned tokens and the base model (analysis/): figures (PNG, PDF, caption)
# under figures/, tidy tables under tables/.

ANALYSES = config.get("analyses", {})
MAIN_RUNS = expand(run_embeds("{method}", "{subject}", "{seed}"), method=ALL_METHODS, subject=SUBJECTS, seed=SEEDS)
MAIN_RUN_DIRS = [os.path.dirname(f) for f in MAIN_RUNS]  # lists: `{X:q}` quotes each folder
# Analyses that place each method's token among words use one subject, so figures stay legible.
FIRST_RUN_DIRS = [run_dir(m, SUBJECTS[0], SEEDS[0]) for m in ALL_METHODS]
FIGURES, TABLES = f"{OUT}/figures", f"{OUT}/tables"


def figure(name: str):
    return report(f"{FIGURES}/{name}.png", caption=f"../report/{name}.rst", category="Figures")


rule training_curves:
    localrule: True
    input: MAIN_RUNS
    output: figure("norm_growth"), figure("cosine_drift"), f"{TABLES}/training_curves.csv", f"{TABLES}/final_norms.csv"
    shell: "{PY} -m analysis.training_curves --runs {MAIN_RUN_DIRS:q} --figures {FIGURES:q} --tables {TABLES:q}"


rule vocab_norms:
    input: MODEL_INPUT, MAIN_RUNS
    output: figure("vocab_norms"), f"{TABLES}/vocab_norms.csv", f"{TABLES}/learned_norms.csv"
    params: env=torch_env("analysis")
    threads: threads("analysis")
    resources: **job_resources("analysis")
    shell:
        "{params.env} {PY} -m analysis.vocab_norms --model {config[model]:q} --runs {MAIN_RUN_DIRS:q}"
        " --figures {FIGURES:q} --tables {TABLES:q}"


rule nearest_words:
    input: MODEL_INPUT, MAIN_RUNS
    output: f"{TABLES}/nearest_words.csv"
    params: env=torch_env("analysis")
    threads: threads("analysis")
    resources: **job_resources("analysis")
    shell:
        "{params.env} {PY} -m analysis.nearest_words --model {config[model]:q} --runs {FIRST_RUN_DIRS:q}"
        " --tables {TABLES:q}"


rule positional_probe:
    input: MODEL_INPUT, MAIN_RUNS
    output: figure("positional_probe"), f"{TABLES}/positional_probe.csv"
    params:
        env=torch_env("analysis"),
        rows=("--train-rows {} --test-rows {}".format(*ANALYSES["probe_rows"]) if "probe_rows" in ANALYSES else ""),
    threads: threads("analysis")
    resources: **job_resources("analysis")
    shell:
        "{params.env} {PY} -m analysis.positional_probe --model {config[model]:q} --runs {FIRST_RUN_DIRS:q}"
        " {params.rows} --seed {SEEDS[0]} --figures {FIGURES:q} --tables {TABLES:q}"


rule residual_stagnation:
    input: MODEL_INPUT, MAIN_RUNS
    output: figure("residual_stagnation"), f"{TABLES}/residual_stagnation.csv"
    params: env=torch_env("analysis"), initializer=ANALYSES.get("initializer", initializer_of("dti", SUBJECTS[0]))
    threads: threads("analysis")
    resources: **job_resources("analysis")
    shell:
        "{params.env} {PY} -m analysis.residual_stagnation --model {config[model]:q} --runs {FIRST_RUN_DIRS:q}"
        " --initializer {params.initializer:q} --figures {FIGURES:q} --tables {TABLES:q}"


rule contextual_map:
    input: MODEL_INPUT, MAIN_RUNS
    output: figure("contextual_map"), f"{TABLES}/contextual_map.csv"
    params:
        env=torch_env("analysis"),
        words=(" --related " + shlex.join(ANALYSES["related_words"]) if "related_words" in ANALYSES else "")
              + (" --unrelated " + shlex.join(ANALYSES["unrelated_words"]) if "unrelated_words" in ANALYSES else ""),
    threads: threads("analysis")
    resources: **job_resources("analysis")
    shell:
        "{params.env} {PY} -m analysis.contextual_map --model {config[model]:q} --runs {FIRST_RUN_DIRS:q}{params.words}"
        " --figures {FIGURES:q} --tables {TABLES:q}"


PAIR = ANALYSES.get("interpolation", SUBJECTS[:2])
INTERPOLATED = ["dti", "ti"]  # the methods whose two concepts are interpolated (slerp for DTI, lerp for TI)


rule interpolation:
    input: a=run_embeds("{method}", PAIR[0], SEEDS[0]), b=run_embeds("{method}", PAIR[1], SEEDS[0])
    output:
        report(f"{FIGURES}/interpolation_{{method}}/interpolation_grid.png", caption="../report/interpolation.rst",
               category="Figures"),
        f"{FIGURES}/interpolation_{{method}}/interpolation_scores.png",
        f"{TABLES}/interpolation_{{method}}/interpolation.csv",
    wildcard_constraints: method="|".join(INTERPOLATED)
    params:
        env=torch_env("sample"),
        gpu=gpu_wrap("sample"),
        settings=settings(config["sample"].get("settings")),
        a=lambda wildcards, input: os.path.dirname(input.a), b=lambda wildcards, input: os.path.dirname(input.b),
        refs=(f"--references-a {shlex.quote(DATA['images'] + '/' + PAIR[0])}"
              f" --references-b {shlex.quote(DATA['images'] + '/' + PAIR[1])}"),
        classes=f"--class-a {shlex.quote(TABLE[PAIR[0]]['class'])} --class-b {shlex.quote(TABLE[PAIR[1]]['class'])}",
    threads: threads("sample")
    resources: **job_resources("sample")
    log: f"{OUT}/logs/interpolation_{{method}}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m analysis.interpolation --run-a {params.a:q} --run-b {params.b:q}"
        " --prompts {DATA[prompt_set]:q} --prompts-file {DATA[prompts_file]:q} --seeds {SAMPLE_SEEDS}"
        " {params.refs} {params.classes}"
        " --image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC} {MODEL_IDS} {params.settings}"
        " --figures {FIGURES:q}/interpolation_{wildcards.method:q}"
        " --tables {TABLES:q}/interpolation_{wildcards.method:q}"
        " --work {OUT:q}/interpolation/{wildcards.method:q} > {log:q} 2>&1"


rule ablation_view:
    localrule: True
    input: main=rules.aggregate_main.output.summary, ablation=rules.ablation_table.output.summary
    output: figure("ablation_view"), f"{TABLES}/ablation_view.csv"
    shell:
        "{PY} -m analysis.ablation_view --main {input.main:q} --ablation {input.ablation:q}"
        " --image-metric {IMAGE_METRIC} --text-metric {TEXT_METRIC} --figures {FIGURES:q} --tables {TABLES:q}"


ANALYSIS_OUTPUTS = [rules.training_curves.output, rules.vocab_norms.output, rules.nearest_words.output,
                    rules.positional_probe.output, rules.residual_stagnation.output, rules.contextual_map.output,
                    expand(rules.interpolation.output, method=[m for m in INTERPOLATED if m in METHODS]),
                    rules.ablation_view.output if ABLATION["cells"] else []]
