"""Small file helpers: atomic writes, safetensors, run records. Nothing here unpickles."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import platform
import re
import socket
import struct
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save


class DTIError(Exception):
    """A user-facing error: its message is one line that names the problem."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success. The file
    gets the mode a plain ``open`` would give (0666 less the umask), not the temporary file's 0600:
    on a shared cluster, group members must read results."""
    path = Path(path)
    if path.is_dir():
        raise DTIError(f"{path} is a folder; a file of that name is to be written")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str):
    """Hold an exclusive lock on the lock file ``path`` (created if needed) while the block runs;
    a second holder fails at once, in one line naming the first (host and process id). The lock
    goes with the process, so a killed holder never leaves a stale one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DTIError(f"{what} is in use by {holder} (lock {path}); wait for it or choose another output") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None):
    """A safetensors file whose bytes depend on its content alone: the library writes the metadata
    in a random order per process, so the header is rewritten with sorted keys."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()})
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the library writes it
    with atomic_path(path) as tmp:
        tmp.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + size:])


def load_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DTIError(f"{path}: only .safetensors files are read")
    if not path.is_file():
        raise DTIError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DTIError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def write_json(obj, path):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DTIError(f"{path}: no such file")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DTIError(f"{path}: not readable JSON ({one_line(exc)})") from None
    if not isinstance(value, dict):
        raise DTIError(f"{path}: expected a JSON object")
    return value


def check_name(value: str, what: str) -> str:
    """A plain file name (letters, digits, '.', '_', '-'; not '.' or '..'): names that become paths,
    such as subjects, must never reach outside their folder."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", str(value)) or set(str(value)) == {"."}:
        raise DTIError(f"{what} {value!r} is not a plain name (letters, digits, '.', '_', '-')")
    return str(value)


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and its first 300 characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


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
    """Keep the complete rows of a CSV log (a ``step`` column) up to ``last_step``, atomically: what a
    resumed run logs again after its checkpoint must not stand twice, and a row cut off by a kill
    (fewer fields than the header) must not stand at all."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:  # empty (killed before its header): the writer starts it again
        path.unlink()
        return
    header, body = rows[0], rows[1:]
    step = header.index("step")
    complete = [r for r in body if len(r) == len(header) and all(r) and r[step].isdigit()]
    kept = [r for r in complete if int(r[step]) <= last_step]
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
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
