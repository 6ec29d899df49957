"""Where a job runs: its device, the dtype its frozen modules are held in there, and where its
progress goes (a bar for a person, plain lines for a log file)."""

from __future__ import annotations

import sys
import time

import torch
from tqdm.auto import tqdm

from .io import DTIError


def check_device_name(name: str) -> str:
    """A device name torch can parse, or 'auto' (the workflow checks names on a machine that may
    have no GPU; ``resolve_device`` checks the GPU where the job runs)."""
    if name == "auto":
        return name
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise DTIError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    return name


def resolve_device(name: str) -> torch.device:
    """'auto' (the GPU if torch sees one, else the CPU) or a torch device name; a one-line error
    for a name torch does not know or a CUDA device on a machine without one."""
    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DTIError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    return device


def frozen_dtype(device: torch.device, mixed_precision: str) -> torch.dtype:
    """Frozen modules run in bf16/fp16 on a GPU when asked; on the CPU everything is float32."""
    if device.type == "cpu" or mixed_precision == "no":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def interactive(stream=None) -> bool:
    """Whether progress is watched by a person (a terminal, or a notebook, where ``tqdm.auto`` draws a
    widget) rather than written to a log file (a workflow's or batch job's), where a redrawn bar is noise."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")  # a notebook's kernel, not a terminal IPython


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS."""
    if not seconds < float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Progress of a loop over ``total`` units: a ``tqdm.auto`` bar for a person; for a log file, a
    plain line (``desc unit done/total key=value ... | rate, eta``), flushed, whenever ``done`` reaches
    a multiple of ``every`` and at the end (``every=0``: no lines)."""

    def __init__(self, total: int, done: int = 0, every: int = 1, desc: str = "", unit: str = "step", stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.every, self.desc, self.unit = total, done, every, desc, unit
        self.start, self.started_at = time.monotonic(), done
        self.bar = (tqdm(total=total, initial=done, desc=desc, unit=unit, file=self.stream)
                    if interactive(self.stream) else None)

    def update(self, n: int = 1, fields: dict[str, str] | None = None):
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            if fields:
                self.bar.set_postfix(fields, refresh=False)  # drawn by the update
            self.bar.update(n)
            return
        due = self.every and (self.done // self.every > before // self.every or self.done == self.total)
        if not due:
            return
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.started_at) / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        values = "".join(f" {k}={v}" for k, v in (fields or {}).items())
        print(f"{self.desc} {self.unit} {self.done}/{self.total}{values} | {rate:.3g} {self.unit}/s, eta {clock(eta)}",
              file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
