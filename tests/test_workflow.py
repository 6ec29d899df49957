"""The workflow through real Snakemake: dry-run plans of every configuration, schema errors,
the smoke configuration end to end on the mini world (with its reference check), rerunning one
ablation cell, and the paper configurations' rules on tiny stand-in models."""

import json
import os
import re
import shlex
import shutil

import pandas as pd
import pytest
import yaml
from dti import reference
from conftest import ROOT
from conftest import run_snakemake as snakemake


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule; the parts of a training rule (train_part0, train_part1, ...) count as one rule."""
    table = output.split("Job stats:")[1]
    counts = {}
    for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M):
        rule = re.sub(r"_part\d+$", "", m.group(1))
        counts[rule] = counts.get(rule, 0) + int(m.group(2))
    return counts


def train_runs(command: str) -> list[dict]:
    """The runs a `dti train` command trains: its --run objects, each with the command's --set values."""
    words = shlex.split(command)
    shared = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return [{**json.loads(words[i + 1]), "shared_set": shared} for i, w in enumerate(words) if w == "--run"]


# (config file, extra --config, expected job counts): 30 DreamBooth subjects, 3 trained methods
# + TI-rescaled, 5 ablation cells on SDXL; the mini world at 3 training seeds, 6 ablation cells at one.
# Training, rescaling, sampling and scoring jobs: one per method (or cell) on the mini world (all subjects and
# seeds in one group), one per run on the GPU configurations (runs_per_job: 1).
PLANS = [
    ("mini.yaml", [], {"train": 3, "rescale": 1, "sample": 4, "score": 4, "train_ablation": 6, "sample_ablation": 6,
                      "score_ablation": 6, "ablation_cell": 6, "interpolation": 2, "main_table": 1,
                      "ablation_table": 1}),
    ("smoke.yaml", [], {"train": 2, "rescale": 1, "sample": 3, "score": 3, "train_ablation": 2, "sample_ablation": 2,
                       "score_ablation": 2, "ablation_cell": 2, "interpolation": 2, "main_table": 1,
                       "ablation_table": 1}),
    ("sdxl.yaml", [], {"dreambooth_data": 1, "train": 90, "rescale": 30, "sample": 120, "sample_ablation": 150,
                      "score": 120, "score_ablation": 150, "train_ablation": 150, "ablation_cell": 5, "main_table": 1,
                      "ablation_table": 1}),
    ("sdxl.yaml", ["protocol=dreambooth"], {"train": 90, "sample": 120, "sample_ablation": 150, "ablation_table": 1}),
    ("sana_1.6b.yaml", [], {"train": 90, "rescale": 30, "sample": 120, "score": 120, "main_table": 1}),
    ("sana_4.8b.yaml", [], {"train": 90, "rescale": 30, "sample": 120, "score": 120, "main_table": 1}),
]


@pytest.mark.parametrize("configfile,extra,expected", PLANS, ids=[p[0] + "".join(p[1]) for p in PLANS])
def test_dry_run_plans_the_full_job_graph(tmp_path, configfile, extra, expected):
    plan = snakemake("-n", "--configfile", f"experiments/{configfile}", "--config", f"results_dir={tmp_path}",
                     *extra, cores=8)
    assert plan.returncode == 0, plan.stderr[-2000:]
    counts = job_counts(plan.stdout)
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)
    if "sana" in configfile:
        assert "train_ablation" not in counts  # the paper ablates on SDXL only
    assert counts["all"] == 1


def test_the_default_subjects_are_the_test_split(tmp_path):
    """`subjects: []` runs every test subject of the table; the validation subjects only when named."""
    from dti.data import read_subjects

    table = read_subjects(ROOT / "experiments" / "mini" / "world" / "subjects.csv")
    test = [r["subject"] for r in table if r["split"] == "test"]
    validation = [r["subject"] for r in table if r["split"] == "validation"]
    assert len(test) >= 10 and len(validation) >= 4
    plan = snakemake("-n", "-p", "--configfile", "experiments/mini.yaml", "--config", f"results_dir={tmp_path}",
                     "subjects=[]", cores=8)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert all(f"/{s}/seed0" in plan.stdout for s in test)
    assert not any(s in plan.stdout for s in validation)
    # (with the subjects the configuration's ablation and interpolation use)
    config = yaml.safe_load((ROOT / "experiments" / "mini.yaml").read_text())
    needed = list(dict.fromkeys(config["ablation"]["subjects"] + config["analyses"]["interpolation"]))
    named = snakemake("-n", "-p", "--configfile", "experiments/mini.yaml", "--config", f"results_dir={tmp_path}",
                      f"subjects=[{','.join(needed)},{validation[0]}]", cores=8)
    assert named.returncode == 0, named.stderr[-2000:]
    assert f"/{validation[0]}/seed0" in named.stdout


def test_the_default_records_its_calibration():
    """experiments/mini.yaml runs the kappa, the kappa cells and the AdamW lr that the committed calibration
    (experiments/mini/calibration/, `snakemake calibration` on the validation subjects) chose, to 3 digits."""
    config = yaml.safe_load((ROOT / "experiments" / "mini.yaml").read_text())
    chosen = json.loads((ROOT / "experiments" / "mini" / "calibration" / "calibration.json").read_text())
    dti = config["train_by_method"]["dti"]
    assert dti["kappa"] == pytest.approx(chosen["kappa"]["chosen"], rel=1e-3)
    assert dti["adamw_lr"] == pytest.approx(chosen["adamw_lr"]["chosen"], rel=1e-3)
    cells = config["ablation"]["cells"]
    kappas = sorted(c["kappa"] for c in cells if c["direction_optimizer"] == "rsgd" and c["m_star"] == "mean")
    assert kappas == pytest.approx([0.0, *sorted(chosen["kappa"]["cells"].values())], rel=1e-3)
    assert all(c["kappa"] == dti["kappa"] for c in cells if (c["direction_optimizer"], c["m_star"]) != ("rsgd", "mean"))
    assert chosen["kappa"]["target_prior_ratio"] == config["calibration"]["target_prior_ratio"]
    from dti.data import read_subjects

    table = read_subjects(ROOT / "experiments" / "mini" / "world" / "subjects.csv")
    assert sorted(chosen["subjects"]) == sorted(r["subject"] for r in table if r["split"] == "validation")


def test_calibration_trains_only_validation_subjects_a_group_per_arm(tmp_path):
    """`snakemake calibration` (never part of `all`): a training job per arm of DTI runs on the validation
    subjects, RSGD and each grid lr of AdamW, all with kappa 0, then the rule's analysis."""
    from dti.data import read_subjects

    table = read_subjects(ROOT / "experiments" / "mini" / "world" / "subjects.csv")
    validation = sorted(r["subject"] for r in table if r["split"] == "validation")
    grid = yaml.safe_load((ROOT / "experiments" / "mini.yaml").read_text())["calibration"]["adamw_lrs"]
    plan = snakemake("calibration", "-n", "-p", "--configfile", "experiments/mini.yaml",
                     "--config", f"results_dir={tmp_path}", cores=8)
    assert plan.returncode == 0, plan.stderr[-2000:]
    arms = 1 + len(grid)  # RSGD, and AdamW at each grid lr: a training group each
    assert job_counts(plan.stdout) == {"calibration_train": arms, "calibration": 1, "total": arms + 1}
    commands = [line for line in plan.stdout.splitlines() if "python -m dti train" in line]
    runs = [run for command in commands for run in train_runs(command)]
    for command in commands:  # a group holds one run per placeholder
        assert len({r["placeholder"] for r in train_runs(command)}) == len(validation)
    assert sorted({os.path.basename(r["images"]) for r in runs}) == validation
    assert all(r["method"] == "dti" and "kappa=0.0" in r["set"] for r in runs)
    lrs = sorted(float(s.split("=")[1]) for r in runs for s in r["set"] if s.startswith("adamw_lr="))
    assert lrs == sorted(grid * len(validation))
    assert sum("direction_optimizer=rsgd" in r["set"] for r in runs) == len(validation)
    # a configuration without validation subjects says so instead of running nothing
    none = snakemake("calibration", "--configfile", "experiments/sdxl.yaml", "--config", f"results_dir={tmp_path}")
    assert none.returncode != 0 and "calibration needs validation subjects" in none.stderr


def test_paper_configs_use_the_papers_models_and_protocol():
    sdxl = yaml.safe_load((ROOT / "experiments" / "sdxl.yaml").read_text())
    assert sdxl["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert sdxl["data"]["prompt_set"] == "dti_simple" and sdxl["score"]["protocol"] == "paper"
    assert sdxl["sample"]["seeds"] == [0, 1, 2, 3] and sdxl["resources"]["train"]["gpu"] == 1
    plan = snakemake("-n", "-p", "--configfile", "experiments/sdxl.yaml", "--config", "protocol=dreambooth", cores=8)
    assert "--prompts dreambooth" in plan.stdout and "--protocol dreambooth" in plan.stdout
    assert "results/sdxl_dreambooth/" in plan.stdout
    # The authors' SDXL launchers initialise every method from their class word (the `dti_class` column),
    # not the `initializer` column ("jar" for candle, "red backpack" for backpack); the ablation's DTI too.
    runs = [run for c in shell_commands(plan.stdout) if " -m dti train " in c for run in train_runs(c)]
    assert len(runs) == 90 + 150
    for subject, word in (("candle", "candle"), ("backpack", "backpack"), ("pink_sunglasses", "sunglasses")):
        inits = {m: {r["initializer"] for r in runs if r["method"] == m and r["images"].endswith(f"/{subject}")}
                 for m in ("ti", "crossinit", "dti")}
        assert inits == {m: {word} for m in inits}, inits
    assert not any(r["initializer"] in ("jar", "red backpack") for r in runs)
    assert "--preset code" in plan.stdout  # the tables name the preset


def test_sana_authors_preset_reproduces_the_launchers_confounds_included(tmp_path):
    # preset `authors`: DTI from the `initialization` field with zero-padded prompts, TI and CrossInit from
    # the class word without; the default preset (de-confounded) gives every method the class word.
    plan = snakemake("-n", "-p", "--configfile", "experiments/sana_1.6b.yaml",
                     "--config", f"results_dir={tmp_path}", "preset=authors", cores=8)
    assert plan.returncode == 0, plan.stderr[-2000:]
    runs = [run for c in shell_commands(plan.stdout) if " -m dti train " in c for run in train_runs(c)]
    train = {m: [r for r in runs if r["method"] == m] for m in ("ti", "crossinit", "dti")}
    assert all(len(method_runs) == 30 for method_runs in train.values())
    candle = {m: next(r for r in method_runs if r["images"].endswith("/candle")) for m, method_runs in train.items()}
    assert candle["dti"]["initializer"] == "jar" and "zero_pad=True" in candle["dti"]["shared_set"]
    for method in ("ti", "crossinit"):
        assert candle[method]["initializer"] == "candle"
        assert not any("zero_pad" in item for item in candle[method]["shared_set"])
    assert all("zero_pad=True" in r["shared_set"] for r in train["dti"])
    assert candle["dti"]["out"] == f"{tmp_path}/sana_1.6b_authors/runs/dti/candle/seed42"  # its own results folder
    assert "--paper sana_1.6b --preset authors" in plan.stdout


def test_ablation_cells_train_at_their_own_seeds(tmp_path):
    """ablation.seeds: the cells (and the default row they are paired with) at those training seeds only."""
    config = smoke_with(tmp_path, {"seeds": [0, 1], "ablation": {"seeds": [1]}})
    plan = snakemake("-n", "-p", "--configfile", config, "--config", f"results_dir={tmp_path}", cores=8)
    assert plan.returncode == 0, plan.stderr[-2000:]
    runs = [run for c in shell_commands(plan.stdout) if " -m dti train " in c for run in train_runs(c)]
    cells = [r for r in runs if "/ablation/" in r["out"]]
    assert cells and {r["seed"] for r in cells} == {1}
    assert {r["seed"] for r in runs if "/ablation/" not in r["out"]} == {0, 1}
    # a method's seeds train in one job, so their runs, which share its tokenizer, name their seed in their
    # placeholders; a cell at one seed keeps the plain <subject>
    jobs = [train_runs(c) for c in shell_commands(plan.stdout) if " -m dti train " in c]
    for job in jobs:
        assert len({r["placeholder"] for r in job}) == len(job)
        if "/ablation/" not in job[0]["out"]:
            assert {r["seed"] for r in job} == {0, 1}
    seed1 = {r["placeholder"] for r in runs if r["out"].endswith("/runs/ti/ember_triangle/seed1")}
    assert seed1 == {"<ember_triangle-s1>"}
    assert {r["placeholder"] for r in cells if "/ember_triangle/" in r["out"]} == {"<ember_triangle>"}
    bad = snakemake("-n", "--configfile", smoke_with(tmp_path, {"ablation": {"seeds": [3]}}, "bad.yaml"),
                    "--config", f"results_dir={tmp_path}")
    assert bad.returncode != 0 and "config ablation.seeds: 3 is not a training seed" in bad.stdout + bad.stderr


def test_schema_names_the_bad_key(tmp_path):
    bad = snakemake("-n", "--config", f"results_dir={tmp_path}", "stepz=4")
    assert bad.returncode != 0 and "stepz" in bad.stdout + bad.stderr
    bad = snakemake("-n", "--config", "methods=[ti, sgd]")
    assert bad.returncode != 0 and "sgd" in bad.stdout + bad.stderr


def test_threads_never_oversubscribe_the_machine(tmp_path):
    plan = snakemake("-n", "-p", "--config", f"results_dir={tmp_path}", cores=8 * (os.cpu_count() or 1))
    threads = [int(t) for t in re.findall(r"OMP_NUM_THREADS=(\d+)", plan.stdout)]
    # each job gets its share of the real CPUs, not of --cores: one thread, two for training's batched groups
    assert threads and set(threads) <= {1, min(2, os.cpu_count() or 1)}


def smoke_with(tmp_path, changes: dict, name: str = "config.yaml") -> str:
    """experiments/smoke.yaml with ``changes`` merged in (one level of nesting), as a new file."""
    config = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def shell_commands(output: str) -> list[str]:
    return [c for c in re.findall(r"^Shell command: (.*)$", output, re.M) if c != "None"]  # None: rule all


def unquoted_specials(command: str) -> list[str]:
    """The characters bash would act on ($, backtick, ;) outside single quotes in ``command``."""
    found, state = [], None
    for ch in command:
        if state == "'":
            state = None if ch == "'" else state
        elif state == '"':
            if ch == '"':
                state = None
            elif ch in "$`":
                found.append(ch)
        elif ch in "'\"":
            state = ch
        elif ch in "$`;":
            found.append(ch)
    return found


def weird_inputs(tmp_path, folder="$HOME it's `touch INJECTED`;x"):
    """A results folder, a base model, a metric model and a subjects table whose paths (and the
    table's class noun and initializer) hold spaces, quotes and shell syntax."""
    home = tmp_path / "with space" / folder
    home.mkdir(parents=True)
    model, evaluator = home / "mini pipeline", home / "mini evaluator"
    model.symlink_to(ROOT / "experiments" / "mini" / "world" / "pipeline")
    evaluator.symlink_to(ROOT / "experiments" / "mini" / "world" / "evaluator")
    table = pd.read_csv(ROOT / "experiments" / "mini" / "world" / "subjects.csv")
    ember = table["subject"] == "ember_triangle"
    # dti_class: the initializer word the configurations read (initializer_source: class)
    table.loc[ember, ["class", "dti_class", "initializer"]] = ["tri angle's", *["it's $(touch INJECTED)"] * 2]
    subjects = home / "subjects.csv"
    table.to_csv(subjects, index=False)
    return home / "results", model, evaluator, subjects


def test_config_values_reach_shell_commands_as_one_literal_word(tmp_path):
    """Hardening: configuration values and subjects-table entries reached shell commands unquoted,
    so a model or results path with a space became two arguments, and `$(...)`, a backtick or `;`
    in a value ran as shell code. Every printed command must keep each value one word, with no
    shell syntax outside single quotes."""
    results, model, evaluator, subjects = weird_inputs(tmp_path)
    injected = "object; touch INJECTED `touch INJECTED`"
    config = smoke_with(tmp_path, {
        "results_dir": str(results), "model": str(model), "data": {"subjects_file": str(subjects)},
        "train": {"templates": injected}, "score": {"model_ids": {"mini": str(evaluator), "readout":
                                                                  "experiments/mini/world/readout"}},
        "analyses": {"initializer": "it's", "related_words": ["circle", "it's $(touch INJECTED)"]}})
    plan = snakemake("-n", "-p", "--configfile", config)
    assert plan.returncode == 0, plan.stderr[-2000:]
    commands = shell_commands(plan.stdout)
    assert len(commands) == job_counts(plan.stdout)["total"] - 1  # every job of the smoke plan but `all`
    weird = (f"{results}/", str(model), str(evaluator), str(subjects))
    for command in commands:
        assert unquoted_specials(command) == [], command
        words = shlex.split(command)
        for word in words:  # a path split at its space would leave a piece that is none of these
            values = json.loads(word).values() if word.startswith("{") else [word]  # a --run object: its values
            for value in values:
                if str(tmp_path) in str(value):
                    assert value.rsplit("=", 1)[-1].startswith(weird), (word, command)  # KEY=PATH: the path
        if "--model" in words:
            assert words[words.index("--model") + 1] == str(model)
    train = [r for c in commands if " -m dti train " in c for r in train_runs(c) if "ember_triangle" in r["out"]]
    assert train and all(f"templates={injected}" in r["shared_set"] and r["initializer"] == "it's $(touch INJECTED)"
                         for r in train)
    interpolation = [shlex.split(c) for c in commands if "analysis.interpolation" in c]
    assert interpolation and all(w[w.index("--class-a") + 1] == "tri angle's" for w in interpolation)
    assert f"mini={evaluator}" in shlex.split(next(c for c in commands if " -m dti score " in c))
    contextual = shlex.split(next(c for c in commands if "analysis.token_analyses" in c))
    assert contextual[contextual.index("--related") + 2] == "it's $(touch INJECTED)"
    assert not (ROOT / "INJECTED").exists()


def test_injected_values_reach_a_real_job_as_literal_text(tmp_path):
    """Hardening: `train: {device: '$(touch INJECTED)cpu'}` created the file and the job reported
    success. A real train job, given shell syntax in its results path and in a `--set` value and a
    model path with a space, runs none of it: it fails on the template set it was given, named
    literally, and writes its log where the literal path says."""
    results, model, _, _ = weird_inputs(tmp_path, "$(touch INJECTED)")  # no quote to pair with one in a value
    injected = "object; touch INJECTED `touch INJECTED`"
    config = smoke_with(tmp_path, {"results_dir": str(results), "model": str(model), "train": {"templates": injected}})
    target = results / "smoke" / "runs" / "ti" / "ember_triangle" / "seed0" / "learned_embeds.safetensors"
    try:
        run = snakemake(str(target), "--configfile", config)
        assert not (ROOT / "INJECTED").exists() and not list(tmp_path.rglob("INJECTED"))
    finally:
        (ROOT / "INJECTED").unlink(missing_ok=True)
    assert run.returncode != 0
    log = (results / "smoke" / "logs" / "train" / "ti_part0.log").read_text()
    assert f"unknown template set {injected!r}" in log, log[-2000:]


# Hardening: values a job would refuse (unknown or out-of-range train and sample settings, a bad
# ablation m*, rescale statistic, device or backbone, a missing model folder) passed the schema and
# `snakemake -n`, and failed only when a job ran. Each must fail the plan, naming its key, with no
# results folder made.
# The workflow lists every problem at once (one line each), so one plan checks many values; the train
# settings stop at their first problem, and the ablation cells are checked only on good train settings.
BAD_VALUES = {
    "settings": ({"train": {"stepz": 5, "seed": 3},
                  "sample": {"settings": {"steps": 0, "device": "cuda;touch INJECTED"}},
                  "rescale_stat": "median", "score": {"device": "tpu",
                                                      "model_ids": {"mini": "experiments/mini/world/evaluator",
                                                                    "dinov3": "x"}},
                  "model": "experiments/mini/world/no_such_pipeline", "mini_world_device": "tpu",
                  "presets": {"p": {"train_by_method": {"dti": {"seed": 1}}}}, "preset": "q"},
                 ["config train: unknown key 'stepz'", "config train: 'seed' is the workflow's to set",
                  "config sample.settings: sampling steps must be >= 1, got 0",
                  "config sample.settings.device: unknown device",
                  "config rescale_stat: m_star must be mean, min, max or a positive number, got 'median'",
                  "config score.device: unknown device 'tpu'", "config score.model_ids: unknown backbone 'dinov3'",
                  "config model: 'experiments/mini/world/no_such_pipeline': no such local folder",
                  "config mini_world_device: unknown device 'tpu'", "config preset: unknown preset 'q'; valid: p",
                  "config presets.p.train_by_method.dti: 'seed' is the workflow's to set"]),
    "ranges": ({"train": {"steps": -1, "device": "$(touch INJECTED)cpu"}, "train_by_method": {"ti": {"lr": -1}},
                "rescale_stat": "inf",
                "model": "experiments/mini/world/subjects"},
               ["config train: steps must be >= 1, got -1", "config train_by_method.ti: lr must be positive",
                "config train.device: unknown device '$(touch INJECTED)cpu'",
                "config rescale_stat: m_star must be a positive finite number", "has no model_index.json"]),
    "cells": ({"ablation": {"cells": [{"direction_optimizer": "rsgd", "m_star": 0, "kappa": 0.0},
                                      {"direction_optimizer": "rsgd", "m_star": "big", "kappa": 0.0}]}},
              ["config ablation.cells[0]: m_star must be a positive finite number, got '0'",
               "config ablation.cells[1]: m_star must be mean, min, max or a positive number, got 'big'"]),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_the_plan_naming_their_key(tmp_path, case):
    changes, messages = BAD_VALUES[case]
    results = tmp_path / "results"
    plan = snakemake("-n", "--configfile", smoke_with(tmp_path, {**changes, "results_dir": str(results)}))
    output = plan.stdout + plan.stderr
    assert plan.returncode != 0
    for message in messages:
        assert message in output, (message, output[-2000:])
    assert not results.exists() and not (ROOT / "INJECTED").exists()


def main_subjects(out) -> list[str]:
    return sorted(pd.read_csv(out / "tables" / "main_scores" / "per_subject.csv")["subject"].unique())


@pytest.mark.slow
def test_smoke_workflow_end_to_end_then_one_cell_rerun(smoke_local, tmp_path):
    out = smoke_local / "smoke"
    main = pd.read_csv(out / "tables" / "main.csv").set_index("label")
    assert list(main.index) == ["ti", "ti_rescaled", "dti"]
    assert main[["image_mean", "text_mean"]].notna().all().all()
    assert "| TI |" in (out / "tables" / "main.md").read_text()
    assert "\\begin{tabular}" in (out / "tables" / "main.tex").read_text()
    ablation = pd.read_csv(out / "tables" / "ablation.csv")
    assert len(ablation) == 3 and ablation["label"].iloc[-1] == "rsgd, m*=mean, kappa=0.0001"
    for name in ("norm_growth", "cosine_drift", "vocab_norms", "positional_probe", "residual_stagnation",
                 "contextual_map", "ablation_view", "interpolation_dti/interpolation_grid_dti",
                 "interpolation_dti/interpolation_scores_dti", "job_costs",
                 *(f"qualitative_grid_{subject}" for subject in main_subjects(out))):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5_000
    # every training, sampling and scoring job left its time and memory, and the claims table has its verdicts
    costs = pd.read_csv(out / "tables" / "job_costs.csv").set_index("stage")
    assert {"training", "sampling", "scoring"} <= set(costs.index) and (costs["total_s"] > 0).all()
    claims = pd.read_csv(out / "tables" / "claims.csv")
    assert len(claims) >= 11 and claims["verdict"].notna().all()
    norms = pd.read_csv(out / "tables" / "final_norms.csv").groupby("method")["ratio_to_vocab_mean"].mean()
    assert norms["dti"] == pytest.approx(1.0, rel=1e-5) and norms["ti_rescaled"] == pytest.approx(1.0, rel=1e-5)
    scores = pd.read_csv(out / "tables" / "main_scores" / "summary.csv")
    metrics = {"mini_object", "mini_patch", "mini_clip_i", "mini_clip_t", "attr_prompt", "attr_subject"}
    assert metrics <= set(scores["metric"])
    # identity is not asked of two-object prompts: those images have no attr_subject row, and no
    # subject is counted incomplete for it
    assert scores.loc[scores["metric"] == "attr_subject", "mean"].notna().all()

    again = snakemake("--configfile", "experiments/smoke.yaml", "--config", f"results_dir={smoke_local}")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # A reference of this run: the workflow's check passes, then fails naming a moved cell.
    ref = tmp_path / "reference"
    reference.save(out, ref)
    with_ref = ["--configfile", "experiments/smoke.yaml", "--config", f"results_dir={smoke_local}", f"reference={ref}"]
    check = snakemake(*with_ref)
    assert check.returncode == 0, check.stderr[-2000:]
    assert (out / "reference_check.txt").read_text().strip() == "matches the reference"
    moved = pd.read_csv(ref / "tables" / "main.csv")
    moved.loc[0, "image_mean"] += 0.05
    moved.to_csv(ref / "tables" / "main.csv", index=False)
    check = snakemake(*with_ref, "--forcerun", "check_reference")
    assert check.returncode != 0 and "main.csv: image_mean row 0" in check.stdout + check.stderr
    assert not (out / "reference_check.txt").exists()

    # Change one cell: only that cell's jobs (and the tables and figure after them) are planned.
    smoke = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    smoke["ablation"]["cells"][1]["kappa"] = 0.0002
    smoke["results_dir"] = str(smoke_local)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(smoke))
    plan = snakemake("-n", "--configfile", str(changed))
    counts = job_counts(plan.stdout)
    assert counts == {"train_ablation": 1, "sample_ablation": 1, "score_ablation": 1, "ablation_cell": 1,
                      "ablation_table": 1,
                      "ablation_view": 1, "step_sizes": 1, "claims": 1, "job_costs": 1, "all": 1, "total": 10}, counts
    # the new cell's jobs are planned; no job of the unchanged cell is (its runs are only read, by step_sizes)
    assert "kappa~0.0002" in plan.stdout and not re.search(r"^\s+output: \S*kappa~0\.0001", plan.stdout, re.M)


# The paper configurations' rules on tiny random-weight stand-ins of their models and metric
# backbones: the same configuration file, with the model, images, step counts and metric ids
# pointed at small local things (the hub ids cannot be loaded offline).
STAND_INS = [("sdxl.yaml", "sdxl"), ("sana_1.6b.yaml", "sana")]


@pytest.mark.slow
@pytest.mark.parametrize("configfile,family", STAND_INS, ids=[c for c, _ in STAND_INS])
def test_paper_config_rules_run_on_tiny_stand_ins(configfile, family, tiny_models, metric_models, ref_images, tmp_path):
    config = yaml.safe_load((ROOT / "experiments" / configfile).read_text())
    images = tmp_path / "images"
    for subject in ("dog", "cat"):  # the configurations interpolate between these two
        shutil.copytree(ref_images, images / subject)
    (tmp_path / "subjects.csv").write_text("subject,class,dti_class,initializer,live\n"
                                           "dog,dog,dog,dog,True\ncat,cat,cat,cat,True\n")
    one_thread = {"threads": 1, "gpu": config["resources"]["train"]["gpu"], "mem_mb": 2000, "runtime": 10}
    config.update(
        results_dir=str(tmp_path / "results"), model=str(tiny_models[family]), subjects=["dog"],
        data={**config["data"], "images": str(images), "subjects_file": str(tmp_path / "subjects.csv")},
        train={"steps": 2, "resolution": 64, "batch_size": 1, "grad_accum": 1, "device": "cpu"},
        sample={"seeds": [0], "settings": {"steps": 2, "height": 64, "width": 64, "device": "cpu",
                                           "resolution_binning": False, "complex_human_instruction": False}},
        score={**config["score"], "model_ids": {k: metric_models[k] for k in ("dinov2", "siglip")}, "device": "cpu"},
        resources={stage: one_thread for stage in ("train", "sample", "score", "analysis")})
    ablation = bool(config.get("ablation", {}).get("cells"))  # SDXL's; SANA has none (as in the paper)
    if ablation:
        config["ablation"]["cells"] = config["ablation"]["cells"][:1]
    path = tmp_path / configfile
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "results" / config["name"]
    targets = [str(out / "tables" / "main.csv")] + ([str(out / "tables" / "ablation.csv")] if ablation else [])
    run = snakemake(*targets, "--configfile", str(path))
    assert run.returncode == 0, run.stderr[-3000:]
    main = pd.read_csv(out / "tables" / "main.csv").set_index("label")
    assert list(main.index) == ["ti", "ti_rescaled", "crossinit", "dti"]
    assert main[["image_mean", "text_mean"]].notna().all().all()
    assert "dinov2" in (out / "tables" / "main.md").read_text()  # the paper's metrics, with its numbers beside
    manifest = pd.read_csv(out / "samples" / "dti" / "dog" / "seed42" / "manifest.csv")
    assert len(manifest) == 41 and set(manifest["prompt"].str.contains("<dog>")) == {True}  # dti_simple
    if ablation:
        assert len(pd.read_csv(out / "tables" / "ablation.csv")) == 2
