"""Training every method on every family, end to end on tiny real-architecture pipelines."""

import csv
import dataclasses
import shutil

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open

from dti import DTIError, TrainConfig, load_embeddings, rescale, train
from dti.embeddings import read_run
from dti.families import FAMILIES
from dti.train import resolve_config
from dti.io import load_tensors, save_tensors

CPU = torch.device("cpu")
GEN_SIZE = {"sd": 64, "sdxl": 64, "sana": 256}


def make_cfg(family, method, model, images, steps=3, **overrides):
    defaults = {"resolution": 64, "batch_size": 2, "grad_accum": 1, "device": "cpu"}  # SDXL, SANA: cpu by name
    sets = [f"{k}={v}" for k, v in {**defaults, **overrides}.items()]
    cfg = TrainConfig(method=method, model=str(model), images=str(images), placeholder="<sks>",
                      initializer="stuffed animal", steps=steps, family=family).set(sets)
    return resolve_config(cfg)


def load_family(cfg):
    return FAMILIES[cfg.family].load(cfg.model, CPU, torch.float32, cfg)


def read_log(run_dir):
    with open(run_dir / "train_log.csv", newline="") as f:
        return [{k: (float(v) if k not in ("step", "encoder", "vector") else int(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("family_name", ["sd", "sdxl", "sana"])
@pytest.mark.parametrize("method", ["ti", "crossinit", "dti"])
def test_method_trains_and_loads_into_stock_pipeline(tiny_models, ref_images, tmp_path, family_name, method):
    cfg = make_cfg(family_name, method, tiny_models[family_name], ref_images)
    family = load_family(cfg)
    tables = [enc.get_input_embeddings().weight.detach().clone() for enc in family.encoders]
    denoiser = getattr(family.pipe, family.denoiser_name)
    denoiser_sum = sum(p.double().sum() for p in denoiser.parameters())

    run = train(cfg, tmp_path / "run", family=family)

    # frozen weights: untouched, bit for bit, and never given a gradient
    for enc, table in zip(family.encoders, tables):
        assert torch.equal(enc.get_input_embeddings().weight, table)
        assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert all(p.grad is None for p in denoiser.parameters())
    assert sum(p.double().sum() for p in denoiser.parameters()) == denoiser_sum

    record, rows = read_run(run)
    k = len(record["tokens"])
    assert k >= 2 and record["tokens"][1] == "<sks>_1"  # "stuffed animal" gives one vector per token
    widths = [enc.get_input_embeddings().weight.shape[1] for enc in family.encoders]
    assert [tuple(r.shape) for r in rows] == [(k, d) for d in widths]
    assert all(r.dtype == torch.float32 for r in rows)
    with safe_open(str(run / "learned_embeds.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == method and meta["steps"] == "3" and meta["base_model"] == cfg.model
    if family_name == "sdxl":
        both = load_tensors(run / "learned_embeds_sdxl.safetensors")
        assert torch.equal(both["clip_l"], rows[0]) and torch.equal(both["clip_g"], rows[1])

    log = read_log(run)
    assert sorted({r["step"] for r in log}) == [0, 1, 2, 3]
    assert len(log) == 4 * len(rows) * k
    final = [r for r in log if r["step"] == 3]
    for r in final:
        assert r["norm"] == pytest.approx(rows[r["encoder"]][r["vector"]].norm().item(), rel=1e-5)
    if method == "dti":
        for r in log:
            m_star = record["vocab_norms"][record["encoders"][r["encoder"]]]["mean"]
            assert r["norm"] == pytest.approx(m_star, rel=1e-5)
        # beta = 0: every step turns each vector by atan(lr)
        assert all(r["angle_deg"] == pytest.approx(2.2906, abs=1e-3) for r in log if r["step"] > 0)
    if method == "ti":
        assert all(r["cos_to_initializer"] == pytest.approx(1.0, abs=1e-6) for r in log if r["step"] == 0)

    # a stock pipeline with the learned vectors conditions exactly as training did
    pipe = DiffusionPipeline.from_pretrained(cfg.model)
    pipe.set_progress_bar_config(disable=True)
    concept = load_embeddings(pipe, run)
    prompt = concept.prompt("a photo of {} on the beach")
    family.set_rows([r.to(CPU) for r in rows])
    with torch.no_grad():
        trained_cond = family.encode_prompts([prompt])
        stock_cond = FAMILIES[family_name](pipe, CPU, torch.float32, cfg).encode_prompts([prompt])
    for key in trained_cond:
        assert torch.allclose(trained_cond[key].float(), stock_cond[key].float(), atol=1e-5), key
    extra = {"use_resolution_binning": False} if family_name == "sana" else {}
    size = GEN_SIZE[family_name]
    image = pipe(prompt, num_inference_steps=2, height=size, width=size, output_type="np",
                 generator=torch.Generator().manual_seed(0), **extra).images[0]
    assert image.shape == (size, size, 3) and torch.isfinite(torch.from_numpy(image)).all()


@pytest.mark.parametrize("overrides, expected_norm", [
    ({"m_star": "min"}, "min"),
    ({"m_star": "max"}, "max"),
    ({"m_star": "5.0"}, 5.0),
    ({"direction_optimizer": "adamw"}, "mean"),
    ({"kappa": "0.0"}, "mean"),
    ({"kappa": "5e-4", "beta": "0.9"}, "mean"),
])
def test_dti_ablation_cells_are_configuration(tiny_models, ref_images, tmp_path, overrides, expected_norm):
    cfg = make_cfg("sd", "dti", tiny_models["sd"], ref_images, steps=2, **overrides)
    record, rows = read_run(train(cfg, tmp_path / "run"))
    stats = record["vocab_norms"]["text_encoder"]
    target = expected_norm if isinstance(expected_norm, float) else stats[expected_norm]
    assert torch.allclose(rows[0].norm(dim=1), torch.full((rows[0].shape[0],), target), rtol=1e-5)
    log = read_log(tmp_path / "run")
    assert all(r["cos_to_initial"] < 1.0 for r in log if r["step"] == 2)  # the direction did move
    assert record["m_star_values"] == [pytest.approx(target)]


def test_same_seed_gives_bit_identical_embeddings(tiny_models, ref_images, tmp_path):
    for method in ("ti", "dti"):
        runs = [train(make_cfg("sd", method, tiny_models["sd"], ref_images), tmp_path / f"{method}{i}")
                for i in range(2)]
        a, b = (read_run(r)[1][0] for r in runs)
        assert torch.equal(a, b)
    other = train(make_cfg("sd", "dti", tiny_models["sd"], ref_images).set(["seed=7"]), tmp_path / "seed7")
    assert not torch.equal(read_run(other)[1][0], read_run(tmp_path / "dti0")[1][0])


def _interrupt_at(monkeypatch, family_name, call_number, exc):
    cls = FAMILIES[family_name]
    original = cls.loss
    calls = {"n": 0}

    def loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call_number:
            if exc is None:
                return original(self, *args, **kwargs) * float("nan")
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "loss", loss)


@pytest.mark.parametrize("method", ["ti", "dti"])
def test_resume_after_kill_matches_uninterrupted_run(tiny_models, ref_images, tmp_path, monkeypatch, method):
    cfg = make_cfg("sd", method, tiny_models["sd"], ref_images, steps=6, checkpoint_every=2)
    straight = read_run(train(cfg, tmp_path / "straight"))[1][0]

    with monkeypatch.context() as m:
        _interrupt_at(m, "sd", 5, KeyboardInterrupt())  # killed inside step 5, after the step-4 checkpoint
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "killed")
    assert not (tmp_path / "killed" / "learned_embeds.safetensors").exists()
    with pytest.raises(DTIError, match="already holds a run; pass --resume"):
        train(cfg, tmp_path / "killed")
    resumed = read_run(train(cfg, tmp_path / "killed", resume=True))[1][0]
    assert torch.equal(resumed, straight)
    # a workflow engine removes a job's outputs before rerunning it: the finished run writes them again
    (tmp_path / "killed" / "learned_embeds.safetensors").unlink()
    assert torch.equal(read_run(train(cfg, tmp_path / "killed", resume=True))[1][0], straight)
    with pytest.raises(DTIError, match="checkpointed at step 6, beyond the 4 steps"):
        train(dataclasses.replace(cfg, steps=4), tmp_path / "killed", resume=True)
    assert [r["step"] for r in read_log(tmp_path / "killed")] == [s for s in range(7) for _ in range(2)]


def test_resume_trains_again_when_the_base_model_or_images_changed(tiny_models, ref_images, tmp_path):
    """A workflow re-runs a finished job (its outputs removed) when the base model or the images
    change under the same paths: --resume must train on the new ones, not return the old run."""
    model, images = tmp_path / "model", tmp_path / "images"
    shutil.copytree(tiny_models["sd"], model)
    shutil.copytree(ref_images, images)
    cfg = make_cfg("sd", "ti", model, images, steps=3, lr=0.5)
    old = read_run(train(cfg, tmp_path / "run"))[1][0]

    weights = next((model / "text_encoder").glob("*.safetensors"))
    tensors = load_tensors(weights)
    tensors = {k: v * 1.5 if "token_embedding" in k else v for k, v in tensors.items()}
    save_tensors(tensors, weights)  # new encoder weights at the same path
    new_model = read_run(train(cfg, tmp_path / "straight_model"))[1][0]
    assert not torch.equal(new_model, old)
    (tmp_path / "run" / "learned_embeds.safetensors").unlink()
    assert torch.equal(read_run(train(cfg, tmp_path / "run", resume=True))[1][0], new_model)

    first = sorted(images.iterdir())[0]
    first.write_bytes(sorted(images.iterdir())[1].read_bytes())  # another photo under the same name
    new_images = read_run(train(cfg, tmp_path / "straight_images"))[1][0]
    (tmp_path / "run" / "learned_embeds.safetensors").unlink()
    assert torch.equal(read_run(train(cfg, tmp_path / "run", resume=True))[1][0], new_images)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [s for s in range(4) for _ in range(2)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_models, ref_images, tmp_path, monkeypatch):
    cfg = make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=6, checkpoint_every=2)
    _interrupt_at(monkeypatch, "sd", 3, None)
    with pytest.raises(DTIError, match=r"loss is nan at step 3; .* last good checkpoint is step 2"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "learned_embeds.safetensors").exists()
    with safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "2"


def test_resume_refuses_a_run_of_another_method(tiny_models, ref_images, tmp_path):
    train(make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=1), tmp_path / "run")
    with pytest.raises(DTIError, match="holds a ti run, not dti"):
        train(make_cfg("sd", "dti", tiny_models["sd"], ref_images, steps=1), tmp_path / "run", resume=True)
    with pytest.raises(DTIError, match="configuration differs in lr"):
        train(make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=1, lr=0.5), tmp_path / "run", resume=True)


def test_rescale_sets_norm_and_keeps_direction(tiny_models, ref_images, tmp_path):
    cfg = make_cfg("sdxl", "ti", tiny_models["sdxl"], ref_images, steps=3, lr=0.5)
    ti_run = train(cfg, tmp_path / "ti")
    out = rescale(ti_run, tmp_path / "ti_rescaled", "mean")
    (_, ti_rows), (record, rows) = read_run(ti_run), read_run(out)
    assert record["method"] == "ti_rescaled"
    for enc, a, b in zip(record["encoders"], ti_rows, rows):
        target = record["vocab_norms"][enc]["mean"]
        assert torch.allclose(b.norm(dim=1), torch.full((b.shape[0],), target), rtol=1e-5)
        assert torch.allclose(torch.nn.functional.cosine_similarity(a, b), torch.ones(b.shape[0]), atol=1e-6)
        assert not torch.allclose(a.norm(dim=1), b.norm(dim=1))  # lr 0.5 moved TI far from the vocabulary
    both = load_tensors(out / "learned_embeds_sdxl.safetensors")
    assert torch.equal(both["clip_g"], rows[1])
    pipe = DiffusionPipeline.from_pretrained(cfg.model)
    load_embeddings(pipe, out)
    with pytest.raises(DTIError, match="rescale takes a TI run"):
        rescale(train(make_cfg("sd", "dti", tiny_models["sd"], ref_images, steps=1), tmp_path / "dti"),
                tmp_path / "x")


def test_crossinit_initial_vectors_are_the_encoder_output(tiny_models, ref_images, tmp_path):
    cfg = make_cfg("sd", "crossinit", tiny_models["sd"], ref_images, steps=1)
    family = load_family(cfg)
    tok, enc = family.tokenizers[0], family.encoders[0]
    ids = tok("stuffed animal", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = enc(ids).last_hidden_state[0, 1:3]  # BOS, then the two initializer tokens
    train(cfg, tmp_path / "run", family=family)
    log = read_log(tmp_path / "run")
    init_norms = [r["norm"] for r in log if r["step"] == 0]
    assert init_norms == pytest.approx(expected.norm(dim=1).tolist(), rel=1e-5)


def test_v_prediction_sd_trains_against_the_velocity(ref_images, tmp_path):
    from tests import tiny

    model = tiny.build_sd(tmp_path / "sd_v", prediction_type="v_prediction")
    cfg = make_cfg("sd", "dti", model, ref_images, steps=2)
    family = load_family(cfg)
    sched = family.noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = family.encode_prompts(["a photo of a dog", "a red ball"])
        loss = family.loss(latents, cond, {}, torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(0)  # the same draws, in the same order, by hand
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (2,), generator=gen)
        pred = family.pipe.unet(sched.add_noise(latents, noise, t), t, **cond).sample
    assert loss == pytest.approx(torch.nn.functional.mse_loss(pred, sched.get_velocity(latents, noise, t)).item())
    assert loss != pytest.approx(torch.nn.functional.mse_loss(pred, noise).item())
    record, rows = read_run(train(cfg, tmp_path / "run", family=family))
    assert record["status"] == "complete" and torch.isfinite(rows[0]).all()
