"""Training configuration: one dataclass whose fields carry their help text.

A field left at ``None`` takes its value from the model family's protocol defaults
(``FAMILY_DEFAULTS``, the authors' launchers as recorded in the paper's spec) and
then from the method's (``METHOD_DEFAULTS``). ``--set key=value`` overrides any field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .io import DTIError


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to learn
    method: str = _f("dti", "Method: ti, crossinit or dti (TI-rescaled is made by `dti rescale`).")
    model: str = _f("", "Base pipeline: a hub id or a local diffusers directory.")
    family: str | None = _f(None, "Pipeline family: sd, sdxl or sana (read from model_index.json when unset).")
    images: str = _f("", "Folder of the subject's reference images.")
    placeholder: str = _f("", "New token that stands for the subject, e.g. <sks>.")
    initializer: str = _f("", "Word(s) whose embedding rows initialise the learned vectors, one vector per token.")
    templates: str = _f("object", "Key of the training prompt templates in dti/resources/training_templates.json.")
    # schedule
    steps: int | None = _f(None, "Optimisation steps (SD/SDXL 400, SANA 500).")
    lr: float | None = _f(None, "Effective learning rate, used as is (no scaling by batch size): DTI 0.04, TI/CrossInit 0.02.")
    batch_size: int | None = _f(None, "Images per micro-batch (SD/SDXL 4, SANA 2).")
    grad_accum: int | None = _f(None, "Micro-batches accumulated per step (SD/SDXL 1, SANA 2).")
    resolution: int | None = _f(None, "Training crop size in pixels (SD 512, SDXL 768, SANA 1024).")
    seed: int = _f(42, "Seed of every random draw in training.")
    # AdamW (TI, CrossInit, and DTI with direction_optimizer=adamw)
    weight_decay: float | None = _f(None, "AdamW weight decay (SD/SDXL 1e-2, SANA 0); no effect on a direction retracted to the sphere.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    # CrossInit
    crossinit_lambda: float = _f(1e-5, "CrossInit: weight of the MSE between the learned vector and its initial value.")
    # DTI
    m_star: str = _f("mean", "DTI: fixed norm, a statistic of the vocabulary row norms (mean, min, max) or a number.")
    kappa: float | None = _f(None, "DTI: concentration of the vMF prior around the initializer direction (SD/SDXL 1e-4, SANA 5e-5).")
    beta: float = _f(0.0, "DTI: EMA factor of the squared gradient norm used to normalise the step (0: unit steps).")
    direction_optimizer: str = _f("rsgd", "DTI: rsgd (Riemannian SGD) or adamw (AdamW on v, retracted to the sphere after each step; ablation).")
    # execution
    device: str = _f("auto", "Torch device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    mixed_precision: str = _f("bf16", "Dtype of the frozen modules on a GPU: bf16, fp16 or no. Learned rows stay float32; on CPU everything is float32.")
    complex_human_instruction: bool = _f(False, "SANA: prepend the pipeline's complex-human-instruction prefix while training (off in the paper).")
    max_sequence_length: int = _f(300, "SANA: text tokens kept (BOS + the last max_sequence_length - 1), as the pipeline encodes.")
    checkpoint_every: int = _f(100, "Save a resumable checkpoint every N steps (0: only at the end).")

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` filled from the family's and the method's defaults, validated."""
        if self.family not in FAMILY_DEFAULTS:
            raise DTIError(f"unknown family {self.family!r}; choose one of {sorted(FAMILY_DEFAULTS)}")
        if self.method not in METHOD_DEFAULTS:
            raise DTIError(f"unknown method {self.method!r}; choose one of {sorted(METHOD_DEFAULTS)}")
        values = dataclasses.asdict(self)
        for source in (FAMILY_DEFAULTS[self.family], METHOD_DEFAULTS[self.method]):
            for key, value in source.items():
                if values[key] is None:
                    values[key] = value
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self):
        for name in ("steps", "batch_size", "grad_accum", "resolution"):
            if getattr(self, name) < 1:
                raise DTIError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DTIError(f"lr must be positive, got {self.lr}")
        if self.direction_optimizer not in ("rsgd", "adamw"):
            raise DTIError(f"direction_optimizer must be rsgd or adamw, got {self.direction_optimizer!r}")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise DTIError(f"mixed_precision must be bf16, fp16 or no, got {self.mixed_precision!r}")
        if self.kappa < 0:
            raise DTIError(f"kappa must be >= 0, got {self.kappa}")
        parse_m_star(self.m_star)

    def set(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings, converting each value to the field's type."""
        return apply_assignments(self, assignments)


def apply_assignments(obj, assignments: list[str]):
    """A copy of dataclass ``obj`` with ``key=value`` strings applied; unknown keys are refused."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    values = dataclasses.asdict(obj)
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise DTIError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise DTIError(f"unknown key {key!r} in --set; valid keys: {', '.join(sorted(fields))}")
        values[key] = _convert(key, fields[key].type, raw.strip())
    return type(obj)(**values)


def _convert(key: str, type_name: str, raw: str):
    try:
        if type_name.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise DTIError(f"--set {key}={raw}: expected a value of type {type_name.split(' ')[0]}") from None
    return raw


def parse_m_star(value: str) -> str | float:
    """``mean``/``min``/``max`` stay names; anything else must be a positive number."""
    if value in ("mean", "min", "max"):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DTIError(f"m_star must be mean, min, max or a positive number, got {value!r}") from None
    if not number > 0:
        raise DTIError(f"m_star must be positive, got {value!r}")
    return number


# The authors' launchers (paper spec); SD-style has no launcher of its own and follows SDXL.
FAMILY_DEFAULTS = {
    "sd": dict(resolution=512, batch_size=4, grad_accum=1, steps=400, weight_decay=1e-2, kappa=1e-4),
    "sdxl": dict(resolution=768, batch_size=4, grad_accum=1, steps=400, weight_decay=1e-2, kappa=1e-4),
    "sana": dict(resolution=1024, batch_size=2, grad_accum=2, steps=500, weight_decay=0.0, kappa=5e-5),
}
METHOD_DEFAULTS = {
    "ti": dict(lr=0.02),
    "crossinit": dict(lr=0.02),
    "dti": dict(lr=0.04),
}
