"""Training every method on every family, end to end on tiny real-architecture pipelines."""

import csv
import dataclasses
import io
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors import safe_open

from dti import DTIError, TrainConfig, load_embeddings, rescale, train
from dti.devices import Progress, interactive
from dti.embeddings import read_run
from dti.families import FAMILIES
from dti.sample import SampleConfig, sample
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
    original = cls.losses
    calls = {"n": 0}

    def losses(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call_number:
            if exc is None:
                return [loss * float("nan") for loss in original(self, *args, **kwargs)]
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "losses", losses)


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


PROGRESS = re.compile(r"^(\w+) step (\d+)/(\d+) (.*) \| ([\d.e+]+) step/s, eta (\d+):(\d\d):(\d\d)$")


def test_progress_lines_without_a_terminal(tiny_models, ref_images, tmp_path, capfd):
    """A workflow's log (stderr not a terminal) gets a plain line every progress_every steps and at the
    last, with loss, each encoder's vector norms and cosines to the initializer, speed and ETA."""
    cfg = make_cfg("sdxl", "dti", tiny_models["sdxl"], ref_images, steps=3, progress_every=2)
    run = train(cfg, tmp_path / "run")
    lines = [m for m in map(PROGRESS.match, capfd.readouterr().err.splitlines()) if m]
    assert [(m[1], int(m[2]), int(m[3])) for m in lines] == [("dti", 2, 3), ("dti", 3, 3)]
    log = read_log(run)
    for m in lines:
        fields = dict(item.split("=") for item in m[4].split())
        step = int(m[2])
        rows = [r for r in log if r["step"] == step]
        assert float(fields["loss"]) == pytest.approx(rows[0]["loss"], rel=1e-4)
        for enc, name in enumerate(["text_encoder", "text_encoder_2"]):  # one value per vector of "stuffed animal"
            mine = [r for r in rows if r["encoder"] == enc]
            norms = [float(v) for v in fields[f"norm.{name}"].split(",")]
            cosines = [float(v) for v in fields[f"cos_init.{name}"].split(",")]
            assert norms == pytest.approx([r["norm"] for r in mine], rel=1e-4)
            assert cosines == pytest.approx([r["cos_to_initializer"] for r in mine], abs=1e-4)
        assert float(m[5]) > 0
    assert (int(lines[-1][6]), int(lines[-1][7]), int(lines[-1][8])) == (0, 0, 0)  # nothing left at the end

    train(make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=2, progress_every=0), tmp_path / "quiet")
    assert not [line for line in capfd.readouterr().err.splitlines() if PROGRESS.match(line)]


def test_validation_images_leave_training_unchanged(tiny_models, ref_images, tmp_path):
    """Validation images come from the current vectors with the sampler of ``dti sample``, and
    training draws the same numbers with them as without: bit-identical vectors and log."""
    prompts = "a photo of {}|a red {} on the beach"
    plain = train(make_cfg("sd", "dti", tiny_models["sd"], ref_images), tmp_path / "plain")
    cfg = make_cfg("sd", "dti", tiny_models["sd"], ref_images, validation_every=2, validation_steps=2,
                   validation_prompts=prompts)
    watched = train(cfg, tmp_path / "watched")
    assert torch.equal(read_run(watched)[1][0], read_run(plain)[1][0])
    assert (watched / "train_log.csv").read_bytes() == (plain / "train_log.csv").read_bytes()
    files = sorted(p.name for p in (watched / "validation").iterdir())
    assert files == [f"step0000{s}_{i}.png" for s in (0, 2, 3) for i in (0, 1)]  # the start, every 2, the last
    start, last = (np.asarray(Image.open(watched / "validation" / f"step0000{s}_0.png"), dtype=int) for s in (0, 3))
    assert start.shape == (64, 64, 3) and not np.array_equal(start, last)  # the vectors moved in between

    # the last step's image is what `dti sample` makes of the finished run, at the same prompt, seed and steps
    manifest = sample(watched, tmp_path / "samples", "dog", "dog", ["a photo of {}"], [cfg.validation_seed], "p",
                      SampleConfig().set(["steps=2"]))
    sampled = np.asarray(Image.open(manifest.parent / "dog" / "00_a_photo_of_x" / "seed0.png"), dtype=int)
    assert np.abs(sampled - last).max() <= 2

    # watching settings do not block a resume; a refused prompt is one line before training
    assert train(dataclasses.replace(cfg, validation_every=1, progress_every=1), watched, resume=True) == watched
    with pytest.raises(DTIError, match=r"validation prompt 'a photo' must hold one \{\}"):
        make_cfg("sd", "dti", tiny_models["sd"], ref_images, validation_every=2, validation_prompts="a photo")


def test_tensorboard_logs_the_step_log_and_validation_images(tiny_models, ref_images, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=3, tensorboard=True, validation_every=2,
                   validation_steps=2)
    run = train(cfg, tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    log = read_log(run)
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(s, pytest.approx(r["loss"], rel=1e-6)) for s in (1, 2, 3)
                    for r in log if r["step"] == s and r["encoder"] == 0 and r["vector"] == 0]  # step 0: no loss
    for j in (0, 1):
        norms = [(e.step, e.value) for e in events.Scalars(f"norm/text_encoder/{j}")]
        assert norms == [(r["step"], pytest.approx(r["norm"], rel=1e-6)) for r in log if r["vector"] == j]
        assert [e.step for e in events.Scalars(f"angle_deg/text_encoder/{j}")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("lr")] == [0, 1, 2, 3]
    assert [e.step for e in events.Scalars("cos_to_initializer/text_encoder/0")] == [0, 1, 2, 3]
    images = events.Images("validation/0")
    assert [(e.step, e.width, e.height) for e in images] == [(0, 64, 64), (2, 64, 64), (3, 64, 64)]


def test_tensorboard_missing_is_one_line_before_training(tiny_models, ref_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as where the track extra is not installed
    with pytest.raises(DTIError, match=r"tensorboard logging needs `pip install -e '\.\[track\]'`"):
        train(make_cfg("sd", "ti", tiny_models["sd"], ref_images, tensorboard=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_revision_is_refused_for_a_local_folder_and_recorded_for_hub_ids(tiny_models, ref_images, tmp_path):
    cfg = make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=1)
    with pytest.raises(DTIError, match=r"revision 'v1\.0' was given, but .* is a local folder"):
        train(dataclasses.replace(cfg, revision="v1.0"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    record, _ = read_run(train(cfg, tmp_path / "run"))
    assert record["config"]["revision"] is None and record["model_commit"] is None  # a local folder has no commit
    assert "model_commit_note" not in record and "model_revision" not in record["inputs"]


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    log = io.StringIO()
    progress = Progress(10, every=4, desc="sample s", unit="image", stream=log)
    assert progress.bar is None
    for n in (3, 3, 3, 1):  # batches cross multiples of 4 at 6 and 9; the end always gets a line
        progress.update(n, {"k": "v"})
    progress.close()
    done = [int(re.match(r"sample s image (\d+)/10 k=v \| [\d.e+]+ image/s, eta \d+:\d\d:\d\d$", line)[1])
            for line in log.getvalue().splitlines()]
    assert done == [6, 9, 10]
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        bar = Progress(2, every=1, stream=terminal)
        assert interactive(terminal) and bar.bar is not None
        bar.update(2)
        bar.close()
    os.close(primary)


def test_a_validation_that_cannot_run_stops_before_the_first_step(tiny_models, ref_images, tmp_path):
    # the tiny SANA model's size has no aspect-ratio bin, which SANA's sampling protocol asks for
    cfg = make_cfg("sana", "dti", tiny_models["sana"], ref_images, validation_every=1, validation_steps=1)
    with pytest.raises(DTIError, match=r"validation images at step 0 failed \(ValueError: Invalid sample size\); "
                                       "validation_every=0 trains without them"):
        train(cfg, tmp_path / "run")
    assert {r["step"] for r in read_log(tmp_path / "run")} == {0}
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_prior_strength_is_logged_against_the_data_gradient(tiny_models, ref_images, tmp_path):
    """prior_ratio = kappa / |dL/dv| per vector: with RSGD the logged gradient is the data gradient alone, so
    ratio x grad_norm = kappa; with AdamW the gradient holds the prior's loss term, which the ratio leaves
    out; TI has no prior. run.json keeps the median, and analysis.step_sizes the angles: RSGD turns v by
    exactly atan(lr) per step."""
    from analysis.step_sizes import step_sizes

    kappa = 1e-3
    rsgd = train(make_cfg("sd", "dti", tiny_models["sd"], ref_images, steps=3, kappa=kappa), tmp_path / "rsgd")
    log = [r for r in read_log(rsgd) if r["step"] >= 1]
    assert all(r["prior_ratio"] * r["grad_norm"] == pytest.approx(kappa, rel=1e-4) for r in log)
    record = read_run(rsgd)[0]
    assert record["prior_ratio_median"] == pytest.approx(float(np.median([r["prior_ratio"] for r in log])))
    sizes = step_sizes(rsgd)
    assert sizes["median_angle_deg"] == pytest.approx(np.degrees(np.arctan(0.04)), abs=1e-3)
    assert sizes["prior_ratio_median"] == pytest.approx(record["prior_ratio_median"])

    adamw = train(make_cfg("sd", "dti", tiny_models["sd"], ref_images, steps=3, kappa=kappa,
                           direction_optimizer="adamw"), tmp_path / "adamw")
    log = [r for r in read_log(adamw) if r["step"] >= 1]
    # |dL/dv - kappa mu| differs from |dL/dv|: the ratio is not kappa / grad_norm, but is finite and positive
    assert all(0 < r["prior_ratio"] < float("inf") for r in log)
    assert any(r["prior_ratio"] * r["grad_norm"] != pytest.approx(kappa, rel=1e-6) for r in log)
    assert step_sizes(adamw)["lr"] == resolve_config(make_cfg("sd", "dti", tiny_models["sd"], ref_images)).adamw_lr

    ti = train(make_cfg("sd", "ti", tiny_models["sd"], ref_images, steps=2), tmp_path / "ti")
    assert all(np.isnan(r["prior_ratio"]) for r in read_log(ti))
    assert read_run(ti)[0]["prior_ratio_median"] is None
