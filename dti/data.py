"""Reference images and training prompts: loading, checking, and the per-step random draws."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .io import DTIError, one_line, read_json


def load_templates(key: str) -> list[str]:
    data = json.loads(resources.files("dti.resources").joinpath("training_templates.json").read_text())
    if key.startswith("_") or key not in data:
        available = ", ".join(k for k in data if not k.startswith("_"))
        raise DTIError(f"unknown template set {key!r}; available: {available}")
    return data[key]


# Images bigger than this are refused (PIL's own warning threshold, about 9459x9459): decoding one
# takes gigabytes, and a small file can claim such a size (a decompression bomb). Downscale larger photos.
MAX_PIXELS = 89_478_485
_ORIENTATION = 0x0112  # the EXIF tag
# What a broken or odd file raises while being identified, decoded or converted.
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, zlib.error)


def open_image(path: str | Path, what: str = "") -> Image.Image:
    """The image at ``path`` fully decoded (a truncated file fails here, not after a model has
    loaded), turned upright by its EXIF orientation, in its own mode. Its size is checked against
    ``MAX_PIXELS`` from the header, before decoding. Errors name ``what`` (e.g. "reference") and the file."""
    label = f"{what} {path}" if what else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below is ours
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise DTIError(f"{label} is too large: {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS} "
                                   "(a possible decompression bomb; downscale it)")
                im.load()
                if im.getexif().get(_ORIENTATION, 1) != 1:
                    return ImageOps.exif_transpose(im)
                return im
    except Image.DecompressionBombError as exc:  # PIL's own refusal, at twice its warning threshold
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise DTIError(f"{label} is too large: {pixels.group(1) if pixels else 'too many'} pixels, over the limit of "
                       f"{MAX_PIXELS} (a possible decompression bomb; downscale it)") from None
    except _UNREADABLE as exc:
        raise DTIError(f"{label}: not a readable image ({one_line(exc)})") from None


def to_rgb(im: Image.Image, label: str = "image") -> Image.Image:
    """8-bit RGB. ``convert("RGB")`` clips wider greyscale to 0..255 (a 16-bit photo turns all white),
    so those are scaled: 16-bit integers (modes I;16*, and I with values in 0..65535) by 1/257,
    floats (mode F) read as 0..1. Other ranges of I and F are refused: their scale is unknown."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if im.mode == "F":
            if not (np.isfinite(values).all() and lo >= 0.0 and hi <= 1.0):
                raise DTIError(f"{label}: floating-point image with values outside 0..1 ({lo:g}..{hi:g}); "
                               "save it as 8- or 16-bit")
            grey = values * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise DTIError(f"{label}: {im.mode} image with values outside 0..65535 ({lo:g}..{hi:g}); "
                               "save it as 8- or 16-bit")
            grey = values.astype(np.float64) / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    try:
        return im.convert("RGB")
    except _UNREADABLE as exc:
        raise DTIError(f"{label}: cannot convert mode {im.mode} to RGB ({one_line(exc)})") from None


def open_rgb(path: str | Path, what: str = "") -> Image.Image:
    """``open_image`` as 8-bit RGB (``to_rgb``): how every photo is read, for training and as a score reference."""
    return to_rgb(open_image(path, what), f"{what} {path}" if what else str(path))


def list_images(folder: str | Path) -> list[Path]:
    """Every non-hidden file of the folder, sorted; each must be an image that decodes fully to RGB
    (checked here, before any model loads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DTIError(f"image folder {folder} does not exist")
    broken = sorted(p.name for p in folder.iterdir() if p.is_symlink() and not p.exists())
    if broken:
        raise DTIError(f"image folder {folder}: {', '.join(broken)} link(s) to nothing")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DTIError(f"image folder {folder} is empty")
    for path in files:
        open_rgb(path)
    return files


@dataclass
class ReferenceImage:
    pixels: torch.Tensor        # [3, H, W] in [-1, 1], short side = resolution
    original_size: tuple[int, int]  # (height, width) of the upright image


def load_reference(path: Path, resolution: int, multiple: int) -> ReferenceImage:
    """Resize the short side to ``resolution`` and trim the long side (centred) to a multiple of
    the VAE's pixels per latent, so random crops can be taken in latent space."""
    im = open_rgb(path)
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    tw, th = nw - nw % multiple, nh - nh % multiple
    left, top = (nw - tw) // 2, (nh - th) // 2
    im = im.crop((left, top, left + tw, top + th))
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
    return ReferenceImage(pixels=arr / 127.5 - 1.0, original_size=(h, w))


class EpochOrder:
    """Which photo each draw takes: shuffled epochs, as the authors' data loader gives them. Epoch e
    is the e-th permutation of a generator of its own (seeded from the run's seed), so draw k is a
    function of k alone and a resumed run continues the same order."""

    def __init__(self, n_images: int, seed: int):
        self.n = n_images
        self.gen = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)  # not the run's stream
        self.perms: list[list[int]] = []

    def picks(self, start: int, count: int) -> list[int]:
        out = []
        for k in range(start, start + count):
            epoch, position = divmod(k, self.n)
            while len(self.perms) <= epoch:
                self.perms.append(torch.randperm(self.n, generator=self.gen).tolist())
            out.append(self.perms[epoch][position])
        return out


def zero_pad_count(gen: torch.Generator) -> int:
    """n = floor(clip(Exponential(scale 2), 0, 15)): how many zero-pad tokens precede a prompt."""
    u = torch.rand((), generator=gen, dtype=torch.float64).item()
    return int(min(-2.0 * math.log1p(-u), 15.0))


def draw_batch(latents: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[tuple[int, int]], templates: list[str],
               token_string: str, batch_size: int, crop: int, pixels_per_latent: int, gen: torch.Generator,
               picks: list[int] | None = None, sample_latents: bool = True, zero_pad=None) -> dict:
    """One micro-batch: ``picks`` (else photos drawn with replacement), a random template each, a
    random latent-space crop each, sampled from its VAE posterior (``sample_latents``, else its
    mean). ``zero_pad(prompt, n)``: prepend n zero-pad tokens, n drawn per prompt."""
    if picks is None:
        picks = torch.randint(0, len(latents), (batch_size,), generator=gen).tolist()
    tmpl = torch.randint(0, len(templates), (batch_size,), generator=gen).tolist()
    prompts = [templates[j].format(token_string) for j in tmpl]
    if zero_pad is not None:
        prompts = [zero_pad(p, zero_pad_count(gen)) for p in prompts]
    crops, time_ids = [], []
    for i in picks:
        mean, std = latents[i]
        top = torch.randint(0, mean.shape[1] - crop + 1, (1,), generator=gen).item()
        left = torch.randint(0, mean.shape[2] - crop + 1, (1,), generator=gen).item()
        window = (slice(None), slice(top, top + crop), slice(left, left + crop))
        latent = mean[window]
        if sample_latents:
            latent = latent + std[window] * torch.randn(latent.shape, generator=gen).to(latent.device)
        crops.append(latent)
        target = crop * pixels_per_latent
        time_ids.append([*sizes[i], top * pixels_per_latent, left * pixels_per_latent, target, target])
    return {"latents": torch.stack(crops), "prompts": prompts, "time_ids": time_ids}


# --- the DreamBooth benchmark ------------------------------------------------------

BENCHMARK = resources.files("dti.resources").joinpath("dreambooth")  # package data: any install has it
DREAMBOOTH_ARCHIVE = "https://github.com/google/dreambooth/archive/refs/heads/main.zip"
DREAMBOOTH_IMAGES = 158
DREAMBOOTH_EXTRA_FILES = ("LICENSE.md", "references_and_licenses.txt", "prompts_and_classes.txt")


def read_subjects(path: str | Path | None = None) -> list[dict]:
    """The subjects table (``subject, class, dti_class, initializer, live``, and optionally ``split``: test or
    validation), in file order."""
    path = Path(path) if path else BENCHMARK.joinpath("subjects.csv")
    if not path.is_file():
        raise DTIError(f"subjects table {path} not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["live"] = str(row.get("live", "")).strip().lower() == "true"
        if row.get("split", "test") not in ("test", "validation"):
            raise DTIError(f"subjects table {path}: subject {row.get('subject')!r} has split {row['split']!r}; "
                           "use test or validation")
    return rows


def read_prompt_set(name: str, live: bool, path: str | Path | None = None) -> list[str]:
    path = Path(path) if path else BENCHMARK.joinpath("prompt_sets.json")
    if not path.is_file():
        raise DTIError(f"prompt sets file {path} not found")
    sets = {k: v for k, v in read_json(path).items() if not k.startswith("_")}
    if name not in sets:
        raise DTIError(f"unknown prompt set {name!r}; available: {', '.join(sorted(sets))}")
    return sets[name]["live" if live else "object"]


def check_dreambooth(root: Path, subjects: list[dict]) -> int:
    """Every subject folder present with readable images, 158 images in all; returns the count."""
    missing = [s["subject"] for s in subjects if not (root / s["subject"]).is_dir()]
    if missing:
        raise DTIError(f"{root}: missing subject folders: {', '.join(missing)}")
    count = sum(len(list_images(root / s["subject"])) for s in subjects)
    if count != DREAMBOOTH_IMAGES:
        raise DTIError(f"{root}: {count} images, expected {DREAMBOOTH_IMAGES}")
    return count


def fetch_dreambooth(out: str | Path, from_dir: str | Path | None = None, masks: str | Path | None = None,
                     subjects_file: str | Path | None = None) -> Path:
    """Put the DreamBooth images in ``out`` (from a local copy, else the public archive), checked,
    with the subjects table beside them; optional masks are checked and copied to ``out/masks``."""
    out = Path(out)
    subjects = read_subjects(subjects_file)
    if out.exists():
        check_dreambooth(out, subjects)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        staging = Path(tmp) / "dreambooth"
        if from_dir:
            source = Path(from_dir)
            if not source.is_dir():
                raise DTIError(f"--from {source}: no such folder")
        else:
            source = _download_dreambooth(Path(tmp))
        check_dreambooth(source, subjects)
        staging.mkdir()
        for s in subjects:
            shutil.copytree(source / s["subject"], staging / s["subject"])
        for name in DREAMBOOTH_EXTRA_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        if masks:
            _copy_masks(Path(masks), staging, subjects)
        with (staging / "subjects.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["subject", "class", "dti_class", "initializer", "live"])
            writer.writeheader()
            writer.writerows(subjects)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    return out


def _download_dreambooth(tmp: Path) -> Path:
    try:
        with urllib.request.urlopen(DREAMBOOTH_ARCHIVE, timeout=60) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except (OSError, zipfile.BadZipFile) as exc:
        raise DTIError(f"cannot download {DREAMBOOTH_ARCHIVE} ({exc}); pass --from LOCAL_DIR instead") from None
    archive.extractall(tmp / "archive")
    found = sorted((tmp / "archive").glob("*/dataset"))
    if not found:
        raise DTIError(f"{DREAMBOOTH_ARCHIVE} has no dataset/ folder")
    return found[0]


def _copy_masks(masks: Path, staging: Path, subjects: list[dict]):
    """Masks mirror the image layout: ``<subject>/<image stem>.png``, one channel, nonzero = subject."""
    for s in subjects:
        for image in list_images(staging / s["subject"]):
            mask = masks / s["subject"] / f"{image.stem}.png"
            if not mask.is_file():
                raise DTIError(f"mask {mask} missing for {image.name}")
            m, im = open_image(mask, "mask"), open_image(image)  # both upright, as they are scored
            if m.size != im.size:
                raise DTIError(f"mask {mask} is {m.size}, its image {im.size}")
            (staging / "masks" / s["subject"]).mkdir(parents=True, exist_ok=True)
            shutil.copy2(mask, staging / "masks" / s["subject"] / mask.name)
