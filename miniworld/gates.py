"""Quality gates of a mini world: does it mean something?

    python -m miniworld.gates --world experiments/mini/world --out results/mini/gates [--quick]

* read-out: attribute accuracy on fresh renders (its own check: it judges the others), and on
  their VAE reconstructions (reported, not gated: the ceiling of the base model);
* evaluator: caption retrieval, top-1 among 100 full captions, on fresh renders;
* base model: prompted attributes of generated images, on (class, colour, background)
  triples never rendered in pretraining, read by the read-out;
* text sensitivity (reported, not gated): how far the conditioning encoder's output moves when
  one attribute word changes;
* personalization: TI's image similarity to a subject's references against the plain
  class word's, and the wall time of one TI run and of sampling one subject's prompt set.

Writes ``gates.json`` (every number, thresholds, pass/fail), ``base_model.csv`` (one row per
generated image) and ``base_model.png`` (a grid of them).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from dti.io import DTIError, atomic_path, package_versions, write_json

from . import models, world

THRESHOLDS = {"base_model.background": 0.9, "base_model.class": 0.8, "base_model.position": 0.8,
              "evaluator.top1_of_100": 0.8}
SAMPLING = {"steps": 25, "guidance_scale": 4.0}  # the mini world's sampling protocol
EVAL_SEEDS = [0, 1, 2, 3]
BASE_ATTRIBUTES = ("class", "colour", "background", "position", "size")


def held_out_scenes(n: int, seed: int) -> list[world.Scene]:
    """Single-shape scenes whose (class, colour, background) was never rendered in pretraining."""
    rng = np.random.default_rng(seed)
    triples = sorted(world.held_out_triples())
    scenes = []
    for i in range(n):
        cls, colour, background = triples[i % len(triples)]
        position = world._pick(rng, world.POSITIONS)
        shape = world.random_shape(rng, cls=cls, colour=colour, position=position)
        scene = world.Scene(background=background, shapes=[shape], position=position)
        scene.labels = world._labels(scene)
        scenes.append(scene)
    return scenes


def scene_caption(scene: world.Scene) -> str:
    s = scene.shapes[0]
    return world.full_caption(s.cls, s.colour, scene.background, scene.position, s.size)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """uint8 [N, H, W, 3] through the VAE (posterior mean, as the denoiser's latents) and back."""
    from .build import encode_latents

    latents = encode_latents(vae, images, batch)
    out = [vae.decode(latents[i:i + batch].to(vae.device)).sample.cpu() for i in range(0, len(latents), batch)]
    return ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def readout_accuracy(readout, n: int, seed: int, vae=None) -> dict[str, float]:
    """The read-out on fresh single-shape renders, or on their VAE reconstructions when ``vae`` is
    given (what the VAE lets through bounds what the base model can show)."""
    scenes = held_out_scenes(n, seed)
    images = torch.from_numpy(np.stack([world.render(s) for s in scenes]))
    predicted = readout.predict(images if vae is None else reconstruct(vae, images))
    return {h: float(np.mean([p == s.labels[h] for p, s in zip(predicted[h], scenes)]))
            for h in ("class", "colour", "pattern", "background", "position", "size")}


def evaluator_retrieval(evaluator, n: int, seed: int, candidates: int = 100) -> float:
    """Top-1 of each rendered image's own full caption among itself and 99 others."""
    rng = np.random.default_rng(seed)
    scenes, captions = [], []
    while len(scenes) < n:  # ordinary scenes (any triple), one per distinct full caption
        position = world._pick(rng, world.POSITIONS)
        background = world._pick(rng, tuple(world.BACKGROUNDS))
        shape = world.random_shape(rng, position=position)
        if shape.colour == background:
            continue
        scene = world.Scene(background=background, shapes=[shape], position=position)
        text = scene_caption(scene)
        if text not in captions:
            scenes.append(scene)
            captions.append(text)
    images = evaluator.image_embeddings(torch.from_numpy(np.stack([world.render(s) for s in scenes])))
    texts = evaluator.text_embeddings(captions)
    sims = images @ texts.T
    hits = 0
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), size=candidates - 1, replace=False)
        pool = np.concatenate([[i], others])
        hits += int(pool[int(sims[i, pool].argmax())] == i)
    return hits / n


@torch.no_grad()
def text_sensitivity(pipe) -> dict[str, float]:
    """How far the conditioning encoder's output (all token states) moves when one attribute word
    of a gate caption changes, as a mean over pairs of its values. The denoiser sees nothing else
    of the prompt, so an attribute the encoder mutes is one the base model cannot draw."""
    base = {"cls": "circle", "colour": "red", "background": "blue", "position": "left", "size": "large"}
    values = {"cls": world.CLASSES, "colour": tuple(c for c in world.COLOURS if c != "blue"),
              "background": tuple(b for b in world.BACKGROUNDS if b != "red"), "position": world.POSITIONS}
    out = {}
    for key, options in values.items():
        captions = [world.full_caption(**{**base, key: v}) for v in options]
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(pipe.text_encoder.device)
        states = pipe.text_encoder(input_ids=ids).last_hidden_state.flatten(1).cpu()
        n = len(options)
        out["class" if key == "cls" else key] = float(torch.cdist(states, states).sum() / (n * (n - 1)))
    return out


def base_model(pipe, readout, n: int, seed: int, out: Path, batch: int = 16) -> dict[str, float]:
    scenes = held_out_scenes(n, seed)
    prompts = [scene_caption(s) for s in scenes]
    images = []
    for start in range(0, n, batch):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(n, start + batch))]
        images += pipe(prompt=prompts[start:start + batch], generator=gens, num_inference_steps=SAMPLING["steps"],
                       guidance_scale=SAMPLING["guidance_scale"]).images
    predicted = readout.predict(images)
    rows = [{"prompt": p, **{f"want_{h}": s.labels[h] for h in BASE_ATTRIBUTES},
             **{f"got_{h}": predicted[h][i] for h in BASE_ATTRIBUTES}} for i, (p, s) in enumerate(zip(prompts, scenes))]
    with atomic_path(out / "base_model.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    side = min(8, n)
    grid = np.stack([np.asarray(im) for im in images[: side * (n // side)]][: side * side])
    rows_ = len(grid) // side
    grid = grid.reshape(rows_, side, world.SIZE, world.SIZE, 3).transpose(0, 2, 1, 3, 4)
    from PIL import Image

    with atomic_path(out / "base_model.png") as tmp:
        Image.fromarray(grid.reshape(rows_ * world.SIZE, side * world.SIZE, 3)).resize(
            (side * world.SIZE * 4, rows_ * world.SIZE * 4), Image.NEAREST).save(tmp, format="PNG")
    return {h: float(np.mean([r[f"want_{h}"] == r[f"got_{h}"] for r in rows])) for h in BASE_ATTRIBUTES}


def personalization(world_dir: Path, pipe, evaluator, subjects: list[str], steps: int, out: Path,
                    device: str = "cpu") -> dict:
    """TI on each subject; image similarity (evaluator patch and CLIP embeddings) of 'a photo of a X'
    with X = the learned token vs X = the class word, and the wall times of training and sampling."""
    from dti.config import TrainConfig
    from dti.data import list_images, open_rgb, read_subjects
    from dti.embeddings import load_embeddings
    from dti.sample import SampleConfig, sample
    from dti.train import train

    table = {r["subject"]: r for r in read_subjects(world_dir / "subjects.csv")}
    results = {}
    for name in subjects:
        if name not in table:
            raise DTIError(f"unknown mini subject {name!r}")
        refs_dir = world_dir / "subjects" / name
        cfg = TrainConfig(method="ti", model=str(world_dir / "pipeline"), family="sd", images=str(refs_dir),
                          placeholder=f"<{name}>", initializer=table[name]["class"], steps=steps, resolution=world.SIZE,
                          seed=0, device=device, checkpoint_every=0,
                          latent_sampling="mode")  # the UNet learned on posterior means (experiments/mini.yaml)
        t0 = time.time()
        run = train(cfg, out / "runs" / name)
        train_seconds = time.time() - t0
        t0 = time.time()
        sample(run, out / "samples" / name, name, table[name]["class"], world.PROMPTS, EVAL_SEEDS, "mini",
               SampleConfig(steps=SAMPLING["steps"], guidance_scale=SAMPLING["guidance_scale"], device=device))
        sample_seconds = time.time() - t0
        refs = [open_rgb(p, "reference") for p in list_images(refs_dir)]
        gens = [torch.Generator().manual_seed(s) for s in range(8)]
        common = dict(num_inference_steps=SAMPLING["steps"], guidance_scale=SAMPLING["guidance_scale"])
        class_images = pipe(prompt=[f"a photo of a {table[name]['class']}"] * 8, generator=gens, **common).images
        concept = load_embeddings(pipe, run)
        gens = [torch.Generator().manual_seed(s) for s in range(8)]
        ti_images = pipe(prompt=[concept.prompt("a photo of a {}")] * 8, generator=gens, **common).images
        scores = {}
        for kind in ("patch", "clip"):
            ref = evaluator.image_embeddings(refs, kind)
            scores[f"ti_{kind}"] = float((evaluator.image_embeddings(ti_images, kind) @ ref.T).mean())
            scores[f"class_word_{kind}"] = float((evaluator.image_embeddings(class_images, kind) @ ref.T).mean())
        results[name] = {**scores, "train_seconds": round(train_seconds, 1), "train_steps": steps,
                         "sample_seconds": round(sample_seconds, 1),
                         "sampled_images": len(world.PROMPTS) * len(EVAL_SEEDS)}
    return results


def run_gates(world_dir, out, quick: bool = False, threads: int | None = None, device: str = "cpu") -> dict:
    """Every gate of ``world_dir`` into ``out/gates.json``. The wall times (one TI run, one
    subject's sampling) are measured on ``device``; their budget is stated for 2 CPU cores."""
    from diffusers import DiffusionPipeline

    if threads:
        torch.set_num_threads(threads)
    from dti.devices import resolve_device

    device = str(resolve_device(device))
    world_dir, out = Path(world_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_base, n_retrieval, n_readout = (16, 100, 64) if quick else (160, 500, 1000)
    subjects = [world.SUBJECTS[0].name] if quick else [s.name for s in world.SUBJECTS[:3]]
    steps = 20 if quick else 400
    readout = models.Readout.load(world_dir / "readout", device)
    evaluator = models.Evaluator(world_dir / "evaluator", device)
    pipe = DiffusionPipeline.from_pretrained(world_dir / "pipeline", safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    report = {"readout_on_renders": readout_accuracy(readout, n_readout, seed=101),
              "readout_on_vae_reconstructions": readout_accuracy(readout, n_readout, seed=101, vae=pipe.vae),
              "evaluator": {"top1_of_100": evaluator_retrieval(evaluator, n_retrieval, seed=202)},
              "base_model": base_model(pipe, readout, n_base, seed=303, out=out),
              "text_sensitivity": text_sensitivity(pipe),
              "personalization": personalization(world_dir, pipe, evaluator, subjects, steps, out, device)}
    checks = {key: {"value": report[key.split(".")[0]][key.split(".")[1]], "threshold": t,
                    "pass": report[key.split(".")[0]][key.split(".")[1]] >= t} for key, t in THRESHOLDS.items()}
    for name, r in report["personalization"].items():
        margin = r["ti_patch"] - r["class_word_patch"]
        checks[f"personalization.{name}.ti_minus_class_word"] = {"value": margin, "threshold": 0.05,
                                                                  "pass": margin >= 0.05}
    report.update({"checks": checks, "all_pass": all(c["pass"] for c in checks.values()), "quick": quick,
                   "sizes": {"base_model": n_base, "retrieval": n_retrieval, "readout": n_readout},
                   "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads(), "device": device,
                   "versions": package_versions()})
    write_json(report, out / "gates.json")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m miniworld.gates", description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="A mini world folder (pipeline/, evaluator/, readout/, ...).")
    parser.add_argument("--out", required=True, help="Folder for gates.json, base_model.csv/png, runs and samples.")
    parser.add_argument("--quick", action="store_true", help="Small samples and a 20-step TI (for tests).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="Device for the models (the budget gates are stated for CPUs).")
    args = parser.parse_args(argv)
    try:
        report = run_gates(args.world, args.out, args.quick, args.threads, args.device)
    except DTIError as e:
        raise SystemExit(f"error: {e}") from None
    for key, c in report["checks"].items():
        print(f"{'PASS' if c['pass'] else 'FAIL'} {key}: {c['value']:.3f} (>= {c['threshold']})")


if __name__ == "__main__":
    main()
