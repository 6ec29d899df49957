"""`dti export`: the files AUTOMATIC1111, ComfyUI and diffusers read, loaded back with diffusers' own loader."""

import hashlib
import json
import shutil
import struct
from datetime import datetime

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dti import DTIError, TrainConfig, rescale, train
from dti.cli import main
from dti.embeddings import load_embeddings, read_run
from dti.export import export
from dti.io import read_json, write_json

MODELSPEC = ["modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
             "modelspec.date", "modelspec.description", "modelspec.resolution", "modelspec.hash_sha256"]


def _train(model, images, out, method="dti", initializer="dog"):
    cfg = TrainConfig(method=method, model=str(model), images=str(images), placeholder="<sks>",
                      initializer=initializer, steps=1).set(["resolution=64", "batch_size=1", "device=cpu"])
    return train(cfg, out)


@pytest.fixture(scope="module")
def sdxl_run(tiny_models, ref_images, tmp_path_factory):
    """A two-vector DTI run on the tiny SDXL pipeline ("stuffed animal" is two tokens)."""
    out = tmp_path_factory.mktemp("runs") / "sdxl"
    return _train(tiny_models["sdxl"], ref_images, out, initializer="stuffed animal")


@pytest.fixture(scope="module")
def ti_run(tiny_models, ref_images, tmp_path_factory):
    return _train(tiny_models["sd"], ref_images, tmp_path_factory.mktemp("runs") / "ti", method="ti")


def file_metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def fresh_pipe(model):
    pipe = DiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rows_of(tokenizer, encoder, tokens):
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return encoder.get_input_embeddings().weight[ids].detach()


def test_a1111_sd_file_loads_in_diffusers_with_the_runs_vectors(sd_run, tiny_models, tmp_path, capsys):
    assert main(["export", "--run", str(sd_run), "--name", "my_dog", "--out", str(tmp_path)]) == 0
    path = tmp_path / "my_dog.safetensors"
    assert capsys.readouterr().out.strip() == str(path)
    record, rows = read_run(sd_run)
    tensors = load_file(str(path))
    assert list(tensors) == ["emb_params"] and torch.equal(tensors["emb_params"], rows[0])

    pipe = fresh_pipe(tiny_models["sd"])
    pipe.load_textual_inversion(str(path), token="my_dog")
    assert torch.equal(rows_of(pipe.tokenizer, pipe.text_encoder, ["my_dog"]), rows[0])

    meta = file_metadata(path)
    assert set(MODELSPEC) <= set(meta)
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.title"] == "my_dog"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.resolution"] == "64x64" and meta["modelspec.trigger_phrase"] == "my_dog"
    datetime.fromisoformat(meta["modelspec.date"])  # ISO 8601
    m_star = json.loads(meta["dti.m_star"])
    assert m_star == {"emb_params": pytest.approx(record["vocab_norms"]["text_encoder"]["mean"])}
    assert meta["dti.m_star_stat"] == "mean" and meta["dti.method"] == "dti"
    assert json.loads(meta["dti.norms"])["emb_params"] == pytest.approx([m_star["emb_params"]], rel=1e-5)
    # the hash covers the tensor bytes alone, as the model spec defines it
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(blob[8 + size:]).hexdigest()


def test_a1111_sdxl_file_conditions_sdxl_as_the_run_does(sdxl_run, tiny_models, tmp_path):
    [path] = export(sdxl_run, "my_toy", out_dir=tmp_path)
    assert path == tmp_path / "my_toy.safetensors"
    record, rows = read_run(sdxl_run)
    assert rows[0].shape[0] == 2  # two vectors per encoder
    tensors = load_file(str(path))
    assert sorted(tensors) == ["clip_g", "clip_l"]
    assert torch.equal(tensors["clip_l"], rows[0]) and torch.equal(tensors["clip_g"], rows[1])

    exported = fresh_pipe(tiny_models["sdxl"])
    exported.load_textual_inversion(tensors["clip_l"], token="my_toy", text_encoder=exported.text_encoder,
                                    tokenizer=exported.tokenizer)
    exported.load_textual_inversion(tensors["clip_g"], token="my_toy", text_encoder=exported.text_encoder_2,
                                    tokenizer=exported.tokenizer_2)
    assert torch.equal(rows_of(exported.tokenizer, exported.text_encoder, ["my_toy", "my_toy_1"]), rows[0])
    assert torch.equal(rows_of(exported.tokenizer_2, exported.text_encoder_2, ["my_toy", "my_toy_1"]), rows[1])
    own = fresh_pipe(tiny_models["sdxl"])
    concept = load_embeddings(own, sdxl_run)
    with torch.no_grad():
        kwargs = {"device": torch.device("cpu"), "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
        a = exported.encode_prompt("a photo of my_toy on the beach", **kwargs)
        b = own.encode_prompt(concept.prompt("a photo of {} on the beach"), **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])  # token states and pooled output alike

    meta = file_metadata(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    m_star = json.loads(meta["dti.m_star"])
    assert m_star == pytest.approx({"clip_l": record["m_star_values"][0], "clip_g": record["m_star_values"][1]})
    assert all(isinstance(v, float) for v in m_star.values())


def test_diffusers_format_loads_by_path_under_the_trigger(sd_run, sdxl_run, tiny_models, tmp_path):
    [path] = export(sd_run, "my_dog", "diffusers", tmp_path / "sd")
    assert path.name == "my_dog.safetensors" and list(load_file(str(path))) == ["my_dog"]
    pipe = fresh_pipe(tiny_models["sd"])
    pipe.load_textual_inversion(str(path))  # the token is the file's one key
    assert torch.equal(rows_of(pipe.tokenizer, pipe.text_encoder, ["my_dog"]), read_run(sd_run)[1][0])
    assert file_metadata(path)["modelspec.implementation"] == "diffusers"

    first, second = export(sdxl_run, "my_toy", "diffusers", tmp_path / "sdxl")
    assert (first.name, second.name) == ("my_toy.safetensors", "my_toy_2.safetensors")
    rows = read_run(sdxl_run)[1]
    pipe = fresh_pipe(tiny_models["sdxl"])
    pipe.load_textual_inversion(str(first), text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(str(second), text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    assert torch.equal(rows_of(pipe.tokenizer_2, pipe.text_encoder_2, ["my_toy", "my_toy_1"]), rows[1])
    assert list(json.loads(file_metadata(second)["dti.m_star"])) == ["my_toy"]


def test_m_star_is_the_number_of_each_kind_of_run(sd_run, ti_run, tmp_path):
    # a run written before run.json recorded m_star_values: resolved from its vocabulary norms
    old = tmp_path / "old"
    shutil.copytree(sd_run, old)
    record = read_json(old / "run.json")
    del record["m_star_values"]
    write_json(record, old / "run.json")
    [path] = export(old, "old", out_dir=tmp_path)
    assert json.loads(file_metadata(path)["dti.m_star"])["emb_params"] == record["vocab_norms"]["text_encoder"]["mean"]
    # TI leaves the norm free: no m*, only the vectors' norms
    meta = file_metadata(export(ti_run, "ti", out_dir=tmp_path)[0])
    assert "dti.m_star" not in meta and meta["dti.method"] == "ti" and json.loads(meta["dti.norms"])["emb_params"]
    # TI-rescaled holds it at the statistic asked for
    rescaled = rescale(ti_run, tmp_path / "rescaled", "max")
    meta = file_metadata(export(rescaled, "rescaled", out_dir=tmp_path)[0])
    assert json.loads(meta["dti.m_star"])["emb_params"] == pytest.approx(record["vocab_norms"]["text_encoder"]["max"])
    assert meta["dti.m_star_stat"] == "max" and meta["dti.method"] == "ti_rescaled"


@pytest.mark.parametrize("name", ["<sks>", "../up", "my dog", ".."])
def test_a_trigger_must_be_a_plain_file_name(sd_run, tmp_path, capsys, name):
    assert main(["export", "--run", str(sd_run), "--name", name, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: trigger {name!r} is not a plain name (letters, digits, '.', '_', '-')"]
    assert list(tmp_path.iterdir()) == []


def test_a_sana_run_is_refused_in_one_line(sd_run, tmp_path):
    sana = tmp_path / "sana"
    shutil.copytree(sd_run, sana)
    record = read_json(sana / "run.json")
    record["config"]["family"] = "sana"
    write_json(record, sana / "run.json")
    for fmt in ("a1111", "diffusers"):
        with pytest.raises(DTIError, match=f"is a sana run: no {fmt} loader reads sana embeddings"):
            export(sana, "x", fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DTIError, match="is not a run directory"):
        export(tmp_path, "x")
