"""Exporting a finished run's concept for other tools, under a trigger word.

* ``a1111``: one ``<trigger>.safetensors`` as AUTOMATIC1111's web UI and ComfyUI read it (both take
  the trigger from the file name): ``emb_params`` [k, d] for SD-style models, ``clip_l`` and ``clip_g``
  for SDXL.
* ``diffusers``: the files ``load_textual_inversion`` reads, one per text encoder, keyed by the
  trigger: ``<trigger>.safetensors`` (and ``<trigger>_2.safetensors`` for SDXL's second encoder).

Every file carries the Stability AI model-spec metadata (``modelspec.*``) and this suite's own
(``dti.*``), among them the numeric m* of each encoder.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save

from .embeddings import fixed_norms, read_run, run_method
from .io import DTIError, check_name, one_line, save_tensors
from .runs import model_revision

TI_ADAPTER = "textual-inversion"
SDXL_ARCHITECTURE = "stable-diffusion-xl-v1-base"
IMPLEMENTATIONS = {"a1111": "https://github.com/Stability-AI/generative-models", "diffusers": "diffusers"}


def _sd_architecture(record: dict, rows: list[torch.Tensor]) -> str:
    """SD 1.x has a 768-wide text encoder, SD 2.x a 1024-wide one (512, or 768 with v-prediction)."""
    if rows[0].shape[1] != 1024:
        return "stable-diffusion-v1"
    return "stable-diffusion-v2-768-v" if _prediction_type(record) == "v_prediction" else "stable-diffusion-v2-512"


def _prediction_type(record: dict) -> str | None:
    from diffusers import DDPMScheduler

    try:
        sched = DDPMScheduler.load_config(record["config"]["model"], subfolder="scheduler",
                                          revision=model_revision(record))
    except Exception:  # noqa: BLE001 - the base model may be gone; the architecture then says 512
        return None
    return sched.get("prediction_type")


# The model-spec architecture of each exportable family (SANA has no textual-inversion loader anywhere).
ARCHITECTURES: dict[str, Callable[[dict, list[torch.Tensor]], str]] = {
    "sd": _sd_architecture,
    "sdxl": lambda record, rows: SDXL_ARCHITECTURE,
}


@dataclass(frozen=True)
class Layout:
    """A file of an export: its name and the tensor key of each encoder's vectors it holds."""

    name: str
    keys: dict[int, str]  # encoder index -> tensor key


def _a1111_layout(family: str, trigger: str, n_encoders: int) -> list[Layout]:
    keys = {0: "clip_l", 1: "clip_g"} if family == "sdxl" else {0: "emb_params"}
    return [Layout(f"{trigger}.safetensors", keys)]


def _diffusers_layout(family: str, trigger: str, n_encoders: int) -> list[Layout]:
    suffixes = ["", "_2"]  # as the run's own learned_embeds.safetensors and learned_embeds_2.safetensors
    return [Layout(f"{trigger}{suffixes[i]}.safetensors", {i: trigger}) for i in range(n_encoders)]


FORMATS: dict[str, Callable[[str, str, int], list[Layout]]] = {"a1111": _a1111_layout, "diffusers": _diffusers_layout}


def _tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """The model spec's hash_sha256: sha256 of the tensor bytes, the header excluded."""
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    (size,) = struct.unpack("<Q", blob[:8])
    return "0x" + hashlib.sha256(blob[8 + size:]).hexdigest()


def _version() -> str:
    try:
        return metadata.version("dti")
    except metadata.PackageNotFoundError:
        return "unknown"


def _metadata(record: dict, trigger: str, fmt: str, architecture: str, keys: dict[int, str],
              rows: list[torch.Tensor], m_star: list[float] | None) -> dict[str, str]:
    cfg = record["config"]
    method = run_method(record)
    k = rows[0].shape[0]
    norm_text = "" if m_star is None else " m* " + ", ".join(f"{m_star[i]:.4g}" for i in keys) + ";"
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/{TI_ADAPTER}",
        "modelspec.implementation": IMPLEMENTATIONS[fmt],
        "modelspec.title": trigger,
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "modelspec.description": (f"{method} concept ({k} vector{'s' * (k > 1)} per text encoder;{norm_text} "
                                  f"initializer {cfg['initializer']!r}), {cfg['steps']} steps on {cfg['model']}"),
        "modelspec.resolution": f"{cfg['resolution']}x{cfg['resolution']}",
        "modelspec.trigger_phrase": trigger,
        "modelspec.usage_hint": f"Trigger word: {trigger}",
        "dti.version": _version(),
        "dti.method": method,
        "dti.family": cfg["family"],
        "dti.base_model": cfg["model"],
        "dti.initializer": cfg["initializer"],
        "dti.steps": str(cfg["steps"]),
        "dti.seed": str(cfg["seed"]),
        "dti.norms": json.dumps({key: rows[i].norm(dim=1).tolist() for i, key in keys.items()}),
    }
    if m_star is not None:  # DTI and TI-rescaled fix each encoder's norm; TI and CrossInit do not
        meta["dti.m_star"] = json.dumps({key: m_star[i] for i, key in keys.items()})
        meta["dti.m_star_stat"] = str(record.get("rescale_stat") or cfg.get("m_star"))
    return meta


def export(run_dir: str | Path, trigger: str, fmt: str = "a1111", out_dir: str | Path = ".") -> list[Path]:
    """Write a finished run's vectors for another tool under ``trigger``; returns the files written."""
    check_name(trigger, "trigger")
    if fmt not in FORMATS:
        raise DTIError(f"unknown export format {fmt!r}; choose one of {', '.join(sorted(FORMATS))}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DTIError(f"--out {out_dir} is a file, not a folder")
    record, rows = read_run(run_dir)
    family = record["config"]["family"]
    if family not in ARCHITECTURES:
        raise DTIError(f"{run_dir} is a {family} run: no {fmt} loader reads {family} embeddings "
                       f"(exportable families: {', '.join(sorted(ARCHITECTURES))})")
    try:
        m_star = fixed_norms(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise DTIError(f"{run_dir}/run.json does not say its m*: {one_line(exc)}") from None
    architecture = ARCHITECTURES[family](record, rows)
    written = []
    for layout in FORMATS[fmt](family, trigger, len(rows)):
        tensors = {key: rows[i].float().contiguous() for i, key in layout.keys.items()}
        meta = _metadata(record, trigger, fmt, architecture, layout.keys, rows, m_star)
        meta["modelspec.hash_sha256"] = _tensor_hash(tensors)
        save_tensors(tensors, out_dir / layout.name, meta)  # atomic
        written.append(out_dir / layout.name)
    return written
