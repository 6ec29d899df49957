# Training: every trained method (TI, CrossInit, DTI) per (subject, seed), in groups of runs (common.smk:
# one job per method, seed and part of the subjects); TI-rescaled from TI.
TRAIN_PARTS = subject_parts(SUBJECTS)

for _k, _part in enumerate(TRAIN_PARTS):

    rule:
        name: part_rule_name("train", _k, TRAIN_PARTS)
        input: MODEL_INPUT, images=IMAGES_INPUT
        output: embeds=[run_embeds("{method}", subject, "{seed}") for subject in _part]
        wildcard_constraints: method=trained_methods_regex(), seed=r"\d+"
        params:
            **train_params(runs=lambda wildcards, part=_part: [(wildcards.method, subject,
                                                                run_dir(wildcards.method, subject, wildcards.seed))
                                                               for subject in part],
                           settings=lambda wildcards: settings(method_train(wildcards.method))),
        threads: threads("train")
        resources: **train_resources(len(_part))
        log: log_of("train", f"{{method}}_seed{{seed}}_part{_k}.log")
        benchmark: benchmark_of("train", f"{{method}}_seed{{seed}}_part{_k}.tsv")
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: TRAIN_COMMAND


rule rescale:
    # seconds of work: run by the submitting Snakemake on a cluster (in a group it would run beside its
    # training group's sampling, and ask the cluster for one CPU more than one job needs)
    localrule: True
    input: ti=run_embeds("ti", "{subject}", "{seed}")
    output: embeds=run_embeds("ti_rescaled", "{subject}", "{seed}")
    params:
        run=lambda wildcards, input: os.path.dirname(input.ti),
        out=lambda wildcards, output: os.path.dirname(output.embeds),
        stat=config["rescale_stat"],
    resources: mem_mb=2000, runtime=10
    log: log_of("rescale", "{subject}_seed{seed}.log")
    conda: CONDA_ENV
    shell: "python -m dti rescale --run {params.run:q} --stat {params.stat:q} --out {params.out:q} > {log:q} 2>&1"
