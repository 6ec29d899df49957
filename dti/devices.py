"""Where a job runs, and the dtype its frozen modules are held in there."""

from __future__ import annotations

import torch

from .io import DTIError


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
    """Frozen modules run in bf16/fp16 on a GPU when asked; on the CPU everything is float32."""
    if device.type == "cpu" or mixed_precision == "no":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
