"""A training run's folder: whether to start, resume or stop, its checkpoint and its step log.

A run folder holds ``run.json`` (configuration, inputs, status), ``train_log.csv`` (one row per
step, encoder and vector), ``checkpoint.safetensors`` (learned rows, optimizer state, random
state, step) and the embedding files of its family.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from .config import WATCHING, TrainConfig
from .families import ENCODER_FILES, SDXL_SINGLE_FILE
from .io import DTIError, exclusive, load_tensors, read_json, save_tensors

LOG_FIELDS = ["step", "encoder", "vector", "loss", "norm", "cos_to_initializer", "cos_to_initial",
              "angle_deg", "grad_norm", "update_norm", "lr", "prior_ratio"]
CHECKPOINT = "checkpoint.safetensors"
RECORD = "run.json"
LOG = "train_log.csv"
LOCK = ".lock"  # held while a process writes the folder (io.exclusive); not part of the run


def check_run_folder(out_dir: Path) -> Path:
    """``out_dir`` can be a run folder: nothing yet, or a folder that holds a run (run.json is the
    first file a run writes: anything else there belongs to something else). Checked before the
    lock file is made, so that a refused folder is left as it was."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DTIError(f"--out {out_dir} is a file, not a folder")
    if out_dir.is_dir() and not (out_dir / RECORD).exists() and any(p.name != LOCK for p in out_dir.iterdir()):
        raise DTIError(f"output folder {out_dir} is not empty and holds no run; choose another --out")
    return out_dir


def folder_lock(out_dir: Path, what: str):
    """The exclusive lock of a run or sample folder: a second writer fails in one line."""
    return exclusive(Path(out_dir) / LOCK, what)


def check_vectors(vectors: list[torch.Tensor], what: str):
    """Learned vectors worth keeping: finite, with finite non-zero norms (a huge learning rate
    overflows them or, on the sphere, collapses them)."""
    for rows in vectors:
        norms = rows.detach().float().norm(dim=-1)
        if not (torch.isfinite(rows).all() and torch.isfinite(norms).all() and (norms > 0).all()):
            raise DTIError(f"{what} are not finite non-zero vectors (norms {norms.tolist()}); lower lr?")


def run_state(out_dir: Path, cfg: TrainConfig, resume: bool, inputs: dict) -> str:
    """'fresh', 'resume' or 'complete'; refuses to mix runs. A run whose base model or images have
    changed since (as when a workflow re-runs it for that reason) is trained again from step 0."""
    record_path = out_dir / RECORD
    if not record_path.exists():
        check_run_folder(out_dir)  # again, under the lock
        return "fresh"
    if not resume:
        raise DTIError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    record = read_json(record_path)
    old = record.get("config", {})
    if old.get("method") != cfg.method:
        raise DTIError(f"{out_dir} holds a {old.get('method')} run, not {cfg.method}; cannot resume it")
    new = dataclasses.asdict(cfg)
    differ = sorted(k for k in new if k != "steps" and k not in WATCHING and old.get(k) != new[k])
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


def model_revision(record: dict) -> str | None:
    """The version of a run's hub base model to load: the commit its training resolved, else the revision
    it was given (None: a local folder, or the hub's default branch)."""
    return record.get("model_commit") or record.get("config", {}).get("revision")


def save_checkpoint(path: Path, step: int, method, optimizer, gen: torch.Generator):
    """The method's learned tensors, its optimizer's state and the training generator, at ``step``."""
    tensors = {f"param.{i}": p.detach() for i, p in enumerate(method.params)}
    scalars = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["rng.train"] = gen.get_state()
    save_tensors(tensors, path, {"step": step, "method": method.name, "optimizer_scalars": json.dumps(scalars)})


def load_checkpoint(path: Path, method, optimizer, gen: torch.Generator) -> int:
    """Restore what ``save_checkpoint`` wrote; returns its step."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "step" not in meta or "optimizer_scalars" not in meta:
        raise DTIError(f"{path}: not a checkpoint of this suite (no step or optimizer state)")
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
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = state
    optimizer.load_state_dict(optimizer_state)
    gen.set_state(tensors["rng.train"])
    return int(meta["step"])


def log_columns(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def log_median(path: Path, column: str) -> float | None:
    """The median of ``column`` over a step log's training steps (step >= 1), None when it has no value there."""
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) >= 1 and r.get(column) not in (None, "")]
    values = [v for v in (float(r[column]) for r in rows) if math.isfinite(v)]
    return statistics.median(values) if values else None


class StepLog:
    """``train_log.csv``, opened once per run (appending on resume), flushed after every step so
    that it can be watched while training runs."""

    def __init__(self, path: Path):
        new = not path.exists()
        # A log begun by an older version keeps its own columns (a resumed run's rows stay aligned).
        fields = LOG_FIELDS if new else (log_columns(path) or LOG_FIELDS)
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, step, loss, embeds, initial, init_rows, before=None, grads=None, updates=None,
              lr=float("nan"), prior=None) -> list[dict]:
        """One row per encoder and vector: norm, cosines to the initializer word and the initial
        vector, the angle moved since ``before``, gradient and normalised update norms, and the prior's
        relative strength (``Method.prior_ratios``). Returns the rows."""
        cos = torch.nn.functional.cosine_similarity
        nan = float("nan")
        rows = []
        for enc, e in enumerate(embeds):
            cos_init_word = cos(e, init_rows[enc], dim=1)
            cos_initial = cos(e, initial[enc], dim=1)
            angle = torch.rad2deg(torch.arccos(cos(e, before[enc], dim=1).clamp(-1, 1))) if before else None
            for j in range(e.shape[0]):
                rows.append({
                    "step": step, "encoder": enc, "vector": j, "loss": loss, "norm": e[j].norm().item(),
                    "cos_to_initializer": cos_init_word[j].item(), "cos_to_initial": cos_initial[j].item(),
                    "angle_deg": angle[j].item() if angle is not None else nan,
                    "grad_norm": grads[enc][j].norm().item() if grads else nan,
                    "update_norm": updates[enc][j].norm().item() if updates else nan,
                    "lr": lr, "prior_ratio": prior[enc][j].item() if prior else nan,
                })
        self.writer.writerows(rows)
        self.file.flush()
        return rows

    def close(self):
        self.file.close()
