"""Generating images of a finished run's concept from one free prompt (``dti generate``).

No subjects table or prompt set: the prompt's ``{}`` becomes the concept's token(s). Image i has
seed ``seed + i`` and its own generator, as in ``dti sample``, so an image depends on (run,
prompt, seed, settings) alone. Each PNG gets a JSON sidecar of the same name.
"""

from __future__ import annotations

import string
from pathlib import Path

from .config import check_seed
from .embeddings import load_embeddings, read_run, run_method
from .families import check_words_kept, family_class
from .io import DTIError, atomic_path, package_versions, write_json
from .runs import model_revision
from .sample import SampleConfig, make_images, pipeline_call, quiet_new_embeddings, slug


def check_prompt(template: str) -> str:
    """A prompt with one ``{}`` for the concept and no other replacement field."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        fields = None
    if fields == []:
        raise DTIError(f"prompt {template!r} has no {{}} where the concept goes, e.g. 'a photo of {{}} on the beach'")
    if fields != [""]:
        raise DTIError(f"prompt {template!r} must hold {{}} once and no other braces (write {{{{ or }}}} for a "
                       "literal brace)")
    return template


def output_files(out: str | Path, template: str, seeds: list[int]) -> list[Path]:
    """``out`` as one .png file (one image), or a folder of ``<prompt>_seed<S>.png``."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        if len(seeds) != 1:
            raise DTIError(f"--out {out} names one image; give a folder for {len(seeds)} images")
        if out.is_dir():
            raise DTIError(f"--out {out} is a folder; name a new .png file or drop the suffix")
        return [out]
    if out.exists() and not out.is_dir():
        raise DTIError(f"--out {out} is a file that is not a .png; name a folder or a .png file")
    return [out / f"{slug(template) or 'image'}_seed{s}.png" for s in seeds]


def generate(run_dir: str | Path, template: str, out: str | Path = ".", seed: int = 0, num_images: int = 1,
             cfg: SampleConfig | None = None, pipe=None) -> list[Path]:
    """Draw ``num_images`` images of the run's concept for ``template``; returns the PNGs written.
    Everything is checked before the pipeline loads; ``pipe`` may be a loaded stock pipeline."""
    cfg = cfg or SampleConfig()
    cfg.check()
    check_prompt(template)
    if num_images < 1:
        raise DTIError(f"--num-images must be >= 1, got {num_images}")
    seeds = [check_seed(seed + i) for i in range(num_images)]
    files = output_files(out, template, seeds)
    record, _ = read_run(run_dir)
    family, model = family_class(record["config"]["family"]), record["config"]["model"]
    revision = model_revision(record)
    pipe = pipe or family.load_pipeline(model, *cfg.placement(), revision)
    pipe.set_progress_bar_config(disable=True)
    with quiet_new_embeddings():
        concept = load_embeddings(pipe, run_dir)
    for tok_name in family.tokenizer_names:  # the prompt's own words must read as written
        tokenizer = getattr(pipe, tok_name)
        check_words_kept(tokenizer, tokenizer.convert_tokens_to_ids(concept.tokens), concept.placeholder,
                         [template.format("")])
    settings, call = pipeline_call(family, pipe, cfg)
    prompt = concept.prompt(template)
    about = {"run": str(run_dir), "method": run_method(record), "family": family.name, "base_model": model,
             "template": template, "prompt": prompt, "height": settings["height"], "width": settings["width"],
             "steps": settings["steps"], "guidance_scale": settings["guidance_scale"],
             "scheduler": type(pipe.scheduler).__name__, "versions": package_versions()}
    if revision is not None:
        about["model_revision"] = revision
    if family.instruction_prefix:
        about["complex_human_instruction"] = settings["complex_human_instruction"]
    for start in range(0, len(seeds), cfg.batch_size):
        batch = list(zip(seeds, files))[start:start + cfg.batch_size]
        images = make_images(pipe, [prompt] * len(batch), [s for s, _ in batch], call)
        for (s, file), image in zip(batch, images):
            with atomic_path(file) as tmp:
                image.save(tmp, format="PNG")
            write_json({**about, "seed": s, "file": file.name}, file.with_suffix(".json"))
    return files
