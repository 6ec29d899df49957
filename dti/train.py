"""Training one concept: ``train()`` turns a configuration into a run folder; the ``Trainer``
holds one run's working state and runs its steps."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .accel import apply_to_pipeline, attention_context
from .config import TrainConfig, validation_templates
from .data import EpochOrder, draw_batch, list_images, load_reference, load_templates
from .devices import Progress, frozen_dtype, resolve_device
from .families import check_revision, detect_family, family_class, hub_commit
from .io import (DTIError, atomic_path, content_digest, model_stamp, one_line, package_versions, truncate_log,
                 write_json)
from .methods import method_class
from .runs import (CHECKPOINT, LOG, RECORD, StepLog, check_run_folder, check_vectors, folder_lock, load_checkpoint,
                   log_median, run_state, save_checkpoint)
from .sample import SampleConfig, make_images, pipeline_call

VALIDATION = "validation"  # <run>/validation/step<NNNNN>_<i>.png
TENSORBOARD = "tensorboard"  # <run>/tensorboard/: event files


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every unset field filled from its family's protocol defaults, then its method's
    (validation images: the family's sampling steps)."""
    family, method = family_class(cfg.family), method_class(cfg.method)
    return cfg.resolved(family.train_defaults, method.defaults, {"validation_steps": family.sample_defaults["steps"]})


def summary_writer_class():
    """TensorBoard's writer, from the optional ``track`` extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DTIError("tensorboard logging needs `pip install -e '.[track]'`") from None
    return SummaryWriter


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
    check_revision(cfg.model, cfg.revision)
    if family is None:
        detected = detect_family(cfg.model, cfg.revision)
        if cfg.family and cfg.family != detected:
            raise DTIError(f"family {cfg.family!r} was set, but {cfg.model!r} is a {detected} pipeline")
        cfg = dataclasses.replace(cfg, family=detected)
    elif not cfg.family:
        cfg = dataclasses.replace(cfg, family=family.name)
    cfg = resolve_config(cfg)
    if not cfg.placeholder:
        raise DTIError("no placeholder given")
    check_gpu(cfg)
    cfg.check_accel(resolve_device(cfg.device))  # the speed settings work on this device
    load_templates(cfg.templates)
    if cfg.tensorboard:
        summary_writer_class()
    image_paths = list_images(cfg.images)
    inputs = {"model": model_stamp(cfg.model), "images": content_digest(image_paths)}
    commit = hub_commit(cfg.model, cfg.revision)
    pin = commit or cfg.revision  # what the pipeline loads at: a hub id's weights are those of this commit
    if pin is not None:
        inputs["model_revision"] = pin
    with folder_lock(out_dir, f"run folder {out_dir}"):
        return _train_locked(cfg, out_dir, resume, family, image_paths, inputs, commit)


def _train_locked(cfg, out_dir: Path, resume: bool, family, image_paths: list[Path], inputs: dict,
                  commit: str | None) -> Path:
    state = run_state(out_dir, cfg, resume, inputs)
    if state == "complete":
        print(f"{out_dir}: already trained for {cfg.steps} steps", file=sys.stderr)
        return out_dir

    hub = not Path(cfg.model).is_dir()
    if hub and commit is None:
        print(f"{cfg.model}: the commit of {cfg.revision or 'the default branch'} is not known here (offline and "
              "not in the local cache?); run.json records the revision as given", file=sys.stderr)
    trainer = Trainer(cfg, image_paths, family, revision=commit or cfg.revision)
    record = {
        "config": dataclasses.asdict(cfg), "tokens": trainer.family.tokens, "vectors": len(trainer.family.tokens),
        "encoders": [s.name for s in trainer.slots], "vocab_norms": {s.name: s.vocab_norms for s in trainer.slots},
        "images": [p.name for p in image_paths], "versions": package_versions(),
        "device": str(trainer.device), "inputs": inputs, "status": "running", **trainer.method.metadata(),
        "model_commit": commit, "accel": trainer.accel_notes,
    }
    if hub and commit is None:
        record["model_commit_note"] = (f"not resolved (offline and not cached): loaded at "
                                       f"{cfg.revision or 'the default branch'} as given")
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
        for name in (VALIDATION, TENSORBOARD):  # an earlier run's, in this folder
            shutil.rmtree(out_dir / name, ignore_errors=True)
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
                  final_norms={s.name: e.norm(dim=1).tolist() for s, e in zip(trainer.slots, final)},
                  # how much the prior weighs against the data gradients (DTI; None without a prior)
                  prior_ratio_median=log_median(out_dir / LOG, "prior_ratio"))
    write_json(record, out_dir / RECORD)
    return out_dir


class Trainer:
    """One run's working state: the loaded family with the concept's tokens, the method, its
    optimizer, the reference latents (encoded once) and the generator behind every random draw."""

    def __init__(self, cfg: TrainConfig, image_paths: list[Path], family=None, revision: str | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        if family is None:
            family = family_class(cfg.family).load(cfg.model, self.device,
                                                   frozen_dtype(self.device, cfg.mixed_precision), cfg, revision)
        self.family = family
        self.templates = load_templates(cfg.templates)
        self.validation = validation_templates(cfg.validation_prompts) if cfg.validation_every else []
        # The prompts must read the same with the placeholder added (e.g. "hoto" would split "photo").
        self.slots = family.add_concept(cfg.placeholder, cfg.initializer,
                                        [t.format("") for t in self.templates + self.validation])
        self.method = method_class(cfg.method)(cfg, self.slots)
        self.optimizer = self.method.make_optimizer()
        # The speed settings (dti.accel), after the method's set-up (CrossInit's initial encoder pass runs eagerly).
        self.accel_notes = apply_to_pipeline(family.pipe, cfg, self.device, training=True)
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
        # Validation images: the family's sampling protocol (size, guidance), at validation_steps.
        self.validation_call = (pipeline_call(family, family.pipe, SampleConfig(steps=cfg.validation_steps))[1]
                                if self.validation else None)

    def embeddings(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [e.detach().clone() for e in self.method.embeddings()]

    def step(self) -> float:
        """One optimisation step over ``grad_accum`` micro-batches; returns the mean data loss."""
        with attention_context(self.cfg):
            return self._step()

    def _step(self) -> float:
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
        step, a checkpoint every ``checkpoint_every`` steps; progress, validation images and
        TensorBoard as configured."""
        cfg, method = self.cfg, self.method
        initial, init_rows = self.initial, self.initializer_rows
        self.draws = step * cfg.grad_accum * cfg.batch_size  # a resumed run continues the image order
        log = StepLog(out_dir / LOG)
        # on resume, events after the checkpoint's step are those of the cut-off run: dropped
        board = (summary_writer_class()(str(out_dir / TENSORBOARD), purge_step=step + 1 if step else None,
                                        flush_secs=30) if cfg.tensorboard else None)
        progress = Progress(cfg.steps, step, cfg.progress_every, desc=cfg.method, unit="step")
        last_checkpoint = step
        try:
            if step == 0:
                self.board(board, 0, log.write(0, float("nan"), initial, initial, init_rows, lr=self.lr))
                if self.validation:  # the initializer's images, to compare with; a setup that fails, fails now
                    self.validate(out_dir, 0, board)
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
                rows = log.write(step, loss, after, initial, init_rows, before, grads, updates, self.lr,
                                 method.prior_ratios(grads))
                self.board(board, step, rows)
                if self.validation and (step % cfg.validation_every == 0 or step == cfg.steps):
                    self.validate(out_dir, step, board)
                progress.update(1, self.progress_fields(loss, rows))
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save_checkpoint(out_dir / CHECKPOINT, step, method, self.optimizer, self.gen)
                    last_checkpoint = step
        finally:
            log.close()
            progress.close()
            if board is not None:
                board.close()
            self.family.set_rows(None)
        return step

    def progress_fields(self, loss: float, rows: list[dict]) -> dict[str, str]:
        """Loss, and each encoder's vector norms and cosines to the initializer (comma-separated per vector)."""
        fields = {"loss": f"{loss:.5g}"}
        for key, column in (("norm", "norm"), ("cos_init", "cos_to_initializer")):
            for enc, slot in enumerate(self.slots):
                name = key if len(self.slots) == 1 else f"{key}.{slot.name}"
                fields[name] = ",".join(f"{r[column]:.5g}" for r in rows if r["encoder"] == enc)
        return fields

    def board(self, writer, step: int, rows: list[dict]):
        """The step's log rows as TensorBoard scalars (``writer`` None: off); undefined values (NaN) are left out."""
        if writer is None:
            return
        scalars = {"loss": rows[0]["loss"], "lr": rows[0]["lr"]}
        for r in rows:
            for column in ("norm", "cos_to_initializer", "angle_deg"):
                scalars[f"{column}/{self.slots[r['encoder']].name}/{r['vector']}"] = r[column]
        for tag, value in scalars.items():
            if math.isfinite(value):
                writer.add_scalar(tag, value, step)

    def validate(self, out_dir: Path, step: int, board=None):
        """One image per validation prompt with the current vectors, saved as
        ``validation/step<NNNNN>_<i>.png`` (and to TensorBoard). It goes through the training's own
        pipeline, whose encoders read the learned rows, with the sampling code of ``dti.sample``; the
        generators are the images' own and the global random state is restored after, so training
        draws what it draws without validation."""
        family, vae = self.family, self.family.pipe.vae
        family.pipe.set_progress_bar_config(disable=True)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            family.set_rows(self.embeddings())
            vae.to(self.device)  # kept on the CPU between uses (encode_images)
            if vae.dtype != family.dtype:  # float32 from encode_images; the pipeline decodes in its own dtype
                vae.to(dtype=family.dtype)
            try:
                images = [make_images(family.pipe, [t.format(self.token_string)], [self.cfg.validation_seed],
                                      self.validation_call)[0] for t in self.validation]
            except Exception as exc:  # noqa: BLE001 - the pipelines raise many types; report one line
                raise DTIError(f"validation images at step {step} failed ({one_line(exc)}); "
                               "validation_every=0 trains without them") from None
            finally:
                vae.to("cpu")
        folder = out_dir / VALIDATION
        folder.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            with atomic_path(folder / f"step{step:05d}_{i}.png") as tmp:
                image.save(tmp, format="PNG")
            if board is not None:
                board.add_image(f"validation/{i}", np.asarray(image), step, dataformats="HWC")
