"""Data command, sampling protocol and aggregation (the metric backbones are tested in test_metrics.py)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dti import DTIError, TrainConfig, train
from dti.aggregate import bootstrap_interval, subject_means, summarize, write_tables
from dti.data import fetch_dreambooth, read_prompt_set, read_subjects
from dti.io import load_tensors, save_tensors
from dti.sample import SampleConfig, sample

from conftest import dreambooth_dir


@pytest.fixture(scope="module")
def sd_run(tiny_models, ref_images, tmp_path_factory):
    cfg = TrainConfig(method="dti", model=str(tiny_models["sd"]), images=str(ref_images), placeholder="<sks>",
                      initializer="dog", steps=1).set(["resolution=64", "batch_size=1"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "dti")


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
    with pytest.raises(DTIError, match="batch_size must be at least 1, got 0"):
        sample(sd_run, tmp_path / "o", "dog", "dog", TEMPLATES, [0], "p", SampleConfig().set(["batch_size=0"]))
    assert not (tmp_path / "o").exists()


def test_benchmark_tables():
    subjects = read_subjects()
    assert len(subjects) == 30 and sum(s["live"] for s in subjects) == 9
    assert len(read_prompt_set("dti_simple", live=False)) == 41
    assert len(read_prompt_set("dreambooth", live=True)) == 25


def test_aggregation_with_nan_and_uneven_image_counts(tmp_path):
    rows = [("m", "x", "A", v) for v in (1.0, 1.0, 1.0, 1.0)] + [("m", "x", "B", 3.0)]
    rows += [("n", "x", "A", v) for v in (1.0, 2.0, 3.0)] + [("n", "x", "B", v) for v in (4.0, np.nan)]
    scores = pd.DataFrame(rows, columns=["method", "metric", "subject", "value"])
    per = subject_means(scores).set_index(["method", "subject"])
    assert per.loc[("n", "B"), "mean_available"] == 4.0 and np.isnan(per.loc[("n", "B"), "mean"])
    assert per.loc[("n", "B"), "n_missing"] == 1
    summary = summarize(scores).set_index("method")
    assert summary.loc["m", "mean"] == 2.0  # unweighted over subjects, not 7/5 over images
    assert summary.loc["m", "ci_low"] >= 1.0 and summary.loc["m", "ci_high"] <= 3.0
    assert np.isnan(summary.loc["n", "mean"]) and summary.loc["n", "mean_available"] == 3.0
    assert summary.loc["n", "n_missing_images"] == 1
    with_missing = summarize(scores, subjects=["A", "B", "C"]).set_index("method")
    assert np.isnan(with_missing.loc["m", "mean"]) and with_missing.loc["m", "missing_subjects"] == "C"
    assert with_missing.loc["m", "mean_available"] == 2.0 and with_missing.loc["m", "n_subjects"] == 2
    write_tables(scores, tmp_path)
    assert "| m | x | unmasked | 2.000 |" in (tmp_path / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = np.array([0.2, 0.5, 0.4, 0.9, 0.3])
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)
    assert low < values.mean() < high


def test_data_command_from_a_local_copy(tmp_path):
    root = dreambooth_dir()
    if root is None:
        pytest.skip("DreamBooth images not present")
    out = fetch_dreambooth(tmp_path / "dreambooth", from_dir=root)
    assert sum(1 for p in out.rglob("*.jpg")) == 158
    assert pd.read_csv(out / "subjects.csv").shape == (30, 5)
    assert fetch_dreambooth(out) == out  # present and intact: left as is
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "vase")
    with pytest.raises(DTIError, match="missing subject folders: vase"):
        fetch_dreambooth(tmp_path / "again", from_dir=broken)
    assert not (tmp_path / "again").exists()


def test_train_sample_score_aggregate_through_the_command_line(sd_run, ref_images, metric_models, tmp_path, capsys):
    """The evaluation commands chained as a user runs them, on a tiny pipeline and tiny metric models."""
    import json

    from dti.cli import main

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"mini": {"object": TEMPLATES, "live": TEMPLATES}}))
    subjects = tmp_path / "subjects.csv"
    subjects.write_text("subject,class,dti_class,initializer,live\nblob,ball,ball,ball,False\n"
                        "other,ball,ball,ball,False\n")
    references = tmp_path / "refs"
    shutil.copytree(ref_images, references / "blob")
    assert main(["sample", "--run", str(sd_run), "--subject", "blob", "--prompts", "mini", "--prompts-file",
                 str(prompts), "--subjects-file", str(subjects), "--seeds", "0", "1", "--out", str(tmp_path / "s"),
                 "--set", "steps=2"]) == 0
    ids = [f"--model-id={k}={v}" for k, v in metric_models.items()]
    for protocol in ("paper", "dreambooth"):
        assert main(["score", "--manifest", str(tmp_path / "s" / "manifest.csv"), "--references", str(references),
                     "--protocol", protocol, "--out", str(tmp_path / f"{protocol}.csv"), *ids]) == 0
    paper = pd.read_csv(tmp_path / "paper.csv")
    assert sorted(paper["metric"].unique()) == ["dinov2", "siglip"] and len(paper) == 2 * 2 * 2
    assert paper["value"].between(-1, 1).all() and set(paper["references"]) == {"unmasked"}
    siglip = paper[paper["metric"] == "siglip"]["value"]
    assert siglip.between(0, 1).all()
    assert main(["aggregate", "--scores", str(tmp_path / "paper.csv"), str(tmp_path / "dreambooth.csv"),
                 "--subjects-file", str(subjects), "--out", str(tmp_path / "tables")]) == 0
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv")
    assert sorted(summary["metric"]) == ["clip_i", "clip_t", "dino", "dinov2", "siglip", "siglip_cos"]
    assert summary["mean"].isna().all() and (summary["missing_subjects"] == "other").all()  # never a 0
    assert set(summary["references"]) == {"unmasked"}  # every table says whether references were masked
    means = summary.set_index("metric")["mean_available"]
    assert means["dinov2"] == pytest.approx(paper[paper["metric"] == "dinov2"]["value"].mean())
    capsys.readouterr()
    assert main(["score", "--manifest", str(tmp_path / "s" / "manifest.csv"), "--references", str(references),
                 "--metrics", "dinov3", "--out", str(tmp_path / "x.csv")]) == 2
    assert "dinov3" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
