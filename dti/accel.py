"""Throughput settings of the frozen modules: torch.compile, channels-last memory, fused q/k/v
projections, the scaled-dot-product attention kernel, and the sampling batch chosen by memory.

Every setting is off by default. Each keeps the outputs within ``TOLERANCE`` of the eager path
(checked on the CPU by tests/test_accel.py, on a GPU by benchmarks/gpu_check.sh); none touches a
learned row or a text encoder's input embedding, so training stays as trainable as before.

Use: ``cfg.check_accel(device)`` before a model loads; ``apply_to_pipeline(pipe, cfg, device,
training)`` once after; every training step or pipeline call inside ``attention_context(cfg)``; and,
for ``sample_batch=auto``, ``auto_sample_batch(pipe, call, device, limit, cfg, fallback)`` for the
images per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .options import apply_assignments, option
from .io import DTIError

COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs: a CUDA device only

# The attention setting -> SDPA kernels in priority order (torch falls through to the next one a call
# cannot use, e.g. flash with an attention mask); None: torch's own order.
_FLASH, _EFFICIENT, _CUDNN, _MATH = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                     SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)
ATTENTION = {
    "auto": None,
    "flash": [_FLASH, _EFFICIENT, _CUDNN, _MATH],
    "efficient": [_EFFICIENT, _FLASH, _CUDNN, _MATH],
    "cudnn": [_CUDNN, _FLASH, _EFFICIENT, _MATH],
    "math": [_MATH],  # the reference kernel, alone
}
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")  # the CPU has flash and math kernels only

# Denoiser classes whose attention processors use fused projections once fused, and how to fuse them.
# (diffusers' SANA processors read to_q/to_k/to_v even after fuse_qkv_projections: nothing to gain.)
QKV_FUSERS = {"UNet2DConditionModel": lambda module: module.fuse_qkv_projections()}

# How far an accelerated path may be from the eager one, per dtype of the frozen modules:
# ``denoiser``: relative L2 error of one denoiser output (forward) or of the gradient of one training
# step; ``image``: mean absolute difference of 8-bit images from the same seeds (0-255 scale).
TOLERANCE = {
    torch.float32: {"denoiser": 1e-4, "image": 1.0},
    torch.bfloat16: {"denoiser": 2e-2, "image": 4.0},
    torch.float16: {"denoiser": 5e-3, "image": 4.0},
}


@dataclass
class AccelConfig:
    """The settings training and sampling share. ``TrainAccel`` and ``SampleAccel`` add their own;
    a configuration class takes them by inheriting one of those."""

    compile: str = option("off", "torch.compile of the denoiser: off, default, max-autotune-no-cudagraphs, "
                                 "reduce-overhead or max-autotune (both with CUDA graphs: a CUDA GPU only). The "
                                 "first call of each new shape compiles (a minute or more at real size).")
    channels_last: bool = option(False, "Denoiser (and, sampling, the VAE) in channels-last memory format.")
    fuse_qkv: bool = option(False, "Fuse the denoiser's attention q/k/v projections into one matrix product "
                                   "(UNet denoisers: SD, SDXL; refused where diffusers' processors ignore it).")
    attention: str = option("auto", "Scaled-dot-product attention kernel tried first: auto (torch's order), flash, "
                                    "efficient, cudnn (these two: CUDA only) or math (the reference, alone).")

    def check_accel(self, device: torch.device | None = None):
        """The values are known ones (no device: the workflow checks before any job starts); with a
        device, also usable there. Cheap: nothing is compiled or run."""
        choices = {"compile": COMPILE_MODES, "attention": tuple(ATTENTION), "sample_batch": ("fixed", "auto")}
        for name, valid in choices.items():
            value = getattr(self, name, valid[0])
            if value not in valid:
                raise DTIError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if getattr(self, "compile_text_encoders", False) and self.compile == "off":
            raise DTIError("compile_text_encoders needs a compile mode (compile=default, ...), got compile=off")
        if device is None:
            return
        if device.type != "cuda":
            if self.compile in CUDA_GRAPH_MODES:
                raise DTIError(f"compile={self.compile} captures CUDA graphs, which need a CUDA device, not "
                               f"{device.type}; use compile=default or max-autotune-no-cudagraphs")
            if self.attention in CUDA_ONLY_ATTENTION:
                raise DTIError(f"attention={self.attention} is a CUDA kernel; on {device.type} use auto, flash or math")
        if self.compile != "off":
            missing = _compiler_missing(device)
            if missing:
                raise DTIError(f"compile={self.compile} on {device.type} needs {missing}; set compile=off")


@dataclass
class TrainAccel(AccelConfig):
    compile_text_encoders: bool = option(False, "Also compile the text encoder(s), in the same mode (the learned "
                                                "rows stay trainable).")


@dataclass
class SampleAccel(AccelConfig):
    sample_batch: str = option("fixed", "Images per pipeline call: fixed (batch_size) or auto (as many as fit in "
                                        "85% of the free GPU memory, from one- and two-image probes, at most the "
                                        "images left; CPU: batch_size).")


# Every field name of the settings: not inputs of a result (sampling stamps, a run's configuration on
# resume), since results stay within TOLERANCE of the eager path whatever their values.
ACCEL_FIELDS = frozenset(f.name for cls in (TrainAccel, SampleAccel) for f in dataclasses.fields(cls))


def eager(cfg) -> bool:
    """Whether ``cfg`` leaves the modules as they are (the sampling batch aside)."""
    return cfg.compile == "off" and not cfg.channels_last and not cfg.fuse_qkv and cfg.attention == "auto"


def _compiler_missing(device: torch.device) -> str | None:
    """What inductor lacks to generate code for ``device``: triton on a GPU, a C++ compiler on the CPU."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "the triton package"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return None if any(c and shutil.which(c) for c in compilers) else "a C++ compiler (g++, clang++ or $CXX)"


def parse_variant(spec: str, cls: type[AccelConfig] = TrainAccel) -> AccelConfig:
    """``eager`` or comma-separated ``key=value`` settings (``compile=default,channels_last=true``):
    the benchmarks' notation for one variant."""
    spec = spec.strip()
    items = [] if spec in ("", "eager") else [item for item in spec.split(",") if item.strip()]
    cfg = apply_assignments(cls(), items)
    cfg.check_accel()
    return cfg


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: its UNet, else its transformer."""
    module = getattr(pipe, "unet", None)
    module = getattr(pipe, "transformer", None) if module is None else module
    if module is None:
        raise DTIError(f"{type(pipe).__name__} has neither a unet nor a transformer to accelerate")
    return module


def text_encoders_of(pipe) -> list[torch.nn.Module]:
    return [m for name in ("text_encoder", "text_encoder_2") if (m := getattr(pipe, name, None)) is not None]


def _channels_last(module: torch.nn.Module) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters() if p.dim() == 4)


def _compile(module: torch.nn.Module, mode: str) -> bool:
    """Compile ``module`` in place (its class, parameters and state dict unchanged); False if it already was."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        return False
    # Static shapes: a new batch size compiles anew (sampling's last call may be smaller) rather than
    # turning every size symbolic, which CUDA graphs cannot capture.
    module.compile(mode=None if mode == "default" else mode, dynamic=False)
    return True


def apply_to_pipeline(pipe, cfg, device: torch.device, training: bool = False) -> list[str]:
    """Apply the settings of ``cfg`` (an AccelConfig, or any config with its fields) to ``pipe``'s frozen
    modules, in place; returns what it did, one line each (the attention kernels: what is in effect).
    Checked first: a refusal changes nothing. Idempotent: a second call on the same modules (a shared
    denoiser) changes nothing more."""
    AccelConfig.check_accel(cfg, device)
    denoiser = denoiser_of(pipe)
    kind = type(denoiser).__name__
    if cfg.fuse_qkv and kind not in QKV_FUSERS:
        raise DTIError(f"fuse_qkv: {kind} has no fused attention projections to use (supported: "
                       f"{', '.join(QKV_FUSERS)}); set fuse_qkv=false")
    done = []
    if cfg.fuse_qkv and not getattr(denoiser, "_accel_fused_qkv", False):
        QKV_FUSERS[kind](denoiser)
        denoiser._accel_fused_qkv = True
        # The fused layers are new parameters, created trainable: the denoiser stays frozen.
        denoiser.requires_grad_(False)
        done.append(f"fused q/k/v projections of {kind}")
    if cfg.channels_last:
        # Training runs the VAE once per run, in float32 (Family.encode_images): left as it is.
        modules = {"denoiser": denoiser, "vae": None if training else getattr(pipe, "vae", None)}
        changed = [name for name, m in modules.items() if m is not None and not _channels_last(m)]
        for name in changed:
            modules[name].to(memory_format=torch.channels_last)
        if changed:
            done.append(f"channels-last memory: {', '.join(changed)}")
    if cfg.compile != "off":
        encoders = training and getattr(cfg, "compile_text_encoders", False)
        targets = [denoiser] + (text_encoders_of(pipe) if encoders else [])
        compiled = [type(m).__name__ for m in targets if _compile(m, cfg.compile)]
        if compiled:
            done.append(f"torch.compile mode {cfg.compile}: {', '.join(compiled)}")
    if cfg.attention != "auto":
        done.append(f"attention kernels in the order {', '.join(b.name for b in ATTENTION[cfg.attention])}")
    return done


def attention_context(cfg):
    """The SDPA kernel order of ``cfg.attention`` while the block runs (no change for auto). Enter it
    around every denoiser and text-encoder call: training steps, pipeline calls."""
    order = ATTENTION[cfg.attention]
    return contextlib.nullcontext() if order is None else sdpa_kernel(order, set_priority=True)


def auto_sample_batch(pipe, call: dict, device: torch.device, limit: int, cfg=None, fallback: int = 1,
                      fraction: float = 0.85) -> int:
    """Images per pipeline call that fit in ``fraction`` of the free GPU memory, at most ``limit``
    (at least 1). Two probe calls of one denoising step, with one and with two images, give the memory
    a call needs per image and beside it (guidance doubles the denoiser's batch; the VAE decode counts).
    They run eagerly (a compiled denoiser is not compiled for the probes' shapes), with the attention
    kernels of ``cfg``. Without a CUDA device there is no memory to measure: ``fallback`` (at most ``limit``)."""
    if device.type != "cuda" or limit <= 1:
        return max(1, min(limit, fallback))
    call = {**call, "num_inference_steps": 1}
    peaks = []
    with torch.no_grad(), torch.compiler.set_stance("force_eager"), attention_context(cfg or AccelConfig()):
        for n in (1, 2):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            pipe(prompt=["a photo"] * n, **call)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
    torch.cuda.empty_cache()
    per_image = max(peaks[1] - peaks[0], 1)
    beside = max(peaks[0] - per_image, 0)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(limit, int((free * fraction - beside) // per_image)))
