"""Where a job runs, and the dtype its frozen modules are held in there."""

from __future__ import annotations

import torch

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
