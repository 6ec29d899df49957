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


def test_pretraining_draws_marks_of_every_colour_but_never_a_subject():
    """A subject is new to the generator (its (colour, pattern, mark colour) never rendered) yet made of what
    it can draw: marks of every colour, some captions naming them, and hard negatives that change them."""
    rng = np.random.default_rng(3)
    shapes = [s for _ in range(3000) for s in world.random_scene(rng, world.held_out_triples()).shapes]
    marked = [s for s in shapes if s.pattern != "plain"]
    assert {s.second for s in marked} == set(world.COLOURS)
    assert all(s.second != s.colour for s in marked)
    assert not {(s.colour, s.pattern, s.second) for s in marked} & world.subject_marks()
    assert len(world.subject_marks()) == len(world.SUBJECTS)  # every subject its own combination
    data = world.dataset(4, 600)
    named = [c for c in data["captions"] if any(f" with {c2} {n}" in c for c2 in world.COLOURS
                                                for n in ("stripes", "dots"))]
    assert len(named) > 30
    # the first world's pretraining: white and black marks only
    rng = np.random.default_rng(3)
    scenes = [world.random_scene(rng, world.held_out_triples(), mark_colours="white_black") for _ in range(500)]
    first = [s for scene in scenes for s in scene.shapes if s.pattern != "plain"]
    assert {s.second for s in first} <= set(world.PRETRAIN_SECOND)
    with pytest.raises(ValueError, match="mark_colours"):
        world.random_scene(rng, set(), mark_colours="pastel")


def test_judge_scenes_show_what_pretraining_never_does():
    """The evaluators' scenes (build option judge_scenes) have the subjects' mark combinations and every
    triple; the pretraining scenes of the same seed have neither."""
    held = world.held_out_triples()

    def scenes(judge):
        rng = np.random.default_rng(9)
        return [world.random_scene(rng, held, judge) for _ in range(600)]

    for judge in (False, True):
        singles = [sc.shapes[0] for sc in scenes(judge) if len(sc.shapes) == 1]
        subjects_marks = [s for s in singles if (s.colour, s.pattern, s.second) in world.subject_marks()]
        new_triples = [sc for sc in scenes(judge) if (sc.shapes[0].cls, sc.shapes[0].colour, sc.background) in held]
        assert (len(subjects_marks) > 3 and len(new_triples) > 20) if judge else not (subjects_marks or new_triples)
        assert all(s.second != s.colour for s in singles if s.pattern != "plain")


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

    def written(config, **record):  # a work folder's config.json, as build writes it
        return json.dumps({**asdict(config), "renderer": world.RENDERER, **record})

    (work / "config.json").write_text(written(replace(cfg, seed=1)))
    with pytest.raises(DTIError, match="other seed"):
        build.build(work, tmp_path / "out", cfg)
    # more VAE steps: allowed until the UNet has started on the shorter VAE's latents
    (work / "config.json").write_text(written(replace(cfg, vae_steps=10)))
    (work / "unet").mkdir()
    with pytest.raises(DTIError, match="vae_steps"):
        build.build(work, tmp_path / "out", cfg)
    assert json.loads((work / "config.json").read_text())["vae_steps"] == 10  # nothing rewritten
    assert not (tmp_path / "out").exists() and not (work / "train.safetensors").exists()
    first_world = {k: v for k, v in asdict(cfg).items() if k != "vae_factor"}  # built before the renderer changed
    (work / "config.json").write_text(json.dumps(first_world))
    with pytest.raises(DTIError, match="first world"):
        build.build(work, tmp_path / "out", cfg)
    # the second build's work folders (finer marks, no renderer recorded) are not this renderer's renders
    (work / "config.json").write_text(json.dumps(asdict(cfg)))
    with pytest.raises(DTIError, match=f"renderer 2, this code draws renderer {world.RENDERER}"):
        build.build(work, tmp_path / "out", cfg)
    (work / "config.json").write_text(written(cfg, renderer=world.RENDERER + 1))
    with pytest.raises(DTIError, match=f"renderer {world.RENDERER + 1}, this code"):
        build.build(work, tmp_path / "out", cfg)
    with pytest.raises(DTIError, match="vae_factor must be one of 2, 4"):
        build.build(tmp_path / "other", tmp_path / "out", replace(cfg, vae_factor=8))
    with pytest.raises(DTIError, match="mark_colours must be one of any, white_black"):
        build.build(tmp_path / "other", tmp_path / "out", replace(cfg, mark_colours="pastel"))
    with pytest.raises(DTIError, match="stop_after must be one of"):
        build.build(tmp_path / "other", tmp_path / "out", cfg, stop_after="vea")
    with pytest.raises(DTIError, match="sampler must be one of ddim, dpm"):
        build.build(tmp_path / "other", tmp_path / "out", replace(cfg, sampler="euler"))
    with pytest.raises(DTIError, match="sampling_steps must be >= 1"):
        build.build(tmp_path / "other", tmp_path / "out", replace(cfg, sampling_steps=0))
    assert not (tmp_path / "other").exists()
    # the sampling protocol is the export's alone: a finished build may ship another
    (work / "config.json").write_text(written(cfg))
    build.check_work_folder(work, replace(cfg, sampler="dpm", sampling_steps=12))
    with pytest.raises(DTIError, match="other text_width"):
        build.check_work_folder(work, replace(cfg, sampler="dpm", text_width=32))


@pytest.mark.parametrize("factor", [2, 4])
def test_vae_and_unet_of_either_latent_size_fit_together(factor):
    vae, unet = models.make_vae(factor).eval(), models.make_unet(32, factor).eval()
    x = torch.rand(2, 3, world.SIZE, world.SIZE) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mode()
        assert latents.shape[-1] == world.SIZE // factor and latents.shape[1] == unet.config.in_channels
        out = unet(latents, torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 5, 32)).sample
        assert out.shape == latents.shape and vae.decode(latents).sample.shape == x.shape


def test_subject_expectation_asks_only_what_an_image_can_show():
    expect = world.subject_expectation
    everything = {"class": "circle", "colour": "blue", "pattern": "striped"}
    assert expect("circle", "blue", "striped", "green", {"position": "left"}) == everything
    assert expect("circle", "blue", "striped", "green", {"count": 2}) == {}
    assert expect("circle", "blue", "striped", "green", {"colour": "red"}) == {"class": "circle", "pattern": "striped"}
    # a blue shape on a blue background shows only its marks; green marks on a green shape do not show
    assert expect("circle", "blue", "striped", "green", {"background": "blue"}) == {"class": "circle",
                                                                                     "pattern": "striped"}
    assert expect("circle", "blue", "striped", "green", {"colour": "green"}) == {"class": "circle"}
    assert expect("circle", "blue", "plain", "green", {"colour": "green"}) == {"class": "circle", "pattern": "plain"}


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
    """Export of untrained models: a standard SD pipeline folder, the latent scale recorded, the sampler
    asked for on the training noise schedule, its protocol in build.json, and tokenizers saved without
    the padding the training stages left on them."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from diffusers import DiffusionPipeline
    from transformers import CLIPModel

    tokenizer, evaluator_tokenizer = models.make_tokenizer(), models.make_tokenizer()
    for tok in (tokenizer, evaluator_tokenizer):  # as the stages use them
        build._token_ids(tok, ["a red star"])
    torch.manual_seed(0)
    text_clip = CLIPModel(models.clip_config(len(tokenizer), 32))
    evaluator = CLIPModel(models.clip_config(len(tokenizer), 32))
    cfg = build.BuildConfig(sampler="dpm", sampling_steps=12)
    build.export(tmp_path / "world", tmp_path / "work", cfg, tokenizer, text_clip, models.make_vae(),
                 models.make_unet(32), evaluator, evaluator_tokenizer, models.Readout(16), models.make_image_encoder(),
                 scaling_factor=2.5)
    for f in ("pipeline/tokenizer/tokenizer.json", "evaluator/tokenizer.json"):
        saved = json.loads((tmp_path / "world" / f).read_text())
        assert saved["padding"] is None and saved["truncation"] is None, f
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "world" / "pipeline")
    assert pipe.vae.config.scaling_factor == 2.5
    assert torch.equal(pipe.text_encoder.embeddings.token_embedding.weight,
                       text_clip.text_model.embeddings.token_embedding.weight)
    assert len(list((tmp_path / "world" / "subjects").iterdir())) == len(world.SUBJECTS)
    training = DDPMScheduler(**models.scheduler_config())
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(pipe.scheduler.alphas_cumprod, training.alphas_cumprod)
    assert torch.equal(models.make_sampler("ddim").alphas_cumprod, training.alphas_cumprod)
    assert world.sampling_of(tmp_path / "world") == {"sampler": "dpm", "steps": 12, "guidance_scale": 4.0}


shipped = pytest.mark.skipif(not (WORLD / "pipeline" / "model_index.json").is_file(), reason="no shipped mini world")
# the gates draw scenes for the shipped judges: only with the renderer that world was built with
drawn_here = pytest.mark.skipif(not (WORLD / "build.json").is_file() or world.renderer_of(WORLD) != world.RENDERER,
                                reason="the shipped world was drawn by another renderer")


@shipped
def test_shipped_world_is_small_and_complete():
    size = sum(p.stat().st_size for p in WORLD.rglob("*.safetensors"))
    assert size <= 40 * 2**20
    assert not list(WORLD.rglob("*.bin")) and not list(WORLD.rglob("*.pt"))
    for part in ("pipeline", "evaluator", "image_encoder", "readout", "subjects", "gates"):
        assert (WORLD / part).is_dir(), part
    subjects = [p.name for p in (WORLD / "subjects").iterdir()]
    assert len(subjects) >= 14 and {s.name for s in world.SUBJECTS} == set(subjects)
    assert all(4 <= len(list((WORLD / "subjects" / s).glob("*.png"))) <= 6 for s in subjects)
    prompts = json.loads((WORLD / "prompt_sets.json").read_text())["mini"]
    assert len(prompts["object"]) >= 12 and len(prompts["attributes"]) == len(prompts["object"])


@shipped
def test_the_default_configuration_samples_with_the_world_protocol():
    """The workflow samples as the world's gates measured it (its build.json): its steps and guidance, and the
    pipeline's own sampler (the smoke configuration samples 4 steps, on purpose)."""
    import yaml

    root = WORLD.parents[2]
    settings = yaml.safe_load((root / "experiments" / "mini.yaml").read_text())["sample"]["settings"]
    sampling = world.sampling_of(WORLD)
    assert (settings["steps"], settings["guidance_scale"]) == (sampling["steps"], sampling["guidance_scale"])
    scheduler = json.loads((WORLD / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == type(models.make_sampler(sampling["sampler"])).__name__


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


@torch.no_grad()
def silence_cross_attention(unet):
    """Zero every cross-attention output: the text can no longer reach the UNet's output."""
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.to_out[0].weight.zero_()
            module.to_out[0].bias.zero_()


@shipped
@drawn_here
def test_word_use_is_zero_for_a_denoiser_deaf_to_the_text():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD / "pipeline", safety_checker=None)
    before = gates.denoiser_word_use(pipe, 16, seed=9)
    assert set(before) == set(gates.CAPTION_VALUES)
    assert before["class"] > 0  # a wrong class word costs the trained denoiser
    silence_cross_attention(pipe.unet)
    assert all(v == 0.0 for v in gates.denoiser_word_use(pipe, 16, seed=9).values())


@shipped
def test_words_show_a_subject_the_base_model_can_draw_and_a_deaf_one_cannot():
    """The reported "told in words" measure: a plain red square, said in words, is what the shipped base
    model draws; with cross-attention silenced the words cannot reach the image and the share collapses."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD / "pipeline", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    readout = models.Readout.load(WORLD / "readout")
    sampling = world.sampling_of(WORLD)
    square = world.Subject("red_square", "square", "red", "plain", "white")
    assert gates.subject_in_words(square) == "a photo of a red plain square"
    assert gates.subject_in_words(world.SUBJECTS[1]) == "a photo of a blue striped circle"
    told = gates.words_show_subject(pipe, readout, [square], sampling, photos=8)
    assert set(told) == {"red_square"} and told["red_square"] >= 0.6
    silence_cross_attention(pipe.unet)
    assert gates.words_show_subject(pipe, readout, [square], sampling, photos=8)["red_square"] <= 0.25


@shipped
@drawn_here
def test_pattern_decision_keeps_the_render_late_and_samples_fully_from_noise():
    """benchmarks/mini_pattern_decision.py: started late, sampling keeps the ground-truth render's marks
    (whatever the caption); started at 1000 it runs the protocol's every step from noise."""
    from benchmarks import mini_pattern_decision as decision
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD / "pipeline", safety_checker=None)
    readout = models.Readout.load(WORLD / "readout")
    sampling = world.sampling_of(WORLD)
    scenes = gates.held_out_scenes(16, seed=5)
    x0 = gates.scene_latents(pipe.vae, scenes)
    plain = decision.guided_states(pipe, [gates.scene_caption(s, "pattern", "plain") for s in scenes])
    drawn, steps = decision.drawn_patterns(pipe, readout, x0, plain, 150, sampling, seed=5)
    assert steps < sampling["steps"]
    assert np.mean([d == s.labels["pattern"] for d, s in zip(drawn, scenes)]) >= 0.9
    drawn, steps = decision.drawn_patterns(pipe, readout, x0, plain, 1000, sampling, seed=5)
    assert steps == sampling["steps"] and len(drawn) == len(scenes)


@shipped
@drawn_here
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


@shipped
def test_gates_refuse_a_world_of_another_renderer(tmp_path):
    other = tmp_path / "world"
    other.mkdir()
    config = json.loads((WORLD / "build.json").read_text())
    (other / "build.json").write_text(json.dumps({**config, "renderer": world.RENDERER + 1}))
    with pytest.raises(DTIError, match=f"renderer {world.RENDERER + 1}, this code draws renderer {world.RENDERER}"):
        gates.run_gates(other, tmp_path / "gates", quick=True)
    with pytest.raises(DTIError, match="no build.json"):
        gates.run_gates(tmp_path, tmp_path / "gates", quick=True)
    assert not (tmp_path / "gates").exists()


TINY_BUILD = dict(train_images=240, eval_images=240, object_views=240, clip_steps=2, clip_batch=8, evaluator_steps=2,
                  vae_steps=2, vae_batch=8, unet_steps=2, unet_batch=8, readout_steps=2, image_encoder_steps=2)


@pytest.mark.slow
def test_a_tiny_build_exports_a_world_the_gates_measure(tmp_path):
    """Every stage, a few steps each, on the CPU: the exported folder is a world of this renderer that the
    gates run on (its numbers are those of untrained models; the shipped world's are below)."""
    from dataclasses import replace

    cfg = build.BuildConfig(**TINY_BUILD)
    build.build(tmp_path / "work", tmp_path / "world", cfg, threads=2)
    out = tmp_path / "world"
    assert world.renderer_of(out) == world.RENDERER
    for part in ("pipeline", "evaluator", "image_encoder", "readout", "subjects", "logs"):
        assert (out / part).is_dir(), part
    stages = json.loads((out / "build.json").read_text())["stages"]
    assert set(stages) == set(build.STAGES[1:-1]) and all(s["steps"] == 2 for s in stages.values())
    report = gates.run_gates(out, tmp_path / "gates", quick=True, threads=2)
    assert set(report["checks"]) == set(gates.THRESHOLDS) | set(gates.BUDGETS)
    for key, check in report["checks"].items():  # the threshold applies to the worst seed (or subject)
        worst = check["max"] if key in gates.BUDGETS else check["min"]
        assert check["pass"] == (worst <= check["threshold"] if key in gates.BUDGETS else worst >= check["threshold"])
    assert all(f"| {key} |" in (tmp_path / "gates" / "gates.md").read_text() for key in report["checks"])

    # packed (weights only, no data), the build continues elsewhere and exports the same world
    build.main(["--work", str(tmp_path / "work"), "--pack", str(tmp_path / "packed")])
    packed = tmp_path / "packed"
    assert sorted(p.name for p in packed.iterdir()) == sorted(["config.json", *build.STAGES[1:-1]])
    unet_pack = load_tensors(packed / "unet" / "checkpoint.safetensors").keys()
    assert not any(k.startswith(("opt.", "model.")) for k in unet_pack) and any(k.startswith("ema.") for k in unet_pack)
    build.build(packed, tmp_path / "again", cfg, threads=2)
    for part in ("pipeline/unet/diffusion_pytorch_model", "pipeline/vae/diffusion_pytorch_model",
                 "pipeline/text_encoder/model", "evaluator/model", "image_encoder/model", "readout/model"):
        first, again = (load_tensors(out / f"{part}.safetensors") for out in (out, tmp_path / "again"))
        assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first), part
    with pytest.raises(DTIError, match="packed without its optimizer state"):  # more steps need Adam's state
        build.build(packed, tmp_path / "longer", replace(cfg, unet_steps=3), threads=2)
    with pytest.raises(SystemExit, match="exists; pack into a new folder"):
        build.main(["--work", str(tmp_path / "work"), "--pack", str(packed)])


@pytest.mark.slow
@shipped
@drawn_here
def test_gates_run_on_a_small_sample(tmp_path):
    report = gates.run_gates(WORLD, tmp_path, quick=True)
    assert set(report["checks"]) == set(gates.THRESHOLDS) | set(gates.BUDGETS)
    first = report["per_seed"][0]
    assert first["evaluator"]["top1_of_100"] > 0.3  # far above chance (0.01) even on 100 images
    assert set(report["text_sensitivity"]) == {"class", "colour", "background", "position", "pattern"}
    assert min(report["text_sensitivity"].values()) > 0  # every attribute word moves the conditioning
    assert set(first["denoiser_word_use"]) == set(gates.CAPTION_VALUES)
    assert first["readout_on_vae_reconstructions"]["background"] >= 0.9  # the VAE keeps what is large
    # the text metric ranks ground-truth renders far above chance (1 in 15)
    assert first["metrics"]["text_ranks_prompt"] > 0.3
    for key, check in report["checks"].items():  # the threshold applies to the worst seed (or subject)
        worst = check["max"] if key in gates.BUDGETS else check["min"]
        assert check["pass"] == (worst <= check["threshold"] if key in gates.BUDGETS else worst >= check["threshold"])
    assert set(report["personalization"]) == {s.name for s in world.SUBJECTS[:2]}
    assert all([r["training_seed"] for r in rows] == report["seeds"] for rows in report["personalization"].values())
    assert set(report["words_show_subject"]) == set(report["personalization"])
    saved = json.loads((tmp_path / "gates.json").read_text())
    assert saved["per_seed"][0]["base_model"] == first["base_model"]
    table = (tmp_path / "gates.md").read_text()
    assert all(f"| {key} |" in table for key in report["checks"])
    # the measures beside the gates: one value per seed (per subject for personalization's), each in the
    # table's second part
    assert {"metrics.image_names_subject.mini_patch", "metrics.text_ranks_prompt_among_all",
            "readout_on_renders.class", "personalization.words_show_subject"} <= set(report["reported"])
    for key, values in report["reported"].items():
        per = report["personalization"] if key.startswith("personalization.") else report["per_seed"]
        assert len(values) == len(per) and f"| {key} |" in table, key


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
@drawn_here
def test_personalization_gate_trains_ti_at_every_training_seed(tmp_path):
    """The workflow trains TI at several seeds, so the gate does too: one run and one row per subject and seed,
    and the gate's values are every row's (its minimum is over subjects and seeds)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD / "pipeline", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    subjects = list(world.SUBJECTS[:2])
    rows = gates.personalization(WORLD, pipe, models.Readout.load(WORLD / "readout"), subjects, steps=2,
                                 out=tmp_path, sampling=world.sampling_of(WORLD), photos=2, training_seeds=(0, 3))
    assert list(rows) == [s.name for s in subjects]
    for name, per_seed in rows.items():
        assert [r["training_seed"] for r in per_seed] == [0, 3]
        assert all(0 <= r["shows_subject"] <= min(r["class_seen"], r["colour_seen"], r["pattern_seen"]) <= 1
                   for r in per_seed)
        learned = []
        for seed in (0, 3):
            record = json.loads((tmp_path / "runs" / f"seed{seed}" / name / "run.json").read_text())
            assert record["config"]["seed"] == seed and record["config"]["steps"] == 2
            learned.append(load_tensors(tmp_path / "runs" / f"seed{seed}" / name / "learned_embeds.safetensors"))
        assert not torch.equal(*(next(iter(e.values())) for e in learned))  # the seeds drew other batches


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
@drawn_here
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


def test_attribute_metrics_refuse_a_subjects_table_without_mark_colours(tmp_path):
    """The first world's table (no ``second_colour``) cannot say what an image can show: a one-line error."""
    from miniworld.metrics import mini_expectations

    table = tmp_path / "subjects.csv"
    table.write_text("subject,class,initializer,colour,pattern\nember_triangle,triangle,triangle,red,striped\n")
    prompts = tmp_path / "prompt_sets.json"
    prompts.write_text('{"mini": {"object": ["a {}"], "attributes": [{}]}}')
    with pytest.raises(DTIError, match="no second_colour column"):
        mini_expectations(prompts, table)

def test_object_encoder_backbone_reads_images_as_it_was_trained(tmp_path):
    """Scoring (PIL images through the saved processor) feeds the image encoder the pixels its training
    fed it (``models.encoder_pixels``), and returns one unit vector per image."""
    from PIL import Image

    from miniworld.metrics import ObjectEncoderBackbone

    torch.manual_seed(0)
    encoder = models.make_image_encoder().eval()
    encoder.save_pretrained(tmp_path / "encoder", safe_serialization=True)
    models.image_encoder_processor().save_pretrained(tmp_path / "encoder")
    views = world.object_views(4, 6)
    assert set(views["labels"]) == set(world.OBJECT_HEADS) and views["images"].shape == (6, world.SIZE, world.SIZE, 3)
    backbone = ObjectEncoderBackbone(str(tmp_path / "encoder"), batch_size=4)
    pixels = backbone.processor(images=[Image.fromarray(im) for im in views["images"]],
                                return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixels, models.encoder_pixels(torch.from_numpy(views["images"])), atol=1e-6)
    embedded = backbone.image_embeddings([Image.fromarray(im) for im in views["images"]])
    with torch.no_grad():
        direct = encoder(pixel_values=models.encoder_pixels(torch.from_numpy(views["images"]))).pooler_output
    assert torch.allclose(embedded, torch.nn.functional.normalize(direct.flatten(1), dim=-1), atol=1e-5)


def test_text_gate_does_not_count_renders_that_also_match_the_prompt():
    shows = gates._shows_what_is_asked(world.SUBJECTS[0])
    prompts = world.PROMPTS
    assert shows.diagonal().all()  # every ground truth shows what its own prompt asks
    large, red_background = prompts.index("a large {}"), prompts.index("a {} on a red background")
    small, left = prompts.index("a small {}"), prompts.index("a {} at the left")
    assert shows[large, red_background] and not shows[large, small]
    assert not shows[red_background, large] and shows[left].sum() == 1


def test_gate_table_gives_mean_min_max_and_the_reported_measures():
    checks = {"base_model.class": gates._check([0.95, 0.91, 0.93], 0.9),
              "budget.weights_mb": gates._check([41.0], 40.0, at_most=True)}
    table = gates.gate_table(checks, {"metrics.text_ranks_prompt_among_all": [0.6, 0.7, 0.8]})
    assert "| base_model.class | 0.930 | 0.910 | 0.950 | >= 0.9 | pass |" in table
    assert "| budget.weights_mb | 41.000 | 41.000 | 41.000 | <= 40 | FAIL |" in table
    assert "| metrics.text_ranks_prompt_among_all | 0.700 | 0.600 | 0.800 |" in table


def test_base_model_gate_asks_for_the_pattern():
    """A subject is a pattern the generator must draw: the base model's gate prompts say it and read it."""
    scenes = gates.held_out_scenes(30, seed=1)
    for scene in scenes:
        s = scene.shapes[0]
        assert f" {s.size} {s.colour} {s.pattern} {s.cls} on a {scene.background} " in gates.scene_caption(scene)
    assert {s.shapes[0].pattern for s in scenes} == set(world.PATTERNS)
    assert "pattern" in gates.BASE_ATTRIBUTES and "base_model.pattern" in gates.THRESHOLDS
    vocabulary = models.make_tokenizer().get_vocab()
    assert all(word in vocabulary for scene in scenes for word in gates.scene_caption(scene).split())
