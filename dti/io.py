"""Small file helpers: atomic writes, safetensors, run records. Nothing here unpickles."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class DTIError(Exception):
    """A user-facing error: its message is one line that names the problem."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DTIError(f"{path}: only .safetensors files are read")
    if not path.is_file():
        raise DTIError(f"{path}: no such file")
    return load_file(str(path))


def write_json(obj, path):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DTIError(f"{path}: no such file")
    return json.loads(path.read_text())


def package_versions() -> dict[str, str]:
    names = ["dti", "torch", "diffusers", "transformers", "safetensors", "numpy", "pillow"]
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def truncate_log(path: str | os.PathLike, last_step: int):
    """Keep the rows of a CSV log (a ``step`` column) up to ``last_step``, atomically: what a resumed
    run logs again after its checkpoint must not stand twice."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        kept = [r for r in reader if int(r["step"]) <= last_step]
    if reader.fieldnames is None:  # empty (killed before its header): the writer starts it again
        path.unlink()
        return
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(kept)


# --- what a result was made from: a resumed run or sampling job must not mix two sets of inputs ---

def model_stamp(model: str | os.PathLike) -> str:
    """What identifies a base model's weights. A local folder: the path, size and modification time
    of every file in it (cheap for multi-GB models; rewriting any file changes it). A hub id: the
    id as given (pin a revision for more)."""
    folder = Path(model)
    if not folder.is_dir():
        return str(model)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def content_digest(items) -> str:
    """sha256 over files (by their bytes) and tensors (by their values), in the order given."""
    digest = hashlib.sha256()
    for item in items:
        if torch.is_tensor(item):
            digest.update(item.detach().float().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(Path(item).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
