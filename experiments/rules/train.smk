# Training: every trained method (TI, CrossInit, DTI) per (subject, seed); TI-rescaled from TI.


rule train:
    input: MODEL_INPUT, images=IMAGES_INPUT
    output: embeds=run_embeds("{method}", "{subject}", "{seed}")
    wildcard_constraints: method=trained_methods_regex(), seed=r"\d+"
    params:
        **train_params(run=lambda wildcards: run_dir(wildcards.method, wildcards.subject, wildcards.seed),
                       settings=lambda wildcards: settings(method_train(wildcards.method))),
    threads: threads("train")
    resources: **job_resources("train")
    log: log_of("train", "{method}_{subject}_seed{seed}.log")
    benchmark: benchmark_of("train", "{method}_{subject}_seed{seed}.tsv")
    conda: CONDA_ENV
    shell: train_command("{wildcards.method:q}")


rule rescale:
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
