"""Calibration of kappa and of the AdamW row's lr (analysis/calibration.py): the rules on constructed
measurements, and `snakemake calibration` on the smoke configuration end to end."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import MINI_WORLD
from conftest import run_snakemake as snakemake

from analysis.calibration import COLUMNS, calibrate, calibration_md, matching_lr, run_row
from dti.io import DTIError


def rows(grad_norms, adamw) -> pd.DataFrame:
    """RSGD runs (lr 0.04, kappa 0) with the given median |dL/dv|, and AdamW runs as (lr, median angle)."""
    out = [{"run": f"r{i}", "subject": f"s{i}", "seed": 0, "direction_optimizer": "rsgd", "lr": 0.04, "kappa": 0.0,
            "steps": 400, "grad_norm_median": g, "median_angle_deg": math.degrees(math.atan(0.04))}
           for i, g in enumerate(grad_norms)]
    out += [{"run": f"a{i}", "subject": f"s{i % 3}", "seed": 0, "direction_optimizer": "adamw", "lr": lr, "kappa": 0.0,
             "steps": 400, "grad_norm_median": 0.1, "median_angle_deg": angle} for i, (lr, angle) in enumerate(adamw)]
    return pd.DataFrame(out, columns=COLUMNS)


def test_kappa_is_the_target_ratio_of_the_median_data_gradient():
    result = calibrate(rows([0.05, 0.08, 0.20], [(0.001, 0.1), (0.1, 10.0)]), target_ratio=0.1,
                       cell_ratios=(0.01, 1.0))
    assert result["kappa"]["grad_norm_median"] == pytest.approx(0.08)
    assert result["kappa"]["chosen"] == pytest.approx(0.008)
    assert result["kappa"]["cells"] == {"0.01": pytest.approx(0.0008), "1": pytest.approx(0.08)}
    # the Markdown table keeps four columns in every row (|dL/dv| escaped)
    rows_md = [line for line in calibration_md(result).splitlines() if line.startswith("|")]
    assert len(rows_md) == 6 and all(line.replace("\\|", "").count("|") == 5 for line in rows_md)


def test_adamw_lr_matches_rsgd_angle_by_log_log_interpolation():
    # angle = 100 lr (degrees): RSGD's atan(0.04) = 2.2906 degrees at lr 0.022906, exactly, between 0.01 and 0.1
    grid = [(lr, 100 * lr) for lr in (0.001, 0.01, 0.1) for _ in range(3)]
    result = calibrate(rows([0.1], grid), target_ratio=0.1)
    assert result["adamw_lr"]["rsgd_angle_deg"] == pytest.approx(2.29061, abs=1e-5)
    assert result["adamw_lr"]["chosen"] == pytest.approx(math.degrees(math.atan(0.04)) / 100, rel=1e-9)
    # the median over runs of one lr: an outlier run does not move it
    noisy = grid + [(0.01, 50.0)]
    assert calibrate(rows([0.1], noisy), 0.1)["adamw_lr"]["grid"]["0.01"] == pytest.approx(1.0)
    # a power law angle = c lr^p is interpolated exactly too
    assert matching_lr([0.001, 0.1], [0.5 * 0.001 ** 0.5, 0.5 * 0.1 ** 0.5], 0.5 * 0.01 ** 0.5) == pytest.approx(0.01)


@pytest.mark.parametrize("grid,message", [([(0.001, 0.1), (0.01, 1.0)], "widen calibration.adamw_lrs"),
                                          ([(0.001, 3.0), (0.01, 1.0)], "must grow with its lr"),
                                          ([(0.01, 3.0)], "at least two grid lrs")])
def test_a_grid_that_cannot_say_is_refused(grid, message):
    with pytest.raises(DTIError, match=message):
        calibrate(rows([0.1], grid), 0.1)


def test_missing_arms_are_refused():
    with pytest.raises(DTIError, match="no RSGD run"):
        calibrate(rows([], [(0.001, 0.1), (0.1, 10.0)]), 0.1)
    with pytest.raises(DTIError, match="no AdamW run"):
        calibrate(rows([0.1], []), 0.1)


@pytest.mark.slow
def test_calibration_workflow_measures_validation_runs(tmp_path):
    """`snakemake calibration` on the smoke configuration (10 steps): every run is a validation subject's,
    and the chosen values are the rules applied to the runs' own logs."""
    if not (MINI_WORLD / "pipeline" / "model_index.json").is_file():
        pytest.skip("no shipped mini world")
    run = snakemake("calibration", "--configfile", "experiments/smoke.yaml", "--config", f"results_dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "smoke" / "calibration"
    table = pd.read_csv(out / "calibration.csv")
    subjects = pd.read_csv(MINI_WORLD / "subjects.csv").set_index("subject")["split"]
    assert set(subjects[table["subject"]]) == {"validation"}
    assert table["subject"].nunique() == (subjects == "validation").sum()
    assert len(table) == 3 * table["subject"].nunique() and (table["steps"] == 10).all()
    result = json.loads((out / "calibration.json").read_text())
    again = calibrate(pd.DataFrame([run_row(Path(r)) for r in table["run"]], columns=COLUMNS), target_ratio=0.1)
    assert result["kappa"]["chosen"] == pytest.approx(again["kappa"]["chosen"]) and result["kappa"]["chosen"] > 0
    assert 0.001 < result["adamw_lr"]["chosen"] < 1.0
    assert "| kappa |" in (out / "calibration.md").read_text()
