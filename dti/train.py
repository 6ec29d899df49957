"""The training loop shared by every method and family."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import draw_batch, list_images, load_reference, load_templates
from .embeddings import ENCODER_FILES, SDXL_SINGLE_FILE, write_embedding_files
from .families import FAMILIES, detect_family
from .io import (DTIError, content_digest, load_tensors, model_stamp, package_versions, read_json,
                 save_tensors, truncate_log, write_json)
from .methods import METHODS

LOG_FIELDS = ["step", "encoder", "vector", "loss", "norm", "cos_to_initializer", "cos_to_initial",
              "angle_deg", "grad_norm", "update_norm", "lr"]
CHECKPOINT = "checkpoint.safetensors"


def resolve_device(name: str) -> torch.device:
    """'auto' (the GPU if torch sees one, else the CPU) or a torch device name; a one-line error
    for a name torch does not know or a CUDA device on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DTIError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DTIError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    return device


def frozen_dtype(device: torch.device, mixed_precision: str) -> torch.dtype:
    if device.type == "cpu" or mixed_precision == "no":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


class Trainer:
    """One run's working state: the loaded family with the concept's tokens, the method, its
    optimizer, the reference latents (encoded once) and the generator behind every random draw."""

    def __init__(self, cfg: TrainConfig, image_paths: list[Path], family=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        if family is None:
            family = FAMILIES[cfg.family].load(cfg.model, self.device,
                                               frozen_dtype(self.device, cfg.mixed_precision), cfg)
        self.family = family
        self.templates = load_templates(cfg.templates)
        self.slots = family.add_concept(cfg.placeholder, cfg.initializer)
        self.method = METHODS[cfg.method](cfg, self.slots)
        self.optimizer = self.method.make_optimizer()
        # Reference latents, once per run; random crops are taken from them in latent space.
        self.ppl = family.pixels_per_latent
        if cfg.resolution % self.ppl:
            raise DTIError(f"resolution {cfg.resolution} is not a multiple of the VAE's {self.ppl} pixels per latent")
        refs = [load_reference(p, cfg.resolution, self.ppl) for p in image_paths]
        self.latents = family.encode_images([r.pixels for r in refs])
        self.sizes = [r.original_size for r in refs]
        self.token_string = family.prompt_token_string()
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
            batch = draw_batch(self.latents, self.sizes, self.templates, self.token_string, cfg.batch_size,
                               cfg.resolution // self.ppl, self.ppl, self.gen)
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


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, family=None) -> Path:
    """Train one concept into ``out_dir``; ``family`` may be an already loaded adapter."""
    out_dir = Path(out_dir)
    if not cfg.family:
        cfg = dataclasses.replace(cfg, family=family.name if family else detect_family(cfg.model))
    cfg = cfg.resolved()
    if not cfg.placeholder:
        raise DTIError("no placeholder given")
    load_templates(cfg.templates)
    image_paths = list_images(cfg.images)
    inputs = {"model": model_stamp(cfg.model), "images": content_digest(image_paths)}
    start_state = _check_run_dir(out_dir, cfg, resume, inputs)
    if start_state == "complete":
        print(f"{out_dir}: already trained for {cfg.steps} steps", file=sys.stderr)
        return out_dir

    trainer = Trainer(cfg, image_paths, family)
    method, slots, family = trainer.method, trainer.slots, trainer.family
    initial = trainer.embeddings()
    init_rows = [s.initializer_rows.to(trainer.device) for s in slots]
    record = {
        "config": dataclasses.asdict(cfg), "tokens": family.tokens, "vectors": len(family.tokens),
        "encoders": [s.name for s in slots], "vocab_norms": {s.name: s.vocab_norms for s in slots},
        "images": [p.name for p in image_paths], "versions": package_versions(),
        "device": str(trainer.device), "inputs": inputs, "status": "running", **method.metadata(),
    }
    log = out_dir / "train_log.csv"
    step = 0
    if start_state == "resume":
        step = _load_checkpoint(out_dir / CHECKPOINT, method, trainer.optimizer, trainer.gen)
        if step > cfg.steps:
            raise DTIError(f"{out_dir} is checkpointed at step {step}, beyond the {cfg.steps} steps asked for; "
                           "choose another --out")
        truncate_log(log, step)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
    write_json(record, out_dir / "run.json")

    log_file, log_writer = _open_log(log)  # once per run, not per step
    if start_state != "resume":
        log_writer.writerows(_log_rows(0, float("nan"), initial, initial, init_rows, None, None, cfg.lr))
    bar = tqdm(total=cfg.steps, initial=step, disable=not sys.stderr.isatty(), desc=cfg.method)
    try:
        step = _train_loop(trainer, cfg, out_dir, step, log_file, log_writer, bar, initial, init_rows)
    finally:
        log_file.close()
        bar.close()
        family.set_rows(None)

    final = [e.float().cpu() for e in trainer.embeddings()]
    meta = {"method": cfg.method, "family": cfg.family, "base_model": cfg.model, "placeholder": cfg.placeholder,
            "tokens": json.dumps(family.tokens), "initializer": cfg.initializer, "steps": cfg.steps,
            "seed": cfg.seed, "effective_lr": cfg.lr, "m_star": cfg.m_star if cfg.method == "dti" else "",
            "kappa": cfg.kappa if cfg.method == "dti" else ""}
    write_embedding_files(out_dir, cfg.family, family.tokens[0], final, meta)
    _save_checkpoint(out_dir / CHECKPOINT, step, cfg, method, trainer.optimizer, trainer.gen)
    record.update(status="complete", final_norms={s.name: e.norm(dim=1).tolist() for s, e in zip(slots, final)})
    write_json(record, out_dir / "run.json")
    return out_dir


# --- run directory, logs, checkpoints -------------------------------------------

def _check_run_dir(out_dir: Path, cfg: TrainConfig, resume: bool, inputs: dict) -> str:
    """'fresh', 'resume' or 'complete'; refuses to mix runs. A run whose base model or images have
    changed since (as when a workflow re-runs it for that reason) is trained again from step 0."""
    record_path = out_dir / "run.json"
    if not record_path.exists():
        if out_dir.exists() and any(out_dir.iterdir()) and not resume:
            raise DTIError(f"output folder {out_dir} is not empty and holds no run; choose another --out")
        return "fresh"
    if not resume:
        raise DTIError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    record = read_json(record_path)
    old = record.get("config", {})
    if old.get("method") != cfg.method:
        raise DTIError(f"{out_dir} holds a {old.get('method')} run, not {cfg.method}; cannot resume it")
    new = dataclasses.asdict(cfg)
    differ = sorted(k for k in new if k != "steps" and old.get(k) != new[k])
    if differ:
        raise DTIError(f"cannot resume {out_dir}: configuration differs in {', '.join(differ)}")
    if record.get("inputs") != inputs:
        print(f"{out_dir}: its base model or images changed since it was trained; training again from step 0",
              file=sys.stderr)
        for name in (CHECKPOINT, *ENCODER_FILES, SDXL_SINGLE_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return "fresh"
    outputs_present = (out_dir / ENCODER_FILES[0]).exists()
    if record.get("status") == "complete" and old.get("steps") == cfg.steps and outputs_present:
        return "complete"
    return "resume" if (out_dir / CHECKPOINT).exists() else "fresh"


def _save_checkpoint(path: Path, step: int, cfg: TrainConfig, method, optimizer, gen: torch.Generator):
    tensors = {f"param.{i}": p.detach() for i, p in enumerate(method.params)}
    scalars = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["rng.train"] = gen.get_state()
    save_tensors(tensors, path, {"step": step, "method": cfg.method, "optimizer_scalars": json.dumps(scalars)})


def _load_checkpoint(path: Path, method, optimizer, gen: torch.Generator) -> int:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    with torch.no_grad():
        for i, p in enumerate(method.params):
            p.copy_(tensors[f"param.{i}"].to(p.device))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in json.loads(meta["optimizer_scalars"]).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    gen.set_state(tensors["rng.train"])
    return int(meta["step"])


def _log_rows(step, loss, embeds, initial, init_rows, before, grads_updates, lr):
    rows = []
    for enc, e in enumerate(embeds):
        cos_init_word = torch.nn.functional.cosine_similarity(e, init_rows[enc], dim=1)
        cos_initial = torch.nn.functional.cosine_similarity(e, initial[enc], dim=1)
        angle = (torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(e, before[enc], dim=1)
                                            .clamp(-1, 1))) if before is not None else None)
        for j in range(e.shape[0]):
            rows.append({
                "step": step, "encoder": enc, "vector": j, "loss": loss, "norm": e[j].norm().item(),
                "cos_to_initializer": cos_init_word[j].item(), "cos_to_initial": cos_initial[j].item(),
                "angle_deg": angle[j].item() if angle is not None else float("nan"),
                "grad_norm": grads_updates[0][enc][j].norm().item() if grads_updates else float("nan"),
                "update_norm": grads_updates[1][enc][j].norm().item() if grads_updates else float("nan"),
                "lr": lr,
            })
    return rows


def _train_loop(trainer: Trainer, cfg: TrainConfig, out_dir: Path, step: int, log_file, log_writer, bar,
                initial, init_rows):
    """Steps from ``step`` to ``cfg.steps`` (returned): one log row per encoder and vector each step, checkpoints."""
    method = trainer.method
    last_checkpoint = step
    while step < cfg.steps:
        step += 1
        before = trainer.embeddings()
        params_before = [p.detach().clone() for p in method.params]
        loss = trainer.step()
        if not math.isfinite(loss):
            raise DTIError(f"loss is {loss} at step {step}; training stopped, last good checkpoint is "
                           f"step {last_checkpoint} in {out_dir}")
        with torch.no_grad():
            grads = [p.grad.detach().clone() for p in method.params]
            updates = [(p - q) / cfg.lr for p, q in zip(method.params, params_before)]
        log_writer.writerows(_log_rows(step, loss, trainer.embeddings(), initial, init_rows, before,
                                       (grads, updates), cfg.lr))
        log_file.flush()  # the log can be watched while training runs
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            _save_checkpoint(out_dir / CHECKPOINT, step, cfg, method, trainer.optimizer, trainer.gen)
            last_checkpoint = step
    return step


def _open_log(path: Path):
    new = not path.exists()
    f = path.open("a", newline="")
    writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
    if new:
        writer.writeheader()
    return f, writer
