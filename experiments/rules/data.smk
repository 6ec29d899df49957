# Benchmark images. The mini world's are committed; DreamBooth's are fetched (and checked) once.


rule dreambooth_data:
    output: directory("data/dreambooth")
    log: "data/logs/dreambooth.log"
    conda: CONDA_ENV
    shell: "python -m dti data dreambooth --out {output:q} > {log:q} 2>&1"


rule mini_world:
    # Rebuild the mini world from its seed (resumable: the work folder keeps every stage's
    # checkpoints) and measure its quality gates. Compare with, or copy over, experiments/mini/world.
    output: world=directory("results/mini_build/world"), gates="results/mini_build/gates/gates.json"
    threads: CORES
    params:
        threads=min(CORES, CPUS), device=config.get("mini_world_device", "cpu"), work="results/mini_build/work",
        gates=lambda wildcards, output: os.path.dirname(output.gates),
    log: "results/mini_build/build.log"
    conda: CONDA_ENV
    shell:
        "(python -m miniworld.build --work {params.work:q} --out {output.world:q} --threads {params.threads}"
        " --device {params.device:q} && python -m miniworld.gates --world {output.world:q} --out {params.gates:q}"
        " --threads {params.threads} --device {params.device:q}) > {log:q} 2>&1"
