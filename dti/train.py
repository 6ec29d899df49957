"""Training one concept: ``train()`` turns a configuration into a run folder; the ``Trainer``
holds one run's working state and runs its steps."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import EpochOrder, draw_batch, list_images, load_reference, load_templates
from .devices import frozen_dtype, resolve_device
from .families import detect_family, family_class
from .io import DTIError, content_digest, model_stamp, package_versions, truncate_log, write_json
from .methods import method_class
from .runs import (CHECKPOINT, LOG, RECORD, StepLog, check_run_folder, check_vectors, folder_lock, load_checkpoint,
                   run_state, save_checkpoint)


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every unset field filled from its family's protocol defaults, then its method's."""
    family, method = family_class(cfg.family), method_class(cfg.method)
    return cfg.resolved(family.train_defaults, method.defaults)


def check_gpu(cfg: TrainConfig):
    """No silent CPU: a family whose released models need a GPU trains on the CPU (float32, hours)
    only when asked for by name."""
    if cfg.device == "auto" and resolve_device("auto").type == "cpu" and family_class(cfg.family).needs_gpu:
        raise DTIError(f"no GPU here: a {cfg.family} model would train in float32 on the CPU; "
                       "set device=cpu to do that anyway")


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, family=None) -> Path:
    """Train one concept into ``out_dir``; ``family`` may be an already loaded adapter. Everything
    is checked before the model loads; the folder is locked while the run writes it."""
    out_dir = check_run_folder(out_dir)
    if family is None:
        detected = detect_family(cfg.model)
        if cfg.family and cfg.family != detected:
            raise DTIError(f"family {cfg.family!r} was set, but {cfg.model!r} is a {detected} pipeline")
        cfg = dataclasses.replace(cfg, family=detected)
    elif not cfg.family:
        cfg = dataclasses.replace(cfg, family=family.name)
    cfg = resolve_config(cfg)
    if not cfg.placeholder:
        raise DTIError("no placeholder given")
    check_gpu(cfg)
    load_templates(cfg.templates)
    image_paths = list_images(cfg.images)
    inputs = {"model": model_stamp(cfg.model), "images": content_digest(image_paths)}
    with folder_lock(out_dir, f"run folder {out_dir}"):
        return _train_locked(cfg, out_dir, resume, family, image_paths, inputs)


def _train_locked(cfg, out_dir: Path, resume: bool, family, image_paths: list[Path], inputs: dict) -> Path:
    state = run_state(out_dir, cfg, resume, inputs)
    if state == "complete":
        print(f"{out_dir}: already trained for {cfg.steps} steps", file=sys.stderr)
        return out_dir

    trainer = Trainer(cfg, image_paths, family)
    record = {
        "config": dataclasses.asdict(cfg), "tokens": trainer.family.tokens, "vectors": len(trainer.family.tokens),
        "encoders": [s.name for s in trainer.slots], "vocab_norms": {s.name: s.vocab_norms for s in trainer.slots},
        "images": [p.name for p in image_paths], "versions": package_versions(),
        "device": str(trainer.device), "inputs": inputs, "status": "running", **trainer.method.metadata(),
    }
    step = 0
    if state == "resume":
        step = load_checkpoint(out_dir / CHECKPOINT, trainer.method, trainer.optimizer, trainer.gen)
        if step > cfg.steps:
            raise DTIError(f"{out_dir} is checkpointed at step {step}, beyond the {cfg.steps} steps asked for; "
                           "choose another --out")
        truncate_log(out_dir / LOG, step)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / LOG).unlink(missing_ok=True)
    write_json(record, out_dir / RECORD)

    step = trainer.fit(out_dir, step)

    final = [e.float().cpu() for e in trainer.embeddings()]
    check_vectors(final, f"the learned vectors of {out_dir}")
    meta = {"method": cfg.method, "family": cfg.family, "base_model": cfg.model, "placeholder": cfg.placeholder,
            "tokens": json.dumps(trainer.family.tokens), "initializer": cfg.initializer, "steps": cfg.steps,
            "seed": cfg.seed, "effective_lr": trainer.lr, **trainer.method.file_metadata()}
    trainer.family.write_embedding_files(out_dir, trainer.family.tokens[0], final, meta)
    save_checkpoint(out_dir / CHECKPOINT, step, trainer.method, trainer.optimizer, trainer.gen)
    record.update(status="complete",
                  final_norms={s.name: e.norm(dim=1).tolist() for s, e in zip(trainer.slots, final)})
    write_json(record, out_dir / RECORD)
    return out_dir


class Trainer:
    """One run's working state: the loaded family with the concept's tokens, the method, its
    optimizer, the reference latents (encoded once) and the generator behind every random draw."""

    def __init__(self, cfg: TrainConfig, image_paths: list[Path], family=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        if family is None:
            family = family_class(cfg.family).load(cfg.model, self.device,
                                                   frozen_dtype(self.device, cfg.mixed_precision), cfg)
        self.family = family
        self.templates = load_templates(cfg.templates)
        # The templates must read the same with the placeholder added (e.g. "hoto" would split "photo").
        self.slots = family.add_concept(cfg.placeholder, cfg.initializer, [t.format("") for t in self.templates])
        self.method = method_class(cfg.method)(cfg, self.slots)
        self.optimizer = self.method.make_optimizer()
        self.lr = self.optimizer.param_groups[0]["lr"]  # the one in use (AdamW on DTI's direction: adamw_lr)
        # What the log measures drift from: the vectors at step 0 (also when resuming) and the initializer's rows.
        self.initial = self.embeddings()
        self.initializer_rows = [s.initializer_rows.to(self.device) for s in self.slots]
        # Reference latents, once per run; random crops are taken from them in latent space.
        self.pixels_per_latent = family.pixels_per_latent
        if cfg.resolution % self.pixels_per_latent:
            raise DTIError(f"resolution {cfg.resolution} is not a multiple of the VAE's "
                           f"{self.pixels_per_latent} pixels per latent")
        refs = [load_reference(p, cfg.resolution, self.pixels_per_latent) for p in image_paths]
        self.latents = family.encode_images([r.pixels for r in refs])  # (mean, std) of each posterior
        self.sizes = [r.original_size for r in refs]
        self.order = EpochOrder(len(refs), cfg.seed) if cfg.image_order == "epochs" else None
        self.draws = 0  # photos drawn so far: the image order's position
        self.token_string = family.token_string(family.tokens)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def embeddings(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [e.detach().clone() for e in self.method.embeddings()]

    def step(self) -> float:
        """One optimisation step over ``grad_accum`` micro-batches; returns the mean data loss."""
        cfg, family = self.cfg, self.family
        self.optimizer.zero_grad(set_to_none=True)
        data_loss = 0.0
        for _ in range(cfg.grad_accum):
            picks = self.order.picks(self.draws, cfg.batch_size) if self.order else None
            self.draws += cfg.batch_size
            batch = draw_batch(self.latents, self.sizes, self.templates, self.token_string, cfg.batch_size,
                               cfg.resolution // self.pixels_per_latent, self.pixels_per_latent, self.gen, picks,
                               sample_latents=cfg.latent_sampling == "sample",
                               zero_pad=family.zero_padded if cfg.zero_pad else None)
            family.set_rows(self.method.embeddings())
            cond = family.encode_prompts(batch["prompts"])
            loss = family.loss(batch["latents"].to(self.device), cond, batch, self.gen)
            extra = self.method.extra_loss()
            total = loss if extra is None else loss + extra
            (total / cfg.grad_accum).backward()
            data_loss += loss.item() / cfg.grad_accum
        if not math.isfinite(data_loss):
            return data_loss  # the caller stops before touching the parameters
        self.optimizer.step()
        self.method.after_step()
        return data_loss

    def fit(self, out_dir: Path, step: int) -> int:
        """Steps from ``step`` to ``cfg.steps`` (returned), one log row per encoder and vector each
        step, a checkpoint every ``checkpoint_every`` steps."""
        cfg, method = self.cfg, self.method
        initial, init_rows = self.initial, self.initializer_rows
        self.draws = step * cfg.grad_accum * cfg.batch_size  # a resumed run continues the image order
        log = StepLog(out_dir / LOG)
        if step == 0:
            log.write(0, float("nan"), initial, initial, init_rows, lr=self.lr)
        bar = tqdm(total=cfg.steps, initial=step, disable=not sys.stderr.isatty(), desc=cfg.method)
        last_checkpoint = step
        try:
            while step < cfg.steps:
                step += 1
                before = self.embeddings()
                params_before = [p.detach().clone() for p in method.params]
                loss = self.step()
                kept = (f"last good checkpoint is step {last_checkpoint} in {out_dir}" if last_checkpoint
                        else "no checkpoint was saved")
                if not math.isfinite(loss):
                    raise DTIError(f"loss is {loss} at step {step}; training stopped, {kept}")
                after = self.embeddings()  # once: checked, then logged
                check_vectors(after, f"the learned vectors at step {step} (training stopped, {kept})")
                with torch.no_grad():
                    grads = [p.grad.detach().clone() for p in method.params]
                    updates = [(p - q) / self.lr for p, q in zip(method.params, params_before)]
                log.write(step, loss, after, initial, init_rows, before, grads, updates, self.lr)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save_checkpoint(out_dir / CHECKPOINT, step, method, self.optimizer, self.gen)
                    last_checkpoint = step
        finally:
            log.close()
            bar.close()
            self.family.set_rows(None)
        return step
