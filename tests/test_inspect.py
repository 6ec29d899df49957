"""`dti inspect`: a run's vectors against its text encoder's vocabulary, checked by direct computation."""

import json
import math
import shutil

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from dti import TrainConfig, rescale, train
from dti.cli import main
from dti.embeddings import read_run
from dti.inspection import inspect_run
from dti.io import read_json, write_json


@pytest.fixture(scope="module")
def vocabulary(tiny_models):
    """The tiny SD pipeline's tokenizer and input-embedding table, read directly."""
    tokenizer = CLIPTokenizer.from_pretrained(tiny_models["sd"], subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_models["sd"], subfolder="text_encoder")
    return tokenizer, encoder.get_input_embeddings().weight.detach().float()


@pytest.fixture(scope="module")
def ti_run(tiny_models, ref_images, tmp_path_factory):
    cfg = TrainConfig(method="ti", model=str(tiny_models["sd"]), images=str(ref_images), placeholder="<sks>",
                      initializer="dog", steps=1).set(["resolution=64", "batch_size=1", "device=cpu"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "ti")


def test_report_matches_direct_computation(sd_run, vocabulary, tmp_path):
    tokenizer, table = vocabulary
    # only the tokenizer and text encoder are read: a copy of the model without UNet and VAE serves
    record = read_json(sd_run / "run.json")
    model = tmp_path / "model"
    shutil.copytree(record["config"]["model"], model, ignore=shutil.ignore_patterns("unet", "vae"))
    run = tmp_path / "run"
    shutil.copytree(sd_run, run)
    record["config"]["model"] = str(model)
    write_json(record, run / "run.json")

    report = inspect_run(run)
    [enc] = report["encoders"]
    [v] = enc["vectors"]
    vector = read_run(sd_run)[1][0][0]
    norms = table.norm(dim=1)
    assert enc["encoder"] == "text_encoder" and v["token"] == "<sks>"
    assert enc["vocab_norms"] == pytest.approx({"min": norms.min().item(), "mean": norms.mean().item(),
                                                "max": norms.max().item()}, rel=1e-5)
    assert enc["m_star"] == pytest.approx(norms.mean().item(), rel=1e-5)  # DTI: m* = the mean norm
    assert v["norm"] == pytest.approx(vector.norm().item(), rel=1e-6) and v["norm_in_vocab_range"]
    assert v["norm_to_mean"] == pytest.approx(vector.norm().item() / norms.mean().item(), rel=1e-5)
    assert v["norm_percentile"] == pytest.approx(100 * sum(n <= vector.norm().item() for n in norms.tolist())
                                                 / len(norms))

    cosines = [torch.dot(row, vector).item() / (row.norm() * vector.norm()).item() for row in table]
    by_cos = sorted(range(len(table)), key=lambda i: -cosines[i])[:5]
    assert [n["id"] for n in v["nearest_cosine"]] == by_cos
    assert [n["cosine"] for n in v["nearest_cosine"]] == pytest.approx([cosines[i] for i in by_cos], abs=1e-5)
    assert [n["token"] for n in v["nearest_cosine"]] == tokenizer.convert_ids_to_tokens(by_cos)
    distances = torch.cdist(vector[None], table)[0].tolist()
    by_dist = sorted(range(len(table)), key=lambda i: distances[i])[:5]
    assert [n["id"] for n in v["nearest_euclidean"]] == by_dist
    assert [n["distance"] for n in v["nearest_euclidean"]] == pytest.approx([distances[i] for i in by_dist],
                                                                             abs=1e-5)

    dog = tokenizer("dog", add_special_tokens=False).input_ids[0]
    assert v["initializer_token"] == "dog</w>"
    assert v["angle_to_initializer_deg"] == pytest.approx(math.degrees(math.acos(cosines[dog])), abs=1e-3)


def test_off_manifold_vector_keeps_its_cosine_words_but_not_its_euclidean_ones(ti_run, tmp_path, vocabulary):
    """The paper's point: scaling a vector far beyond the vocabulary's norms leaves its direction, so its
    cosine neighbours, alone, while its Euclidean neighbours become the largest-norm rows."""
    tokenizer, table = vocabulary
    big = rescale(ti_run, tmp_path / "big", str(20 * table.norm(dim=1).max().item()))
    vocabularies = [vocabulary]
    ti = inspect_run(ti_run, vocabularies)["encoders"][0]["vectors"][0]
    far = inspect_run(big, vocabularies)["encoders"][0]["vectors"][0]
    assert far["norm_percentile"] == 100.0 and far["norm_to_mean"] > 20 and not far["norm_in_vocab_range"]
    assert [n["id"] for n in far["nearest_cosine"]] == [n["id"] for n in ti["nearest_cosine"]]
    assert far["angle_to_initializer_deg"] == pytest.approx(ti["angle_to_initializer_deg"], abs=1e-3)
    assert [n["id"] for n in far["nearest_euclidean"]] != [n["id"] for n in far["nearest_cosine"]]
    # far out along u, |r - s u| ~ s - r.u: the Euclidean neighbours are the rows reaching furthest along u
    u = torch.nn.functional.normalize(read_run(big)[1][0][0], dim=0)
    reach = set(torch.topk(table @ u, 20).indices.tolist())
    assert {n["id"] for n in far["nearest_euclidean"]} <= reach


def test_command_line_text_and_json(sd_run, capsys):
    assert main(["inspect", str(sd_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(inspect_run(sd_run)))
    assert main(["inspect", str(sd_run)]) == 0
    text = capsys.readouterr().out
    v = report["encoders"][0]["vectors"][0]
    assert "text_encoder: vocabulary norms min" in text and f"x the mean, percentile {v['norm_percentile']:.1f}" in text
    assert f"angle to the initializer dog</w>: {v['angle_to_initializer_deg']:.1f} deg" in text
    assert "nearest by cosine:    " + v["nearest_cosine"][0]["token"] in text
    assert "nearest by Euclidean: " + v["nearest_euclidean"][0]["token"] in text


def test_inspect_needs_a_finished_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} is not a run directory (no run.json)"
