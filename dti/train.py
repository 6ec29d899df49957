"""Training: ``train()`` turns one configuration into a run folder, ``train_group()`` several at once.

A group shares one load of the frozen model and one batched text-encoder and denoiser pass per
step; each run keeps its own data, its own generator (photos, templates, crops, noise, timesteps),
its own method and optimizer, and writes the same folder it would write alone. A ``Trainer`` holds
one run's working state; ``fit_group`` steps a group of them together."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .accel import apply_to_pipeline, attention_context
from .config import GROUP_SHARED, TrainConfig, validation_templates
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
    """Train one concept into ``out_dir``; ``family`` may be an already loaded adapter."""
    return train_group([cfg], [out_dir], resume, family)[0]


@dataclasses.dataclass
class PreparedRun:
    """A run checked and ready to start: its resolved configuration, folder, photos and input stamps."""

    cfg: TrainConfig
    out_dir: Path
    image_paths: list[Path]
    inputs: dict
    commit: str | None


def prepare(cfg: TrainConfig, out_dir: str | Path, family=None) -> PreparedRun:
    """Everything about one run that can be checked before a model loads."""
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
    return PreparedRun(cfg, out_dir, image_paths, inputs, commit)


def check_group(runs: list[PreparedRun]):
    """The runs of a group share one pipeline: they must agree on what it is and how it runs, and their
    placeholders (tokens of one tokenizer) and folders must differ."""
    differ = [k for k in GROUP_SHARED if len({repr(getattr(r.cfg, k)) for r in runs}) > 1]
    if differ:
        raise DTIError(f"the runs of a group must agree on {', '.join(differ)} (they share one pipeline); "
                       "train them in separate groups")
    for what, values in (("placeholder", [r.cfg.placeholder for r in runs]),
                         ("folder", [str(r.out_dir) for r in runs])):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise DTIError(f"two runs of a group have the {what} {twice[0]}; each run needs its own")


def train_group(cfgs: list[TrainConfig], out_dirs: list[str | Path], resume: bool = False, family=None
                ) -> list[Path]:
    """Train several concepts in one process (see the module's docstring); returns their folders. Every run
    is checked before the model loads; every folder is locked while the group writes it; a run already
    complete is left as it is."""
    if not cfgs or len(cfgs) != len(out_dirs):
        raise DTIError(f"{len(cfgs)} configurations for {len(out_dirs)} run folders")
    runs = [prepare(cfg, out, family) for cfg, out in zip(cfgs, out_dirs)]
    check_group(runs)
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(folder_lock(run.out_dir, f"run folder {run.out_dir}"))
        _train_locked(runs, resume, family)
    return [run.out_dir for run in runs]


def _train_locked(runs: list[PreparedRun], resume: bool, family):
    todo = []
    for run in runs:
        state = run_state(run.out_dir, run.cfg, resume, run.inputs)
        if state == "complete":
            print(f"{run.out_dir}: already trained for {run.cfg.steps} steps", file=sys.stderr)
        else:
            todo.append((run, state))
    if not todo:
        return
    first = todo[0][0]
    hub = not Path(first.cfg.model).is_dir()
    if hub and first.commit is None:
        print(f"{first.cfg.model}: the commit of {first.cfg.revision or 'the default branch'} is not known here "
              "(offline and not in the local cache?); run.json records the revision as given", file=sys.stderr)
    revision = first.commit or first.cfg.revision
    if family is None:
        device = resolve_device(first.cfg.device)
        family = family_class(first.cfg.family).load(first.cfg.model, device,
                                                     frozen_dtype(device, first.cfg.mixed_precision), first.cfg,
                                                     revision)
    trainers = [Trainer(run.cfg, run.image_paths, family, accel=False) for run, _ in todo]
    # The speed settings (dti.accel), once, after every method's set-up (CrossInit's initial encoder pass runs
    # eagerly); the runs of a group agree on them.
    notes = apply_to_pipeline(family.pipe, first.cfg, trainers[0].device, training=True)
    records, starts = [], []
    for trainer, (run, state) in zip(trainers, todo):
        trainer.accel_notes = notes
        record, step = _start(trainer, run, state, hub)
        records.append(record)
        starts.append(step)
    fit_group(trainers, [run.out_dir for run, _ in todo], starts)
    for trainer, record, (run, _) in zip(trainers, records, todo):
        _finish(trainer, record, run.out_dir)


def _start(trainer: "Trainer", run: PreparedRun, state: str, hub: bool) -> tuple[dict, int]:
    """A run's record written with status "running", its folder set for step 0 or its checkpoint loaded;
    returns the record and the step the run starts from."""
    cfg, out_dir = run.cfg, run.out_dir
    record = {
        "config": dataclasses.asdict(cfg), "tokens": trainer.tokens, "vectors": len(trainer.tokens),
        "encoders": [s.name for s in trainer.slots], "vocab_norms": {s.name: s.vocab_norms for s in trainer.slots},
        "images": [p.name for p in run.image_paths], "versions": package_versions(),
        "device": str(trainer.device), "inputs": run.inputs, "status": "running", **trainer.method.metadata(),
        "model_commit": run.commit, "accel": trainer.accel_notes,
    }
    if hub and run.commit is None:
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
    return record, step


def _finish(trainer: "Trainer", record: dict, out_dir: Path):
    """The learned vectors checked and written, the final checkpoint, the record completed."""
    cfg = trainer.cfg
    final = [e.float().cpu() for e in trainer.embeddings()]
    check_vectors(final, f"the learned vectors of {out_dir}")
    meta = {"method": cfg.method, "family": cfg.family, "base_model": cfg.model, "placeholder": cfg.placeholder,
            "tokens": json.dumps(trainer.tokens), "initializer": cfg.initializer, "steps": cfg.steps,
            "seed": cfg.seed, "effective_lr": trainer.lr, **trainer.method.file_metadata()}
    trainer.family.write_embedding_files(out_dir, trainer.tokens[0], final, meta)
    save_checkpoint(out_dir / CHECKPOINT, trainer.step_count, trainer.method, trainer.optimizer, trainer.gen)
    record.update(status="complete",
                  final_norms={s.name: e.norm(dim=1).tolist() for s, e in zip(trainer.slots, final)},
                  # how much the prior weighs against the data gradients (DTI; None without a prior)
                  prior_ratio_median=log_median(out_dir / LOG, "prior_ratio"))
    write_json(record, out_dir / RECORD)


def group_rows(trainers: list["Trainer"], active: list["Trainer"] = ()) -> list[torch.Tensor]:
    """Per encoder, the rows of every concept of the shared pipeline in the order they were added:
    differentiable for the ``active`` runs, detached for the others."""
    per_run = [t.method.embeddings() if t in active else t.embeddings() for t in trainers]
    return [torch.cat([rows[e] for rows in per_run]) for e in range(len(per_run[0]))]


def group_step(active: list["Trainer"], trainers: list["Trainer"]) -> list[float]:
    """One optimisation step of each ``active`` run (all of ``trainers`` share one pipeline); returns each
    run's mean data loss. Per micro-batch every run draws its photos, prompts and noise from its own
    generator, in the order it draws them alone; one text-encoder pass and one denoiser pass serve all,
    and each run's loss is the error on its own slice of the batch, so its gradient is its own."""
    family, grad_accum = active[0].family, active[0].cfg.grad_accum
    for t in active:
        t.optimizer.zero_grad(set_to_none=True)
    data_losses = [0.0] * len(active)
    for _ in range(grad_accum):
        batches = [t.draw() for t in active]
        noises = [family.draw_noise(b["latents"].shape, t.gen) for t, b in zip(active, batches)]
        family.set_rows(group_rows(trainers, active))
        prompts = [p for b in batches for p in b["prompts"]]
        cond = family.encode_prompts(prompts)
        batch = {"prompts": prompts, "time_ids": [row for b in batches for row in b["time_ids"]]}
        latents = torch.cat([b["latents"] for b in batches]).to(active[0].device)
        noise = {k: torch.cat([n[k] for n in noises]) for k in noises[0]}
        losses = family.losses(latents, cond, batch, noise, [len(b["prompts"]) for b in batches])
        total = None
        for i, (t, loss) in enumerate(zip(active, losses)):
            extra = t.method.extra_loss()
            term = (loss if extra is None else loss + extra) / grad_accum
            total = term if total is None else total + term
            data_losses[i] += loss.item() / grad_accum
        total.backward()
    for t, loss in zip(active, data_losses):
        if math.isfinite(loss):  # else the caller stops before touching the parameters
            t.optimizer.step()
            t.method.after_step()
    return data_losses


def fit_group(trainers: list["Trainer"], out_dirs: list[Path], starts: list[int]) -> list[int]:
    """Steps each run from its start to its ``cfg.steps`` (returned), the runs that still have steps
    to go together; per run one log row per encoder and vector each step, checkpoints, validation
    images and TensorBoard as that run's configuration says."""
    for t in trainers:
        t.group = trainers
    progress = (Progress(trainers[0].cfg.steps, starts[0], trainers[0].cfg.progress_every,
                         desc=trainers[0].cfg.method, unit="step") if len(trainers) == 1 else
                Progress(max(t.cfg.steps for t in trainers), min(starts), min(t.cfg.progress_every for t in trainers),
                         desc=f"{len(trainers)} runs", unit="step"))
    try:
        for t, out_dir, step in zip(trainers, out_dirs, starts):
            t.open(out_dir, step)
        while active := [t for t in trainers if t.step_count < t.cfg.steps]:
            for t in active:
                t.begin_step()
            with attention_context(active[0].cfg):
                losses = group_step(active, trainers)
            rows = [t.end_step(loss) for t, loss in zip(active, losses)]
            if len(trainers) == 1:
                progress.update(1, trainers[0].progress_fields(losses[0], rows[0]))
            else:
                progress.update(1, {"runs": str(len(active)), "mean_loss": f"{sum(losses) / len(losses):.5g}"})
    finally:
        for t in trainers:
            t.close()
        progress.close()
        trainers[0].family.set_rows(None)
    return [t.step_count for t in trainers]


class Trainer:
    """One run's working state: the loaded family with the concept's tokens, the method, its
    optimizer, the reference latents (encoded once) and the generator behind every random draw."""

    def __init__(self, cfg: TrainConfig, image_paths: list[Path], family=None, revision: str | None = None,
                 accel: bool = True):
        """``family``: a loaded adapter, which may hold other runs' concepts (a group); else the pipeline
        loads. ``accel``: apply the speed settings now (a group applies them once, after every run)."""
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
        self.tokens = family.tokens  # this run's
        self.method = method_class(cfg.method)(cfg, self.slots)
        self.optimizer = self.method.make_optimizer()
        # The speed settings (dti.accel), after the method's set-up (CrossInit's initial encoder pass runs eagerly).
        self.accel_notes = apply_to_pipeline(family.pipe, cfg, self.device, training=True) if accel else []
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
        self.token_string = family.token_string(self.tokens)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.group = [self]  # the runs sharing this pipeline (fit_group sets it)
        self.step_count = 0
        self.log = self.writer = None  # open() starts them
        # Validation images: the family's sampling protocol (size, guidance), at validation_steps.
        self.validation_call = (pipeline_call(family, family.pipe, SampleConfig(steps=cfg.validation_steps))[1]
                                if self.validation else None)

    def embeddings(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [e.detach().clone() for e in self.method.embeddings()]

    def step(self) -> float:
        """One optimisation step of this run alone, over ``grad_accum`` micro-batches; returns the mean data loss."""
        with attention_context(self.cfg):
            return group_step([self], [self])[0]

    def draw(self) -> dict:
        """This run's next micro-batch (photos, prompts, crops), from its own generator and image order."""
        cfg = self.cfg
        picks = self.order.picks(self.draws, cfg.batch_size) if self.order else None
        self.draws += cfg.batch_size
        return draw_batch(self.latents, self.sizes, self.templates, self.token_string, cfg.batch_size,
                          cfg.resolution // self.pixels_per_latent, self.pixels_per_latent, self.gen, picks,
                          sample_latents=cfg.latent_sampling == "sample",
                          zero_pad=self.family.zero_padded if cfg.zero_pad else None)

    def fit(self, out_dir: Path, step: int) -> int:
        """Steps from ``step`` to ``cfg.steps`` (returned), alone (see ``fit_group``)."""
        return fit_group([self], [out_dir], [step])[0]

    def open(self, out_dir: Path, step: int):
        """Start watching the run at ``step``: its log, TensorBoard, and at step 0 the first log row and
        validation images."""
        cfg = self.cfg
        self.out_dir, self.step_count, self.last_checkpoint = out_dir, step, step
        self.draws = step * cfg.grad_accum * cfg.batch_size  # a resumed run continues the image order
        self.log = StepLog(out_dir / LOG)
        # on resume, events after the checkpoint's step are those of the cut-off run: dropped
        self.writer = (summary_writer_class()(str(out_dir / TENSORBOARD), purge_step=step + 1 if step else None,
                                              flush_secs=30) if cfg.tensorboard else None)
        if step == 0:
            init = self.initial
            self.board(0, self.log.write(0, float("nan"), init, init, self.initializer_rows, lr=self.lr))
            if self.validation:  # the initializer's images, to compare with; a setup that fails, fails now
                self.validate(out_dir, 0)

    def begin_step(self):
        self.before = self.embeddings()
        self.params_before = [p.detach().clone() for p in self.method.params]

    def end_step(self, loss: float) -> list[dict]:
        """After the optimiser's step: the vectors checked, the log row, validation and checkpoint as due."""
        cfg, method, out_dir = self.cfg, self.method, self.out_dir
        self.step_count += 1
        step = self.step_count
        kept = (f"last good checkpoint is step {self.last_checkpoint} in {out_dir}" if self.last_checkpoint
                else "no checkpoint was saved")
        if not math.isfinite(loss):
            raise DTIError(f"loss is {loss} at step {step}; training stopped, {kept}")
        after = self.embeddings()  # once: checked, then logged
        check_vectors(after, f"the learned vectors at step {step} (training stopped, {kept})")
        with torch.no_grad():
            grads = [p.grad.detach().clone() for p in method.params]
            updates = [(p - q) / self.lr for p, q in zip(method.params, self.params_before)]
        rows = self.log.write(step, loss, after, self.initial, self.initializer_rows, self.before, grads, updates,
                              self.lr, method.prior_ratios(grads))
        self.board(step, rows)
        if self.validation and (step % cfg.validation_every == 0 or step == cfg.steps):
            self.validate(out_dir, step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(out_dir / CHECKPOINT, step, method, self.optimizer, self.gen)
            self.last_checkpoint = step
        return rows

    def close(self):
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None
        if getattr(self, "writer", None) is not None:
            self.writer.close()
            self.writer = None

    def progress_fields(self, loss: float, rows: list[dict]) -> dict[str, str]:
        """Loss, and each encoder's vector norms and cosines to the initializer (comma-separated per vector)."""
        fields = {"loss": f"{loss:.5g}"}
        for key, column in (("norm", "norm"), ("cos_init", "cos_to_initializer")):
            for enc, slot in enumerate(self.slots):
                name = key if len(self.slots) == 1 else f"{key}.{slot.name}"
                fields[name] = ",".join(f"{r[column]:.5g}" for r in rows if r["encoder"] == enc)
        return fields

    def board(self, step: int, rows: list[dict]):
        """The step's log rows as TensorBoard scalars (if on); undefined values (NaN) are left out."""
        writer = self.writer
        if writer is None:
            return
        scalars = {"loss": rows[0]["loss"], "lr": rows[0]["lr"]}
        for r in rows:
            for column in ("norm", "cos_to_initializer", "angle_deg"):
                scalars[f"{column}/{self.slots[r['encoder']].name}/{r['vector']}"] = r[column]
        for tag, value in scalars.items():
            if math.isfinite(value):
                writer.add_scalar(tag, value, step)

    def validate(self, out_dir: Path, step: int):
        """One image per validation prompt with the current vectors, saved as
        ``validation/step<NNNNN>_<i>.png`` (and to TensorBoard). It goes through the training's own
        pipeline, whose encoders read the learned rows, with the sampling code of ``dti.sample``; the
        generators are the images' own and the global random state is restored after, so training
        draws what it draws without validation."""
        family, vae = self.family, self.family.pipe.vae
        family.pipe.set_progress_bar_config(disable=True)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            family.set_rows(group_rows(self.group))  # every concept of the pipeline, as they are now
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
            if self.writer is not None:
                self.writer.add_image(f"validation/{i}", np.asarray(image), step, dataformats="HWC")
