# Benchmark images. The mini world's are committed; DreamBooth's are fetched (and checked) once.


rule dreambooth_data:
    output: directory("data/dreambooth")
    log: "data/logs/dreambooth.log"
    shell: "{PY} -m dti data dreambooth --out {output:q} > {log:q} 2>&1"


rule mini_world:
    # Rebuild the mini world from its seed (resumable: the work folder keeps every stage's
    # checkpoints) and measure its quality gates. Compare with, or copy over, experiments/mini/world.
    output: directory("results/mini_build/world"), "results/mini_build/gates/gates.json"
    threads: CORES
    params: threads=min(CORES, CPUS), device=config.get("mini_world_device", "cpu")
    log: "results/mini_build/build.log"
    shell:
        "({PY} -m miniworld.build --work results/mini_build/work --out {output[0]:q} --threads {params.threads}"
        " --device {params.device:q} && {PY} -m miniworld.gates --world {output[0]:q} --out results/mini_build/gates"
        " --threads {params.threads} --device {params.device:q}) > {log:q} 2>&1"
