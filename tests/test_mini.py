"""The mini world: its generator, its shipped models, its gates and a personalization run on it."""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dti.io import DTIError, load_tensors
from miniworld import build, gates, models, world

WORLD = Path(__file__).resolve().parents[1] / "experiments" / "mini" / "world"


def test_generator_is_deterministic_and_seeded():
    a, b, c = world.dataset(3, 40), world.dataset(3, 40), world.dataset(4, 40)
    assert np.array_equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    assert a["negatives"] == b["negatives"]
    assert not np.array_equal(a["images"], c["images"])
    assert a["images"].shape == (40, world.SIZE, world.SIZE, 3) and a["images"].dtype == np.uint8


def test_pretraining_never_shows_held_out_combinations():
    data = world.dataset(0, 400)
    held = world.held_out_triples()
    heads = world.HEADS
    seen = set()
    for i in range(400):
        labels = {h: data["labels"][h][i] for h in heads}
        if labels["count"] == heads["count"].index(1):
            seen.add((heads["class"][labels["class"]], heads["colour"][labels["colour"]],
                      heads["background"][labels["background"]]))
    assert seen and not (seen & held)
    # subjects' pattern colours are never pretraining's
    assert all(s.second not in world.PRETRAIN_SECOND for s in world.SUBJECTS)


def test_judge_scenes_show_what_pretraining_never_does():
    """The evaluators' scenes (build option judge_scenes) have any pattern colour and every triple; the
    pretraining scenes of the same seed have neither."""
    held = world.held_out_triples()

    def scenes(judge):
        rng = np.random.default_rng(9)
        return [world.random_scene(rng, held, judge) for _ in range(600)]

    for judge in (False, True):
        singles = [sc.shapes[0] for sc in scenes(judge) if len(sc.shapes) == 1]
        new_colours = [s for s in singles if s.pattern != "plain" and s.second not in world.PRETRAIN_SECOND]
        new_triples = [sc for sc in scenes(judge) if (sc.shapes[0].cls, sc.shapes[0].colour, sc.background) in held]
        assert (len(new_colours) > 100 and len(new_triples) > 20) if judge else not (new_colours or new_triples)
        assert all(s.second != s.colour for s in singles)


def test_render_draws_what_the_scene_says():
    shape = world.Shape(cls="square", colour="red", size="large", radius=9.0, centre=(9.0, 16.0))
    image = world.render(world.Scene(background="blue", shapes=[shape], position="left")).astype(int)
    assert np.abs(image[16, 9] - world.COLOURS["red"]).max() <= 1      # the object, at the left
    assert np.abs(image[16, 28] - world.BACKGROUNDS["blue"]).max() <= 1  # background at the right


def test_every_caption_word_is_in_the_vocabulary_and_the_tokenizer():
    tokenizer = models.make_tokenizer()
    data = world.dataset(5, 300)
    vocab = set(world.vocabulary())
    for text in data["captions"] + data["negatives"] + world.PROMPTS:
        assert set(world.split_words(text.replace("{}", "circle"))) <= vocab, text
    ids = tokenizer(data["captions"][:50]).input_ids
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert tokenizer.add_tokens(["<mine>"]) == 1 and len(tokenizer("a <mine> star").input_ids) == 5


def test_hard_negatives_change_one_said_attribute():
    data = world.dataset(1, 200)
    differ = [c != n for c, n in zip(data["captions"], data["negatives"])]
    assert np.mean(differ) > 0.8


def test_stage_resumes_bit_identically(tmp_path):
    """A stage killed after its checkpoint at step 30 and resumed ends where an uninterrupted one
    ends, with one log row per logged step and its time counted over both sittings."""
    def make(folder):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        return model, build.Stage(folder, {"m": model}, build._adamw([model], 1e-2, 0.0), 60, 1e-2, warmup=2)

    def step_fn_for(model, stage, kill_at=None):
        def step_fn(step, gen):
            if step == kill_at:
                raise KeyboardInterrupt
            time.sleep(0.002)
            x = torch.randn(8, 4, generator=gen)
            loss = model(x).pow(2).mean()
            loss.backward()
            stage.opt.step()
            stage.opt.zero_grad()
            return {"loss": loss.item()}
        return step_fn

    def log(folder):
        with (folder / "log.csv").open() as f:
            return list(csv.DictReader(f))

    full, stage = make(tmp_path / "full")
    stage.run(step_fn_for(full, stage), every=30, seed=1)
    part, stage = make(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        stage.run(step_fn_for(part, stage, kill_at=55), every=30, seed=1)
    assert not stage.done
    assert [r["step"] for r in log(tmp_path / "part")] == ["0", "25", "50"]  # 50 is past the checkpoint
    resumed, stage = make(tmp_path / "part")
    assert stage.start == 30 and stage.seconds_before > 0
    stage.run(step_fn_for(resumed, stage), every=30, seed=1)
    assert stage.done
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    full_log, part_log = log(tmp_path / "full"), log(tmp_path / "part")
    assert [(r["step"], r["loss"]) for r in part_log] == [(r["step"], r["loss"]) for r in full_log]
    seconds = [float(r["seconds"]) for r in part_log]
    assert seconds == sorted(seconds)
    done = json.loads((tmp_path / "part" / "done.json").read_text())
    assert done["device"] == "cpu" and done["seconds"] >= seconds[-1] >= 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_build_and_gates_check_the_device_before_anything_runs(tmp_path):
    with pytest.raises(DTIError, match="no CUDA GPU"):
        build.build(tmp_path / "work", tmp_path / "out", build.BuildConfig(), device="cuda")
    with pytest.raises(DTIError, match="unknown device 'gpu'"):
        build.build(tmp_path / "work", tmp_path / "out", build.BuildConfig(), device="gpu")
    with pytest.raises(DTIError, match="no CUDA GPU"):
        gates.run_gates(tmp_path / "world", tmp_path / "gates", quick=True, device="cuda:0")
    assert not any(tmp_path.iterdir())  # nothing written


def test_build_refuses_to_mix_two_worlds_in_one_work_folder(tmp_path):
    from dataclasses import asdict, replace

    work = tmp_path / "work"
    work.mkdir()
    cfg = build.BuildConfig()
    (work / "config.json").write_text(json.dumps(asdict(replace(cfg, seed=1))))
    with pytest.raises(DTIError, match="other seed"):
        build.build(work, tmp_path / "out", cfg)
    # more VAE steps: allowed until the UNet has started on the shorter VAE's latents
    (work / "config.json").write_text(json.dumps(asdict(replace(cfg, vae_steps=10))))
    (work / "unet").mkdir()
    with pytest.raises(DTIError, match="vae_steps"):
        build.build(work, tmp_path / "out", cfg)
    assert json.loads((work / "config.json").read_text())["vae_steps"] == 10  # nothing rewritten
    assert not (tmp_path / "out").exists() and not (work / "train.safetensors").exists()


def test_clip_attribute_heads_learn_and_are_checkpointed(tmp_path):
    """The conditioning CLIP's recipe (CNN image tower, attribute heads): the heads' loss falls, and
    tower and heads are checkpointed with the model."""
    scenes = world.dataset(2, 64)
    data = {"images": torch.from_numpy(scenes["images"]), "captions": scenes["captions"],
            "negatives": scenes["negatives"], "labels": {h: torch.from_numpy(v) for h, v in scenes["labels"].items()}}
    tokenizer = models.make_tokenizer()
    build.train_clip(tmp_path / "clip", data, tokenizer, 32, 100, 32, seed=0, every=50, image_tower="cnn",
                     attribute_weight=1.0)
    with (tmp_path / "clip" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    first, last = float(rows[0]["attribute_loss"]), float(rows[-1]["attribute_loss"])
    assert last < 0.8 * first
    saved = load_tensors(tmp_path / "clip" / "checkpoint.safetensors")
    assert {f"model.heads.{h}.weight" for h in world.HEADS} <= set(saved)
    assert any(k.startswith("model.image.features.") for k in saved)
    # the evaluator's recipe (its own ViT, contrastive only): neither in the checkpoint
    build.train_clip(tmp_path / "plain", data, tokenizer, 32, 2, 16, seed=0, every=20)
    assert not any(k.startswith(("model.heads.", "model.image.")) for k in
                   load_tensors(tmp_path / "plain" / "checkpoint.safetensors"))
    with pytest.raises(DTIError, match="image_tower"):
        build.train_clip(tmp_path / "bad", data, tokenizer, 32, 2, 16, seed=0, every=20, image_tower="resnet")


def test_export_writes_a_loadable_pipeline_without_tokenizer_state(tmp_path):
    """Export of untrained models: a standard SD pipeline folder, the latent scale recorded, and
    tokenizers saved without the padding the training stages left on them."""
    from diffusers import DiffusionPipeline
    from transformers import CLIPModel

    tokenizer, evaluator_tokenizer = models.make_tokenizer(), models.make_tokenizer()
    for tok in (tokenizer, evaluator_tokenizer):  # as the stages use them
        build._token_ids(tok, ["a red star"])
    torch.manual_seed(0)
    text_clip = CLIPModel(models.clip_config(len(tokenizer), 32))
    evaluator = CLIPModel(models.clip_config(len(tokenizer), 32))
    build.export(tmp_path / "world", tmp_path / "work", build.BuildConfig(), tokenizer, text_clip, models.make_vae(),
                 models.make_unet(32), evaluator, evaluator_tokenizer, models.Readout(16), scaling_factor=2.5)
    for f in ("pipeline/tokenizer/tokenizer.json", "evaluator/tokenizer.json"):
        saved = json.loads((tmp_path / "world" / f).read_text())
        assert saved["padding"] is None and saved["truncation"] is None, f
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "world" / "pipeline")
    assert pipe.vae.config.scaling_factor == 2.5
    assert torch.equal(pipe.text_encoder.embeddings.token_embedding.weight,
                       text_clip.text_model.embeddings.token_embedding.weight)
    assert len(list((tmp_path / "world" / "subjects").iterdir())) == len(world.SUBJECTS)


shipped = pytest.mark.skipif(not (WORLD / "pipeline" / "model_index.json").is_file(), reason="no shipped mini world")


@shipped
def test_shipped_world_is_small_and_complete():
    size = sum(p.stat().st_size for p in WORLD.rglob("*.safetensors"))
    assert size <= 40 * 2**20
    assert not list(WORLD.rglob("*.bin")) and not list(WORLD.rglob("*.pt"))
    subjects = [p.name for p in (WORLD / "subjects").iterdir()]
    assert len(subjects) >= 8
    assert all(4 <= len(list((WORLD / "subjects" / s).glob("*.png"))) <= 6 for s in subjects)
    prompts = json.loads((WORLD / "prompt_sets.json").read_text())["mini"]
    assert len(prompts["object"]) >= 12 and len(prompts["attributes"]) == len(prompts["object"])


@shipped
def test_shipped_pipeline_loads_offline_and_follows_a_prompt():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD / "pipeline", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    images = pipe(["a photo of a large red circle on a blue background"] * 2, generator=gens,
                  num_inference_steps=10, guidance_scale=4.0, output_type="np").images
    assert images.shape == (2, world.SIZE, world.SIZE, 3)
    corners = np.concatenate([images[:, :3, :3].reshape(-1, 3), images[:, -3:, -3:].reshape(-1, 3)])
    assert corners[:, 2].mean() > corners[:, 0].mean()  # a blue background, not a red one


@shipped
def test_readout_reads_renders():
    readout = models.Readout.load(WORLD / "readout")
    accuracy = gates.readout_accuracy(readout, 64, seed=7)
    assert min(accuracy[h] for h in ("class", "background", "position")) >= 0.9


@shipped
def test_text_sensitivity_is_zero_for_words_the_encoder_cannot_tell_apart():
    from types import SimpleNamespace

    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(WORLD / "pipeline" / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(WORLD / "pipeline" / "text_encoder").eval()
    before = gates.text_sensitivity(SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder))
    rows = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for cls in world.CLASSES[1:]:  # every class word made the first one's twin
            rows[tokenizer.convert_tokens_to_ids(cls)] = rows[tokenizer.convert_tokens_to_ids(world.CLASSES[0])]
    after = gates.text_sensitivity(SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder))
    assert before["class"] > 1.0 and after["class"] == pytest.approx(0.0, abs=1e-4)
    assert after["colour"] == pytest.approx(before["colour"])


@pytest.mark.slow
@shipped
def test_gates_run_on_a_small_sample(tmp_path):
    report = gates.run_gates(WORLD, tmp_path, quick=True)
    assert set(report["checks"]) == set(gates.THRESHOLDS) | set(gates.BUDGETS)
    first = report["per_seed"][0]
    assert first["evaluator"]["top1_of_100"] > 0.3  # far above chance (0.01) even on 100 images
    assert set(report["text_sensitivity"]) == {"class", "colour", "background", "position"}
    assert min(report["text_sensitivity"].values()) > 0  # every attribute word moves the conditioning
    assert first["readout_on_vae_reconstructions"]["background"] >= 0.9  # the VAE keeps what is large
    # the text metric ranks ground-truth renders far above chance (1 in 15)
    assert first["metrics"]["text_ranks_prompt"] > 0.3
    for key, check in report["checks"].items():  # the threshold applies to the worst seed (or subject)
        worst = check["max"] if key in gates.BUDGETS else check["min"]
        assert check["pass"] == (worst <= check["threshold"] if key in gates.BUDGETS else worst >= check["threshold"])
    assert set(report["personalization"]) == {s.name for s in world.SUBJECTS[:2]}
    saved = json.loads((tmp_path / "gates.json").read_text())
    assert saved["per_seed"][0]["base_model"] == first["base_model"]
    table = (tmp_path / "gates.md").read_text()
    assert all(f"| {key} |" in table for key in report["checks"])


def test_ground_truth_renders_show_what_each_prompt_asks():
    """The renders the metric gates rank are the prompts' ground truth: each scene is what its prompt asks.
    What the read-out sees in them is a gate (the shipped read-out, trained on pretraining scenes only,
    misreads most subjects' patterns: those colours are new to it)."""
    readout = models.Readout.load(WORLD / "readout")
    for subject in world.SUBJECTS:
        scenes = gates.ground_truth_scenes(subject, seed=5)
        assert len(scenes) == len(world.PROMPTS)
        for scene, (template, asked) in zip(scenes, world.PROMPT_ATTRIBUTES):
            assert {h: scene.labels[h] for h in asked} == asked, template
            first = scene.shapes[0]
            assert (first.cls, first.pattern, first.second) == (subject.cls, subject.pattern, subject.second)
    test = [s for s in world.SUBJECTS if s.split == "test"]
    ceiling = gates.readout_on_ground_truth(readout, {s.name: gates.ground_truth_renders(s, 5) for s in test}, test)
    assert ceiling["prompt"] >= 0.9 and 0 < ceiling["subject"] <= 1, ceiling
    subject = world.SUBJECTS[0]
    assert [np.asarray(im).tobytes() for im in gates.ground_truth_renders(subject, seed=5)] == \
        [world.render(scene).tobytes() for scene in gates.ground_truth_scenes(subject, seed=5)]


@shipped
def test_dti_personalization_on_a_mini_subject_keeps_its_norm(tmp_path):
    from dti.embeddings import read_run
    from dti.train import TrainConfig, train

    cfg = TrainConfig(method="dti", model=str(WORLD / "pipeline"), images=str(WORLD / "subjects" / "sun_star"),
                      placeholder="<sun_star>", initializer="star", steps=20, resolution=world.SIZE, device="cpu",
                      checkpoint_every=0)
    run = train(cfg, tmp_path / "run")
    record, vectors = read_run(run)
    m_star = record["m_star_values"][0]
    assert m_star == pytest.approx(record["vocab_norms"]["text_encoder"]["mean"])
    assert vectors[0].norm(dim=-1).tolist() == pytest.approx([m_star], rel=1e-5)


@shipped
def test_attribute_metrics_read_what_the_prompt_asks():
    from PIL import Image

    from dti.metrics import Backbones, score_images
    from miniworld.metrics import mini_expectations

    expect = mini_expectations(WORLD / "prompt_sets.json", WORLD / "subjects.csv")
    subject = world.SUBJECTS[0]
    index = world.PROMPTS.index("a {} on a blue background")
    wanted = expect(subject.name, "mini", index)
    assert wanted == {"prompt": {"background": "blue"},
                      "subject": {"class": subject.cls, "colour": subject.colour, "pattern": subject.pattern}}

    def photo(background):
        shape = world.Shape(cls=subject.cls, colour=subject.colour, pattern=subject.pattern, second=subject.second,
                            radius=9.0)
        return Image.fromarray(world.render(world.Scene(background=background, shapes=[shape])))

    backbones = Backbones(["attr_prompt", "attr_subject"], {"readout": str(WORLD / "readout")})
    scores = score_images(backbones, ["attr_prompt", "attr_subject"], [photo("blue"), photo("green")], ["x"] * 2, [],
                          [wanted] * 2)
    assert scores["attr_prompt"] == [1.0, 0.0]
    assert min(scores["attr_subject"]) >= 2 / 3
