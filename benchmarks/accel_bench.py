"""What the benchmarks share to measure dti.accel variants: a results file rewritten after each
variant (a run killed by its time limit keeps what it measured), the eager variant's reference
outputs in a safetensors file (so a later process compares against it), and the capture and replay
of one denoiser call."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from dti.io import atomic_path, save_tensors


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference||, in float32 on the CPU."""
    value, reference = value.detach().float().cpu(), reference.detach().float().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


class Results:
    """A JSON file of ``{"machine": ..., "results": [...]}``, rewritten atomically at each ``add``."""

    def __init__(self, path: str | None, header: dict):
        self.path, self.data = path, {**header, "results": []}

    def add(self, result: dict):
        self.data["results"].append(result)
        if self.path:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=1, default=str))


def save_reference(path: str, tensors: dict[str, torch.Tensor], meta: dict):
    save_tensors(tensors, path, {"meta": json.dumps(meta)})


def load_reference(path: str | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tensors and metadata of a reference file; None if there is none (yet)."""
    if not path or not Path(path).is_file():
        return None
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads((f.metadata() or {}).get("meta", "{}"))


def capture_next_call(module: torch.nn.Module) -> dict:
    """Record the arguments of ``module``'s next call into the returned dict (the hook then removes itself)."""
    box = {}

    def hook(_module, args, kwargs):
        box.update(args=args, kwargs=kwargs)
        handle.remove()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    return box


def flatten_call(box: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A captured call as safetensors-able tensors (``args.0``, ``kwargs.name``, ``kwargs.name.key``)
    and the JSON of its other values."""
    tensors, rest = {}, {"n_args": len(box["args"]), "kwargs": {}}
    for i, a in enumerate(box["args"]):
        tensors[f"args.{i}"] = a
    for k, v in box["kwargs"].items():
        if torch.is_tensor(v):
            tensors[f"kwargs.{k}"] = v
        elif isinstance(v, dict):
            tensors.update({f"kwargs.{k}.{kk}": vv for kk, vv in v.items()})
            rest["kwargs"][k] = "dict"
        else:
            rest["kwargs"][k] = v
    return {k: v.detach().cpu() for k, v in tensors.items()}, rest


def unflatten_call(tensors: dict[str, torch.Tensor], rest: dict, device) -> tuple[list, dict]:
    args = [tensors[f"args.{i}"].to(device) for i in range(rest["n_args"])]
    kwargs = {}
    for k, v in rest["kwargs"].items():
        if v == "dict":
            kwargs[k] = {name.split(".", 2)[2]: t.to(device) for name, t in tensors.items()
                         if name.startswith(f"kwargs.{k}.")}
        else:
            kwargs[k] = v
    kwargs.update({name.split(".", 1)[1]: t.to(device) for name, t in tensors.items()
                   if name.startswith("kwargs.") and name.count(".") == 1})
    return args, kwargs


def first_output(out) -> torch.Tensor:
    """The tensor a diffusers model returns (``.sample``, or the first of a tuple)."""
    return out[0] if isinstance(out, tuple) else out.sample
