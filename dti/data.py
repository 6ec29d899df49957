"""Reference images and training prompts: loading, checking, and the per-step random draws."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .io import DTIError


def load_templates(key: str) -> list[str]:
    data = json.loads(resources.files("dti.resources").joinpath("training_templates.json").read_text())
    if key.startswith("_") or key not in data:
        raise DTIError(f"unknown template set {key!r}; available: {', '.join(k for k in data if not k.startswith('_'))}")
    return data[key]


def list_images(folder: str | Path) -> list[Path]:
    """Every non-hidden file of the folder, sorted; each must be a readable image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DTIError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DTIError(f"image folder {folder} is empty")
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DTIError(f"{path}: not a readable image ({type(exc).__name__})") from None
    return files


@dataclass
class ReferenceImage:
    pixels: torch.Tensor        # [3, H, W] in [-1, 1], short side = resolution
    original_size: tuple[int, int]  # (height, width) of the file


def load_reference(path: Path, resolution: int, multiple: int) -> ReferenceImage:
    """Resize the short side to ``resolution`` and trim the long side (centred) to a multiple of
    the VAE's pixels per latent, so random crops can be taken in latent space."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        tw, th = nw - nw % multiple, nh - nh % multiple
        left, top = (nw - tw) // 2, (nh - th) // 2
        im = im.crop((left, top, left + tw, top + th))
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
    return ReferenceImage(pixels=arr / 127.5 - 1.0, original_size=(h, w))


def draw_batch(latents: list[torch.Tensor], sizes: list[tuple[int, int]], templates: list[str],
               token_string: str, batch_size: int, crop: int, pixels_per_latent: int,
               gen: torch.Generator) -> dict:
    """One micro-batch: images drawn with replacement, a random latent-space crop each, a random template each."""
    picks = torch.randint(0, len(latents), (batch_size,), generator=gen).tolist()
    tmpl = torch.randint(0, len(templates), (batch_size,), generator=gen).tolist()
    crops, time_ids = [], []
    for i in picks:
        lat = latents[i]
        top = torch.randint(0, lat.shape[1] - crop + 1, (1,), generator=gen).item()
        left = torch.randint(0, lat.shape[2] - crop + 1, (1,), generator=gen).item()
        crops.append(lat[:, top:top + crop, left:left + crop])
        target = crop * pixels_per_latent
        time_ids.append([*sizes[i], top * pixels_per_latent, left * pixels_per_latent, target, target])
    return {"latents": torch.stack(crops), "prompts": [templates[j].format(token_string) for j in tmpl],
            "time_ids": time_ids}
