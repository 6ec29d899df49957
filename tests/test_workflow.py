"""The demo workflow through real Snakemake, shortened."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)


def test_demo_workflow_runs_and_then_has_nothing_to_do(tmp_path):
    config = ["--config", f"results_dir={tmp_path}", "steps=4", "name=smoke"]
    plan = snakemake("-n", *config)
    assert plan.returncode == 0, plan.stderr
    assert "train" in plan.stdout and "rescale" in plan.stdout and "training_curves" in plan.stdout
    run = snakemake(*config)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "smoke"
    for name in ("norm_growth", "cosine_drift", "vocab_norms", "positional_probe", "residual_stagnation",
                 "contextual_map"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{name}.caption.txt").read_text().strip().endswith(".")
    norms = pd.read_csv(out / "tables" / "final_norms.csv").set_index("method")
    assert sorted(norms.index) == ["crossinit", "dti", "ti", "ti_rescaled"]
    assert norms.loc["dti", "ratio_to_vocab_mean"] == pytest.approx(1.0, rel=1e-5)
    assert norms.loc["ti_rescaled", "ratio_to_vocab_mean"] == pytest.approx(1.0, rel=1e-5)
    assert norms.loc["ti", "ratio_to_vocab_mean"] != pytest.approx(1.0, rel=1e-3)
    curves = pd.read_csv(out / "tables" / "training_curves.csv")
    assert sorted(curves["step"].unique()) == [0, 1, 2, 3, 4]
    assert sorted(curves["method"].unique()) == ["crossinit", "dti", "ti"]
    words = pd.read_csv(out / "tables" / "nearest_words.csv")
    assert set(words["method"]) == {"crossinit", "dti", "ti", "ti_rescaled"} and set(words["by"]) == {"cosine", "euclidean"}
    again = snakemake(*config)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_config_schema_names_the_bad_key(tmp_path):
    bad = snakemake("-n", "--config", f"results_dir={tmp_path}", "stepz=4")
    assert bad.returncode != 0
    assert "stepz" in bad.stdout + bad.stderr
