# The ablation grid: DTI with (direction optimizer, m*, kappa) per cell, each cell in its own
# folder named by its parameters, so that changing one cell reruns only that cell.
# One cell alone:  snakemake --cores 8 results/<name>/ablation/<cell>/tables/summary.csv

ABLATION = config.get("ablation", {"cells": []})
CELLS = Paramspace(pd.DataFrame(ABLATION["cells"], columns=["direction_optimizer", "m_star", "kappa"]),
                   filename_params="*")
ABLATION_SUBJECTS = ABLATION.get("subjects") or SUBJECTS


rule train_ablation:
    input: MODEL_INPUT, images=IMAGES_INPUT
    output: f"{OUT}/ablation/{CELLS.wildcard_pattern}/runs/dti/{{subject}}/seed{{seed}}/learned_embeds.safetensors"
    wildcard_constraints: seed=r"\d+"
    params:
        run=lambda w, output: os.path.dirname(output[0]),
        initializer=lambda w: TABLE[w.subject]["initializer"],
        settings=lambda w: settings({**config.get("train", {}), **CELLS.instance(w)}),
        env=torch_env("train"),
        gpu=gpu_wrap("train"),
    threads: threads("train")
    resources: **job_resources("train")
    log: f"{OUT}/logs/ablation/{CELLS.wildcard_pattern}/{{subject}}_seed{{seed}}.log"
    shell:
        "{params.env} {params.gpu} {PY} -m dti train --model {config[model]} --method dti --images {input.images}/{wildcards.subject}"
        " --placeholder '<{wildcards.subject}>' --initializer '{params.initializer}' --seed {wildcards.seed}"
        " --out {params.run} --resume {params.settings} > {log} 2>&1"


rule ablation_cell:
    localrule: True
    input: lambda w: scores_of(f"{OUT}/ablation/{CELLS.wildcard_pattern.format(**w)}", ["dti"], ABLATION_SUBJECTS)
    output: f"{OUT}/ablation/{CELLS.wildcard_pattern}/tables/summary.csv"
    params: out=lambda w, output: os.path.dirname(output[0]), subjects=" ".join(ABLATION_SUBJECTS)
    shell: "{PY} -m dti aggregate --scores {input} --subject-names {params.subjects} --out {params.out}"


def cell_label(row) -> str:
    from dti.tables import cell_label as label
    return label(row["direction_optimizer"], row["m_star"], row["kappa"])


rule ablation_default:
    # The default DTI cell on the ablation's subjects, from the main table's DTI runs.
    localrule: True
    input: scores_of(OUT, ["dti"], ABLATION_SUBJECTS)
    output: f"{OUT}/ablation/default/tables/summary.csv"
    params: out=f"{OUT}/ablation/default/tables", subjects=" ".join(ABLATION_SUBJECTS)
    shell: "{PY} -m dti aggregate --scores {input} --subject-names {params.subjects} --out {params.out}"


rule ablation_table:
    localrule: True
    input:
        default=rules.ablation_default.output[0],
        cells=expand(f"{OUT}/ablation/{{cell}}/tables/summary.csv", cell=CELLS.instance_patterns),
    output: report(f"{OUT}/tables/ablation.md", caption="../report/ablation_table.rst", category="Tables"),
            f"{OUT}/tables/ablation.csv", f"{OUT}/tables/ablation.tex", f"{OUT}/tables/ablation_summary.csv"
    params:
        cells=" ".join(f"--cell '{cell_label(row)}={OUT}/ablation/{pattern}/tables/summary.csv'"
                       for (_, row), pattern in zip(CELLS.iterrows(), CELLS.instance_patterns)),
        paper=f"--paper {config['paper_numbers']}" if config.get("paper_numbers") else "",
    shell:
        "{PY} -m dti tables ablation --summary {input.default} {params.cells} --image-metric {IMAGE_METRIC}"
        " --text-metric {TEXT_METRIC} {params.paper} --out {OUT}/tables"
