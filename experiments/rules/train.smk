# Training: every trained method (TI, CrossInit, DTI) per (subject, seed), in groups of runs (common.smk:
# one job per method and part of its runs); TI-rescaled from TI, in the same groups.
TRAIN_PARTS = run_parts(SUBJECTS, SEEDS)

for _k, _part in enumerate(TRAIN_PARTS):

    rule:
        name: part_rule_name("train", _k, TRAIN_PARTS)
        input: MODEL_INPUT, images=IMAGES_INPUT
        output: embeds=[run_embeds("{method}", subject, seed) for subject, seed in _part]
        wildcard_constraints: method=trained_methods_regex()
        params:
            **train_params(runs=lambda wildcards, part=_part: [(wildcards.method, subject,
                                                                run_dir(wildcards.method, subject, seed), seed)
                                                               for subject, seed in part],
                           settings=lambda wildcards: settings(method_train(wildcards.method)), seeds=SEEDS),
        threads: threads("train")
        resources: **train_resources(len(_part))
        priority: TRAIN_PRIORITY["main"]
        log: log_of("train", f"{{method}}_part{_k}.log")
        benchmark: benchmark_of("train", f"{{method}}_part{_k}.tsv")
        group: CLUSTER_GROUP
        conda: CONDA_ENV
        shell: TRAIN_COMMAND


# TI-rescaled: one job per training group of TI runs (seconds of work, most of it the start-up). Run by the
# submitting Snakemake on a cluster: in a group it would run beside its training group's sampling, and ask the
# cluster for one CPU more than one job needs.
for _k, _part in enumerate(TRAIN_PARTS):

    rule:
        name: part_rule_name("rescale", _k, TRAIN_PARTS)
        localrule: True
        input: ti=[run_embeds("ti", subject, seed) for subject, seed in _part]
        output: embeds=[run_embeds("ti_rescaled", subject, seed) for subject, seed in _part]
        params:
            pairs=lambda wildcards, input, output: " ".join(
                f"--run {shlex.quote(os.path.dirname(ti))} --out {shlex.quote(os.path.dirname(out))}"
                for ti, out in zip(input.ti, output.embeds)),
            stat=config["rescale_stat"],
        resources: mem_mb=2000, runtime=10
        log: log_of("rescale", f"part{_k}.log")
        conda: CONDA_ENV
        shell: "python -m dti rescale {params.pairs} --stat {params.stat:q} > {log:q} 2>&1"
