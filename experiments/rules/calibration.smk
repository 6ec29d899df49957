# Calibration, on request only (not part of `all`): DTI's kappa and the AdamW ablation row's learning rate,
# chosen by the rules of analysis/calibration.py from DTI runs on the subjects table's validation subjects,
# which no reported table uses. The configuration then records the chosen values beside the rule.
#   snakemake --cores 2 calibration     ->  results/<name>/calibration/calibration.{csv,json,md}
# (its arms and runs: experiments/rules/common.smk)

if CALIBRATION_RUNS:

    # one training group per arm (a group holds one run per placeholder): the model loads once per arm
    rule calibration_train:
        input: MODEL_INPUT, images=IMAGES_INPUT
        output: embeds=CALIBRATION_EMBEDS
        wildcard_constraints: arm="|".join(re.escape(arm) for arm in CALIBRATION_ARMS)
        params:
            **train_params(runs=calibration_runs, settings=lambda wildcards: settings(method_train("dti")),
                           seeds=CALIBRATION.get("seeds", [0])),
        threads: threads("train")
        resources: **train_resources(len(CALIBRATION_RUNS))
        log: log_of("calibration", "train_{arm}.log")
        conda: CONDA_ENV
        shell: TRAIN_COMMAND

    rule calibration:
        localrule: True
        input: expand(CALIBRATION_EMBEDS, arm=list(CALIBRATION_ARMS))
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
