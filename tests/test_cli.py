"""The command line: one-line errors for bad input, and the commands chained as a user runs them."""

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pandas as pd
import pytest
from PIL import Image

from dti.cli import COMMANDS, main


def _train_args(model, images, out, *extra):
    return ["train", "--model", str(model), "--method", "dti", "--images", str(images), "--placeholder", "<sks>",
            "--initializer", "dog", "--steps", "1", "--out", str(out), "--set", "resolution=64",
            "--set", "batch_size=1", "--set", "device=cpu", *extra]


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_cli_bad_image_folders(tiny_models, tmp_path, capsys):
    assert main(_train_args(tiny_models["sd"], tmp_path / "missing", tmp_path / "o")) == 2
    assert "does not exist" in _error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(_train_args(tiny_models["sd"], tmp_path / "empty", tmp_path / "o")) == 2
    assert "is empty" in _error_line(capsys)
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8)).save(bad / "a.png")
    (bad / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert main(_train_args(tiny_models["sd"], bad, tmp_path / "o")) == 2
    assert "b.jpg: not a readable image" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("family, placeholder, initializer, message", [
    ("sd", "cat", "dog", "placeholder token 'cat' is already in the vocabulary"),
    ("sd", "<sks>", "   ", "initializer '   ' does not tokenize"),
    ("sana", "<SKS>", "dog", "placeholder '<SKS>' must be lower-case"),
])
def test_cli_bad_tokens(tiny_models, ref_images, tmp_path, capsys, family, placeholder, initializer, message):
    args = _train_args(tiny_models[family], ref_images, tmp_path / "o")
    args[args.index("--placeholder") + 1] = placeholder
    args[args.index("--initializer") + 1] = initializer
    assert main(args) == 2
    assert message in _error_line(capsys)


def test_cli_bad_model_and_keys(tmp_path, ref_images, capsys):
    assert main(_train_args(tmp_path, ref_images, tmp_path / "o")) == 2
    assert "cannot read model_index.json" in _error_line(capsys)
    assert main(_train_args(tmp_path, ref_images, tmp_path / "o", "--set", "kapa=1")) == 2
    assert "unknown key 'kapa'" in _error_line(capsys)
    with pytest.raises(SystemExit):
        main(["train", "--model", "m", "--method", "lora", "--images", "i", "--placeholder", "p",
              "--initializer", "w", "--out", "o"])


def test_cli_rescale_needs_a_run(tmp_path, capsys):
    assert main(["rescale", "--run", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is not a run directory" in _error_line(capsys)


def test_command_line_end_to_end(tiny_models, ref_images, tmp_path):
    """`python -m dti train` then `python -m dti rescale`, as a user runs them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "dti", "train", "--model", str(tiny_models["sd"]),
                          "--method", "ti", "--images", str(ref_images), "--placeholder", "<sks>",
                          "--initializer", "dog", "--steps", "2", "--out", str(tmp_path / "ti"),
                          "--set", "resolution=64", "--set", "batch_size=1"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "ti")
    record = json.loads((tmp_path / "ti" / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["lr"] == 0.02 and record["versions"]["torch"]
    res = subprocess.run([sys.executable, "-m", "dti", "rescale", "--run", str(tmp_path / "ti"), "--stat", "max",
                          "--out", str(tmp_path / "ti_rescaled")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rescaled = json.loads((tmp_path / "ti_rescaled" / "run.json").read_text())
    assert rescaled["final_norms"]["text_encoder"][0] == pytest.approx(record["vocab_norms"]["text_encoder"]["max"])
    bad = subprocess.run([sys.executable, "-m", "dti", "rescale", "--run", str(tmp_path / "ti"), "--stat", "big",
                          "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: m_star must be mean, min, max or a positive number, got 'big'"]
    assert not (tmp_path / "x").exists()


TEMPLATES = ["a {} in the jungle", "a red {}"]


def test_train_sample_score_aggregate_through_the_command_line(sd_run, ref_images, metric_models, tmp_path, capsys):
    """The evaluation commands chained as a user runs them, on a tiny pipeline and tiny metric models."""
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


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_plain_help_with_an_example(capsys, command):
    text = _help(capsys, command)
    assert "`" not in text  # reST markup of the docstrings and field helps is not for a terminal
    example = text.split("\nexample:\n", 1)[1]
    assert example.lstrip().startswith(f"python -m dti {command}")


def test_top_level_help_and_version(capsys):
    text = _help(capsys)
    assert "`" not in text and all(name in text for name in COMMANDS)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"python -m dti {metadata.version('dti')}"


def test_set_keys_are_listed_once_flags_apart(capsys):
    train = _help(capsys, "train").split("keys for --set", 1)[1]
    listed = [line.split()[0] for line in train.splitlines() if line.startswith("  ") and "(default " in line]
    flags = ["method", "model", "revision", "images", "placeholder", "initializer", "steps", "seed"]
    assert "lr" in listed and "m_star" in listed and not set(flags) & set(listed)
    assert ("set by their own flags above: method (--method), model (--model), revision (--revision)"
            in " ".join(train.split()))
    generate = _help(capsys, "generate").split("keys for --set", 1)[1]
    assert "  height (default None)" in generate and "  steps (default" not in generate
    assert "guidance_scale (--guidance)" in generate


def test_choices_are_listed(capsys):
    assert "--protocol {dreambooth,mini,paper}" in _help(capsys, "score")
    sample = " ".join(_help(capsys, "sample").split())
    assert "dreambooth, dti_simple in the default file (default dti_simple); mini in the mini world's" in sample
    assert "--format {a1111,diffusers}" in _help(capsys, "export")


def test_only_commands_that_load_models_import_them(tmp_path):
    """`dti tables`, `aggregate`, `rescale`, `export` and `data` start without diffusers and transformers."""
    code = ("import sys; from dti.cli import main; "
            f"main(['tables', 'main', '--summary', {str(tmp_path / 'no.csv')!r}, '--image-metric', 'a', "
            f"'--text-metric', 'b', '--out', {str(tmp_path)!r}]); "
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr
    assert "summary" in done.stderr and "not found" in done.stderr


def test_revision_reaches_the_configuration(tiny_models, ref_images, tmp_path, capsys):
    assert main(_train_args(tiny_models["sd"], ref_images, tmp_path / "o", "--revision", "v1.0")) == 2
    assert "v1.0" in _error_line(capsys)
    assert not (tmp_path / "o").exists()
