"""Quality gates of a mini world: does it mean something?

    python -m miniworld.gates --world experiments/mini/world --out results/mini/gates [--quick]

Every gate that draws scenes is measured on several seeds (``GATE_SEEDS``); its table gives the mean
and the minimum, and its threshold applies to the minimum.

* read-out: attribute accuracy on fresh renders (its own check: it judges the others), and on
  their VAE reconstructions (what the VAE lets through bounds what the base model can show);
* evaluator: caption retrieval, top-1 among 100 full captions, on fresh renders;
* base model: prompted attributes of generated images, on (class, colour, background)
  triples never rendered in pretraining, read by the read-out. The pattern is asked too: a subject is
  a pattern the generator must draw, and no token can make it draw what words cannot;
* metrics discriminate: the main table's image metric names the subject of a ground-truth render
  of its prompt set among all subjects (against their reference photos, as scoring uses them), and
  its text metric ranks the ground-truth render of a prompt above those of the set's other prompts;
  the attribute metrics read those renders right (what a perfect generator would score: a judge
  that misreads the truth cannot score the generated images);
* personalization is possible: TI (400 steps) on every test subject at each training seed the workflow
  trains (0, 1, 2), and the read-out finds the subject's class, colour and pattern in the images of
  "a photo of <s>"; beside it (reported, not gated),
  how often the base model draws the subject when told it in words ("a photo of a blue striped circle"):
  the learned token stands in for those words, so a world whose base model cannot draw its subjects from
  words gives TI little to find;
* budgets: one 400-step TI run and one subject's prompt set on 2 CPU cores, the weights' size;
* text sensitivity (reported, not gated): how far the conditioning encoder's output moves when
  one attribute word changes; and the denoiser's word use (reported, per seed): how much its error rises
  when that word of a held-out caption is wrong.

Writes ``gates.json`` (every number, thresholds, pass/fail), ``gates.md`` (the table),
``base_model_seed<S>.csv`` (one row per generated image) and ``base_model.png`` (a grid of the first seed's).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from dti.io import DTIError, atomic_path, package_versions, write_json
from dti.metrics import main_metrics

from . import models, world

# Gate -> threshold on the minimum over seeds (over subjects and training seeds for personalization).
THRESHOLDS = {"base_model.class": 0.9, "base_model.background": 0.95, "base_model.colour": 0.95,
              "base_model.pattern": 0.9, "base_model.position": 0.95, "base_model.size": 0.9,
              "reconstruction.class": 0.95,
              "evaluator.top1_of_100": 0.8, "metrics.image_names_subject": 0.9, "metrics.text_ranks_prompt": 0.8,
              "readout.prompt_on_ground_truth": 0.95, "readout.subject_on_ground_truth": 0.95,
              "personalization.ti_shows_subject": 0.8}
BUDGETS = {"budget.ti_run_seconds": 60.0, "budget.prompt_set_seconds": 60.0, "budget.weights_mb": 40.0}  # maxima
EVAL_SEEDS = [0, 1, 2, 3]  # the prompt set's budget: 15 prompts x 4 seeds
GATE_SEEDS = (0, 1, 2)  # each offsets the seed of every drawing gate
PHOTO_SEEDS = 16  # images of "a photo of <s>" per subject in the personalization gate
BASE_ATTRIBUTES = ("class", "colour", "pattern", "background", "position", "size")
IMAGE_METRIC, TEXT_METRIC = main_metrics("mini")  # the main table's, as the workflow scores them
REPORTED_IMAGE_METRICS = ("mini_clip_i", "mini_patch")  # their image_names_subject is reported, not gated


def world_backbones(world_dir: Path) -> dict[str, str]:
    """The scoring backbones' model ids of a world folder."""
    return {"mini": str(world_dir / "evaluator"), "mini_object": str(world_dir / "image_encoder"),
            "readout": str(world_dir / "readout")}


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


def scene_caption(scene: world.Scene, attribute: str | None = None, value: str | None = None) -> str:
    """The gate caption of a single-shape scene; with ``attribute``, that one word replaced by ``value``."""
    s = scene.shapes[0]
    words = {"cls": s.cls, "colour": s.colour, "background": scene.background, "position": scene.position,
             "size": s.size, "pattern": s.pattern}
    if attribute is not None:
        words["cls" if attribute == "class" else attribute] = value
    return world.full_caption(**words)


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
    base = {"cls": "circle", "colour": "red", "background": "blue", "position": "left", "size": "large",
            "pattern": "striped"}
    values = {"cls": world.CLASSES, "colour": tuple(c for c in world.COLOURS if c != "blue"),
              "background": tuple(b for b in world.BACKGROUNDS if b != "red"), "position": world.POSITIONS,
              "pattern": world.PATTERNS}
    out = {}
    for key, options in values.items():
        captions = [world.full_caption(**{**base, key: v}) for v in options]
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(pipe.text_encoder.device)
        states = pipe.text_encoder(input_ids=ids).last_hidden_state.flatten(1).cpu()
        n = len(options)
        out["class" if key == "cls" else key] = float(torch.cdist(states, states).sum() / (n * (n - 1)))
    return out


def base_model(pipe, readout, n: int, seed: int, out: Path, sampling: dict, batch: int = 16,
               grid: bool = True) -> dict[str, float]:
    """Prompted attributes of the base model's images of ``n`` held-out captions, sampled with the
    ``sampling`` protocol's steps and guidance (``world.sampling_of``; the pipeline brings the sampler)."""
    scenes = held_out_scenes(n, seed)
    prompts = [scene_caption(s) for s in scenes]
    images = []
    for start in range(0, n, batch):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(n, start + batch))]
        images += pipe(prompt=prompts[start:start + batch], generator=gens, num_inference_steps=sampling["steps"],
                       guidance_scale=sampling["guidance_scale"]).images
    predicted = readout.predict(images)
    rows = [{"prompt": p, **{f"want_{h}": s.labels[h] for h in BASE_ATTRIBUTES},
             **{f"got_{h}": predicted[h][i] for h in BASE_ATTRIBUTES}} for i, (p, s) in enumerate(zip(prompts, scenes))]
    with atomic_path(out / f"base_model_seed{seed}.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if grid:
        _save_grid(images, out / "base_model.png")
    return {h: float(np.mean([r[f"want_{h}"] == r[f"got_{h}"] for r in rows])) for h in BASE_ATTRIBUTES}


WORD_USE_TIMESTEPS = (100, 300, 500, 700, 900)  # of the 1,000 training steps: fine detail to layout
CAPTION_VALUES = {"class": world.CLASSES, "colour": tuple(world.COLOURS), "pattern": world.PATTERNS,
                  "background": tuple(world.BACKGROUNDS), "position": world.POSITIONS, "size": world.SIZES}


@torch.no_grad()
def scene_latents(vae, scenes: list[world.Scene]) -> torch.Tensor:
    """The denoiser's latents of the scenes' renders: VAE posterior means times the scaling factor."""
    from .build import encode_latents

    images = torch.from_numpy(np.stack([world.render(s) for s in scenes]))
    return encode_latents(vae, images) * vae.config.scaling_factor


def replaced_captions(scenes: list[world.Scene], attribute: str) -> tuple[list[str], list[str]]:
    """Each scene's gate caption with ``attribute`` replaced by another value, the other values in turn
    (the i-th scene takes the (i mod k)-th of its k others); returns (values, captions)."""
    values = []
    for i, scene in enumerate(scenes):
        others = [v for v in CAPTION_VALUES[attribute] if v != scene.labels[attribute]]
        values.append(others[i % len(others)])
    return values, [scene_caption(s, attribute, v) for s, v in zip(scenes, values)]


@torch.no_grad()
def denoiser_word_use(pipe, n: int, seed: int, batch: int = 80) -> dict[str, float]:
    """How much the denoiser relies on each attribute word: the rise of its v-prediction error on
    renders of ``n`` held-out gate captions when that one word is replaced by another value (the same
    noise; mean over ``WORD_USE_TIMESTEPS``). A word the denoiser ignores costs nothing, whatever the
    text encoder makes of it; the base-model gate shows what such a word costs in images."""
    from diffusers import DDPMScheduler

    from .build import _token_ids

    scenes = held_out_scenes(n, seed)
    x0 = scene_latents(pipe.vae, scenes)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    sched = DDPMScheduler(**models.scheduler_config())
    captions = {"asked": [scene_caption(s) for s in scenes]}
    captions.update({attribute: replaced_captions(scenes, attribute)[1] for attribute in CAPTION_VALUES})
    device = pipe.unet.device
    errors = {}
    for key, texts in captions.items():
        ids = _token_ids(pipe.tokenizer, texts)
        states = torch.cat([pipe.text_encoder(input_ids=ids[i:i + batch].to(device)).last_hidden_state
                            for i in range(0, n, batch)])  # once per caption set, for every timestep
        per_image = torch.zeros(n)
        for t in WORD_USE_TIMESTEPS:
            steps = torch.full((n,), t)
            noisy, target = sched.add_noise(x0, noise, steps), sched.get_velocity(x0, noise, steps)
            for i in range(0, n, batch):
                pred = pipe.unet(noisy[i:i + batch].to(device), steps[i:i + batch].to(device),
                                 encoder_hidden_states=states[i:i + batch]).sample.cpu()
                per_image[i:i + batch] += (pred - target[i:i + batch]).pow(2).mean(dim=(1, 2, 3))
        errors[key] = per_image / len(WORD_USE_TIMESTEPS)
    return {a: float((errors[a] - errors["asked"]).mean()) for a in CAPTION_VALUES}


def _save_grid(images, path: Path, side: int = 8):
    from PIL import Image

    side = min(side, len(images))
    rows = min(side, len(images) // side)
    grid = np.stack([np.asarray(im) for im in images[: side * rows]])
    grid = grid.reshape(rows, side, world.SIZE, world.SIZE, 3).transpose(0, 2, 1, 3, 4)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.reshape(rows * world.SIZE, side * world.SIZE, 3)).resize(
            (side * world.SIZE * 4, rows * world.SIZE * 4), Image.NEAREST).save(tmp, format="PNG")


def _ti_config(world_dir: Path, subject: world.Subject, steps: int, device: str, seed: int = 0):
    """TI on a subject with the workflow's mini settings (no checkpoints); a placeholder per subject and
    training seed, so that runs of several seeds load into one pipeline."""
    from dti.config import TrainConfig

    return TrainConfig(method="ti", model=str(world_dir / "pipeline"), family="sd",
                       images=str(world_dir / "subjects" / subject.name), placeholder=f"<{subject.name}_seed{seed}>",
                       initializer=subject.cls, steps=steps, resolution=world.SIZE, seed=seed, device=device,
                       checkpoint_every=0, latent_sampling="mode")  # the UNet learned on posterior means


def ground_truth_scenes(subject: world.Subject, seed: int) -> list[world.Scene]:
    """A scene for every prompt of the set, the subject drawn as the prompt asks (poses from ``seed``)."""
    rng = np.random.default_rng([seed, world.SUBJECTS.index(subject), 17])
    return [world.prompt_scene(subject, t, a, rng) for t, a in world.PROMPT_ATTRIBUTES]


def ground_truth_renders(subject: world.Subject, seed: int) -> list:
    """The renders of ``ground_truth_scenes``, as PIL images (as scoring reads images)."""
    from PIL import Image

    return [Image.fromarray(world.render(scene)) for scene in ground_truth_scenes(subject, seed)]


def readout_on_ground_truth(readout, renders: dict[str, list], subjects: list[world.Subject]) -> dict[str, float]:
    """The attribute metrics on ground-truth renders of the prompt set (``renders``: subject name ->
    ``ground_truth_renders``) of ``subjects``: the most a perfect generator could score. ``prompt``: share
    of the asked attributes the read-out sees (``attr_prompt``); ``subject``: of the subject's class, colour
    and pattern where the prompt keeps them readable (``attr_subject``: ``world.subject_expectation``)."""
    asked, own = [], []
    for s in subjects:
        seen = readout.predict(renders[s.name])
        for k, (_, attributes) in enumerate(world.PROMPT_ATTRIBUTES):
            asked += [seen[h][k] == v for h, v in attributes.items()]
            expected = world.subject_expectation(s.cls, s.colour, s.pattern, s.second, attributes)
            own += [seen[h][k] == v for h, v in expected.items()]
    return {"prompt": float(np.mean(asked)), "subject": float(np.mean(own))}


@torch.no_grad()
def metric_discrimination(backbones, world_dir: Path, renders: dict[str, list], subjects: list[world.Subject]
                          ) -> dict[str, float]:
    """Do the main table's metrics tell what they claim to? (``renders``: every subject's
    ``ground_truth_renders``.) ``image``: the share of ground-truth renders (every prompt that keeps the
    subject's colours, for every subject) whose image score is highest against their own subject's
    references among all subjects' (references read and scored as ``dti.metrics`` does: the mean cosine
    to them); also for ``REPORTED_IMAGE_METRICS``. ``text``: the share of (subject of ``subjects``, prompt) whose
    ground-truth render scores higher with the prompt's scoring text than every render of the set's other
    prompts that does not show what the prompt asks (a text metric cannot prefer one of two images that
    both match the text); ``text_ranks_prompt_among_all``: against every other render (reported)."""
    from dti.metrics import METRICS, subject_references

    everyone = list(world.SUBJECTS)
    keeps = [i for i, (_, a) in enumerate(world.PROMPT_ATTRIBUTES) if "colour" not in a]

    def embed(metric, images):
        return backbones.image_embeddings(METRICS[metric].backbone, images, METRICS[metric].view)

    embedded = {}  # (backbone, view) -> subject -> [prompts, D]: each render embedded once per embedding
    for metric in (IMAGE_METRIC, *REPORTED_IMAGE_METRICS, TEXT_METRIC):
        key = (METRICS[metric].backbone, METRICS[metric].view)
        if key not in embedded:
            embedded[key] = {s.name: embed(metric, renders[s.name]) for s in everyone}
    out = {}
    for metric in (IMAGE_METRIC, *REPORTED_IMAGE_METRICS):
        key = (METRICS[metric].backbone, METRICS[metric].view)
        refs = torch.stack([embed(metric, subject_references(world_dir / "subjects", s.name)).mean(0)
                            for s in everyone])  # mean over references: scores are means of cosines
        hits = []
        for k, s in enumerate(everyone):
            hits += (embedded[key][s.name][keeps] @ refs.T).argmax(dim=1).eq(k).tolist()
        out[f"image_names_subject.{metric}"] = float(np.mean(hits))
    hits, hits_among_all = [], []
    for s in subjects:
        texts = backbones.text_embeddings("mini", [t.format(s.cls) + "." for t in world.PROMPTS])
        images = embedded[(METRICS[TEXT_METRIC].backbone, METRICS[TEXT_METRIC].view)][s.name]
        scores = texts @ images.T
        hits_among_all += scores.argmax(dim=1).eq(torch.arange(len(texts))).tolist()
        shows = _shows_what_is_asked(s)
        hits += [bool(scores[i, i] > scores[i, ~shows[i]].max()) for i in range(len(texts))]
    out["text_ranks_prompt"] = float(np.mean(hits))
    out["text_ranks_prompt_among_all"] = float(np.mean(hits_among_all))
    return out


def _shows_what_is_asked(subject: world.Subject) -> torch.Tensor:
    """[prompts, prompts] bool: the ground-truth scene of prompt j shows every attribute prompt i asks (so
    "a large {}" is as true of the render of "a {} on a red background" as of its own; the poses do not
    change what a ground-truth scene shows)."""
    scenes = ground_truth_scenes(subject, seed=0)
    return torch.tensor([[all(scene.labels.get(h) == v for h, v in asked.items()) for scene in scenes]
                         for _, asked in world.PROMPT_ATTRIBUTES])


def personalization(world_dir: Path, pipe, readout, subjects: list[world.Subject], steps: int, out: Path,
                    sampling: dict, photos: int = PHOTO_SEEDS, training_seeds=GATE_SEEDS, device: str = "cpu"
                    ) -> dict[str, list[dict]]:
    """TI on every subject at each of ``training_seeds`` (the workflow trains every method at training seeds
    0, 1, 2, so the baseline must learn a subject at each), the subjects of one seed trained together
    (``dti.train.train_group``); per subject, one row per training seed: the share of the images of "a photo
    of <s>" (seeds 0 ... photos-1) in which the read-out finds its class, colour and pattern."""
    from dti.embeddings import load_embeddings
    from dti.sample import quiet_new_embeddings
    from dti.train import train_group

    results = {s.name: [] for s in subjects}
    for seed in training_seeds:
        runs = train_group([_ti_config(world_dir, s, steps, device, seed) for s in subjects],
                           [out / "runs" / f"seed{seed}" / s.name for s in subjects])
        for s, run in zip(subjects, runs):
            with quiet_new_embeddings():
                concept = load_embeddings(pipe, run)
            seen = readout.predict(_photos(pipe, concept.prompt("a photo of a {}"), photos, sampling))
            results[s.name].append({
                "training_seed": seed, "shows_subject": _share_showing(seen, s), "images": photos, "steps": steps,
                **{f"{h}_seen": float(np.mean([v == getattr(s, a) for v in seen[h]]))
                   for h, a in (("class", "cls"), ("colour", "colour"), ("pattern", "pattern"))}})
    return results


def subject_in_words(subject: world.Subject) -> str:
    """The caption that tells the base model a subject's class, colour and pattern in its own words (the class
    named as the gate prompts name it, ``world.full_caption``)."""
    return f"a photo of a {subject.colour} {subject.pattern} {subject.cls}"


def words_show_subject(pipe, readout, subjects: list[world.Subject], sampling: dict,
                       photos: int = PHOTO_SEEDS) -> dict[str, float]:
    """Per subject, the share of the images of ``subject_in_words`` (seeds 0 ... photos-1, as the
    personalization gate samples) in which the read-out finds its class, colour and pattern."""
    return {s.name: _share_showing(readout.predict(_photos(pipe, subject_in_words(s), photos, sampling)), s)
            for s in subjects}


def _photos(pipe, prompt: str, photos: int, sampling: dict) -> list:
    gens = [torch.Generator().manual_seed(k) for k in range(photos)]
    return pipe(prompt=[prompt] * photos, generator=gens, num_inference_steps=sampling["steps"],
                guidance_scale=sampling["guidance_scale"]).images


def _share_showing(seen: dict[str, list], subject: world.Subject) -> float:
    """Share of the read images (``Readout.predict``) showing the subject's class, colour and pattern at once."""
    return float(np.mean([c == subject.cls and k == subject.colour and p == subject.pattern
                          for c, k, p in zip(seen["class"], seen["colour"], seen["pattern"])]))


def budgets(world_dir: Path, subject: world.Subject, steps: int, out: Path, sampling: dict,
            device: str = "cpu") -> dict:
    """Wall seconds of one TI run alone and of sampling one subject's prompt set at ``EVAL_SEEDS``
    (``dti.sample``, as the workflow samples), and the megabytes of the world's weights."""
    from dti.sample import SampleConfig, sample
    from dti.train import train

    t0 = time.time()
    run = train(_ti_config(world_dir, subject, steps, device), out / "budget_run")
    train_seconds = time.time() - t0
    t0 = time.time()
    sample(run, out / "budget_samples", subject.name, subject.cls, world.PROMPTS, EVAL_SEEDS, "mini",
           SampleConfig(steps=sampling["steps"], guidance_scale=sampling["guidance_scale"], device=device))
    sample_seconds = time.time() - t0
    weights = sum(p.stat().st_size for p in world_dir.rglob("*.safetensors")) / 2 ** 20
    return {"ti_run_seconds": round(train_seconds, 1), "ti_run_steps": steps,
            "prompt_set_seconds": round(sample_seconds, 1), "prompt_set_images": len(world.PROMPTS) * len(EVAL_SEEDS),
            "weights_mb": round(weights, 1)}


def _check(values: list[float], threshold: float, at_most: bool = False) -> dict:
    worst = max(values) if at_most else min(values)
    return {"values": values, "mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
            "threshold": threshold, "pass": bool(worst <= threshold if at_most else worst >= threshold)}


def gate_table(checks: dict, reported: dict | None = None) -> str:
    """The gates as a Markdown table: mean and minimum over seeds (subjects), threshold, pass or fail; then
    the ``reported`` measures (no threshold), the same way."""
    lines = ["| gate | mean | min | max | threshold | |", "|---|---|---|---|---|---|"]
    for key, c in checks.items():
        sign = "<=" if key.startswith("budget.") else ">="
        lines.append(f"| {key} | {c['mean']:.3f} | {c['min']:.3f} | {c['max']:.3f} | {sign} {c['threshold']:g} | "
                     f"{'pass' if c['pass'] else 'FAIL'} |")
    if reported:
        lines += ["", "| reported (not gated) | mean | min | max |", "|---|---|---|---|"]
        lines += [f"| {key} | {np.mean(v):.3f} | {min(v):.3f} | {max(v):.3f} |" for key, v in reported.items()]
    return "\n".join(lines) + "\n"


def reported_measures(per_seed: list[dict]) -> dict[str, list[float]]:
    """What the gates measure beside their thresholds, per seed: the read-out on fresh renders and on their
    reconstructions, the other image metrics' subject naming, the text metric against every render."""
    out = {}
    for part in ("readout_on_renders", "readout_on_vae_reconstructions"):
        for attribute in per_seed[0][part]:
            out[f"{part}.{attribute}"] = [r[part][attribute] for r in per_seed]
    for metric in REPORTED_IMAGE_METRICS:
        out[f"metrics.image_names_subject.{metric}"] = [r["metrics"][f"image_names_subject.{metric}"]
                                                        for r in per_seed]
    out["metrics.text_ranks_prompt_among_all"] = [r["metrics"]["text_ranks_prompt_among_all"] for r in per_seed]
    for attribute in per_seed[0]["denoiser_word_use"]:
        out[f"denoiser_word_use.{attribute}"] = [r["denoiser_word_use"][attribute] for r in per_seed]
    return out


def check_world(world_dir: Path):
    """Refuse a folder that is not a mini world, or a world drawn by another renderer: its judges learned other
    renders than this code draws."""
    if not (world_dir / "build.json").is_file():
        raise DTIError(f"{world_dir} has no build.json: not a mini world folder")
    renderer = world.renderer_of(world_dir)
    if renderer != world.RENDERER:
        raise DTIError(f"{world_dir} was drawn by renderer {renderer}, this code draws renderer {world.RENDERER}: "
                       "gate it with the code that built it")


def run_gates(world_dir, out, quick: bool = False, threads: int | None = None, device: str = "cpu") -> dict:
    """Every gate of ``world_dir`` into ``out/gates.json`` and ``out/gates.md``. The wall times are measured
    on ``device``; their budget is stated for 2 CPU cores."""
    from diffusers import DiffusionPipeline

    from dti.metrics import Backbones

    if threads:
        torch.set_num_threads(threads)
    from dti.devices import resolve_device

    device = str(resolve_device(device))
    world_dir, out = Path(world_dir), Path(out)
    check_world(world_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_base, n_retrieval, n_readout = (16, 100, 64) if quick else (160, 500, 1000)
    seeds = GATE_SEEDS[:1] if quick else GATE_SEEDS
    test = [s for s in world.SUBJECTS if s.split == "test"]
    subjects = test[:2] if quick else test
    steps, photos = (20, 4) if quick else (400, PHOTO_SEEDS)
    readout = models.Readout.load(world_dir / "readout", device)
    evaluator = models.Evaluator(world_dir / "evaluator", device)
    backbones = Backbones([IMAGE_METRIC, *REPORTED_IMAGE_METRICS, TEXT_METRIC], world_backbones(world_dir), device)
    pipe = DiffusionPipeline.from_pretrained(world_dir / "pipeline", safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)
    sampling = world.sampling_of(world_dir)
    t0 = time.time()
    per_seed = []
    for seed in seeds:
        renders = {s.name: ground_truth_renders(s, seed) for s in world.SUBJECTS}  # drawn once, read by both
        per_seed.append({
            "seed": seed,
            "readout_on_renders": readout_accuracy(readout, n_readout, seed=101 + seed),
            "readout_on_vae_reconstructions": readout_accuracy(readout, n_readout, seed=101 + seed, vae=pipe.vae),
            "evaluator": {"top1_of_100": evaluator_retrieval(evaluator, n_retrieval, seed=202 + seed)},
            "base_model": base_model(pipe, readout, n_base, seed=303 + seed, out=out, sampling=sampling,
                                     grid=seed == seeds[0]),
            "metrics": metric_discrimination(backbones, world_dir, renders, subjects),
            "readout_on_ground_truth": readout_on_ground_truth(readout, renders, subjects),
            "denoiser_word_use": denoiser_word_use(pipe, n_base, seed=404 + seed)})
    report = {"per_seed": per_seed, "text_sensitivity": text_sensitivity(pipe),
              "personalization": personalization(world_dir, pipe, readout, subjects, steps, out, sampling, photos,
                                                 seeds, device),
              "words_show_subject": words_show_subject(pipe, readout, subjects, sampling, photos),
              "budget": budgets(world_dir, test[0], steps, out, sampling, device)}
    over_seeds = {"base_model": lambda r, a: r["base_model"][a],
                  "reconstruction": lambda r, a: r["readout_on_vae_reconstructions"][a],
                  "evaluator": lambda r, a: r["evaluator"][a],
                  "metrics": lambda r, a: r["metrics"][f"{a}.{IMAGE_METRIC}" if a == "image_names_subject" else a],
                  "readout": lambda r, a: r["readout_on_ground_truth"][a.split("_")[0]]}
    checks = {}
    for key, threshold in THRESHOLDS.items():
        part, attribute = key.split(".")
        if part == "personalization":
            values = [r["shows_subject"] for rows in report["personalization"].values() for r in rows]
        else:
            values = [over_seeds[part](r, attribute) for r in per_seed]
        checks[key] = _check(values, threshold)
    for key, limit in BUDGETS.items():
        checks[key] = _check([report["budget"][key.split(".")[1]]], limit, at_most=True)
    reported = reported_measures(per_seed)
    reported["personalization.words_show_subject"] = list(report["words_show_subject"].values())  # over subjects
    report.update({"checks": checks, "reported": reported, "all_pass": all(c["pass"] for c in checks.values()),
                   "quick": quick,
                   "sampling": sampling, "seeds": list(seeds), "sizes": {"base_model": n_base, "retrieval": n_retrieval,
                                                   "readout": n_readout, "photos": photos},
                   "subjects": [s.name for s in subjects],
                   "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads(), "device": device,
                   "versions": package_versions()})
    write_json(report, out / "gates.json")
    with atomic_path(out / "gates.md") as tmp:
        tmp.write_text(gate_table(checks, reported))
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
    print(gate_table(report["checks"], report["reported"]), end="")


if __name__ == "__main__":
    main()
