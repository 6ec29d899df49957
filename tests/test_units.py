"""Small units: configuration, m* statistics, token positions, image checks, the command line."""

import pytest
import torch
from PIL import Image

from dti import DTIError, TrainConfig
from dti import tiny
from dti.cli import main
from dti.families import initializer_positions, vocab_norm_stats


def test_family_defaults_follow_the_paper_protocol():
    sdxl = TrainConfig(method="dti", family="sdxl").resolved()
    assert (sdxl.resolution, sdxl.batch_size, sdxl.grad_accum, sdxl.steps) == (768, 4, 1, 400)
    assert (sdxl.lr, sdxl.kappa, sdxl.beta, sdxl.m_star) == (0.04, 1e-4, 0.0, "mean")
    sana = TrainConfig(method="dti", family="sana").resolved()
    assert (sana.resolution, sana.batch_size, sana.grad_accum, sana.steps, sana.kappa) == (1024, 2, 2, 500, 5e-5)
    ti = TrainConfig(method="ti", family="sana").resolved()
    assert (ti.lr, ti.weight_decay) == (0.02, 0.0)
    assert TrainConfig(method="crossinit", family="sdxl").resolved().weight_decay == 1e-2
    assert TrainConfig(method="ti", family="sd").set(["lr=0.1"]).resolved().lr == 0.1


@pytest.mark.parametrize("assignment, message", [
    ("lerning_rate=0.1", "unknown key 'lerning_rate' in --set; valid keys: .*lr"),
    ("steps=many", "--set steps=many: expected a value of type int"),
    ("complex_human_instruction=maybe", "expected a value of type bool"),
    ("noequals", "--set expects key=value"),
])
def test_set_rejects_bad_assignments(assignment, message):
    with pytest.raises(DTIError, match=message):
        TrainConfig().set([assignment])


@pytest.mark.parametrize("key, value, message", [
    ("m_star", "huge", "m_star must be mean, min, max or a positive number"),
    ("m_star", "-1", "m_star must be positive"),
    ("direction_optimizer", "sgd", "direction_optimizer must be rsgd or adamw"),
    ("kappa", "-1", "kappa must be >= 0"),
    ("batch_size", "0", "batch_size must be >= 1"),
])
def test_resolved_rejects_bad_values(key, value, message):
    with pytest.raises(DTIError, match=message):
        TrainConfig(method="dti", family="sd").set([f"{key}={value}"]).resolved()


def test_vocab_norm_stats_skip_zero_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    stats = vocab_norm_stats(w)
    assert stats["mean"] == pytest.approx(8 / 3) and stats["min"] == 1.0 and stats["max"] == 5.0


def test_initializer_positions_with_right_and_left_padding():
    tok = tiny.clip_tokenizer()
    init = tok("stuffed animal", add_special_tokens=False).input_ids
    assert len(init) == 2
    right = tok("stuffed animal", padding="max_length", max_length=12).input_ids
    assert initializer_positions(right, init) == [1, 2]  # after BOS
    tok.padding_side = "left"
    left = tok("stuffed animal", padding="max_length", max_length=12).input_ids
    assert initializer_positions(left, init) == [9, 10]  # 8 pads, BOS, the two tokens, EOS
    gemma = tiny.gemma_tokenizer()
    g_init = gemma("stuffed animal", add_special_tokens=False).input_ids
    g_ids = gemma("stuffed animal", padding="max_length", max_length=20).input_ids
    assert g_ids[0] == gemma.bos_token_id and initializer_positions(g_ids, g_init) == list(range(1, 1 + len(g_init)))
    with pytest.raises(DTIError, match="not in its own encoding"):
        initializer_positions(right[:2], init)


def _train_args(model, images, out, *extra):
    return ["train", "--model", str(model), "--method", "dti", "--images", str(images), "--placeholder", "<sks>",
            "--initializer", "dog", "--steps", "1", "--out", str(out), "--set", "resolution=64",
            "--set", "batch_size=1", *extra]


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
    import json
    import os
    import subprocess
    import sys

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


def test_dreambooth_images_load_and_preprocess():
    from conftest import dreambooth_dir

    from dti.data import list_images, load_reference

    root = dreambooth_dir()
    if root is None:
        pytest.skip("DreamBooth images not present")
    subjects = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(subjects) == 30
    files = [f for s in subjects for f in list_images(s)]
    assert len(files) == 158
    for f in files[::10]:
        ref = load_reference(f, 64, 8)
        assert min(ref.pixels.shape[1:]) == 64 and ref.pixels.shape[1] % 8 == 0 and ref.pixels.shape[2] % 8 == 0
        assert -1.0 <= ref.pixels.min() and ref.pixels.max() <= 1.0
