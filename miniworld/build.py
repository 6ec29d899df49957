"""Pretrain the mini world from its seed, in resumable stages.

    python -m miniworld.build --work results/mini_build --out experiments/mini/world

Stages run in order; each keeps a checkpoint (safetensors) and a loss log in ``WORK/<stage>``
and is skipped once finished, so an interrupted build continues where it stopped, also in
another sitting (``--stop-after STAGE`` ends a sitting at a stage's end). ``export`` writes the shipped
folder; ``gates`` measures it (``miniworld.gates``).
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dti.config import apply_assignments, option
from dti.devices import resolve_device
from dti.io import (DTIError, atomic_path, load_tensors, package_versions, read_json, save_tensors, truncate_log,
                    write_json)

from . import models, world


@dataclass
class BuildConfig:
    seed: int = option(0, "World seed: data, initialisations and batch draws all derive from it.")
    train_images: int = option(120_000, "Pretraining scenes (conditioning CLIP, VAE, UNet).")
    eval_images: int = option(40_000, "Scenes of a second seed (evaluator CLIP, read-out).")
    vae_factor: int = option(2, "VAE downsampling: 2 (16 x 16 x 4 latents) or 4 (8 x 8 x 16, the first world's).")
    vae_steps: int = option(4500, "VAE steps.")
    vae_batch: int = option(128, "VAE batch size.")
    vae_decode_sample: bool = option(False, "Train the decoder on posterior samples instead of the posterior mean the "
                                            "UNet is trained on.")
    clip_steps: int = option(2000, "Steps of the conditioning CLIP.")
    clip_batch: int = option(128, "CLIP batch (each with one hard-negative caption per image).")
    clip_image_tower: str = option("cnn", "Image tower of the conditioning CLIP: 'cnn' (models.ImageTower) or 'vit' "
                                          "(CLIPModel's own).")
    clip_attribute_weight: float = option(1.0, "Weight of the conditioning CLIP's image-side attribute heads "
                                               "(0: contrastive only).")
    text_width: int = option(64, "Width of the conditioning text encoder.")
    evaluator_width: int = option(96, "Width of the evaluator CLIP (a different model from the conditioning one).")
    evaluator_steps: int = option(4000, "Steps of the evaluator CLIP (the second build's 2,400 left the "
                                        "text-ranking gate just short).")
    evaluator_attribute_weight: float = option(1.0, "Weight of attribute heads on the evaluator's image tower (0: "
                                                    "contrastive only, which left it blind to position and count).")
    unet_steps: int = option(6500, "UNet steps.")
    unet_batch: int = option(128, "UNet batch size.")
    unet_lr: float = option(6e-4, "UNet peak learning rate (AdamW, warm-up then cosine).")
    caption_dropout: float = option(0.1, "Share of empty captions in UNet training (for classifier-free guidance).")
    readout_steps: int = option(3000, "Attribute read-out steps.")
    object_views: int = option(60_000, "Scenes of one object each (``world.object_views``) for the image encoder.")
    image_encoder_steps: int = option(2500, "Image encoder steps.")
    mark_colours: str = option("any", "Stripe and dot colours of pretraining scenes: 'any' (every colour but the "
                                      "shape's own, named in some captions; never a subject's (colour, pattern, "
                                      "mark colour)) or 'white_black' (the first world's: no subject could be drawn).")
    judge_scenes: bool = option(True, "The evaluator CLIP and the read-out learn from judge scenes (any pattern "
                                       "colour, every triple: they must read the subjects the generator never saw); "
                                       "False (the first world's): from pretraining scenes of another seed.")
    sampler: str = option("dpm", "Sampler the exported pipeline ships with: 'ddim' or 'dpm' (DPM-Solver++ 2M). "
                                 "Export only: benchmarks/mini_sampler.py chose the shipped world's on its "
                                 "base-model gate.")
    sampling_steps: int = option(10, "Denoising steps of the world's sampling protocol (recorded in build.json; the "
                                     "gates and the configurations sample with them).")
    checkpoint_every: int = option(250, "Steps between checkpoints.")


EXPORT_ONLY = ("sampler", "sampling_steps")  # fields no training stage reads: a finished build may re-export


IMAGE_TOWERS = ("vit", "cnn")  # the conditioning CLIP's image tower: CLIPModel's own, or models.ImageTower


def check_image_tower(name: str):
    if name not in IMAGE_TOWERS:
        raise DTIError(f"image_tower must be one of {', '.join(IMAGE_TOWERS)}, not {name!r}")


# The judges first: they need only the data, and the gates that read renders can be measured before the
# generator exists.
STAGES = ("data", "readout", "evaluator", "image_encoder", "text", "vae", "unet", "export")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
CHUNK = 5000


def _chunk(args):
    seed, index, judge, mark_colours = args
    return world.dataset(seed * 100_003 + index, CHUNK, judge=judge, mark_colours=mark_colours)


def _in_chunks(worker, chunks: list) -> list[dict]:
    """``worker`` on every chunk's arguments, in spawned processes (each chunk from its own seed, so the
    set does not depend on the workers)."""
    with multiprocessing.get_context("spawn").Pool(min(len(chunks), os.cpu_count() or 1)) as pool:
        return pool.map(worker, chunks)


def _scene_tensors(parts: list[dict], n: int, heads) -> dict[str, torch.Tensor]:
    """The first n images and their labels per head of the chunks ``parts``, as a safetensors file holds them."""
    return {"images": torch.from_numpy(np.concatenate([p["images"] for p in parts])[:n]),
            **{f"label.{h}": torch.from_numpy(np.concatenate([p["labels"][h] for p in parts])[:n]) for h in heads}}


def _scenes(tensors: dict[str, torch.Tensor], heads) -> dict:
    """``_scene_tensors`` read back: ``images`` and ``labels`` (head -> tensor)."""
    return {"images": tensors["images"], "labels": {h: tensors[f"label.{h}"] for h in heads}}


def build_data(work: Path, cfg: BuildConfig, n: int, seed: int, name: str, judge: bool = False):
    """Scenes in chunks of CHUNK; with ``judge``, the evaluators' scenes (``world.random_scene``)."""
    if (work / f"{name}.safetensors").is_file():
        return
    parts = _in_chunks(_chunk, [(seed, i, judge, cfg.mark_colours) for i in range(math.ceil(n / CHUNK))])
    captions = [c for p in parts for c in p["captions"]][:n]
    negatives = [c for p in parts for c in p["negatives"]][:n]
    write_json({"captions": captions, "negatives": negatives}, work / f"{name}_captions.json")
    save_tensors(_scene_tensors(parts, n, world.HEADS), work / f"{name}.safetensors")


def load_data(work: Path, name: str) -> dict:
    text = read_json(work / f"{name}_captions.json")
    return {**_scenes(load_tensors(work / f"{name}.safetensors"), world.HEADS), **text}


# --------------------------------------------------------------------------- #
# A resumable training loop shared by the stages
# --------------------------------------------------------------------------- #
class Stage:
    """Checkpoints (model, EMA, optimizer, step, training seconds so far) and a CSV loss log in ``folder``."""

    def __init__(self, folder: Path, modules: dict[str, torch.nn.Module], optimizer, steps: int, lr: float,
                 warmup: int = 100, ema: dict[str, torch.nn.Module] | None = None):
        self.folder, self.modules, self.opt = folder, modules, optimizer
        self.steps, self.lr, self.warmup = steps, lr, warmup
        self.ema = ema or {}
        self.seconds_before = 0.0  # training time of earlier sittings, up to the checkpoint resumed from
        self.packed = False  # a finished stage copied by ``pack``: weights only
        device = next(next(iter(modules.values())).parameters()).device
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        folder.mkdir(parents=True, exist_ok=True)
        self.start = self._load()

    @property
    def done(self) -> bool:
        """Finished at this many steps (a larger ``steps`` continues from the last checkpoint)."""
        path = self.folder / "done.json"
        return path.is_file() and read_json(path)["steps"] >= self.steps

    def _state(self) -> dict:
        out = {f"model.{n}.{k}": v.cpu() for n, m in self.modules.items() for k, v in m.state_dict().items()}
        out.update({f"ema.{n}.{k}": v.cpu() for n, m in self.ema.items() for k, v in m.state_dict().items()})
        for idx, state in self.opt.state_dict()["state"].items():
            out.update({f"opt.{idx}.{k}": torch.as_tensor(v).cpu() for k, v in state.items()})
        return out

    def _load(self) -> int:
        path = self.folder / "checkpoint.safetensors"
        if not path.is_file():
            return 0
        tensors = load_tensors(path)
        meta = read_json(self.folder / "checkpoint.json")
        self.seconds_before = meta.get("seconds", 0.0)
        self.packed = meta.get("packed", False)
        for prefix, group in (("model", self.modules), ("ema", self.ema)):
            for n, m in group.items():
                state = {k[len(f"{prefix}.{n}."):]: v for k, v in tensors.items() if k.startswith(f"{prefix}.{n}.")}
                if state or not self.packed:  # a pack keeps only the EMA of a module that has one
                    m.load_state_dict(state)
        state = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return int(meta["step"])

    def save(self, step: int, seconds: float):
        save_tensors(self._state(), self.folder / "checkpoint.safetensors")
        write_json({"step": step, "seconds": round(seconds, 1), "param_groups": self.opt.state_dict()["param_groups"]},
                   self.folder / "checkpoint.json")

    def set_lr(self, step: int):
        warm = min(1.0, (step + 1) / self.warmup)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        for group in self.opt.param_groups:
            group["lr"] = self.lr * warm * cosine

    def run(self, step_fn, every: int, seed: int):
        """``step_fn(step, generator) -> dict of floats``; the generator (on the CPU, whatever the
        device) is seeded by (seed, step), so a resumed stage, or one on another device, draws the
        same batches as an uninterrupted one."""
        if self.packed:
            raise DTIError(f"{self.folder} was packed without its optimizer state: it cannot train on to {self.steps} "
                           "steps; use a new --work folder")
        log_path = self.folder / "log.csv"
        if self.start == 0:
            log_path.unlink(missing_ok=True)
        else:  # the steps after the checkpoint are run again
            truncate_log(log_path, self.start - 1)
        t0 = time.time() - self.seconds_before  # seconds are counted over all sittings
        with log_path.open("a", newline="") as f:
            writer = None
            for step in range(self.start, self.steps):
                self.set_lr(step)
                gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
                values = step_fn(step, gen)
                self._ema_update(step)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=["step", *values, "seconds"])
                    if f.tell() == 0:
                        writer.writeheader()
                if step % 25 == 0 or step == self.steps - 1:
                    writer.writerow({"step": step, **{k: f"{v:.5f}" for k, v in values.items()},
                                     "seconds": f"{time.time() - t0:.1f}"})
                    f.flush()
                    said = " ".join(f"{k}={v:.4f}" for k, v in values.items())
                    print(f"{self.folder.name} {step}/{self.steps} {said}", flush=True)
                if (step + 1) % every == 0 and step + 1 < self.steps:
                    self.save(step + 1, time.time() - t0)
        self.save(self.steps, time.time() - t0)
        write_json({"steps": self.steps, "seconds": round(time.time() - t0, 1), "device": self.device_name},
                   self.folder / "done.json")

    @torch.no_grad()
    def _ema_update(self, step: int):
        decay = min(0.999, (1 + step) / (10 + step))
        for n, ema in self.ema.items():
            torch._foreach_lerp_(list(ema.parameters()), list(self.modules[n].parameters()), 1 - decay)


def _adamw(modules, lr, weight_decay):
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


# --------------------------------------------------------------------------- #
# Stages
# --------------------------------------------------------------------------- #
def _token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=models.MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def train_clip(folder: Path, data: dict, tokenizer, width: int, steps: int, batch: int, seed: int, every: int,
               image_tower: str = "vit", attribute_weight: float = 0.0, device: str = "cpu"):
    """CLIP-style contrastive pretraining with one hard negative caption per image.

    ``image_tower``: "vit" (``CLIPModel``'s own) or "cnn" (``models.ImageTower`` in its place).
    ``attribute_weight`` > 0 adds linear heads on the image tower that predict the scene's
    attributes (the generator's ground truth). The text tower learns a word only as far as the
    image tower sees what it names: with a blind image tower it mutes the word."""
    from transformers import CLIPModel

    check_image_tower(image_tower)
    torch.manual_seed(seed)
    model = CLIPModel(models.clip_config(len(tokenizer), width))
    modules = {"clip": model}
    if image_tower == "cnn":
        modules["image"] = models.ImageTower(32, width)
    if attribute_weight > 0:
        modules["heads"] = torch.nn.ModuleDict({h: torch.nn.Linear(width, len(v)) for h, v in world.HEADS.items()})
    for module in modules.values():
        module.to(device)  # initialised on the CPU: the same start on every device
    stage = Stage(folder, modules, _adamw(list(modules.values()), 1e-3, 0.1), steps, 1e-3)
    if stage.done:
        return model
    labels = data["labels"]
    captions, negatives = _token_ids(tokenizer, data["captions"]), _token_ids(tokenizer, data["negatives"])
    same = (captions == negatives).all(dim=1)
    images = data["images"]

    def embed_text(ids):
        return F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)

    def step_fn(step, gen):
        idx = torch.randint(len(images), (batch,), generator=gen)
        pixels = models.clip_pixels(images[idx]).to(device)
        if image_tower == "cnn":
            pooled = modules["image"](pixels)
        else:
            pooled = model.vision_model(pixel_values=pixels).pooler_output
        img = F.normalize(model.visual_projection(pooled), dim=-1)
        txt = embed_text(torch.cat([captions[idx], negatives[idx]]).to(device))
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # [B, 2B]: own caption, other captions, hard negatives
        mask = torch.zeros(logits.shape, dtype=torch.bool)
        mask[torch.arange(batch), batch + torch.arange(batch)] = same[idx]  # a negative equal to its caption
        logits = logits.masked_fill(mask.to(device), -1e4)
        target = torch.arange(batch, device=device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch].T, target))
        logged = {"loss": loss.item(), "top1_among_2b": (logits.argmax(1) == target).float().mean().item()}
        if attribute_weight > 0:
            attribute_loss = sum(F.cross_entropy(head(pooled), labels[h][idx].to(device), ignore_index=-1)
                                 for h, head in modules["heads"].items()) / len(world.HEADS)
            loss = loss + attribute_weight * attribute_loss
            logged["attribute_loss"] = attribute_loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.opt.param_groups[0]["params"], 1.0)
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        return logged

    model.train()
    stage.run(step_fn, every, seed)
    return model.eval()


def train_vae(folder: Path, data: dict, cfg: BuildConfig, device: str = "cpu"):
    torch.manual_seed(cfg.seed + 11)
    vae = models.make_vae(cfg.vae_factor).to(device)
    stage = Stage(folder, {"vae": vae}, _adamw([vae], 2e-3, 0.0), cfg.vae_steps, 2e-3)
    if stage.done:
        return vae
    images = data["images"]

    def step_fn(step, gen):
        x = models.vae_pixels(images[torch.randint(len(images), (cfg.vae_batch,), generator=gen)]).to(device)
        dist = vae.encode(x).latent_dist
        # (diffusers draws the posterior noise with the CPU generator and moves it to the device)
        recon = vae.decode(dist.sample(generator=gen) if cfg.vae_decode_sample else dist.mode()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + 0.1 * F.l1_loss(recon, x) + 1e-6 * dist.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "mse": mse.item()}

    vae.train()
    stage.run(step_fn, cfg.checkpoint_every, cfg.seed + 11)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Posterior means on the CPU, computed on the VAE's device."""
    return torch.cat([vae.encode(models.vae_pixels(images[i:i + batch]).to(vae.device)).latent_dist.mode().cpu()
                      for i in range(0, len(images), batch)])


def train_unet(folder: Path, latents: torch.Tensor, data: dict, tokenizer, text_encoder, cfg: BuildConfig,
               device: str = "cpu"):
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed + 13)
    unet = models.make_unet(text_encoder.config.hidden_size, cfg.vae_factor)
    ema = models.make_unet(text_encoder.config.hidden_size, cfg.vae_factor)
    ema.load_state_dict(unet.state_dict())
    unet.to(device)
    ema.to(device)
    stage = Stage(folder, {"unet": unet}, _adamw([unet], cfg.unet_lr, 0.01), cfg.unet_steps, cfg.unet_lr,
                  warmup=200, ema={"unet": ema})
    if stage.done:
        return ema.eval()
    sched = DDPMScheduler(**models.scheduler_config())
    captions = _token_ids(tokenizer, data["captions"])
    empty = _token_ids(tokenizer, [""])
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    weight = snr.clamp(max=5.0) / (snr + 1)  # min-SNR-5 weighting for v-prediction
    text_encoder.requires_grad_(False).eval()

    def step_fn(step, gen):
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        ids = captions[idx].clone()
        ids[torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout] = empty[0]
        with torch.no_grad():
            states = text_encoder(input_ids=ids.to(device)).last_hidden_state
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noisy, target = sched.add_noise(x0, noise, t).to(device), sched.get_velocity(x0, noise, t).to(device)
        pred = unet(noisy, t.to(device), encoder_hidden_states=states).sample
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss = (weight[t].to(device) * per_sample).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "mse": per_sample.mean().item()}

    unet.train()
    stage.run(step_fn, cfg.checkpoint_every, cfg.seed + 13)
    return ema.eval()


def readout_augment(x: torch.Tensor, gen) -> torch.Tensor:
    """Render noise the generated images show: grain, a little blur, brightness."""
    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.3
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, 0.5 * x + 0.5 * soft, x)
    x = x * (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5))
    return (x + 0.06 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def train_readout(folder: Path, data: dict, cfg: BuildConfig, device: str = "cpu"):
    torch.manual_seed(cfg.seed + 17)
    model = models.Readout().to(device)
    stage = Stage(folder, {"readout": model}, _adamw([model], 2e-3, 0.01), cfg.readout_steps, 2e-3)
    if stage.done:
        return model.eval()
    images, labels = data["images"], data["labels"]

    def step_fn(step, gen):
        idx = torch.randint(len(images), (128,), generator=gen)
        out = model(readout_augment(models.vae_pixels(images[idx]), gen).to(device))
        truth = {h: labels[h][idx].to(device) for h in world.HEADS}
        losses = {h: F.cross_entropy(out[h], truth[h], ignore_index=-1) for h in world.HEADS}
        loss = sum(losses.values())
        loss.backward()
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        accs = {f"acc_{h}": ((out[h].argmax(-1) == truth[h]).float().sum()
                             / (truth[h] >= 0).sum().clamp(min=1)).item() for h in ("class", "background", "position")}
        return {"loss": loss.item(), **accs}

    model.train()
    stage.run(step_fn, cfg.checkpoint_every, cfg.seed + 17)
    return model.eval()


def _view_chunk(args):
    seed, index = args
    return world.object_views(seed * 100_003 + index, CHUNK)


def build_views(work: Path, n: int, seed: int):
    """``views.safetensors``: n ``world.object_views``, in chunks of CHUNK as ``build_data``."""
    if (work / "views.safetensors").is_file():
        return
    parts = _in_chunks(_view_chunk, [(seed, i) for i in range(math.ceil(n / CHUNK))])
    save_tensors(_scene_tensors(parts, n, world.OBJECT_HEADS), work / "views.safetensors")


def train_image_encoder(folder: Path, views: dict, cfg: BuildConfig, device: str = "cpu", batch: int = 256):
    """The main table's image metric (the DINO analogue): a ResNet whose pooled features name the object's
    class, colour, pattern and mark colour (linear heads, not shipped) in scenes of any background, place,
    size and company, so that they keep what the object is and little of where and on what it is drawn.
    (A contrastive recipe, two views of one object against the batch, collapsed to a constant here.)"""
    torch.manual_seed(cfg.seed + 19)
    encoder = models.make_image_encoder().to(device)
    width = encoder.config.hidden_sizes[-1]
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(width, len(v)) for h, v in world.OBJECT_HEADS.items()}).to(device)
    stage = Stage(folder, {"encoder": encoder, "heads": heads}, _adamw([encoder, heads], 2e-3, 0.05),
                  cfg.image_encoder_steps, 2e-3)
    if stage.done:
        return encoder.eval()
    images, labels = views["images"], views["labels"]

    def step_fn(step, gen):
        idx = torch.randint(len(images), (batch,), generator=gen)
        pixels = models.encoder_upsample(readout_augment(models.vae_pixels(images[idx]), gen))
        pooled = encoder(pixel_values=pixels.to(device)).pooler_output.flatten(1)
        out = {h: head(pooled) for h, head in heads.items()}
        truth = {h: labels[h][idx].to(device) for h in out}
        loss = sum(F.cross_entropy(out[h], truth[h]) for h in out)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.opt.param_groups[0]["params"], 1.0)
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        return {"loss": loss.item(), **{f"acc_{h}": (out[h].argmax(1) == truth[h]).float().mean().item() for h in out}}

    encoder.train()
    stage.run(step_fn, cfg.checkpoint_every, cfg.seed + 19)
    return encoder.eval()


# --------------------------------------------------------------------------- #
# Export: the folder the suite ships
# --------------------------------------------------------------------------- #
def export(out: Path, work: Path, cfg: BuildConfig, tokenizer, text_clip, vae, unet, evaluator, evaluator_tokenizer,
           readout, image_encoder, scaling_factor: float):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    text_clip, vae, unet, evaluator, readout, image_encoder = (
        m.to("cpu") for m in (text_clip, vae, unet, evaluator, readout, image_encoder))
    for tok in (tokenizer, evaluator_tokenizer):  # save no padding state left by the training stages
        tok.backend_tokenizer.no_padding()
        tok.backend_tokenizer.no_truncation()
    text_encoder = CLIPTextModel(text_clip.config.text_config)
    text_encoder.load_state_dict(text_clip.text_model.state_dict())
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
                                   scheduler=models.make_sampler(cfg.sampler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
        evaluator.save_pretrained(tmp / "evaluator", safe_serialization=True)
        evaluator_tokenizer.save_pretrained(tmp / "evaluator")
        models.image_processor().save_pretrained(tmp / "evaluator")
        readout.save(tmp / "readout")
        image_encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        models.image_encoder_processor().save_pretrained(tmp / "image_encoder")
        write_subjects(tmp, cfg.seed)
        logs = tmp / "logs"
        logs.mkdir()
        for stage in STAGES[1:-1]:
            if (work / stage / "log.csv").is_file():
                shutil.copy(work / stage / "log.csv", logs / f"{stage}.csv")
        sampling = {"sampler": cfg.sampler, "steps": cfg.sampling_steps, "guidance_scale": world.GUIDANCE_SCALE}
        write_json({"config": asdict(cfg), "renderer": world.RENDERER, "sampling": sampling,
                    "versions": package_versions(),
                    "stages": {s: read_json(work / s / "done.json") for s in STAGES[1:-1]
                               if (work / s / "done.json").is_file()}},
                   tmp / "build.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_subjects(folder: Path, seed: int):
    """Subject folders (reference PNGs), subjects.csv and prompt_sets.json, as for DreamBooth."""
    from PIL import Image

    for subject in world.SUBJECTS:
        sub = folder / "subjects" / subject.name
        sub.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(world.subject_references(subject, seed)):
            Image.fromarray(image).save(sub / f"{i:02d}.png")
    with atomic_path(folder / "subjects.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "class", "dti_class", "initializer", "live", "colour", "pattern", "second_colour",
                         "split"])
        for s in world.SUBJECTS:
            writer.writerow([s.name, s.cls, s.cls, s.cls, False, s.colour, s.pattern, s.second, s.split])
    write_json({"_about": "Mini-world evaluation prompts; '{}' is the subject (learned token at generation, class "
                          "noun at text scoring). 'attributes' says what each prompt asks of the image, for the "
                          "attribute read-out.",
                "mini": {"object": world.PROMPTS, "attributes": [a for _, a in world.PROMPT_ATTRIBUTES]}},
               folder / "prompt_sets.json")


# --------------------------------------------------------------------------- #
def pack(work: Path, dest: Path):
    """Copy the finished stages of ``work`` into a new work folder ``dest`` without their optimizer state,
    and of a module with an EMA only the EMA, which is what a finished stage returns (the data is not
    copied: a build draws it again from the seed). Small enough to keep between sittings on another
    machine; its stages are done and cannot train to more steps."""
    if not (work / "config.json").is_file():
        raise DTIError(f"{work} is not a build's work folder (no config.json)")
    if dest.exists():
        raise DTIError(f"{dest} exists; pack into a new folder")
    finished = [s for s in STAGES[1:-1] if (work / s / "done.json").is_file()]
    if not finished:
        raise DTIError(f"{work} has no finished stage to pack")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copy(work / "config.json", tmp / "config.json")
        for stage in finished:
            (tmp / stage).mkdir()
            tensors = load_tensors(work / stage / "checkpoint.safetensors")
            averaged = {k.split(".")[1] for k in tensors if k.startswith("ema.")}
            save_tensors({k: v for k, v in tensors.items() if not k.startswith("opt.")
                          and not (k.startswith("model.") and k.split(".")[1] in averaged)},
                         tmp / stage / "checkpoint.safetensors")
            meta = read_json(work / stage / "checkpoint.json")
            write_json({**meta, "packed": True}, tmp / stage / "checkpoint.json")
            for name in ("done.json", "log.csv"):
                shutil.copy(work / stage / name, tmp / stage / name)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return finished


def check_work_folder(work: Path, cfg: BuildConfig):
    """Only more steps may be asked of an existing build (its stages continue); anything else would mix two
    worlds."""
    config_path = work / "config.json"
    if not config_path.is_file():
        return
    old = read_json(config_path)
    if "vae_factor" not in old:
        raise DTIError(f"{work} holds a build of the first world (another renderer); use a new --work folder")
    renderer = old.get("renderer", 2)  # the second build's work folders predate the record
    if renderer != world.RENDERER:
        raise DTIError(f"{work} holds renders of renderer {renderer}, this code draws renderer {world.RENDERER}; "
                       "use a new --work folder")
    # a field newer than the build (and its renderer): it was built with the field's default
    before = asdict(BuildConfig())
    changed = sorted(k for k, v in asdict(cfg).items()
                     if old.get(k, before[k]) != v and not k.endswith("_steps") and k not in EXPORT_ONLY)
    if changed:
        raise DTIError(f"{work} holds a build with other {', '.join(changed)}; use a new --work folder")
    # The UNet learns from the text encoder's states and the VAE's latents: once it has started, those two
    # stages are fixed.
    upstream = [k for k in ("clip_steps", "vae_steps") if old.get(k) != getattr(cfg, k)]
    if upstream and (work / "unet").exists():
        raise DTIError(f"{work}: the UNet has been trained on this build's {' and '.join(upstream)}; "
                       "use a new --work folder to change them")
    if "vae_steps" in upstream:
        (work / "vae" / "latents.safetensors").unlink(missing_ok=True)  # encoded by the shorter VAE


def build(work: Path, out: Path, cfg: BuildConfig, threads: int | None = None, device: str = "cpu",
          stop_after: str = "export"):
    """Every stage up to ``stop_after`` (each resumed or skipped when done), in ``STAGES`` order."""
    if threads:
        torch.set_num_threads(threads)
    check_image_tower(cfg.clip_image_tower)  # before any stage runs
    if cfg.mark_colours not in world.MARK_COLOURS:
        raise DTIError(f"mark_colours must be one of {', '.join(world.MARK_COLOURS)}, not {cfg.mark_colours!r}")
    models.check_vae_factor(cfg.vae_factor)
    models.check_sampler(cfg.sampler)
    if cfg.sampling_steps < 1:
        raise DTIError(f"sampling_steps must be >= 1, got {cfg.sampling_steps}")
    if stop_after not in STAGES:
        raise DTIError(f"stop_after must be one of {', '.join(STAGES)}, not {stop_after!r}")
    device = str(resolve_device(device))
    work.mkdir(parents=True, exist_ok=True)
    check_work_folder(work, cfg)
    write_json({**asdict(cfg), "renderer": world.RENDERER}, work / "config.json")
    last = STAGES.index(stop_after)
    t0 = time.time()
    build_data(work, cfg, cfg.train_images, cfg.seed, "train")
    build_data(work, cfg, cfg.eval_images, cfg.seed + 1, "eval", judge=cfg.judge_scenes)
    print(f"data ready ({time.time() - t0:.0f} s)", flush=True)
    if last == 0:
        return
    held = load_data(work, "eval")
    readout = train_readout(work / "readout", held, cfg, device)
    evaluator_tokenizer = models.make_tokenizer()
    if last >= STAGES.index("evaluator"):
        evaluator = train_clip(work / "evaluator", held, evaluator_tokenizer, cfg.evaluator_width,
                               cfg.evaluator_steps, cfg.clip_batch, cfg.seed + 5, cfg.checkpoint_every,
                               attribute_weight=cfg.evaluator_attribute_weight, device=device)
    if last >= STAGES.index("image_encoder"):
        build_views(work, cfg.object_views, cfg.seed + 2)
        views = _scenes(load_tensors(work / "views.safetensors"), world.OBJECT_HEADS)
        image_encoder = train_image_encoder(work / "image_encoder", views, cfg, device)
    if last < STAGES.index("text"):
        return
    train = load_data(work, "train")
    tokenizer = models.make_tokenizer()
    text_clip = train_clip(work / "text", train, tokenizer, cfg.text_width, cfg.clip_steps, cfg.clip_batch,
                           cfg.seed + 3, cfg.checkpoint_every, cfg.clip_image_tower, cfg.clip_attribute_weight, device)
    if last < STAGES.index("vae"):
        return
    vae = train_vae(work / "vae", train, cfg, device)
    latents_path = work / "vae" / "latents.safetensors"
    if not latents_path.is_file():
        save_tensors({"latents": encode_latents(vae, train["images"])}, latents_path)
    if last < STAGES.index("unet"):
        return
    latents = load_tensors(latents_path)["latents"]
    scaling_factor = float(1.0 / latents.std())
    unet = train_unet(work / "unet", latents * scaling_factor, train, tokenizer, text_clip.text_model, cfg, device)
    if last < STAGES.index("export"):
        return
    export(out, work, cfg, tokenizer, text_clip, vae, unet, evaluator, evaluator_tokenizer, readout, image_encoder,
           scaling_factor)
    print(f"exported {out} ({time.time() - t0:.0f} s this sitting)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m miniworld.build", description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Folder for data, checkpoints and logs (resumable).")
    parser.add_argument("--out", help="Folder to write the shipped world to (required unless --pack).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu",
                        help="Device to train on (cpu, cuda, cuda:1, auto, ...); the batches are drawn on the CPU, "
                             "so every device sees the same data.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a BuildConfig field.")
    parser.add_argument("--stop-after", default="export", choices=STAGES,
                        help="Stop once this stage is done (the next sitting continues from there).")
    parser.add_argument("--pack", metavar="DEST", help="Only copy the finished stages of --work, without optimizer "
                                                       "state or data, into the new work folder DEST, to continue "
                                                       "the build elsewhere (megabytes instead of gigabytes).")
    args = parser.parse_args(argv)
    if args.pack:
        try:
            print("packed " + ", ".join(pack(Path(args.work), Path(args.pack))) + f" into {args.pack}")
        except DTIError as e:
            raise SystemExit(f"error: {e}") from None
        return
    if not args.out:
        parser.error("--out is required (unless --pack)")
    try:
        cfg = apply_assignments(BuildConfig(), args.set)
        build(Path(args.work), Path(args.out), cfg, args.threads, args.device, args.stop_after)
    except DTIError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
