"""Sampling protocol: browsable images and manifest, per-image seeds, resume only from the same inputs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dti import DTIError
from dti.data import read_prompt_set
from dti.io import load_tensors, read_json, save_tensors, write_json
from dti.runs import model_revision
from dti.sample import SampleConfig, sample

ROOT = Path(__file__).resolve().parents[1]


TEMPLATES = ["a {} in the jungle", "a red {}"]


def test_sample_writes_browsable_images_and_a_manifest(sd_run, tmp_path):
    manifest = sample(sd_run, tmp_path, "dog", "dog", TEMPLATES, [0, 1], "dti_simple",
                      SampleConfig().set(["steps=2"]))
    rows = pd.read_csv(manifest)
    assert len(rows) == 4
    assert list(rows["file"]) == ["dog/00_a_x_in_the_jungle/seed0.png", "dog/00_a_x_in_the_jungle/seed1.png",
                                  "dog/01_a_red_x/seed0.png", "dog/01_a_red_x/seed1.png"]
    assert rows["prompt"][0] == "a <sks> in the jungle" and rows["scoring_text"][2] == "a red dog."
    assert set(rows["method"]) == {"dti"} and set(rows["steps"]) == {2} and set(rows["guidance_scale"]) == {7.5}
    assert set(rows["height"]) == {64} and set(rows["scheduler"]) == {"DDIMScheduler"}
    for f in rows["file"]:
        with Image.open(tmp_path / f) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
    a = np.asarray(Image.open(tmp_path / rows["file"][0]))
    b = np.asarray(Image.open(tmp_path / rows["file"][1]))
    assert not np.array_equal(a, b)  # the seeds differ


def test_a_width_alone_keeps_the_pipelines_height(sd_run, tmp_path):
    rows = pd.read_csv(sample(sd_run, tmp_path, "dog", "dog", TEMPLATES[:1], [0], "p",
                              SampleConfig().set(["steps=2", "width=72"])))
    with Image.open(tmp_path / rows["file"][0]) as im:
        assert im.size == (72, 64) and (rows["width"][0], rows["height"][0]) == (72, 64)


def test_image_depends_on_run_prompt_and_seed_alone_and_reruns_resume(sd_run, tmp_path):
    cfg = SampleConfig().set(["steps=2"])
    both = pd.read_csv(sample(sd_run, tmp_path / "both", "dog", "dog", TEMPLATES, [0, 1], "p", cfg))
    alone = pd.read_csv(sample(sd_run, tmp_path / "alone", "dog", "dog", TEMPLATES[1:], [1], "p", cfg))
    x = np.asarray(Image.open(tmp_path / "both" / both["file"][3]), dtype=int)
    y = np.asarray(Image.open(tmp_path / "alone" / alone["file"][0]), dtype=int)
    assert np.abs(x - y).max() <= 2  # same seed, other batch: equal up to float rounding
    mixed = pd.read_csv(sample(sd_run, tmp_path / "mixed", "dog", "dog", TEMPLATES, [0, 1], "p",
                               SampleConfig().set(["steps=2", "batch_size=3"])))  # calls of 3 and 1, across prompts
    for f in both["file"]:
        x = np.asarray(Image.open(tmp_path / "both" / f), dtype=int)
        assert np.abs(x - np.asarray(Image.open(tmp_path / "mixed" / f), dtype=int)).max() <= 2
    assert list(mixed["file"]) == list(both["file"])

    files = [tmp_path / "both" / f for f in both["file"]]
    stamps = [os.stat(f).st_mtime_ns for f in files]
    files[2].write_bytes(files[2].read_bytes()[:100])  # a truncated image from a crash
    sample(sd_run, tmp_path / "both", "dog", "dog", TEMPLATES, [0, 1], "p", cfg)
    after = [os.stat(f).st_mtime_ns for f in files]
    assert after[:2] == stamps[:2] and after[3] == stamps[3]  # intact images are kept
    with Image.open(files[2]) as im:
        im.load()
        assert im.size == (64, 64)


def test_rerun_with_other_vectors_redoes_every_image(sd_run, tmp_path):
    """Kept images must come from the same inputs: a workflow re-runs a sampling job when the run it
    samples was trained again, into the same folder."""
    cfg = SampleConfig().set(["steps=2"])
    rows = pd.read_csv(sample(sd_run, tmp_path / "out", "dog", "dog", TEMPLATES, [0], "p", cfg))
    files = [tmp_path / "out" / f for f in rows["file"]]
    before = [np.asarray(Image.open(f)) for f in files]
    retrained = tmp_path / "retrained"
    shutil.copytree(sd_run, retrained)
    vectors = load_tensors(retrained / "learned_embeds.safetensors")
    save_tensors({k: v.flip(-1) for k, v in vectors.items()}, retrained / "learned_embeds.safetensors")
    sample(retrained, tmp_path / "out", "dog", "dog", TEMPLATES, [0], "p", cfg)
    after = [np.asarray(Image.open(f)) for f in files]
    redone = sample(retrained, tmp_path / "fresh", "dog", "dog", TEMPLATES, [0], "p", cfg)
    fresh = [np.asarray(Image.open(redone.parent / f)) for f in rows["file"]]
    assert all(np.array_equal(a, f) for a, f in zip(after, fresh))
    assert not all(np.array_equal(a, b) for a, b in zip(after, before))


def test_sample_bad_input(sd_run, tmp_path):
    with pytest.raises(DTIError, match="is not a run directory"):
        sample(tmp_path, tmp_path / "o", "dog", "dog", TEMPLATES, [0], "p")
    with pytest.raises(DTIError, match="unknown prompt set 'dti_fancy'; available: dreambooth, dti_simple"):
        read_prompt_set("dti_fancy", live=False)
    with pytest.raises(DTIError, match="no seeds given"):
        sample(sd_run, tmp_path / "o", "dog", "dog", TEMPLATES, [], "p")
    with pytest.raises(DTIError, match="batch_size must be >= 1, got 0"):
        sample(sd_run, tmp_path / "o", "dog", "dog", TEMPLATES, [0], "p", SampleConfig().set(["batch_size=0"]))
    assert not (tmp_path / "o").exists()


def test_a_sample_jobs_log_counts_images_and_holds_no_loader_noise(sd_run, tmp_path):
    """A job's log (stderr a file): one plain line per pipeline call with images done/total, and not
    transformers' warning about new embedding rows drawn from a normal distribution. A fresh process,
    as a job is: transformers warns once per process."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"tiny": {"object": TEMPLATES, "live": TEMPLATES + ["a {} on the moon"]}}))
    done = subprocess.run([sys.executable, "-m", "dti", "sample", "--run", str(sd_run), "--out", str(tmp_path / "out"),
                           "--subject", "dog", "--prompts", "tiny", "--prompts-file", str(prompts), "--seeds", "0", "1",
                           "--set", "steps=2", "--set", "batch_size=4"],
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "normal distribution" not in done.stderr and "\r" not in done.stderr
    lines = done.stderr.splitlines()
    counts = [re.fullmatch(r"sample dog image (\d+)/6 \| [\d.e+]+ image/s, eta \d+:\d\d:\d\d", line) for line in lines]
    assert all(counts) and [int(m[1]) for m in counts] == [4, 6]


def test_sampling_loads_the_runs_recorded_revision(sd_run, tmp_path):
    """A run trained from a hub id records its revision and commit; sampling loads the pipeline at them
    (here at a local folder, which refuses any revision, so the refusal shows what was asked for)."""
    run = tmp_path / "run"
    shutil.copytree(sd_run, run)
    record = read_json(run / "run.json")
    assert model_revision(record) is None  # trained from a local folder
    record["config"]["revision"] = "v2"
    write_json(record, run / "run.json")
    with pytest.raises(DTIError, match=r"revision 'v2' was given, but .* is a local folder"):
        sample(run, tmp_path / "o", "dog", "dog", TEMPLATES, [0], "p")
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_json({**record, "model_commit": commit}, run / "run.json")
    with pytest.raises(DTIError, match=f"revision '{commit}' was given"):  # the commit before the revision
        sample(run, tmp_path / "o", "dog", "dog", TEMPLATES, [0], "p")
