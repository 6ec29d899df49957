#!/usr/bin/env python
"""Time one training step of TI and of DTI in the same process, and the denoiser-only floor.

For every configuration the script builds two trainers (``dti.train.Trainer``), one for
TI and one for DTI, on the same pipeline architecture, batch size and training
resolution, plus a "floor" measurement: one forward and backward pass of the frozen
denoiser with respect to its text conditioning only (the prompt embeddings, and SDXL's
pooled embedding, are leaf tensors with requires_grad; no text encoder runs). The floor
is the part of a step no embedding method can avoid; step minus floor is the text
encoder's forward/backward plus the method's own work (parametrisation, optimizer).

After warm-up the three measurements are interleaved (TI, DTI, floor, then the reverse
order, and so on), ``--block`` steps of one kind at a time, so that a slow phase of the
machine hits all of them alike. Each step is timed alone (with a CUDA synchronisation
before and after on a GPU). Reported: the median ms per step of each, their
interquartile range, the ratio of the DTI and TI medians, and the median, quartiles and
95% bootstrap interval of the median of the per-round paired ratio DTI/TI (robust to slow
drifts of the machine's load).

Shapes:
  tiny  (default) the random-weight tiny SD, SDXL and SANA pipelines of tests/tiny.py, built
        into a temporary folder and run on the CPU at 64 px (SANA's DC-AE has 32 px per
        latent, so its latent is 2 x 2).
  real  random-weight SDXL base 1.0 (768 px) and SANA 1.5 1.6B / 4.8B (1024 px) at their
        real shapes, bf16 frozen modules, on CUDA only. The text encoders and denoisers
        are full size; the VAEs are tiny (they only encode the reference images once per
        run) but keep the real latent channels and pixels per latent, so the latents have
        the real sizes (96 x 96 x 4 and 32 x 32 x 32).

Reference images are random RGB PNGs (numpy, fixed seed) written to a temporary folder.
Batch sizes default to the protocol's micro-batch (SD/SDXL 4, SANA 2) and gradient
accumulation to 1 for every family (SANA's protocol accumulates 2 micro-batches; a step
would then be two micro-batches of TI, of DTI and of the floor alike).

Output columns: TI ms / DTI ms / floor ms are median wall-clock ms per step; DTI/TI is the
ratio of the two medians; "paired DTI/TI [IQR]" is the median and quartiles of the per-round
ratios. --shapes real without a CUDA GPU prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accel_bench import Results, load_reference, rel_error, save_reference  # noqa: E402
from dti import accel  # noqa: E402
from dti.config import TrainConfig  # noqa: E402
from dti.io import DTIError  # noqa: E402
from dti.data import draw_batch, list_images  # noqa: E402
from dti.families import FAMILIES  # noqa: E402
from dti.train import Trainer, resolve_config  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()

METHODS = ("ti", "dti")
PLACEHOLDER, INITIALIZER = "<sks>", "dog"

# --------------------------------------------------------------------------- #
# Real-shape configurations (random weights)
# --------------------------------------------------------------------------- #
# SDXL base 1.0 UNet, stabilityai/stable-diffusion-xl-base-1.0 unet/config.json. Every value is
# the released one (diffusers' "attention_head_dim" here is the number of heads; head size 64).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG), concatenated
    use_linear_projection=True, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size/crop ids x 256 + 1280 pooled text
)
# SDXL text_encoder: CLIP ViT-L/14 text tower (CLIPTextModel). Released values.
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,  # the legacy ids of the released config
)
# SDXL text_encoder_2: OpenCLIP ViT-bigG/14 text tower with projection. Released values.
CLIP_G_TEXT = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# SANA 1.5 1.6B transformer (Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers). Sure of: 20 layers,
# 70 heads x 32 = 2240 wide, cross-attention 20 heads x 112 = 2240, caption_channels 2304 (Gemma-2-2B),
# mlp_ratio 2.5, patch 1, 32 latent channels, sample_size 32 (1024 px / 32): these are diffusers'
# SanaTransformer2DModel defaults and the values of diffusers' conversion script for the 1600M model.
# qk_norm "rms_norm_across_heads" is what that script sets for the SANA 1.5 models (SANA 1.0 has none);
# it adds only normalisation weights and a little compute.
SANA15_1600M = dict(
    in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
    num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
    caption_channels=2304, mlp_ratio=2.5, attention_bias=False, sample_size=32, patch_size=1,
    norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
    qk_norm="rms_norm_across_heads", timestep_scale=1.0,
)
# SANA 1.5 4.8B: the 1.6B model grown in depth to 60 blocks, same widths (SanaMS_4800M_P1_D60).
SANA15_4800M = {**SANA15_1600M, "num_layers": 60}
# Gemma-2-2B (SANA uses gemma-2-2b-it, the same architecture), the decoder only (Gemma2Model).
# Released values; sure of all of them.
GEMMA2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256,
    sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
# Published sizes, for --param-count.
KNOWN_SIZES = {"SDXL UNet": 2.57e9, "CLIP ViT-L text": 123e6, "OpenCLIP bigG text + projection": 695e6,
               "SANA 1.5 1.6B transformer": 1.6e9, "SANA 1.5 4.8B transformer": 4.8e9, "Gemma-2-2B": 2.6e9}

# label -> dti family, training resolution (px), default micro-batch
REAL = {"sdxl": ("sdxl", 768, 4), "sana-1.6b": ("sana", 1024, 2), "sana-4.8b": ("sana", 1024, 2)}
TINY = {"sd": ("sd", 64, 4), "sdxl": ("sdxl", 64, 4), "sana": ("sana", 64, 2)}


def sdxl_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**SDXL_UNET)


def sdxl_text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    return CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)), CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT))


def sana_transformer(label: str):
    from diffusers import SanaTransformer2DModel
    return SanaTransformer2DModel(**(SANA15_4800M if label == "sana-4.8b" else SANA15_1600M))


def gemma2():
    from transformers import Gemma2Config, Gemma2Model
    return Gemma2Model(Gemma2Config(**GEMMA2_2B))


def tiny_kl_vae():
    """SDXL-layout VAE (8 px per latent, 4 latent channels) with tiny widths."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                         sample_size=1024, scaling_factor=0.13025)


def tiny_dc_vae():
    """DC-AE f32c32 layout (32 px per latent, 32 latent channels) with tiny widths, residual blocks only."""
    from diffusers import AutoencoderDC
    widths = (4, 8, 8, 16, 16, 32)
    return AutoencoderDC(in_channels=3, latent_channels=32, attention_head_dim=8,
                         encoder_block_types=("ResBlock",) * 6, decoder_block_types=("ResBlock",) * 6,
                         encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                         encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
                         encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
                         upsample_block_type="interpolate", downsample_block_type="Conv",
                         decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_real_params() -> list[dict]:
    """Build every real-shape text encoder and denoiser on the meta device; no memory, no GPU."""
    rows = []
    with torch.device("meta"):
        rows.append(("SDXL UNet", sdxl_unet()))
        clip_l, clip_g = sdxl_text_encoders()
        rows += [("CLIP ViT-L text", clip_l), ("OpenCLIP bigG text + projection", clip_g)]
        rows.append(("SANA 1.5 1.6B transformer", sana_transformer("sana-1.6b")))
        rows.append(("SANA 1.5 4.8B transformer", sana_transformer("sana-4.8b")))
        rows.append(("Gemma-2-2B", gemma2()))
    return [{"module": name, "class": type(m).__name__, "params": n_params(m), "published": KNOWN_SIZES[name]}
            for name, m in rows]


def real_families(label: str, cfgs: dict, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """One family adapter per method, each with its own text encoders, tokenizers and VAE (a family
    wraps its encoders' input embeddings), all sharing one denoiser. Built directly on ``device``."""
    from diffusers import (EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, SanaPipeline,
                           StableDiffusionXLPipeline)
    from tests.tiny import clip_tokenizer, gemma_tokenizer

    family_name = REAL[label][0]
    sizes = {}

    def make(fn, *a):
        torch.manual_seed(0)  # every copy of a module gets the same random weights
        with torch.device(device):
            out = fn(*a)
        mods = out if isinstance(out, tuple) else (out,)
        for m in mods:
            m.to(dtype=dtype).requires_grad_(False)
        return out

    denoiser = make(sdxl_unet) if family_name == "sdxl" else make(sana_transformer, label)
    sizes["denoiser"] = n_params(denoiser)
    families = {}
    for method in METHODS:
        if family_name == "sdxl":
            enc_l, enc_g = make(sdxl_text_encoders)
            sizes["text_encoders"] = n_params(enc_l) + n_params(enc_g)
            scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                               beta_schedule="scaled_linear", steps_offset=1,
                                               timestep_spacing="leading", prediction_type="epsilon")
            pipe = StableDiffusionXLPipeline(vae=make(tiny_kl_vae), text_encoder=enc_l, text_encoder_2=enc_g,
                                             tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),
                                             unet=denoiser, scheduler=scheduler, add_watermarker=False)
        else:
            enc = make(gemma2)
            sizes["text_encoders"] = n_params(enc)
            pipe = SanaPipeline(tokenizer=gemma_tokenizer(), text_encoder=enc, vae=make(tiny_dc_vae),
                                transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
        pipe.set_progress_bar_config(disable=True)
        families[method] = FAMILIES[family_name](pipe.to(device, dtype), device, dtype, cfgs[method])
    return families, sizes


# --------------------------------------------------------------------------- #
# Measurement
# --------------------------------------------------------------------------- #
def write_images(folder: Path, resolution: int, seed: int) -> list[Path]:
    """Four random RGB PNGs around the training resolution, of different aspect ratios."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    from PIL import Image
    r = resolution
    for i, (h, w) in enumerate([(r, r), (r, r + r // 4), (r + r // 4, r), (r + r // 8, r + r // 8)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"ref_{i}.png")
    return list_images(folder)


def make_cfg(method: str, family: str, model: str, images: Path, resolution: int, batch: int, accum: int,
             device: str, seed: int) -> TrainConfig:
    cfg = TrainConfig(method=method, model=model, family=family, images=str(images), placeholder=PLACEHOLDER,
                      initializer=INITIALIZER, device=device, seed=seed, checkpoint_every=0)
    return resolve_config(cfg.set([f"resolution={resolution}", f"batch_size={batch}", f"grad_accum={accum}"]))


def floor_fn(trainer: Trainer):
    """Denoiser forward + backward w.r.t. fixed text conditioning (leaf tensors), grad_accum micro-batches."""
    cfg, family = trainer.cfg, trainer.family
    batch = draw_batch(trainer.latents, trainer.sizes, trainer.templates, trainer.token_string, cfg.batch_size,
                       cfg.resolution // trainer.pixels_per_latent, trainer.pixels_per_latent,
                       torch.Generator().manual_seed(cfg.seed + 1))
    with torch.no_grad():
        family.set_rows(trainer.method.embeddings())
        cond = family.encode_prompts(batch["prompts"])
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in cond.items()}
    latents = batch["latents"].to(trainer.device)
    gen = torch.Generator().manual_seed(cfg.seed + 2)

    def run() -> float:
        for v in leaves.values():
            v.grad = None
        total = 0.0
        for _ in range(cfg.grad_accum):
            loss = family.loss(latents, leaves, batch, gen)
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        return total

    return run, {k: list(v.shape) for k, v in cond.items()}


def quartiles(xs) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def measure(fns: dict, steps: int, warmup: int, block: int, cuda: bool) -> dict:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    rounds = {name: [] for name in fns}  # mean per block, for paired ratios
    losses_bad = {name: 0 for name in fns}
    order = list(fns)
    r = 0
    while min(len(t) for t in times.values()) < steps:
        for name in (order if r % 2 == 0 else order[::-1]):
            block_times = []
            for _ in range(min(block, steps - len(times[name]))):
                sync()
                t0 = time.perf_counter()
                loss = fns[name]()
                sync()
                block_times.append(time.perf_counter() - t0)
                losses_bad[name] += not np.isfinite(loss)
            times[name] += block_times
            rounds[name].append(float(np.mean(block_times)))
        r += 1
    out = {}
    for name, ts in times.items():
        q1, med, q3 = quartiles([t * 1e3 for t in ts])
        out[name] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": min(ts) * 1e3,
                     "mean_ms": float(np.mean(ts)) * 1e3, "n": len(ts), "nonfinite_losses": losses_bad[name],
                     "times_ms": [round(t * 1e3, 3) for t in ts]}
    if not {"ti", "dti"} <= set(fns):
        return out
    paired = np.asarray([d / t for d, t in zip(rounds["dti"], rounds["ti"])])
    q1, med, q3 = quartiles(paired)
    # 95% bootstrap interval of the median paired ratio (fixed seed, 2000 resamples)
    boot = np.median(np.random.default_rng(0).choice(paired, (2000, len(paired))), axis=1)
    out["ratio"] = out["dti"]["median_ms"] / out["ti"]["median_ms"]
    out["paired_ratio"] = {"median": med, "q1": q1, "q3": q3, "rounds": len(paired),
                           "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}
    return out


def first_step(trainer: Trainer, acfg, sync) -> dict:
    """One DTI step, timed (with an accelerated variant: its compilation); its loss and gradient."""
    sync()
    t0 = time.perf_counter()
    with accel.attention_context(acfg):
        loss = trainer.step()
    sync()
    grad = torch.cat([p.grad.detach().float().flatten().cpu() for p in trainer.method.params])
    return {"seconds": time.perf_counter() - t0, "loss": loss, "grad": grad}


def compare_first_step(first: dict, spec: str, reference: str | None, dtype: torch.dtype) -> dict:
    """The eager variant writes its first step to ``reference``; another one reports its distance to it."""
    out = {"first_step_s": first["seconds"], "first_loss": first["loss"]}
    if spec == "eager":
        if reference:
            save_reference(reference, {"grad": first["grad"]}, {"loss": first["loss"]})
        return out
    ref = load_reference(reference)
    if ref is not None:
        err = rel_error(first["grad"], ref[0]["grad"])
        out.update(grad_rel_error=err, loss_abs_diff=abs(first["loss"] - ref[1]["loss"]),
                   within_tolerance=err <= accel.TOLERANCE[dtype]["denoiser"])
    return out


def run_config(label: str, shapes: str, args, workdir: Path, device: torch.device, dtype: torch.dtype,
               spec: str = "eager") -> dict:
    family_name, resolution, default_batch = (TINY if shapes == "tiny" else REAL)[label]
    acfg = accel.parse_variant(spec)
    batch = args.batch_size or default_batch
    images = write_images(workdir / f"images_{resolution}", resolution, args.seed)
    t0 = time.perf_counter()
    if shapes == "tiny":
        from tests import tiny
        folder = workdir / f"tiny_{family_name}"  # built once, for every variant
        if not (folder / "model_index.json").is_file():
            getattr(tiny, f"build_{family_name}")(folder)
        model = str(folder)
        cfgs = {m: make_cfg(m, family_name, model, images[0].parent, resolution, batch, args.grad_accum,
                            device.type, args.seed) for m in METHODS}
        families, sizes = {m: None for m in METHODS}, {}
    else:
        cfgs = {m: make_cfg(m, family_name, f"random-weight {label}", images[0].parent, resolution, batch,
                            args.grad_accum, str(device), args.seed) for m in METHODS}
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # casting a fresh model to bf16 warns about fp32 modules (it has none)
        try:
            families, sizes = real_families(label, cfgs, device, dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainers = {m: Trainer(cfgs[m], images, family=families[m]) for m in METHODS}
    init_s = time.perf_counter() - t0
    notes = []
    for trainer in trainers.values():  # real shapes: one shared denoiser, changed once whatever the order
        notes += accel.apply_to_pipeline(trainer.family.pipe, acfg, device, training=True)
    notes = list(dict.fromkeys(notes))
    if not sizes:
        fam = trainers["ti"].family
        sizes = {"denoiser": n_params(getattr(fam.pipe, fam.denoiser_name)),
                 "text_encoders": sum(n_params(e) for e in fam.encoders)}
    floor, cond_shapes = floor_fn(trainers["ti"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    first = first_step(trainers["dti"], acfg, sync)

    def in_context(fn):
        def run():
            with accel.attention_context(acfg):
                return fn()
        return run

    fns = {"ti": trainers["ti"].step, "dti": trainers["dti"].step, "floor": floor}
    fns = {name: in_context(fn) for name, fn in fns.items() if name in args.measure}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = measure(fns, args.steps, args.warmup, args.block, cuda)
    cfg = cfgs["ti"]
    ppl = trainers["ti"].pixels_per_latent
    result.update({
        "config": label, "variant": spec, "accel_notes": notes, "shapes": shapes, "family": family_name,
        "batch_size": batch, "grad_accum": cfg.grad_accum,
        "resolution": resolution, "latent": [int(trainers["ti"].latents[0][0].shape[0]), resolution // ppl,
                                             resolution // ppl],
        "conditioning": cond_shapes, "params": sizes,
        "text_encoder_attention": [getattr(e.config, "_attn_implementation", None)
                                   for e in trainers["ti"].family.encoders],
        "device": str(device), "frozen_dtype": str(dtype),
        "build_s": build_s, "trainer_init_s": init_s, "steps": args.steps, "warmup": args.warmup,
        "block": args.block,
        **compare_first_step(first, spec, args.reference and args.reference.replace("{config}", label), dtype),
    })
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del trainers, fns, floor, families
    torch._dynamo.reset()  # compiled code holds the modules: free them for the next variant
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import diffusers
    import transformers
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    with contextlib.suppress(AttributeError, OSError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def ms(r: dict, name: str) -> str:
    return f"{r[name]['median_ms']:.1f}" if name in r else "-"


def print_table(results: list[dict]):
    w = max([7] + [len(r["variant"]) for r in results])
    head = (f"{'config':<10} {'variant':<{w}} {'batch':>5} {'accum':>5} {'res':>5} {'latent':>10} {'TI ms':>9} "
            f"{'DTI ms':>9} {'DTI/TI':>7} {'paired DTI/TI [IQR]':>22} {'floor ms':>9} {'1st step s':>10} "
            f"{'grad err':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        p = r.get("paired_ratio")
        lat = "x".join(map(str, r["latent"]))
        paired = f"{p['median']:>7.3f} [{p['q1']:.3f}, {p['q3']:.3f}]" if p else f"{'-':>22}"
        ratio = f"{r['ratio']:>7.3f}" if "ratio" in r else f"{'-':>7}"
        err = f"{r['grad_rel_error']:.1e}" if "grad_rel_error" in r else "-"
        print(f"{r['config']:<10} {r['variant']:<{w}} {r['batch_size']:>5} {r['grad_accum']:>5} "
              f"{r['resolution']:>5} {lat:>10} {ms(r, 'ti'):>9} {ms(r, 'dti'):>9} {ratio} {paired} "
              f"{ms(r, 'floor'):>9} {r['first_step_s']:>10.1f} {err:>9}")
    print("\nmedian ms per step; IQR of the per-step times (ms):")
    for r in results:
        print(f"  {r['config']:<10} {r['variant']:<{w}} " + "  ".join(
            f"{m} [{r[m]['q1_ms']:.1f}, {r[m]['q3_ms']:.1f}]" for m in ("ti", "dti", "floor") if m in r)
            + f"   build {r['build_s']:.1f} s, trainer init {r['trainer_init_s']:.1f} s"
            + (f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""))
        for note in r["accel_notes"]:
            print(f"      {note}")
    if any("paired_ratio" in r for r in results):
        print("\nmedian paired DTI/TI with its 95% bootstrap interval (requirement: DTI <= 1.03 x TI):")
    for r in results:
        if "paired_ratio" in r:
            lo, hi = r["paired_ratio"]["ci95"]
            print(f"  {r['config']:<10} {r['paired_ratio']['median']:.3f}  [{lo:.3f}, {hi:.3f}]  "
                  f"over {r['paired_ratio']['rounds']} rounds")
        bad = {m: r[m]["nonfinite_losses"] for m in ("ti", "dti", "floor") if m in r and r[m]["nonfinite_losses"]}
        if bad:
            print(f"  warning: non-finite losses in {bad} (such a step skips the optimizer update)")
        if r.get("within_tolerance") is False:
            print(f"  warning: {r['config']} {r['variant']}: first-step gradient {r['grad_rel_error']:.1e} from "
                  f"the eager one, beyond dti.accel.TOLERANCE")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=("tiny", "real"), default="tiny",
                        help="tiny: tests/tiny.py pipelines on the CPU (default); real: random-weight SDXL and SANA "
                             "1.5 at their real shapes on a CUDA GPU")
    parser.add_argument("--families", default=None,
                        help="comma-separated configurations. tiny: sd,sdxl,sana (default all three); real: sdxl, "
                             "sana-1.6b, sana-4.8b, or sana for both SANA sizes (default sdxl,sana)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (TI, DTI and floor each); default 20 tiny, 10 real")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps of each measurement before timing; default 3 tiny, 2 real")
    parser.add_argument("--block", type=int, default=1,
                        help="consecutive timed steps of one measurement before switching to the next (default 1)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="micro-batch size for every configuration (default: SD/SDXL 4, SANA 2)")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches per step for every configuration (default 1; SANA's protocol uses 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores, os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the reference images and of the training draws (default 0)")
    parser.add_argument("--out", metavar="FILE.json", help="also write the results and the machine description as JSON")
    parser.add_argument("--accel", action="append", metavar="SPEC",
                        help="a variant of the dti.accel settings: eager, or comma-separated key=value "
                             "(compile=default,channels_last=true,fuse_qkv=true,attention=cudnn,"
                             "compile_text_encoders=true); repeat for several, measured one after another on "
                             "freshly built models (default: eager)")
    parser.add_argument("--measure", default="ti,dti,floor",
                        help="comma-separated measurements among ti, dti, floor (default all three)")
    parser.add_argument("--reference", metavar="FILE.safetensors",
                        help="the eager variant writes its first DTI step's gradient here; any other variant, in "
                             "this run or a later one, reports its relative error to it ({config} in the name: "
                             "the configuration)")
    parser.add_argument("--param-count", action="store_true",
                        help="build the real-shape text encoders and denoisers on the meta device, print their "
                             "parameter counts and exit (needs no GPU and no memory)")
    args = parser.parse_args(argv)
    defaults = {"tiny": (20, 3, "sd,sdxl,sana"), "real": (10, 2, "sdxl,sana")}[args.shapes]
    args.steps = defaults[0] if args.steps is None else args.steps
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    labels = []
    for item in (args.families or defaults[2]).split(","):
        item = item.strip().lower()
        names = ["sana-1.6b", "sana-4.8b"] if (args.shapes == "real" and item == "sana") else [item]
        valid = TINY if args.shapes == "tiny" else REAL
        for name in names:
            if name not in valid:
                parser.error(f"--families: {name!r} is not a {args.shapes} configuration; choose from "
                             f"{', '.join(valid)}" + (", sana" if args.shapes == "real" else ""))
            if name not in labels:
                labels.append(name)
    args.labels = labels
    args.variants = args.accel or ["eager"]
    for spec in args.variants:
        try:
            accel.parse_variant(spec)
        except DTIError as exc:
            parser.error(f"--accel {spec}: {exc}")
    args.measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    if not args.measure or set(args.measure) - {"ti", "dti", "floor"}:
        parser.error("--measure takes ti, dti and floor, comma-separated")
    for name in ("steps", "block", "grad_accum"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.param_count:
        t0 = time.perf_counter()
        rows = count_real_params()
        for r in rows:
            print(f"{r['module']:<34} {r['class']:<28} {r['params']:>15,}  (published ~{r['published'] / 1e9:.3g}B)")
        print(f"built on the meta device in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.shapes == "real" and not torch.cuda.is_available():
        print("--shapes real needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device("cpu") if args.shapes == "tiny" else torch.device("cuda")
    dtype = torch.float32 if args.shapes == "tiny" else torch.bfloat16
    info = machine()
    print(f"{info['date_utc']}  {info.get('gpu', info['cpu'])}  ({info['cpu_count']} cores, "
          f"{info['torch_threads']} torch threads)  torch {info['torch']}  diffusers {info['diffusers']}  "
          f"transformers {info['transformers']}")
    print(f"shapes {args.shapes} on {device}, frozen modules {str(dtype).replace('torch.', '')}; "
          f"{args.steps} timed steps each of TI, DTI and floor after {args.warmup} warm-up, interleaved in blocks "
          f"of {args.block}; initializer {INITIALIZER!r}\n", flush=True)
    # Written after each variant, so that a run stopped by a time limit keeps what it measured.
    log = Results(args.out, {"machine": info, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                             "args": {k: v for k, v in vars(args).items() if k not in ("labels", "variants")}})
    failed = 0
    with tempfile.TemporaryDirectory(prefix="dti_step_time_") as tmp:
        # without --reference, the eager variant's first step stays in the temporary folder for this run
        args.reference = args.reference or str(Path(tmp) / "{config}_first_step.safetensors")
        for label in args.labels:
            for spec in args.variants:
                print(f"[{label}] [{spec}] building and timing ...", flush=True)
                try:
                    log.add(run_config(label, args.shapes, args, Path(tmp), device, dtype, spec))
                except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
                    failed += 1
                    print(f"[{label}] [{spec}] failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                          flush=True)
                    log.add({"config": label, "variant": spec, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                    torch._dynamo.reset()
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    print()
    print_table([r for r in log.data["results"] if "error" not in r])
    if args.out:
        print(f"\nwrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
