# A finished run against a committed reference of its tables (python -m dti.reference): a
# fresh run of the default configuration must match results/reference/mini within its tolerance.
# After changing the configuration on purpose, set `reference: null` (or save a new reference).

rule check_reference:
    localrule: True
    input: rules.main_table.output, rules.ablation_table.output if ABLATION["cells"] else [], ANALYSIS_OUTPUTS,
           reference=config.get("reference") or []
    output: f"{OUT}/reference_check.txt"
    shell: "{PY} -m dti.reference check --results {OUT:q} --reference {input.reference:q} | tee {output:q}"


REFERENCE_OUTPUTS = [rules.check_reference.output] if config.get("reference") else []
