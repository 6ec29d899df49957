"""Faults a careless or hostile user can cause: each is refused in one line (exit 2 through the command
line), before the expensive work, and nothing is written or lost. Image, reference-check, aggregate and
score faults are tested beside their modules (test_data, test_reference, test_aggregate, test_metrics);
workflow faults in test_workflow."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from dti import DTIError
from dti.cli import main
from dti.io import exclusive, load_tensors, save_tensors, truncate_log, write_json
from dti.sample import SampleConfig, sample


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def train_args(model, images, out, *extra, method="dti", placeholder="<sks>"):
    return ["train", "--model", str(model), "--method", method, "--images", str(images), "--placeholder",
            placeholder, "--initializer", "dog", "--steps", "2", "--out", str(out), "--set", "resolution=64",
            "--set", "batch_size=1", *extra]


def snapshot(folder) -> dict:
    """Every file below ``folder`` with its bytes' digest (what a refusal must leave as it was)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("assignment, message", [
    ("lr=nan", "lr must be a finite number, got nan"),
    ("kappa=nan", "kappa must be a finite number, got nan"),
    ("lr=-1", "lr must be positive"),
    ("beta=1.5", r"beta must be in \[0, 1\), got 1.5"),
    ("adam_beta1=2", r"adam_beta1 must be in \[0, 1\), got 2.0"),
    ("adam_eps=-1", "adam_eps must be positive, got -1.0"),
    ("crossinit_lambda=inf", "crossinit_lambda must be a finite number"),
    ("checkpoint_every=-1", "checkpoint_every must be >= 0"),
    ("m_star=inf", "m_star must be a positive finite number"),
    ("family=sdxl", "family 'sdxl' was set, but .* is a sd pipeline"),
    ("seed=-1", r"seed must be in \[0, 2\*\*63\), got -1"),
    (f"seed={2**64}", r"seed must be in \[0, 2\*\*63\)"),
])
def test_bad_training_values_are_refused_before_anything_runs(tiny_models, ref_images, tmp_path, capsys,
                                                              assignment, message):
    assert main(train_args(tiny_models["sd"], ref_images, tmp_path / "out", "--set", assignment)) == 2
    assert re.search(message, error_line(capsys))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["ti", "dti"])
def test_a_huge_learning_rate_never_saves_degenerate_vectors(tiny_models, ref_images, tmp_path, capsys, method):
    """lr=1e30 overflows TI's vectors and collapses DTI's on the sphere; neither may be saved as a run."""
    out = tmp_path / "out"
    assert main(train_args(tiny_models["sd"], ref_images, out, "--set", "lr=1e30", method=method)) == 2
    line = error_line(capsys)
    assert "are not finite non-zero vectors" in line and "no checkpoint was saved" in line
    assert not (out / "learned_embeds.safetensors").exists() and not (out / "checkpoint.safetensors").exists()


def test_sampling_refuses_a_run_with_non_finite_vectors(sd_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_run, broken)
    vectors = load_tensors(broken / "learned_embeds.safetensors")
    nan = {k: torch.full_like(v, float("nan")) for k, v in vectors.items()}
    save_tensors(nan, broken / "learned_embeds.safetensors")
    with pytest.raises(DTIError, match="are not finite non-zero vectors"):
        sample(broken, tmp_path / "images", "dog", "dog", ["a {}"], [0], "p")
    assert not (tmp_path / "images").exists()


def test_rescale_never_overwrites_a_run(sd_run, tiny_models, ref_images, tmp_path, capsys):
    ti = tmp_path / "ti"
    assert main(train_args(tiny_models["sd"], ref_images, ti, method="ti")) == 0
    capsys.readouterr()
    before_ti, before_dti = snapshot(ti), snapshot(sd_run)
    assert main(["rescale", "--run", str(ti), "--out", str(ti)]) == 2
    assert "is the TI run itself" in error_line(capsys)
    assert main(["rescale", "--run", str(ti), "--out", str(sd_run)]) == 2
    assert "already holds something other than this rescale" in error_line(capsys)
    assert main(["rescale", "--run", str(ti), "--stat", "inf", "--out", str(tmp_path / "inf")]) == 2
    assert "m_star must be a positive finite number" in error_line(capsys)
    assert snapshot(ti) == before_ti and snapshot(sd_run) == before_dti and not (tmp_path / "inf").exists()
    # the same rescale again (a workflow rerun) is fine and gives the same files
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "r")]) == 0
    first = snapshot(tmp_path / "r")
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "r")]) == 0
    assert snapshot(tmp_path / "r") == first
    assert main(["rescale", "--run", str(ti), "--stat", "max", "--out", str(tmp_path / "r")]) == 2
    assert snapshot(tmp_path / "r") == first
    # several runs in one command (the workflow's groups): each as alone; one bad pair and none is written
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "g1"), "--run", str(ti), "--out",
                 str(tmp_path / "g2")]) == 0
    assert snapshot(tmp_path / "g1") == snapshot(tmp_path / "g2") == first
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "g3"), "--run", str(sd_run), "--out",
                 str(tmp_path / "g4")]) == 2
    assert "rescale takes a TI run" in error_line(capsys)
    assert not (tmp_path / "g3").exists() and not (tmp_path / "g4").exists()
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "g5"), "--run", str(ti)]) == 2
    assert "give one --out per run" in error_line(capsys)
    assert main(["rescale", "--run", str(ti), "--out", str(tmp_path / "g6"), "--run", str(ti), "--out",
                 str(tmp_path / "g6")]) == 2
    assert "the same --out" in error_line(capsys) and not (tmp_path / "g6").exists()


def test_a_subject_name_never_reaches_outside_the_output_folder(sd_run, tmp_path):
    keep = tmp_path / "A" / "precious.txt"
    keep.parent.mkdir()
    keep.write_text("keep me")
    for name in ("..", ".", "a/b", "../A"):
        with pytest.raises(DTIError, match="is not a plain name"):
            sample(sd_run, tmp_path / "A" / "out", name, "dog", ["a {}"], [0], "p")
    assert keep.read_text() == "keep me" and not (tmp_path / "A" / "out").exists()


def test_a_second_writer_of_a_folder_fails_naming_the_first(sd_run, tiny_models, ref_images, tmp_path, capsys):
    run = tmp_path / "run"
    with exclusive(run / ".lock", "test"):
        assert main(train_args(tiny_models["sd"], ref_images, run, "--resume")) == 2
        line = error_line(capsys)
        assert f"run folder {run} is in use by process {os.getpid()}" in line
        with pytest.raises(DTIError, match=f"is in use by process {os.getpid()}"):
            with exclusive(tmp_path / "images" / ".lock", "test"):
                sample(sd_run, tmp_path / "images", "dog", "dog", ["a {}"], [0], "p")
    assert [p.name for p in run.iterdir()] == [".lock"]  # nothing of a run was written
    assert main(train_args(tiny_models["sd"], ref_images, run)) == 0  # the lock file alone is no obstacle


def test_a_placeholder_that_splits_a_word_is_refused(tiny_models, ref_images, tmp_path, capsys):
    assert main(train_args(tiny_models["sd"], ref_images, tmp_path / "out", placeholder="hoto")) == 2
    assert "placeholder 'hoto' changes how the word 'photo' tokenizes" in error_line(capsys)
    assert main(train_args(tiny_models["sd"], ref_images, tmp_path / "out", placeholder="<my dog>")) == 2
    assert "must be one word (no spaces)" in error_line(capsys)


def test_broken_links_and_incomplete_model_folders_are_named(tiny_models, ref_images, tmp_path, capsys):
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.png").symlink_to(tmp_path / "nothing.png")
    assert main(train_args(tiny_models["sd"], links, tmp_path / "out")) == 2
    assert "a.png link(s) to nothing" in error_line(capsys)
    model = tmp_path / "model"
    shutil.copytree(tiny_models["sd"], model)
    shutil.rmtree(model / "unet")
    assert main(train_args(model, ref_images, tmp_path / "out")) == 2
    assert f"model folder {model} lacks unet" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_bad_output_folders_and_corrupt_run_files(sd_run, tiny_models, ref_images, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(train_args(tiny_models["sd"], ref_images, a_file)) == 2
    assert "is a file, not a folder" in error_line(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(train_args(tiny_models["sd"], ref_images, other, "--resume")) == 2
    assert "is not empty and holds no run" in error_line(capsys)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    for name, junk in (("run.json", b"{not json"), ("learned_embeds.safetensors", b"\x00" * 20),
                       ("checkpoint.safetensors", b"garbage")):
        broken = tmp_path / f"broken_{name}"
        shutil.copytree(sd_run, broken)
        (broken / name).write_bytes(junk)
        if name == "checkpoint.safetensors":
            record = json.loads((broken / "run.json").read_text())
            record["status"] = "running"  # an interrupted run: --resume reads its checkpoint
            write_json(record, broken / "run.json")
            args = ["train", "--model", record["config"]["model"], "--method", "dti", "--images",
                    record["config"]["images"], "--placeholder", "<sks>", "--initializer", "dog", "--steps", "1",
                    "--out", str(broken), "--resume", "--set", "resolution=64", "--set", "batch_size=1"]
        else:
            args = ["sample", "--run", str(broken), "--subject", "dog", "--out", str(tmp_path / "s")]
        assert main(args) == 2
        assert name in error_line(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("assignment, message", [
    ("steps=0", "sampling steps must be >= 1, got 0"),
    ("height=7", "sampling height must be a multiple of 8"),
    ("guidance_scale=nan", "guidance_scale must be a finite number"),
])
def test_bad_sampling_settings_are_refused_before_anything_is_written(sd_run, tmp_path, assignment, message):
    with pytest.raises(DTIError, match=message):
        sample(sd_run, tmp_path / "out", "dog", "dog", ["a {}"], [0], "p", SampleConfig().set([assignment]))
    with pytest.raises(DTIError, match="repeat a seed"):
        sample(sd_run, tmp_path / "out", "dog", "dog", ["a {}"], [0, 0], "p")
    with pytest.raises(DTIError, match="seed must be in"):
        sample(sd_run, tmp_path / "out", "dog", "dog", ["a {}"], [2**64], "p")
    assert not (tmp_path / "out").exists()


def test_outputs_honour_the_umask_and_identical_tensors_give_identical_bytes(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "a.json")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # group and others may read results
    finally:
        os.umask(old)
    code = ("import sys, torch; from dti.io import save_tensors; "
            "save_tensors({'b': torch.ones(3), 'a': torch.arange(4.)}, sys.argv[1], {k: k for k in 'zyxwvuts'})")
    for i in range(2):  # the metadata order of the safetensors library changes from process to process
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True)
    assert (tmp_path / "0.safetensors").read_bytes() == (tmp_path / "1.safetensors").read_bytes()
    assert torch.equal(load_tensors(tmp_path / "0.safetensors")["a"], torch.arange(4.0))


def test_a_log_row_cut_off_by_a_kill_does_not_survive_a_resume(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss,norm\n0,nan,1.0\n1,0.5,1.0\n2,0.4,1.0\n3,0.3\n3,,\n")
    truncate_log(log, 3)
    assert log.read_text().splitlines() == ["step,loss,norm", "0,nan,1.0", "1,0.5,1.0", "2,0.4,1.0"]
