"""Training configuration: one dataclass whose fields carry their help text.

A field left at ``None`` takes its value from the model family's protocol defaults
(``Family.train_defaults``, the authors' launchers) and then
from the method's (``Method.defaults``); ``dti.train.resolve_config`` fills them in.
``--set key=value`` overrides any field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .accel import ACCEL_FIELDS, TrainAccel
from .io import DTIError
from .options import apply_assignments, option  # noqa: F401 (option: imported from here by other modules)

# Fields that may stay None in a resolved configuration (None has a meaning of its own).
MAY_STAY_UNSET = ("revision",)
# Fields that only watch a run: changing them neither changes its vectors nor stops a resume.
# The speed settings (dti.accel) count with them: results stay within dti.accel.TOLERANCE of the eager path.
WATCHING = ("progress_every", "validation_every", "validation_prompts", "validation_seed", "validation_steps",
            "tensorboard", *sorted(ACCEL_FIELDS))

# Fields the runs of a group (dti.train.train_group) must share: they load, place and run the one pipeline, or
# shape the batch all runs step together. Everything else (method, subject, seed, learning rates, ...) is a run's own.
GROUP_SHARED = ("model", "revision", "family", "device", "mixed_precision", "resolution", "batch_size",
                "grad_accum", "complex_human_instruction", "max_sequence_length", "zero_pad",
                *(f.name for f in dataclasses.fields(TrainAccel)))


@dataclass
class TrainConfig(TrainAccel):
    # what to learn
    method: str = option("dti", "Method: ti, crossinit or dti (TI-rescaled is made by `dti rescale`).")
    model: str = option("", "Base pipeline: a hub id or a local diffusers directory.")
    revision: str | None = option(None, "A branch, tag or commit of a hub id `model` (default: the hub's default "
                                        "branch); refused for a local folder. run.json records the resolved commit.")
    family: str | None = option(None, "Pipeline family: sd, sdxl or sana (read from model_index.json when unset).")
    images: str = option("", "Folder of the subject's reference images.")
    placeholder: str = option("", "New token that stands for the subject, e.g. <sks>.")
    initializer: str = option("", "Word(s) whose embedding rows initialise the learned vectors, one vector per token.")
    templates: str = option("object", "Key of the training prompt templates in dti/resources/training_templates.json.")
    # schedule
    steps: int | None = option(None, "Optimisation steps (SD/SDXL 400, SANA 500).")
    lr: float | None = option(None, "Effective learning rate, used as is (no scaling by batch size): DTI 0.04, "
                                    "TI/CrossInit 0.02.")
    batch_size: int | None = option(None, "Images per micro-batch (SD/SDXL 4, SANA 2).")
    grad_accum: int | None = option(None, "Micro-batches accumulated per step (SD/SDXL 1, SANA 2).")
    resolution: int | None = option(None, "Training crop size in pixels (SD 512, SDXL 768, SANA 1024).")
    seed: int = option(42, "Seed of every random draw in training.")
    # AdamW (TI, CrossInit, and DTI with direction_optimizer=adamw)
    weight_decay: float | None = option(None, "AdamW weight decay (SD/SDXL 1e-2, SANA 0); no effect on a direction "
                                              "retracted to the sphere.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_eps: float = option(1e-8, "AdamW epsilon.")
    # CrossInit
    crossinit_lambda: float = option(1e-5, "CrossInit: weight of the MSE between the learned vector and its initial "
                                           "value.")
    # DTI
    m_star: str = option("mean", "DTI: fixed norm, a statistic of the vocabulary row norms (mean, min, max) or a "
                                 "number.")
    kappa: float | None = option(None, "DTI: concentration of the vMF prior around the initializer direction (SD/SDXL "
                                       "1e-4, SANA 5e-5).")
    beta: float = option(0.0, "DTI: EMA factor of the squared gradient norm used to normalise the step (0: unit "
                              "steps).")
    adamw_lr: float | None = option(None, "DTI with direction_optimizer=adamw (ablation): AdamW's own learning rate "
                                          "(5e-4, the authors' SDXL value; RSGD's lr would turn v ~50 degrees a "
                                          "step at SDXL widths).")
    direction_optimizer: str = option("rsgd", "DTI: rsgd (Riemannian SGD) or adamw (AdamW on v, retracted to the "
                                              "sphere after each step; ablation).")
    # execution
    device: str = option("auto", "Torch device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    mixed_precision: str = option("bf16", "Dtype of the frozen modules on a GPU: bf16, fp16 or no. Learned rows stay "
                                          "float32; on CPU everything is float32.")
    complex_human_instruction: bool = option(False, "SANA: prepend the pipeline's complex-human-instruction prefix "
                                                    "while training (off in the paper).")
    max_sequence_length: int = option(300, "SANA: text tokens kept (BOS + the last max_sequence_length - 1), as the "
                                           "pipeline encodes.")
    # data
    latent_sampling: str = option("sample", "VAE latents of the photos: sample the posterior at every step (seeded, "
                                            "as the authors) or take its mode (mean).")
    image_order: str = option("epochs", "Which photos a batch takes: shuffled epochs (seeded, as the authors) or "
                                        "draws with replacement.")
    zero_pad: bool = option(False, "Prepend n = floor(min(Exponential(scale 2), 15)) zero-norm tokens to each "
                                   "training prompt (the authors' SANA DTI; off by default: every method alike).")
    checkpoint_every: int = option(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    # watching a run (none of these changes the learned vectors)
    progress_every: int = option(25, "Without a terminal (a workflow's or batch job's log): a progress line every N "
                                     "steps (0: none). A terminal or notebook gets a progress bar.")
    validation_every: int = option(0, "At step 0, every N steps and at the last, one image per validation prompt "
                                      "with the current vectors, in <run>/validation/ (0: none).")
    validation_prompts: str = option("a photo of {}", "Validation prompt templates, separated by '|'; {} is where "
                                                      "the placeholder goes.")
    validation_seed: int = option(0, "Seed of the validation images (the same noise at every step).")
    validation_steps: int | None = option(None, "Denoising steps of a validation image (the family's sampling "
                                                "steps; guidance and size are the family's too).")
    tensorboard: bool = option(False, "Log scalars and validation images to <run>/tensorboard/ (needs "
                                      "`pip install -e '.[track]'`).")

    def resolved(self, *defaults: dict) -> "TrainConfig":
        """A copy with every ``None`` filled from ``defaults`` (the first that has the key), validated."""
        values = dataclasses.asdict(self)
        for source in defaults:
            for key, value in source.items():
                if values[key] is None:
                    values[key] = value
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self):
        """Every field set and in range (a resolved configuration)."""
        unset = [f.name for f in dataclasses.fields(self)
                 if getattr(self, f.name) is None and f.name not in MAY_STAY_UNSET]
        if unset:
            raise DTIError(f"no value for {', '.join(unset)}: set it, or resolve the family's and method's defaults")
        self.check()

    def check(self):
        """The fields that are set are in range (``None``: a default comes later). Runs before any
        model loads, and in the workflow before any job starts."""
        for name in ("steps", "batch_size", "grad_accum", "resolution", "max_sequence_length", "validation_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DTIError(f"{name} must be >= 1, got {value}")
        check_seed(self.seed)
        check_seed(self.validation_seed)
        if any(c.isspace() for c in self.placeholder):
            raise DTIError(f"placeholder {self.placeholder!r} must be one word (no spaces), e.g. <sks>")
        for name in ("checkpoint_every", "progress_every", "validation_every"):
            if getattr(self, name) < 0:
                raise DTIError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.revision is not None and not self.revision.strip():
            raise DTIError("revision is empty; leave it unset for the hub's default branch")
        if self.validation_every:
            validation_templates(self.validation_prompts)
        positive = {"lr": self.lr, "adam_eps": self.adam_eps, "adamw_lr": self.adamw_lr}
        at_least_zero = {"kappa": self.kappa, "weight_decay": self.weight_decay,
                         "crossinit_lambda": self.crossinit_lambda}
        for name, value in {**positive, **at_least_zero}.items():
            if value is None:
                continue
            if not math.isfinite(value):
                raise DTIError(f"{name} must be a finite number, got {value}")
            if name in positive and value <= 0:
                raise DTIError(f"{name} must be positive, got {value}")
            if value < 0:
                raise DTIError(f"{name} must be >= 0, got {value}")
        for name in ("beta", "adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:  # also refuses NaN
                raise DTIError(f"{name} must be in [0, 1), got {value}")
        if self.direction_optimizer not in ("rsgd", "adamw"):
            raise DTIError(f"direction_optimizer must be rsgd or adamw, got {self.direction_optimizer!r}")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise DTIError(f"mixed_precision must be bf16, fp16 or no, got {self.mixed_precision!r}")
        if self.latent_sampling not in ("sample", "mode"):
            raise DTIError(f"latent_sampling must be sample or mode, got {self.latent_sampling!r}")
        if self.image_order not in ("epochs", "replacement"):
            raise DTIError(f"image_order must be epochs or replacement, got {self.image_order!r}")
        parse_m_star(self.m_star)
        self.check_accel()

    def set(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings, converting each value to the field's type."""
        return apply_assignments(self, assignments)


def validation_templates(value: str) -> list[str]:
    """The '|'-separated validation prompt templates, each with one ``{}`` for the placeholder."""
    templates = [t.strip() for t in value.split("|")]
    for t in templates:
        try:
            ok = t.count("{}") == 1 and bool(t.format("x"))
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise DTIError(f"validation prompt {t!r} must hold one {{}} (where the placeholder goes) and no other "
                           "braces")
    return templates


def check_seed(seed: int) -> int:
    """Seeds are what torch's generators take: 0 <= seed < 2**63."""
    if not 0 <= int(seed) < 2**63:
        raise DTIError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def parse_m_star(value: str) -> str | float:
    """``mean``/``min``/``max`` stay names; anything else must be a positive number."""
    if value in ("mean", "min", "max"):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DTIError(f"m_star must be mean, min, max or a positive number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise DTIError(f"m_star must be a positive finite number, got {value!r}")
    return number
