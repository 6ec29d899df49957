"""Training a group of runs in one process (dti.train.train_group) on tiny real-architecture pipelines:
each run as it is alone (to float rounding), deterministic, resumable bit for bit, and refused before
any model loads when the runs cannot share a pipeline."""

import dataclasses
import json
import shutil

import pytest
import torch

from dti import DTIError
from dti.cli import main
from dti.embeddings import read_run
from dti.train import train, train_group
from test_train import _interrupt_at, make_cfg, read_log

# Alone and in a group, a run's batch goes through the same modules; what may differ is the order of
# float operations of a larger batch. Its vectors must agree to this (relative to their norm), and its
# logged losses to the same.
TOLERANCE = 1e-4


def group_cfgs(family, model, images, steps=4, **overrides):
    """Three runs that differ in all a run may have of its own: method, subject (placeholder and
    initializer), seed, learning rate and DTI's settings."""
    runs = [("ti", "<sks>", "stuffed animal", 1, {}),
            ("crossinit", "<zwx>", "dog", 2, {}),
            ("dti", "<qrp>", "toy", 3, {"kappa": 1e-3, "m_star": "min"})]
    cfgs = []
    for method, placeholder, initializer, seed, own in runs:
        cfg = make_cfg(family, method, model, images, steps=steps, seed=seed, **own, **overrides)
        cfgs.append(dataclasses.replace(cfg, placeholder=placeholder, initializer=initializer))
    return cfgs


def vectors(run_dir):
    return read_run(run_dir)[1]


def assert_close_runs(a, b):
    for x, y in zip(vectors(a), vectors(b)):
        assert (x - y).norm() <= TOLERANCE * x.norm(), (a, b)
    for ra, rb in zip(read_log(a), read_log(b)):
        assert ra["step"] == rb["step"]
        if ra["step"]:
            assert ra["loss"] == pytest.approx(rb["loss"], rel=TOLERANCE)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sana"])
def test_a_run_in_a_group_equals_the_run_alone(tiny_models, ref_images, tmp_path, family):
    cfgs = group_cfgs(family, tiny_models[family], ref_images)
    grouped = train_group(cfgs, [tmp_path / "group" / str(i) for i in range(len(cfgs))])
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, tmp_path / "alone" / str(i))
        assert_close_runs(grouped[i], alone)
        record = json.loads((grouped[i] / "run.json").read_text())
        assert record["config"]["placeholder"] == cfg.placeholder and record["status"] == "complete"
        assert record["tokens"][0] == cfg.placeholder


def test_a_group_is_deterministic_and_resumes_bit_for_bit(tiny_models, ref_images, tmp_path, monkeypatch):
    cfgs = group_cfgs("sd", tiny_models["sd"], ref_images, steps=6, checkpoint_every=2)
    outs = {name: [tmp_path / name / str(i) for i in range(len(cfgs))] for name in ("a", "b", "killed")}
    train_group(cfgs, outs["a"])
    train_group(cfgs, outs["b"])
    for a, b in zip(outs["a"], outs["b"]):
        assert all(torch.equal(x, y) for x, y in zip(vectors(a), vectors(b)))
        assert (a / "train_log.csv").read_bytes() == (b / "train_log.csv").read_bytes()

    with monkeypatch.context() as m:
        _interrupt_at(m, "sd", 5, KeyboardInterrupt())  # killed inside step 5, after the step-4 checkpoints
        with pytest.raises(KeyboardInterrupt):
            train_group(cfgs, outs["killed"])
    train_group(cfgs, outs["killed"], resume=True)
    for a, k in zip(outs["a"], outs["killed"]):
        assert all(torch.equal(x, y) for x, y in zip(vectors(a), vectors(k)))
        assert (a / "train_log.csv").read_bytes() == (k / "train_log.csv").read_bytes()


def test_a_group_leaves_finished_runs_and_resumes_the_rest(tiny_models, ref_images, tmp_path):
    """A workflow reruns a whole group when one of its runs is missing, after removing the group's outputs:
    finished runs only write their files again, the others train; runs may stand at different steps."""
    cfgs = group_cfgs("sd", tiny_models["sd"], ref_images, steps=6, checkpoint_every=2)
    straight = train_group(cfgs, [tmp_path / "straight" / str(i) for i in range(3)])
    outs = [tmp_path / "mixed" / str(i) for i in range(3)]
    train(cfgs[0], outs[0])  # finished
    train(dataclasses.replace(cfgs[1], steps=4), outs[1])  # checkpointed at step 4 of 6
    log_before = (outs[0] / "train_log.csv").read_bytes()
    (outs[0] / "learned_embeds.safetensors").unlink()
    train_group(cfgs, outs, resume=True)
    assert (outs[0] / "train_log.csv").read_bytes() == log_before
    for s, o in zip(straight, outs):
        assert_close_runs(s, o)
    assert [r["step"] for r in read_log(outs[1])][-1] == 6


def test_runs_that_cannot_share_a_pipeline_are_refused_before_loading(tiny_models, ref_images, tmp_path):
    cfgs = group_cfgs("sd", tiny_models["sd"], ref_images)
    outs = [tmp_path / str(i) for i in range(3)]
    with pytest.raises(DTIError, match="must agree on resolution, batch_size"):
        train_group([cfgs[0], dataclasses.replace(cfgs[1], resolution=32, batch_size=1), cfgs[2]], outs)
    with pytest.raises(DTIError, match="have the placeholder <sks>"):
        train_group([cfgs[0], dataclasses.replace(cfgs[1], placeholder="<sks>")], outs[:2])
    with pytest.raises(DTIError, match="have the folder"):
        train_group(cfgs[:2], [outs[0], outs[0]])
    assert not any(out.exists() for out in outs)


def test_cli_trains_a_group_from_run_objects(tiny_models, ref_images, tmp_path, capsys):
    common = ["train", "--model", str(tiny_models["sd"]), "--set", "resolution=64", "--set", "batch_size=2",
              "--set", "device=cpu", "--steps", "2", "--method", "ti", "--initializer", "dog"]
    runs = [{"out": str(tmp_path / "a"), "images": str(ref_images), "placeholder": "<sks>", "seed": 4},
            {"out": str(tmp_path / "b"), "images": str(ref_images), "placeholder": "<zwx>", "method": "dti",
             "set": ["kappa=0.001"]}]
    assert main(common + [arg for run in runs for arg in ("--run", json.dumps(run))]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "a"), str(tmp_path / "b")]
    a, b = (json.loads((tmp_path / name / "run.json").read_text())["config"] for name in ("a", "b"))
    assert (a["method"], a["seed"], a["steps"]) == ("ti", 4, 2)
    assert (b["method"], b["seed"], b["kappa"], b["initializer"]) == ("dti", 42, 0.001, "dog")
    shutil.rmtree(tmp_path / "b")
    for bad, message in (("[1]", "not a JSON object"), ("{x", "not JSON"), ('{"outt": "x"}', "unknown key 'outt'"),
                         ('{"out": "x", "set": "kappa=1"}', "set must be a list"),
                         ('{"out": "x", "images": ""}', "run 1 \\(--run\\) has no images")):
        assert main(common + ["--images", str(ref_images) if "images" not in bad else "", "--placeholder", "<q>",
                              "--run", bad]) == 2
        assert message.replace("\\", "") in capsys.readouterr().err


def test_a_group_samples_and_scores_each_run_as_alone(tiny_models, ref_images, metric_models, tmp_path):
    """dti sample --job ... loads the pipeline once for several runs and batches their images together, dti
    score --manifest/--out pairs the metric models once: each run's images and scores equal those of its own
    command."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    cfgs = group_cfgs("sd", tiny_models["sd"], ref_images, steps=1)[:2]  # two runs, two placeholders
    runs = train_group(cfgs, [tmp_path / "runs" / str(i) for i in range(2)])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"p": {"object": ["a photo of {}", "{} on a beach"], "live": ["{}"]}}))
    subjects = tmp_path / "subjects.csv"
    subjects.write_text("subject,class,dti_class,initializer,live\nblob,ball,ball,ball,False\n"
                        "other,toy,toy,toy,False\n")
    refs = tmp_path / "refs"
    for name in ("blob", "other"):
        shutil.copytree(ref_images, refs / name)
    # batches of 3: in the group, one batch holds images of both runs
    common = ["sample", "--prompts", "p", "--prompts-file", str(prompts), "--subjects-file", str(subjects),
              "--seeds", "0", "1", "--set", "steps=2", "--set", "device=cpu", "--set", "batch_size=3"]
    jobs = [{"run": str(run), "out": str(tmp_path / "group" / name), "subject": name}
            for run, name in zip(runs, ("blob", "other"))]
    assert main(common + [a for job in jobs for a in ("--job", json.dumps(job))]) == 0
    ids = [f"--model-id={k}={v}" for k, v in metric_models.items()]
    scoring = ["score", "--references", str(refs), "--protocol", "dreambooth", *ids]
    pairs = [a for name in ("blob", "other") for a in ("--manifest", str(tmp_path / "group" / name / "manifest.csv"),
                                                      "--out", str(tmp_path / f"group_{name}.csv"))]
    assert main(scoring + pairs) == 0
    for job in jobs:
        name = job["subject"]
        assert main(common + ["--run", job["run"], "--subject", name, "--out", str(tmp_path / "alone" / name)]) == 0
        files = sorted(p.relative_to(tmp_path / "alone" / name) for p in (tmp_path / "alone" / name).rglob("*.png"))
        assert len(files) == 4
        for f in files:
            a, b = (np.asarray(Image.open(tmp_path / where / name / f), dtype=int) for where in ("alone", "group"))
            assert np.abs(a - b).max() <= 1, f  # one grey level of float rounding at most
        assert main(scoring + ["--manifest", str(tmp_path / "alone" / name / "manifest.csv"),
                               "--out", str(tmp_path / f"alone_{name}.csv")]) == 0
        alone, grouped = (pd.read_csv(tmp_path / f"{where}_{name}.csv") for where in ("alone", "group"))
        assert len(alone) == len(grouped) == 4 * 4  # 4 images x the dreambooth protocol's 4 metrics
        assert np.allclose(alone["value"], grouped["value"], atol=1e-3)
    assert main(["sample", "--job", json.dumps(jobs[0]), "--run", "x"] + common[1:]) == 2
    assert main(scoring + pairs[:4] + ["--manifest", pairs[5]]) == 2  # two manifests, one --out
