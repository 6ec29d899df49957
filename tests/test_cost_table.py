"""benchmarks/cost_table.py: job counts read from a configuration, GPU-hours and wall times, checked
against a hand computation; the README's generated section matches the configurations."""

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import cost_table
from dti.io import DTIError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(tmp_path):
    """The SDXL configuration cut down: subjects backpack (object) and dog (live), TI and DTI, one
    training seed, sampling seeds 0 and 1, one ablation cell on dog; a preset of 100 steps."""
    config = yaml.safe_load((ROOT / "experiments/sdxl.yaml").read_text())
    config.update(name="small", subjects=["backpack", "dog"], methods=["ti", "dti"], seeds=[42],
                  presets={"code": {}, "short": {"train": {"steps": 100}}}, preset="code")
    config["sample"]["seeds"] = [0, 1]
    config["ablation"] = {"subjects": ["dog"], "cells": [{"direction_optimizer": "rsgd", "m_star": "min",
                                                          "kappa": 0.0001}]}
    config["resources"]["train"]["runtime"] = 3  # minutes: a TI or DTI job trains for 400 x 0.5 s = 3.3 min
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    times = {config["model"]: {"family": "sdxl",
                               "train": {"seconds": 0.5, "batch_size": 4, "grad_accum": 1, "resolution": 768},
                               "sample": {"seconds": 2.0, "batch_size": 4, "height": 1024, "width": 1024,
                                          "steps": 50},
                               "score": {"seconds": 0.1}}}
    times_path = tmp_path / "times.json"
    times_path.write_text(json.dumps(times))
    return str(path), str(times_path)


def test_gpu_hours_and_wall_times_match_a_hand_computation(small):
    rows, missing = cost_table.rows_for([small[0]], small[1], gpus=(1, 2, 8))
    assert not missing
    code, short = rows
    assert (code["preset"], short["preset"]) == ("code", "short")
    # dti_simple has 41 prompts (live and object alike) x 2 sampling seeds = 82 images per sampled run.
    # Jobs: TI x 2 subjects (each also samples TI-rescaled: 164 images), DTI x 2 (82), ablation DTI x 1 (82).
    assert code["train_runs"] == 5 and code["jobs"] == 5 and code["steps"] == [400]
    assert code["images"] == 2 * 164 + 3 * 82 == 574
    hours = code["gpu_hours"]
    assert hours["train"] == pytest.approx(5 * 400 * 0.5 / 3600)  # 0.2778 h
    assert hours["sample"] == pytest.approx(574 * 2.0 / 3600)  # 0.3189 h
    assert hours["score"] == pytest.approx(574 * 0.1 / 3600)  # 0.0159 h
    assert code["complete"] and code["gpu_hours_total"] == pytest.approx((1000 + 1148 + 57.4) / 3600)
    # Job seconds: TI 200 + 164 x 2.1 = 544.4 (x2), DTI 200 + 82 x 2.1 = 372.2 (x3).
    # 1 GPU: their sum; 2 GPUs, longest first: 544.4 | 544.4, then 372.2 on each, then one more: 1288.8;
    # 8 GPUs: the longest job.
    assert code["wall_hours"][1] == pytest.approx((2 * 544.4 + 3 * 372.2) / 3600)
    assert code["wall_hours"][2] == pytest.approx((544.4 + 2 * 372.2) / 3600)
    assert code["wall_hours"][8] == pytest.approx(544.4 / 3600)
    assert short["steps"] == [100] and short["gpu_hours"]["train"] == pytest.approx(5 * 100 * 0.5 / 3600)
    # The longest training job (200 s = 3.3 min) is over the declared 3 minutes: the table says so.
    text = cost_table.markdown(rows, missing, "times.json", (1, 2, 8))
    assert "**Over the declared runtime: train**" in text
    assert "| small | code | 5 | 400 | 574 | 0.28 | 0.32 | 0.02 | 0.61 | 0.61 h | 0.36 h | 0.15 h |" in text


def test_gradient_accumulation_scales_the_measured_step():
    job = cost_table.Job(steps=500, grad_accum=2, batch_size=2, resolution=1024, images=10)
    seconds = cost_table.job_seconds(job, {"train": {"seconds": 0.2, "grad_accum": 1}, "sample": None})
    assert seconds == {"train": pytest.approx(500 * 0.2 * 2)}  # two micro-batches per step; sampling unmeasured


def test_a_stage_not_measured_is_said_and_totals_are_lower_bounds(small, tmp_path):
    times = json.loads(Path(small[1]).read_text())
    for entry in times.values():
        entry["score"] = None
        entry["train"]["resolution"] = 1024
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(times))
    rows, missing = cost_table.rows_for([small[0]], str(path), gpus=(1,))
    text = cost_table.markdown(rows, missing, "partial.json", (1,))
    assert "not measured" in text and "≥ " in text and not rows[0]["complete"]
    assert "training measured at batch 4, 1024 px; the configuration trains at batch 4, 768 px" in text
    assert rows[0]["gpu_hours"]["score"] is None


def test_makespan_places_the_longest_jobs_first():
    assert cost_table.makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2
    assert cost_table.makespan([5], 32) == 5
    assert cost_table.makespan([], 4) == 0


def test_readme_section_is_rewritten_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{cost_table.START}\nold table\n{cost_table.END}\noutro\n")
    cost_table.write_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{cost_table.START}\nnew table\n{cost_table.END}\noutro\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(DTIError, match="no <!-- cost_table.py: start -->"):
        cost_table.write_readme(tmp_path / "plain.md", "x")


def test_the_readme_table_follows_the_configurations():
    """benchmarks/README.md holds the table of the committed configurations and measurements; after
    changing either, regenerate it: python benchmarks/cost_table.py --readme benchmarks/README.md"""
    rows, missing = cost_table.rows_for(cost_table.CONFIGS, cost_table.TIMES)
    expected = cost_table.markdown(rows, missing, cost_table.TIMES)
    text = (ROOT / "benchmarks/README.md").read_text()
    section = text.split(cost_table.START + "\n", 1)[1].split(cost_table.END, 1)[0]
    assert section == expected, "regenerate: python benchmarks/cost_table.py --readme benchmarks/README.md"
