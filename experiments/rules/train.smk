# Training: TI, CrossInit and DTI per (subject, seed); TI-rescaled from TI.


rule train:
    input: MODEL_INPUT, images=IMAGES_INPUT
    output: f"{OUT}/runs/{{method}}/{{subject}}/seed{{seed}}/learned_embeds.safetensors"
    wildcard_constraints: method="ti|crossinit|dti", seed=r"\d+"
    params:
        run=lambda w: run_dir(w.method, w.subject, w.seed),
        initializer=lambda w: TABLE[w.subject]["initializer"],
        settings=settings(config.get("train")),
        env=torch_env("train"),
        gpu=gpu_wrap("train"),
    threads: threads("train")
    resources: **job_resources("train")
    log: f"{OUT}/logs/train/{{method}}_{{subject}}_seed{{seed}}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti train --model {config[model]} --method {wildcards.method}"
        " --images {input.images}/{wildcards.subject} --placeholder '<{wildcards.subject}>' --initializer '{params.initializer}'"
        " --seed {wildcards.seed} --out {params.run} --resume {params.settings} > {log} 2>&1"


rule rescale:
    input: f"{OUT}/runs/ti/{{subject}}/seed{{seed}}/learned_embeds.safetensors"
    output: f"{OUT}/runs/ti_rescaled/{{subject}}/seed{{seed}}/learned_embeds.safetensors"
    params: run=lambda w: run_dir("ti", w.subject, w.seed), out=lambda w: run_dir("ti_rescaled", w.subject, w.seed)
    resources: mem_mb=2000, runtime=10
    log: f"{OUT}/logs/rescale/{{subject}}_seed{{seed}}.log"
    shell: "{PY} -m dti rescale --run {params.run} --stat {config[rescale_stat]} --out {params.out} > {log} 2>&1"
