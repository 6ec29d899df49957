"""The authors' training protocol where it goes beyond the loss: zero-pad prompts, per-step posterior
samples, shuffled epochs, SANA's unspaced multi-vector tokens and float32 timesteps, AdamW's own
learning rate in the ablation, and no silent CPU training of large models."""

import csv
import math

import pytest
import torch
from diffusers import DiffusionPipeline

from dti import DTIError, TrainConfig, load_embeddings, train
from dti.data import EpochOrder, draw_batch, zero_pad_count
from dti.families import FAMILIES, ZERO_PAD
from dti.train import resolve_config

CPU = torch.device("cpu")


def family_with(tiny_models, name, dtype=torch.float32, **settings):
    cfg = resolve_config(TrainConfig(method="dti", family=name, model=str(tiny_models[name]), device="cpu")
                         .set([f"{k}={v}" for k, v in settings.items()]))
    return FAMILIES[name].load(cfg.model, CPU, dtype, cfg)


def test_zero_pad_counts_follow_the_clipped_exponential():
    gen = torch.Generator().manual_seed(0)
    counts = [zero_pad_count(gen) for _ in range(4000)]
    assert min(counts) == 0 and max(counts) <= 15
    # E[floor(X)], X ~ Exponential(scale 2): sum over k >= 1 of P(X >= k) = e^-1/2 / (1 - e^-1/2) = 1.541
    assert sum(counts) / len(counts) == pytest.approx(math.exp(-0.5) / (1 - math.exp(-0.5)), abs=0.1)
    again = torch.Generator().manual_seed(0)
    assert [zero_pad_count(again) for _ in range(4000)] == counts


@pytest.mark.parametrize("name, joined", [("sdxl", f"{ZERO_PAD} {ZERO_PAD} a photo"),
                                          ("sana", f"{ZERO_PAD}{ZERO_PAD} a photo")])
def test_zero_pad_tokens_are_zero_rows_in_every_encoder(tiny_models, name, joined):
    family = family_with(tiny_models, name, zero_pad="true")
    family.add_concept("<sks>", "dog", ["a photo of a"])
    assert family.zero_padded("a photo", 2) == joined and family.zero_padded("a photo", 0) == "a photo"
    for tok, enc, wrapper in zip(family.tokenizers, family.encoders, family.wrappers):
        ids = tok(joined, add_special_tokens=False, return_tensors="pt").input_ids
        pad = tok.convert_tokens_to_ids(ZERO_PAD)
        assert ids[0, :2].tolist() == [pad, pad] and pad == wrapper.zero_id
        rows = enc.get_input_embeddings()(ids)
        assert torch.count_nonzero(rows[0, :2]) == 0 and rows[0, 2:].abs().sum() > 0
        assert pad < wrapper.first_id  # SDXL pools at the largest id of a prompt: the placeholder's, not a pad's


def test_posterior_samples_are_drawn_per_step_and_seeded(tiny_models, ref_images):
    from dti.data import list_images, load_reference

    family = family_with(tiny_models, "sd")
    refs = [load_reference(p, 64, 8) for p in list_images(ref_images)]
    latents = family.encode_images([r.pixels for r in refs])
    assert all((std > 0).all() for _, std in latents)  # the KL VAE's posterior has a spread

    def batch(seed, sample):
        return draw_batch(latents, [r.original_size for r in refs], ["a {}"], "<sks>", 3, 4, 8,
                          torch.Generator().manual_seed(seed), picks=[0, 1, 2], sample_latents=sample)["latents"]

    assert torch.equal(batch(1, True), batch(1, True))
    assert not torch.equal(batch(1, True), batch(2, True))
    mode = batch(1, False)
    assert not torch.allclose(batch(1, True), mode)
    # the mode is the posterior mean's crop, the crops being drawn before any noise
    assert any(torch.equal(mode[0], latents[0][0][:, top:top + 4, left:left + 4])
               for top in range(5) for left in range(5))
    sana = family_with(tiny_models, "sana")
    sana_ref = load_reference(list_images(ref_images)[0], 256, 32)
    assert all(torch.count_nonzero(std) == 0 for _, std in sana.encode_images([sana_ref.pixels]))  # DC-AE


def test_images_come_in_shuffled_epochs_that_a_resume_continues():
    order = EpochOrder(5, seed=42)
    picks = order.picks(0, 15)
    for epoch in range(3):
        assert sorted(picks[5 * epoch:5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert len({tuple(picks[i:i + 5]) for i in (0, 5, 10)}) > 1  # each epoch its own order
    assert EpochOrder(5, seed=42).picks(7, 6) == picks[7:13]  # a resumed run asks from its position
    assert EpochOrder(5, seed=43).picks(0, 15) != picks


def test_sana_multi_vector_tokens_are_unspaced_and_condition_as_in_training(tiny_models, ref_images, tmp_path):
    cfg = TrainConfig(method="dti", model=str(tiny_models["sana"]), images=str(ref_images), placeholder="<sks>",
                      initializer="stuffed animal", steps=1).set(["resolution=256", "batch_size=1", "grad_accum=1",
                                                                  "device=cpu"])
    run = train(cfg, tmp_path / "run")
    pipe = DiffusionPipeline.from_pretrained(cfg.model)
    concept = load_embeddings(pipe, run)
    assert len(concept.tokens) > 1
    prompt = concept.prompt("a photo of {}")
    assert prompt == "a photo of " + "".join(concept.tokens)
    ids = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[-len(concept.tokens):] == pipe.tokenizer.convert_tokens_to_ids(concept.tokens)
    trained = FAMILIES["sana"].load(cfg.model, CPU, torch.float32, resolve_config(cfg.set(["family=sana"])))
    trained.add_concept("<sks>", "stuffed animal")
    from dti.embeddings import read_run

    trained.set_rows(read_run(run)[1])
    stock = FAMILIES["sana"](pipe, CPU, torch.float32, trained.cfg)
    with torch.no_grad():
        a, b = trained.encode_prompts([prompt]), stock.encode_prompts([prompt])
    assert torch.allclose(a["encoder_hidden_states"], b["encoder_hidden_states"], atol=1e-5)


def test_sana_training_timesteps_stay_float32_in_bf16(tiny_models):
    family = family_with(tiny_models, "sana", dtype=torch.bfloat16)
    family.add_concept("<sks>", "dog")
    seen = {}

    def capture(module, args, kwargs):
        seen["timestep"] = kwargs["timestep"]

    family.pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    latents = torch.randn(2, 32, 8, 8)
    cond = family.encode_prompts(["a photo of a <sks>"] * 2)
    family.loss(latents, cond, {}, torch.Generator().manual_seed(3))
    # the same draws as the loss: noise, then t
    gen = torch.Generator().manual_seed(3)
    torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    expected = (t + 1).float() * family.pipe.transformer.config.timestep_scale
    assert not torch.equal(expected.to(torch.bfloat16).float(), expected)  # bf16 would round these
    assert seen["timestep"].dtype == torch.float32 and torch.equal(seen["timestep"], expected)


def test_sana_trains_without_the_samplers_flow_shift(tiny_models):
    """SANA's diffusers scheduler config (DPM-Solver on flow sigmas, flow_shift 3.0 at 1024 px, as diffusers'
    SANA conversion writes it) shifts the sampling timesteps only; training draws t uniformly, as the
    authors do, whatever the config's shift."""
    from diffusers import DPMSolverMultistepScheduler

    family = family_with(tiny_models, "sana")
    family.add_concept("<sks>", "dog")
    latents = torch.randn(2, 32, 8, 8)
    cond = family.encode_prompts(["a photo of a <sks>"] * 2)
    losses = []
    for shift in (3.0, 1.0):
        family.pipe.scheduler = DPMSolverMultistepScheduler.from_config(family.pipe.scheduler.config, flow_shift=shift)
        with torch.no_grad():
            losses.append(family.loss(latents, cond, {}, torch.Generator().manual_seed(5)))
    assert torch.equal(losses[0], losses[1])
    sampling = []
    for shift in (3.0, 1.0):  # the sampler does apply it
        scheduler = DPMSolverMultistepScheduler.from_config(family.pipe.scheduler.config, flow_shift=shift)
        scheduler.set_timesteps(20)
        sampling.append(scheduler.sigmas[:-1])
    assert (sampling[0] >= sampling[1]).all() and (sampling[0] - sampling[1]).max() > 0.1  # towards noise


def test_the_adamw_ablation_row_uses_its_own_learning_rate(tiny_models, ref_images, tmp_path):
    cfg = TrainConfig(method="dti", model=str(tiny_models["sd"]), images=str(ref_images), placeholder="<sks>",
                      initializer="dog", steps=2).set(["resolution=64", "batch_size=1", "direction_optimizer=adamw"])
    assert resolve_config(cfg.set(["family=sd"])).adamw_lr == 5e-4
    run = train(cfg, tmp_path / "run")
    with (run / "train_log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["step"] != "0"]
    assert {float(r["lr"]) for r in rows} == {5e-4}
    # AdamW's first step moves each coordinate by about lr: far less than RSGD's atan(0.04) = 2.29 degrees
    assert all(float(r["angle_deg"]) < 1.0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_no_silent_cpu_training_of_a_large_family(tiny_models, ref_images, tmp_path):
    cfg = TrainConfig(method="dti", model=str(tiny_models["sdxl"]), images=str(ref_images), placeholder="<sks>",
                      initializer="dog", steps=1).set(["resolution=64", "batch_size=1"])
    with pytest.raises(DTIError, match="no GPU here: a sdxl model would train in float32 on the CPU; set device=cpu"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert train(cfg.set(["device=cpu"]), tmp_path / "run").is_dir()
