"""dti.metrics on tiny random-weight evaluators: identities, hand computations, the manifest path."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from dti import metrics
from dti.cli import main
from dti.data import open_rgb
from dti.io import DTIError, exclusive
from dti.metrics import BACKBONES, METRICS, PROTOCOLS, Backbones, Metric, score_images, score_manifest
from tests.conftest import MINI_WORLD
from tests.test_data import _gradient16, _png_header_only

IMAGE_METRICS = [n for n, m in METRICS.items() if m.kind == "image"]


@pytest.fixture(scope="session")
def all_models(metric_models):
    """Model ids of every backbone: the tiny ones, and the shipped mini world's (which have no default)."""
    return dict(metric_models, mini=str(MINI_WORLD / "evaluator"), mini_object=str(MINI_WORLD / "image_encoder"),
                readout=str(MINI_WORLD / "readout"))


@pytest.fixture(scope="session")
def backbones(all_models):
    return Backbones(list(METRICS), model_ids=all_models)


def _noise(seed, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _disc(size=(48, 40), colour=(220, 120, 30)):
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    arr = np.full((h, w, 3), 20, np.uint8)
    arr[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2] = colour
    return Image.fromarray(arr)


def test_registry():
    for names in PROTOCOLS.values():
        assert all(n in METRICS for n in names)
    assert {m.backbone for m in METRICS.values()} == set(BACKBONES)
    assert {m.kind for m in METRICS.values()} == {"image", "text", "attributes"}
    # the mini world's, found through its entry point
    assert PROTOCOLS["mini"] == ["mini_object", "mini_patch", "mini_clip_i", "mini_clip_t", "attr_prompt",
                                 "attr_subject"]
    assert BACKBONES["mini"].default_id is None and BACKBONES["readout"].default_id is None


def test_a_registered_backbone_is_scored_like_the_builtin_ones(metric_models):
    """A backbone, metric and protocol registered by a plugin (here: the tiny DINO's class under
    another name) are loaded and scored through Backbones like DINO itself."""
    @metrics.register_backbone
    class OtherDino(metrics.DINOBackbone):
        name, default_id = "other_dino", metric_models["dino"]

    try:
        metrics.register_metric(Metric("other_dino_i", "other_dino", "image"))
        assert metrics.register_protocol("other", ["other_dino_i", "dino"]) == ["other_dino_i", "dino"]
        with pytest.raises(DTIError, match="protocol 'other' has no text metric for the main table"):
            metrics.main_metrics("other")
        assert {p: metrics.main_metrics(p) for p in ("paper", "dreambooth", "mini")} == {
            "paper": ("dinov2", "siglip"), "dreambooth": ("dino", "clip_t"), "mini": ("mini_object", "mini_clip_t")}
        backbones = Backbones(PROTOCOLS["other"], model_ids={"dino": metric_models["dino"]})
        assert backbones.model_ids == {"other_dino": metric_models["dino"], "dino": metric_models["dino"]}
        assert isinstance(backbones["other_dino"], OtherDino)
        a, b = _noise(0), _disc()
        scores = score_images(backbones, ["other_dino_i", "dino"], [a, b], ["x"] * 2, [a, _noise(1)])
        assert scores["other_dino_i"] == scores["dino"]
        with pytest.raises(DTIError, match="'other_dino' has no text encoder"):
            backbones.text_embeddings("other_dino", ["x"])
        with pytest.raises(DTIError, match="already registered"):
            metrics.register_metric(Metric("other_dino_i", "dino", "image"))
        for bad in (lambda: metrics.register_metric(Metric("x_i", "no_such_backbone", "image")),
                    lambda: metrics.register_protocol("x", ["other_dino_i", "no_such_metric"]),
                    lambda: Backbones(["other_dino_i"], model_ids={"no_such_backbone": "x"}),
                    lambda: Backbones(["no_such_metric"])):
            with pytest.raises(DTIError, match="unknown") as info:
                bad()
            assert "\n" not in str(info.value) and "no_such" in str(info.value)
    finally:
        PROTOCOLS.pop("other", None)
        METRICS.pop("other_dino_i", None)
        BACKBONES.pop("other_dino", None)


def test_a_backbone_without_default_needs_a_model_id():
    with pytest.raises(DTIError, match="pass --model-id mini=PATH") as info:
        Backbones(["mini_patch", "mini_clip_t"])
    assert "\n" not in str(info.value) and "mini_patch, mini_clip_t" in str(info.value)


def test_same_image_gives_cosine_one(backbones):
    a, b = _noise(0), _disc()
    scores = score_images(backbones, IMAGE_METRICS, [a, a.copy(), b], ["x"] * 3, [a])
    for name in IMAGE_METRICS:
        assert scores[name][0] == pytest.approx(1.0, abs=1e-5), name
        assert scores[name][1] == pytest.approx(1.0, abs=1e-5), name
        assert scores[name][2] < 1.0 - 1e-4, name
    # the SigLIP image tower too (its image embeddings feed the text metrics)
    emb = backbones.image_embeddings("siglip", [a, a.copy(), b])
    assert float(emb[0] @ emb[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(emb[0] @ emb[2]) < 1.0 - 1e-4


def test_embeddings_are_normalised_and_batching_does_not_matter(backbones, metric_models):
    images = [_noise(i) for i in range(5)] + [_disc()]
    texts = ["a photo of a dog", "a cat", "sks dog on the beach", "", "a dog", "a red car"]
    small = Backbones(["dino", "clip_t", "siglip"], model_ids=metric_models, batch_size=2)
    for b in small.backbones:
        full = backbones.image_embeddings(b, images)
        assert full.shape[0] == len(images) and full.dtype == torch.float32
        assert torch.allclose(full.norm(dim=1), torch.ones(len(images)), atol=1e-5)
        assert torch.allclose(small.image_embeddings(b, images), full, atol=1e-5)
    for b in ("clip", "siglip"):
        full = backbones.text_embeddings(b, texts)
        assert torch.allclose(full.norm(dim=1), torch.ones(len(texts)), atol=1e-5)
        assert torch.allclose(small.text_embeddings(b, texts), full, atol=1e-5)


def test_image_metric_averages_over_references(backbones):
    a, b, c = _noise(1), _noise(2), _disc()
    both = score_images(backbones, IMAGE_METRICS, [c], ["x"], [a, b])
    only_a = score_images(backbones, IMAGE_METRICS, [c], ["x"], [a])
    only_b = score_images(backbones, IMAGE_METRICS, [c], ["x"], [b])
    for name in IMAGE_METRICS:
        assert both[name][0] == pytest.approx((only_a[name][0] + only_b[name][0]) / 2, abs=1e-6)


def test_siglip_probability_matches_hand_and_model_forward(backbones, metric_models):
    from transformers import AutoProcessor, SiglipModel

    images = [_noise(3), _disc(), _noise(4)]
    texts = ["a photo of a dog", "an orange disc on a dark ground", "a photo of a dog"]
    scores = score_images(backbones, ["siglip", "siglip_cos"], images, texts, [])

    model = SiglipModel.from_pretrained(metric_models["siglip"]).eval()
    scale, bias = model.logit_scale.item(), model.logit_bias.item()
    assert (scale, bias) == (2.0, -1.0)  # non-zero, so both enter the probability
    hand = [1 / (1 + math.exp(-(math.exp(scale) * c + bias))) for c in scores["siglip_cos"]]
    assert scores["siglip"] == pytest.approx(hand, abs=1e-6)

    processor = AutoProcessor.from_pretrained(metric_models["siglip"])
    inputs = processor(text=texts, images=images, padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    expected = torch.sigmoid(out.logits_per_image.diagonal())
    assert scores["siglip"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_clip_t_matches_open_clip(backbones, metric_models):
    import open_clip

    images = [_noise(5), _disc()]
    texts = ["a photo of a dog", "a red car in the snow"]
    scores = score_images(backbones, ["clip_t"], images, texts, [])
    model, _, preprocess = open_clip.create_model_and_transforms(metric_models["clip"])
    tokenizer = open_clip.get_tokenizer(metric_models["clip"])
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    assert scores["clip_t"] == pytest.approx((img * txt).sum(dim=1).tolist(), abs=1e-5)


def test_score_images_rejects_bad_arguments(backbones):
    with pytest.raises(DTIError, match="2 images but 1 scoring texts"):
        score_images(backbones, ["clip_t"], [_disc(), _disc()], ["x"], [])
    with pytest.raises(DTIError, match="at least one reference"):
        score_images(backbones, ["dinov2"], [_disc()], ["x"], [])
    with pytest.raises(DTIError, match="unknown metric"):
        score_images(backbones, ["dinov3"], [_disc()], ["x"], [])


# --------------------------------------------------------------------------- #
# score_manifest
# --------------------------------------------------------------------------- #
W, H = 48, 40
ROWS = [  # subject, prompt_index, seed, file, scoring text
    ("dog", 0, 0, "images/dog_0_0.png", "a photo of a dog"),
    ("dog", 0, 1, "images/dog_0_1.png", "a photo of a dog"),
    ("dog", 1, 0, "images/dog_1_0.png", "a dog on the beach"),
    ("dog", 1, 1, "images/missing.png", "a dog on the beach"),
    ("can", 0, 0, "images/can_0_0.png", "a photo of a can"),
]


def _write_manifest(path, rows=ROWS, drop=()):
    records = []
    for subject, prompt_index, seed, file, text in rows:
        records.append(dict(
            run=f"runs/{subject}_dti", method="dti", family="sd", base_model="tiny", subject=subject,
            class_noun=subject, prompt_set="live", prompt_index=prompt_index,
            prompt=text.replace(subject, f"<{subject}> {subject}"), scoring_text=text, seed=seed, file=file,
            height=H, width=W, steps=2, guidance_scale=7.5, scheduler="ddim", complex_human_instruction="",
        ))
    df = pd.DataFrame(records).drop(columns=list(drop))
    df.to_csv(path, index=False)
    return path


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path
    (root / "samples" / "images").mkdir(parents=True)
    for k, (_, _, _, file, _) in enumerate(ROWS):
        if "missing" not in file:
            _noise(10 + k, (W, H)).save(root / "samples" / file)
    manifest = _write_manifest(root / "samples" / "manifest.csv")
    for subject, n in (("dog", 3), ("can", 2)):
        refs = root / "refs" / subject
        refs.mkdir(parents=True)
        (root / "masks" / subject).mkdir(parents=True)
        for i in range(n):
            size = (64 + 8 * i, 56)
            _disc(size, colour=(200, 40 * i, 30)).save(refs / f"{i:02d}.jpg" if i % 2 else refs / f"{i:02d}.png")
            mask = np.zeros((size[1], size[0]), np.uint8)
            mask[10:40, 12:50] = 255
            Image.fromarray(mask, "L").save(root / "masks" / subject / f"{i:02d}.png")
        (refs / ".DS_Store").write_bytes(b"\0junk")  # hidden files are ignored
    return dict(root=root, manifest=manifest, refs=root / "refs", masks=root / "masks")


def test_score_manifest_end_to_end(dataset, metric_models):
    names = ["dinov2", "siglip", "clip_t"]
    df = score_manifest(dataset["manifest"], dataset["refs"], names, model_ids=metric_models, batch_size=2)
    assert list(df.columns) == metrics.OUTPUT_COLUMNS
    assert len(df) == len(ROWS) * len(names)
    # manifest order, then metric order
    assert df["metric"].tolist() == names * len(ROWS)
    assert df["file"].tolist() == [r[3] for r in ROWS for _ in names]
    assert set(df["references"]) == {"unmasked"}
    assert df["seed"].dtype.kind == "i" and df["prompt_index"].dtype.kind == "i"
    missing = df["file"] == "images/missing.png"
    assert df.loc[missing, "value"].isna().all() and missing.sum() == len(names)
    assert df.loc[~missing, "value"].notna().all()
    siglip = df.loc[df["metric"] == "siglip", "value"].dropna()
    assert ((siglip > 0) & (siglip < 1)).all()
    assert df.attrs["model_ids"]["clip"] == metric_models["clip"]
    out = dataset["root"] / "scores.csv"
    metrics.write_scores(df, out, {"manifest": str(dataset["manifest"]), "metrics": names})
    pd.testing.assert_frame_equal(pd.read_csv(out), df, check_dtype=False)
    about = json.loads((dataset["root"] / "scores.csv.json").read_text())
    assert about["metrics"] == names and about["model_ids"] == df.attrs["model_ids"] and "torch" in about["versions"]

    # a row agrees with score_images on the same inputs
    backbones = Backbones(names, model_ids=metric_models)
    root = dataset["manifest"].parent
    refs = [Image.open(p).convert("RGB") for p in sorted((dataset["refs"] / "can").glob("[!.]*"))]
    direct = score_images(backbones, names, [Image.open(root / "images/can_0_0.png")], ["a photo of a can"], refs)
    can = df[df["subject"] == "can"].set_index("metric")["value"]
    for name in names:
        assert can[name] == pytest.approx(direct[name][0], abs=1e-5)

    masked = score_manifest(dataset["manifest"], dataset["refs"], ["dinov2", "siglip"], model_ids=metric_models,
                            masks=dataset["masks"])
    assert set(masked["references"]) == {"masked"}
    plain = df.set_index(["file", "metric"])["value"]
    masked = masked.set_index(["file", "metric"])["value"]
    present = [r[3] for r in ROWS if "missing" not in r[3]]
    for file in present:
        assert abs(masked[(file, "dinov2")] - plain[(file, "dinov2")]) > 1e-6  # masking changes references
        assert masked[(file, "siglip")] == pytest.approx(plain[(file, "siglip")], abs=1e-6)  # text metric does not


def test_text_metrics_need_no_references(dataset, metric_models):
    df = score_manifest(dataset["manifest"], dataset["root"] / "nowhere", ["siglip_cos"], model_ids=metric_models)
    assert len(df) == len(ROWS)


def _expect(match, dataset, metric_models, metric_names=("dinov2",), **kw):
    args = dict(manifest=dataset["manifest"], references=dataset["refs"], metric_names=list(metric_names),
                model_ids=metric_models)
    args.update(kw)
    with pytest.raises(DTIError, match=match) as info:
        score_manifest(**args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_metric_and_model_ids(dataset, metric_models):
    msg = _expect("unknown metric", dataset, metric_models, metric_names=["dinov2", "fid"])
    assert "'fid'" in msg and "clip_t" in msg and "siglip_cos" in msg
    bad = dict(metric_models, dinov2=str(dataset["root"] / "no_such_model"))
    msg = _expect("cannot load model", dataset, metric_models=bad)
    assert "no_such_model" in msg and "dinov2" in msg
    bad = dict(metric_models, clip="local-dir:" + str(dataset["root"] / "no_clip"))
    msg = _expect("cannot load model", dataset, bad, metric_names=["clip_i", "clip_t"])
    assert "no_clip" in msg and "clip_i, clip_t" in msg
    # a folder holding another kind of model
    bad = dict(metric_models, siglip=metric_models["dinov2"])
    _expect("cannot load model .* siglip: Dinov2Model is not a SigLIP", dataset, bad, metric_names=["siglip"])
    # a checkpoint short of a layer would otherwise score with that layer randomly initialised
    partial = dataset["root"] / "partial"
    shutil.copytree(metric_models["dino"], partial)
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("encoder.layer.1.")}, partial / "model.safetensors")
    _expect("cannot load model .*partial' for metric.s. dino: checkpoint lacks or mismatches weights",
            dataset, dict(metric_models, dino=str(partial)), metric_names=["dino"])
    with pytest.raises(DTIError, match="unknown backbone"):
        Backbones(["dinov2"], model_ids={"dinov3": "x"})


def test_bad_manifests(dataset, metric_models, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect("is empty", dataset, metric_models, manifest=empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(pd.read_csv(dataset["manifest"]).columns) + "\n")
    _expect("is empty .no rows", dataset, metric_models, manifest=header_only)
    no_text = _write_manifest(tmp_path / "samples" / "no_text.csv", drop=["scoring_text", "width"])
    msg = _expect("lacks required column", dataset, metric_models, manifest=no_text)
    assert "scoring_text" in msg and "width" in msg
    _expect("no such file", dataset, metric_models, manifest=tmp_path / "nope.csv")


def test_bad_generated_images(dataset, metric_models):
    root = dataset["manifest"].parent
    _noise(0, (W, H)).convert("RGBA").save(root / "images/dog_0_1.png")
    _expect("dog_0_1.png has mode RGBA", dataset, metric_models)
    _noise(0, (W, H)).convert("L").save(root / "images/dog_0_1.png")
    _expect("dog_0_1.png has mode L", dataset, metric_models)
    _noise(0, (H, W)).save(root / "images/dog_0_1.png")
    _expect(f"dog_0_1.png is {H}x{W} but the manifest says {W}x{H}", dataset, metric_models)
    (root / "images/dog_0_1.png").write_bytes(b"not a png")
    _expect("generated image .*dog_0_1.png: not a readable image", dataset, metric_models)


def test_bad_references(dataset, metric_models):
    refs = dataset["refs"]
    (refs / "can" / "notes.txt").write_text("not an image")
    _expect("reference of subject 'can' .*notes.txt: not a readable image", dataset, metric_models)
    (refs / "can" / "notes.txt").unlink()
    (dataset["masks"] / "dog" / "01.png").unlink()
    _expect("reference .*01.jpg has no mask", dataset, metric_models, masks=dataset["masks"])
    for p in (refs / "can").iterdir():
        p.unlink()
    (refs / "can" / ".hidden.png").write_bytes(b"")
    _expect("subject 'can' has no reference images", dataset, metric_models)
    for p in (refs / "can").iterdir():
        p.unlink()
    (refs / "can").rmdir()
    _expect("subject 'can' has no reference folder", dataset, metric_models)


def test_bad_masks(dataset, metric_models):
    mask = dataset["masks"] / "dog" / "00.png"
    Image.new("L", (10, 10)).save(mask)
    _expect("mask .*00.png is 10x10 but its reference", dataset, metric_models, masks=dataset["masks"])
    Image.new("RGB", (64, 56)).save(mask)
    _expect("mask .*00.png has mode RGB", dataset, metric_models, masks=dataset["masks"])
    _expect("masks folder .*nowhere does not exist", dataset, metric_models, masks=dataset["root"] / "nowhere")


def _check(dataset, metric_names=("dinov2",)):
    """check_inputs alone: it loads no model, so what fails here fails before any backbone loads."""
    return metrics.check_inputs(dataset["manifest"], dataset["refs"], list(metric_names))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def test_broken_images_fail_before_any_model_loads(dataset, tmp_path, capsys):
    root = dataset["manifest"].parent
    generated, reference = root / "images/dog_0_1.png", dataset["refs"] / "dog" / "01.jpg"
    saved = {p: p.read_bytes() for p in (generated, reference)}
    out = tmp_path / "scores" / "dog.csv"
    nowhere = f"dinov2={tmp_path / 'no_model'}"  # loading it would fail: the error must come before
    args = ["score", "--manifest", str(dataset["manifest"]), "--references", str(dataset["refs"]), "--metrics",
            "dinov2", "--model-id", nowhere, "--out", str(out)]
    cases = [(generated, "generated image .*dog_0_1.png: not a readable image"),
             (reference, "reference of subject 'dog' .*01.jpg: not a readable image")]
    for path, message in cases:
        _truncate(path)
        with Image.open(path) as im:
            assert im.size  # the header still reads: only decoding finds the damage
        with pytest.raises(DTIError, match=message) as info:
            _check(dataset)
        assert "\n" not in str(info.value)
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]) and "no_model" not in err[0]
        assert not out.parent.exists()
        path.write_bytes(saved[path])
    bomb = _png_header_only(dataset["refs"] / "dog" / "03.png", 14000, 14000)
    with pytest.raises(DTIError, match=r"reference of subject 'dog' .*03.png is too large: 196000000 pixels"):
        _check(dataset)
    _png_header_only(bomb, 10000, 10000)
    with pytest.raises(DTIError, match=r"03.png is too large: 10000x10000"):
        _check(dataset)
    bomb.unlink()
    _check(dataset)


def test_16bit_and_rotated_references_are_read_as_for_training(dataset):
    path = dataset["refs"] / "can" / "00.png"
    Image.fromarray(_gradient16(64, 56)).save(path)
    refs = metrics._load_references(sorted((dataset["refs"] / "can").glob("[!.]*")), "can", None)
    grey = np.asarray(refs[0])
    assert refs[0].mode == "RGB" and grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 200
    assert (grey == np.asarray(open_rgb(path))).all()
    # masks apply to the upright reference: a mask of the stored (sideways) size no longer fits
    exif = Image.Exif()
    exif[0x0112] = 6
    _disc((64, 56)).save(dataset["refs"] / "dog" / "00.png", exif=exif)
    assert metrics._load_references([dataset["refs"] / "dog" / "00.png"], "dog", None)[0].size == (56, 64)
    with pytest.raises(DTIError, match="00.png is 64x56 but its reference .* is 56x64"):
        metrics.check_inputs(dataset["manifest"], dataset["refs"], ["dinov2"], masks=dataset["masks"])


def test_score_out_is_checked_and_locked_before_scoring(dataset, metric_models, tmp_path, capsys):
    def score(out, model=metric_models["dinov2"]):
        return main(["score", "--manifest", str(dataset["manifest"]), "--references", str(dataset["refs"]),
                     "--metrics", "dinov2", "--model-id", f"dinov2={model}", "--out", str(out)])

    nowhere = tmp_path / "no_model"  # a refusal must come before the model would (fail to) load
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert score(folder, nowhere) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_folder is a folder" in err[0]
    assert list(folder.iterdir()) == []
    (tmp_path / "a_file").write_text("keep")
    assert score(tmp_path / "a_file" / "scores.csv", nowhere) == 2
    assert "a_file is not a folder" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "keep"

    out = tmp_path / "scores" / "dog.csv"
    with exclusive(f"{out}.lock", "the first scorer"):
        assert score(out, nowhere) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"scores {out} is in use by process" in err[0]
    assert not out.exists() and not Path(f"{out}.json").exists()
    assert score(out) == 0
    assert len(pd.read_csv(out)) == len(ROWS) and Path(f"{out}.json").is_file()
