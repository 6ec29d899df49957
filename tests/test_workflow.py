"""The workflow through real Snakemake: dry-run plans of every configuration, schema errors,
the smoke configuration end to end on the mini world, and rerunning one ablation cell."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "experiments" / "mini" / "world"


def snakemake(*args, cores: int = 2):
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# (config file, extra --config, expected job counts): 30 DreamBooth subjects, 3 trained methods
# + TI-rescaled, 5 ablation cells on SDXL.
PLANS = [
    ("mini.yaml", [], {"train": 18, "rescale": 6, "sample": 24 + 15, "score": 39, "train_ablation": 15,
                      "ablation_cell": 5, "interpolation": 2, "main_table": 1, "ablation_table": 1}),
    ("sdxl.yaml", [], {"dreambooth_data": 1, "train": 90, "rescale": 30, "sample": 120 + 150, "score": 270,
                      "train_ablation": 150, "ablation_cell": 5, "main_table": 1, "ablation_table": 1}),
    ("sdxl.yaml", ["protocol=dreambooth"], {"train": 90, "sample": 270, "ablation_table": 1}),
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


def test_paper_configs_use_the_papers_models_and_protocol():
    sdxl = yaml.safe_load((ROOT / "experiments" / "sdxl.yaml").read_text())
    assert sdxl["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert sdxl["data"]["prompt_set"] == "dti_simple" and sdxl["score"]["protocol"] == "paper"
    assert sdxl["sample"]["seeds"] == [0, 1, 2, 3] and sdxl["resources"]["train"]["gpu"] == 1
    plan = snakemake("-n", "-p", "--configfile", "experiments/sdxl.yaml", "--config", "protocol=dreambooth", cores=8)
    assert "--prompts dreambooth" in plan.stdout and "--protocol dreambooth" in plan.stdout
    assert "results/sdxl_dreambooth/" in plan.stdout


def test_schema_names_the_bad_key(tmp_path):
    bad = snakemake("-n", "--config", f"results_dir={tmp_path}", "stepz=4")
    assert bad.returncode != 0 and "stepz" in bad.stdout + bad.stderr
    bad = snakemake("-n", "--config", "methods=[ti, sgd]")
    assert bad.returncode != 0 and "sgd" in bad.stdout + bad.stderr


def test_threads_never_oversubscribe_the_machine():
    plan = snakemake("-n", "-p", cores=8 * (os.cpu_count() or 1))
    threads = {int(t) for t in re.findall(r"OMP_NUM_THREADS=(\d+)", plan.stdout)}
    assert threads == {1}  # each job gets its share of the real CPUs, not of --cores


@pytest.mark.skipif(not (WORLD / "pipeline" / "model_index.json").is_file(), reason="no shipped mini world")
def test_smoke_workflow_end_to_end_then_one_cell_rerun(tmp_path):
    config = ["--configfile", "experiments/smoke.yaml", "--config", f"results_dir={tmp_path}"]
    run = snakemake(*config)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "smoke"
    main = pd.read_csv(out / "tables" / "main.csv").set_index("label")
    assert list(main.index) == ["ti", "ti_rescaled", "dti"]
    assert main[["image_mean", "text_mean"]].notna().all().all()
    assert "| TI |" in (out / "tables" / "main.md").read_text() and "\\begin{tabular}" in (out / "tables" / "main.tex").read_text()
    ablation = pd.read_csv(out / "tables" / "ablation.csv")
    assert len(ablation) == 3 and ablation["label"].iloc[-1] == "rsgd, m*=mean, kappa=0.0001"
    for name in ("norm_growth", "cosine_drift", "vocab_norms", "positional_probe", "residual_stagnation",
                 "contextual_map", "ablation_view", "interpolation_dti/interpolation_grid"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5_000
    norms = pd.read_csv(out / "tables" / "final_norms.csv").groupby("method")["ratio_to_vocab_mean"].mean()
    assert norms["dti"] == pytest.approx(1.0, rel=1e-5) and norms["ti_rescaled"] == pytest.approx(1.0, rel=1e-5)
    scores = pd.read_csv(out / "tables" / "main_scores" / "summary.csv")
    assert {"mini_patch", "mini_clip_i", "mini_clip_t", "attr_prompt", "attr_subject"} <= set(scores["metric"])

    again = snakemake(*config)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # Change one cell: only that cell's jobs (and the tables and figure after them) are planned.
    smoke = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    smoke["ablation"]["cells"][1]["kappa"] = 0.0002
    smoke["results_dir"] = str(tmp_path)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(smoke))
    plan = snakemake("-n", "--configfile", str(changed))
    counts = job_counts(plan.stdout)
    assert counts == {"train_ablation": 1, "sample": 1, "score": 1, "ablation_cell": 1, "ablation_table": 1,
                      "ablation_view": 1, "all": 1, "total": 7}, counts
    assert "kappa~0.0002" in plan.stdout and "kappa~0.0001" not in plan.stdout.split("rule ablation_table")[0]
