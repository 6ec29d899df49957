# Calibration, on request only (not part of `all`): DTI's kappa and the AdamW ablation row's learning rate,
# chosen by the rules of analysis/calibration.py from DTI runs on the subjects table's validation subjects,
# which no reported table uses. The configuration then records the chosen values beside the rule.
#   snakemake --cores 2 calibration     ->  results/<name>/calibration/calibration.{csv,json,md}
CALIBRATION = config.get("calibration") or {}
VALIDATION_SUBJECTS = [s for s, row in TABLE.items() if row.get("split") == "validation"]
CALIBRATION_OUT = f"{OUT}/calibration"
# Arms: RSGD with kappa 0 (its data gradients set kappa), and AdamW with kappa 0 at each grid lr (its angles).
CALIBRATION_ARMS = {"rsgd": {"direction_optimizer": "rsgd", "kappa": 0.0},
                    **{f"adamw_lr~{lr:g}": {"direction_optimizer": "adamw", "kappa": 0.0, "adamw_lr": lr}
                       for lr in CALIBRATION.get("adamw_lrs", [])}}
# (arm, subject, seed, run folder) of every calibration run
CALIBRATION_RUNS = [(arm, subject, seed, run_dir("dti", subject, seed, prefix=f"{CALIBRATION_OUT}/{arm}"))
                    for arm in CALIBRATION_ARMS for subject in VALIDATION_SUBJECTS
                    for seed in CALIBRATION.get("seeds", [0])]


if CALIBRATION_RUNS:

    # one training group: the model loads once for every run
    rule calibration_train:
        input: MODEL_INPUT, images=IMAGES_INPUT
        output: embeds=[f"{folder}/learned_embeds.safetensors" for *_, folder in CALIBRATION_RUNS]
        params:
            **train_params(runs=lambda wildcards: [("dti", subject, folder, seed, CALIBRATION_ARMS[arm])
                                                   for arm, subject, seed, folder in CALIBRATION_RUNS],
                           settings=lambda wildcards: settings(method_train("dti"))),
        threads: threads("train")
        resources: **train_resources(len(CALIBRATION_RUNS))
        log: log_of("calibration", "train.log")
        conda: CONDA_ENV
        shell: TRAIN_COMMAND

    rule calibration:
        localrule: True
        input: rules.calibration_train.output
        output: table=f"{CALIBRATION_OUT}/calibration.csv", result=f"{CALIBRATION_OUT}/calibration.json",
                summary=f"{CALIBRATION_OUT}/calibration.md"
        params:
            runs=lambda wildcards, input: [os.path.dirname(f) for f in input],
            ratio=float(CALIBRATION.get("target_prior_ratio", 0.1)),
            cells=" ".join(str(float(r)) for r in CALIBRATION.get("cell_ratios", [0.01, 1.0])),
            out=lambda wildcards, output: os.path.dirname(output.table),
        log: log_of("calibration", "calibration.log")
        conda: CONDA_ENV
        shell:
            "python -m analysis.calibration --runs {params.runs:q} --target-prior-ratio {params.ratio}"
            " --cell-ratios {params.cells} --out {params.out:q} > {log:q} 2>&1"


else:
    NO_CALIBRATION = ("calibration needs validation subjects (the subjects table's split column) and "
                      "calibration.adamw_lrs in the configuration")

    rule calibration:
        # nothing to calibrate on: say why instead of running nothing
        params: why=shlex.quote(NO_CALIBRATION)
        log: log_of("calibration", "calibration.log")
        conda: CONDA_ENV
        shell: "echo error: {params.why} | tee {log:q} >&2; exit 1"
