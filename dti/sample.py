"""Sampling a learned concept with a prompt set at the family's protocol defaults.

Images go through the denoiser in batches of ``batch_size`` (with classifier-free guidance), across
prompts, seeds and, in a group, runs; each image has its own seeded generator, so it depends on
(run, prompt, seed) alone. Images are browsable as ``<subject>/<NN>_<prompt>/seed<S>.png``;
``manifest.csv`` lists them all.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .accel import ACCEL_FIELDS, SampleAccel, apply_to_pipeline, attention_context, auto_sample_batch
from .config import apply_assignments, check_seed, option
from .devices import Progress, frozen_dtype, resolve_device
from .embeddings import load_embeddings, read_run, run_method
from .families import check_words_kept, family_class
from .io import (DTIError, atomic_path, check_name, content_digest, model_stamp, package_versions, read_json,
                 write_json)
from .runs import folder_lock, model_revision

MANIFEST_FIELDS = ["run", "method", "family", "base_model", "subject", "class_noun", "prompt_set", "prompt_index",
                   "prompt", "scoring_text", "seed", "file", "height", "width", "steps", "guidance_scale",
                   "scheduler", "complex_human_instruction"]


@dataclass
class SampleConfig(SampleAccel):
    height: int | None = option(None, "Image height (SD: the pipeline's default size; SDXL, SANA 1024).")
    width: int | None = option(None, "Image width (as height).")
    steps: int | None = option(None, "Denoising steps (SD, SDXL 50; SANA 20).")
    guidance_scale: float | None = option(None, "Classifier-free guidance (SD 7.5, SDXL 5.0, SANA 4.5).")
    complex_human_instruction: bool = option(True, "SANA: the pipeline's complex-human-instruction prefix (on at "
                                                   "evaluation in the paper).")
    resolution_binning: bool = option(True, "SANA: the pipeline's aspect-ratio binning of the requested size.")
    device: str = option("auto", "Torch device: auto, cpu, cuda, cuda:1, ...")
    mixed_precision: str = option("bf16", "Dtype of the pipeline on a GPU: bf16, fp16 or no (CPU: float32).")
    batch_size: int = option(4, "Images per pipeline call, across prompts, seeds and a group's runs (each image "
                                "keeps its own seeded noise).")

    def set(self, assignments: list[str]) -> "SampleConfig":
        return apply_assignments(self, assignments)

    def check(self):
        """The settings that are set are in range (``None``: the family's default). Runs before any
        model loads, and in the workflow before any job starts."""
        for name in ("height", "width", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DTIError(f"sampling {name} must be >= 1, got {value}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise DTIError(f"sampling {name} must be a multiple of 8 (the VAEs' pixels per latent), got {value}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise DTIError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise DTIError(f"mixed_precision must be bf16, fp16 or no, got {self.mixed_precision!r}")
        self.check_accel()

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """The device and the pipeline's dtype there."""
        device = resolve_device(self.device)
        return device, frozen_dtype(device, self.mixed_precision)


def pipeline_call(family, pipe, cfg: SampleConfig) -> tuple[dict, dict]:
    """The settings of a sampling (the family's protocol defaults under those ``cfg`` sets) and the
    arguments of the pipeline call they make."""
    settings = {**family.sample_defaults, **{k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}}
    for side in ("height", "width"):  # SD-style: the pipeline's own size for a side not given
        if settings.get(side) is None:
            settings[side] = family.default_image_size(pipe)
    for side in ("height", "width"):
        if settings[side] % pipe.vae_scale_factor:
            raise DTIError(f"sampling {side} {settings[side]} is not a multiple of the VAE's "
                           f"{pipe.vae_scale_factor} pixels per latent")
    call = {"height": settings["height"], "width": settings["width"], "num_inference_steps": settings["steps"],
            "guidance_scale": settings["guidance_scale"], "output_type": "pil", **family.sample_kwargs(settings)}
    return settings, call


def make_images(pipe, prompts: list[str], seeds: list[int], call: dict) -> list[Image.Image]:
    """One image per (prompt, seed) in one pipeline call, each from its own seeded generator."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompt=list(prompts), generator=generators, **call).images


def _not_new_embedding_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("The new embeddings will be initialized")


@contextlib.contextmanager
def quiet_new_embeddings():
    """Silence transformers' warning that the rows added for a concept's tokens are drawn from a normal
    distribution (resizing the embedding table draws them): the concept's vectors overwrite them at once."""
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(_not_new_embedding_noise)
    try:
        yield
    finally:
        logger.removeFilter(_not_new_embedding_noise)


def _stamped_inputs(stamp: Path):
    """The inputs recorded by an earlier sampling into the folder (None: none, or unreadable)."""
    try:
        return read_json(stamp).get("inputs") if stamp.is_file() else None
    except DTIError:
        return None


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.replace("{}", "X").lower()).strip("_")[:limit]


def intact(path: Path, size: tuple[int, int]) -> bool:
    """An image file that decodes fully, in RGB, at the expected (width, height)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.mode == "RGB" and im.size == size
    except (OSError, SyntaxError, ValueError):
        return False


def sample(run_dir: str | Path, out_dir: str | Path, subject: str, class_noun: str, templates: list[str],
           seeds: list[int], prompt_set: str, cfg: SampleConfig | None = None, pipe=None) -> Path:
    """Generate every (template, seed) image of one run; returns the manifest's path. Everything is
    checked before the pipeline loads; the output folder is locked while this writes it."""
    job = SampleJob(Path(run_dir), Path(out_dir), subject, class_noun, list(templates))
    return sample_group([job], seeds, prompt_set, cfg, pipe)[0]


@dataclass
class SampleJob:
    """One run's prompt set to sample: its folder, the images' folder, the subject and its class noun."""

    run_dir: Path
    out_dir: Path
    subject: str
    class_noun: str
    templates: list[str]


def sample_group(jobs: list[SampleJob], seeds: list[int], prompt_set: str, cfg: SampleConfig | None = None,
                 pipe=None) -> list[Path]:
    """Several runs' prompt sets in one process (returns their manifests): the pipeline loads once with
    every run's concept added, and batches hold images of several runs, so the runs must share a base
    model and their placeholders must differ. A run's images are those it gets alone (to float rounding):
    a prompt reads only its own concept's tokens, and each image has its own seeded generator.
    Everything is checked before the pipeline loads; every output folder is locked while they are
    written."""
    cfg = cfg or SampleConfig()
    cfg.check()
    if not seeds:
        raise DTIError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise DTIError(f"seeds {list(seeds)} repeat a seed; each image is (prompt, seed)")
    for seed in seeds:
        check_seed(seed)
    cfg.check_accel(cfg.placement()[0])  # usable on this device, before anything loads
    if not jobs:
        raise DTIError("no runs to sample")
    loaded = []
    for job in jobs:
        check_name(job.subject, "subject")
        if not job.templates:
            raise DTIError("the prompt set is empty")
        record, vectors = read_run(job.run_dir)
        family, model = family_class(record["config"]["family"]), record["config"]["model"]
        if job.out_dir.exists() and not job.out_dir.is_dir():
            raise DTIError(f"--out {job.out_dir} is a file, not a folder")
        loaded.append((record, vectors, family, model))
    bases = {(family.name, model, model_revision(record)) for record, _, family, model in loaded}
    if len(bases) > 1:
        raise DTIError(f"the runs of one sampling job must share their base model; these use {len(bases)}: "
                       + ", ".join(sorted(f"{m} ({f})" for f, m, _ in bases)))
    for what, values in (("placeholder", [r["config"]["placeholder"] for r, *_ in loaded]),
                         ("output folder", [str(job.out_dir) for job in jobs])):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise DTIError(f"two runs of one sampling job have the {what} {twice[0]}; sample them separately")
    with contextlib.ExitStack() as locks:
        for job in jobs:  # all before the model loads: a second writer fails at once
            locks.enter_context(folder_lock(job.out_dir, f"sample folder {job.out_dir}"))
        family, model, revision = loaded[0][2], loaded[0][3], model_revision(loaded[0][0])
        pipe = pipe or family.load_pipeline(model, *cfg.placement(), revision)
        return _sample_locked(jobs, loaded, seeds, prompt_set, cfg, pipe)


@dataclass
class _Plan:
    """One run's images to make: its manifest rows, the images still missing, and its stamp."""

    job: SampleJob
    rows: list[dict]
    todo: list[tuple[str, int, Path]]  # (prompt, seed, file)
    about: dict


def _sample_locked(jobs: list[SampleJob], loaded: list, seeds: list[int], prompt_set: str, cfg: SampleConfig,
                   pipe) -> list[Path]:
    """Every run's concept goes into the pipeline first; then the missing images of all runs are made in
    batches of ``cfg.batch_size`` (a batch may hold several runs' prompts: each image has its own seeded
    noise and reads only its own concept's tokens); then each run's manifest is written."""
    pipe.set_progress_bar_config(disable=True)  # the progress below counts images; a bar per call is noise
    concepts = []
    with quiet_new_embeddings():
        for job in jobs:
            concepts.append(load_embeddings(pipe, job.run_dir))
    family = loaded[0][2]
    for job, concept in zip(jobs, concepts):  # with every concept added, each prompt must read as written
        for tok_name in family.tokenizer_names:
            tokenizer = getattr(pipe, tok_name)
            check_words_kept(tokenizer, tokenizer.convert_tokens_to_ids(concept.tokens), concept.placeholder,
                             [t.format(job.class_noun) for t in job.templates])
    device = cfg.placement()[0]
    apply_to_pipeline(pipe, cfg, device)  # the speed settings (dti.accel); none by default
    settings, call = pipeline_call(family, pipe, cfg)
    size = (settings["width"], settings["height"])
    plans = [_plan(job, concept, record, vectors, family, model, seeds, prompt_set, settings, size, pipe)
             for job, concept, (record, vectors, family, model) in zip(jobs, concepts, loaded)]
    todo = [item for plan in plans for item in plan.todo]
    batch_size = cfg.batch_size
    if cfg.sample_batch == "auto" and todo:
        batch_size = auto_sample_batch(pipe, call, device, len(todo), cfg, fallback=cfg.batch_size)
    progress = Progress(len(todo), desc=f"sample {', '.join(job.subject for job in jobs)}"[:60], unit="image")
    try:
        with attention_context(cfg):
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                images = make_images(pipe, [p for p, _, _ in batch], [s for _, s, _ in batch], call)
                for (_, _, file), image in zip(batch, images):
                    file.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(file) as tmp:
                        image.save(tmp, format="PNG")
                progress.update(len(batch))
    finally:
        progress.close()
    manifests = []
    for plan in plans:
        manifest = plan.job.out_dir / "manifest.csv"
        with atomic_path(manifest) as tmp:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
                writer.writeheader()
                writer.writerows(plan.rows)
        write_json({**plan.about, "status": "complete"}, plan.job.out_dir / "sample.json")
        manifests.append(manifest)
    return manifests


def _plan(job: SampleJob, concept, record: dict, vectors, family, model: str, seeds: list[int], prompt_set: str,
          settings: dict, size: tuple[int, int], pipe) -> _Plan:
    """A run's manifest rows and missing images; images already in its folder are kept (resume) only if
    they were made from these same inputs."""
    revision = model_revision(record)
    inputs = {"model": model_stamp(model), "vectors": content_digest(vectors), "class_noun": job.class_noun,
              "templates": list(job.templates),  # how many images a call makes, and how fast, changes no image
              "settings": {k: v for k, v in settings.items() if k != "batch_size" and k not in ACCEL_FIELDS}}
    if revision is not None:  # a hub id pinned at training: its images are of that commit
        inputs["revision"] = revision
    stamp = job.out_dir / "sample.json"
    if _stamped_inputs(stamp) != inputs:
        shutil.rmtree(job.out_dir / job.subject, ignore_errors=True)  # a plain name (checked): inside out_dir
    about = {"run": str(job.run_dir), "subject": job.subject, "class_noun": job.class_noun, "prompt_set": prompt_set,
             "seeds": seeds, "settings": settings, "inputs": inputs, "versions": package_versions()}
    job.out_dir.mkdir(parents=True, exist_ok=True)
    write_json({**about, "status": "running"}, stamp)
    method = run_method(record)
    rows, todo = [], []
    for index, template in enumerate(job.templates):
        prompt = concept.prompt(template)
        folder = job.out_dir / job.subject / f"{index:02d}_{slug(template)}"
        for s in seeds:
            file = folder / f"seed{s}.png"
            if not intact(file, size):  # resume: keep intact images, redo the rest
                todo.append((prompt, s, file))
            rows.append({
                "run": str(job.run_dir), "method": method, "family": family.name, "base_model": model,
                "subject": job.subject, "class_noun": job.class_noun, "prompt_set": prompt_set, "prompt_index": index,
                "prompt": prompt, "scoring_text": template.format(job.class_noun) + ".", "seed": s,
                "file": str(file.relative_to(job.out_dir)), "height": settings["height"],
                "width": settings["width"], "steps": settings["steps"], "guidance_scale": settings["guidance_scale"],
                "scheduler": type(pipe.scheduler).__name__,
                "complex_human_instruction": settings["complex_human_instruction"] if family.instruction_prefix else "",
            })
    return _Plan(job, rows, todo, about)
