# A finished run against a committed reference of its tables (python -m dti.reference): a
# fresh run of the default configuration must match results/reference/mini within its tolerance.
# After changing the configuration on purpose, set `reference: null` (or save a new reference).

rule check_reference:
    localrule: True
    input: rules.main_table.output, rules.ablation_table.output if ABLATION["cells"] else [], ANALYSIS_OUTPUTS,
           rules.claims.output,  # the reference holds claims.csv too
           reference=config.get("reference") or []
    output: f"{OUT}/reference_check.txt"
    params: results=lambda wildcards, output: os.path.dirname(output[0])
    log: log_of("check_reference.log")
    conda: CONDA_ENV
    shell:
        "python -m dti.reference check --results {params.results:q} --reference {input.reference:q} 2> {log:q}"
        " | tee {output:q}"


REFERENCE_OUTPUTS = [rules.check_reference.output] if config.get("reference") else []
