#!/usr/bin/env python
"""Time sampling: a mini-world subject's prompt set at several batch sizes (``--run``), or pipelines
of random weights at their real shapes with variants of the dti.accel settings (``--shapes``).

    python benchmarks/sampling.py --run results/mini/runs/dti/lagoon_circle/seed0 --batch-sizes 2 8 32
    python benchmarks/sampling.py --shapes real --families sdxl --accel eager \\
        --accel fuse_qkv=true,channels_last=true --accel compile=default,fuse_qkv=true --out sdxl.json

``--run``: for each batch size (the pipeline loaded fresh, not timed) samples the 15 "mini" prompts at
seeds 0 and 1 (30 images, 25 steps, guidance 4.0, as the workflow) into a fresh temporary folder,
twice, and prints the faster wall time. Also checks that every batch size gives the same images
(each image has its own seeded noise), printing the largest pixel difference to batch size 1's.

``--shapes real`` (a CUDA GPU; bf16): SDXL base 1.0 and SANA 1.5 1.6B / 4.8B with their released
shapes (UNet or transformer, text encoders and VAE; random weights, the tokenizers of tests/tiny.py),
called as ``dti sample`` calls them (the family's protocol: size, steps, guidance; SANA with its
complex-human-instruction prefix). ``--shapes tiny``: the tests/tiny.py pipelines on the CPU. Each
variant builds the pipeline afresh (same weights), applies its settings, makes one warm-up call of
``--warmup-steps`` steps (it compiles, at the shapes of the timed calls), then ``--repeats`` timed calls of
``--batch-size`` images (the seeds 0 ... batch-1, one generator per image). Reported: seconds per
image, and the distance to the eager variant: the relative error of one denoiser call (the eager
one's first call, replayed) and the mean and largest difference of the 8-bit images; within
``dti.accel.TOLERANCE`` or not. ``--reference FILE`` keeps the eager variant's outputs, so variants run
in another process compare against them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accel_bench import (Results, capture_next_call, first_output, flatten_call, load_reference,  # noqa: E402
                                    rel_error, save_reference, unflatten_call)
from dti import accel  # noqa: E402
from dti.data import read_prompt_set, read_subjects  # noqa: E402
from dti.embeddings import read_run  # noqa: E402
from dti.families import FAMILIES  # noqa: E402
from dti.io import DTIError  # noqa: E402
from dti.sample import SampleConfig, pipeline_call, sample  # noqa: E402

WORLD = Path("experiments/mini/world")
PROMPTS = ["a photo of a dog on the beach", "a red backpack in the snow", "a cat wearing sunglasses, oil painting",
           "a vase of flowers on a wooden table"]
# label -> dti family (real shapes: the configurations of step_time.py; tiny: tests/tiny.py)
REAL = {"sdxl": "sdxl", "sana-1.6b": "sana", "sana-4.8b": "sana"}
TINY = {"sd": "sd", "sdxl": "sdxl", "sana": "sana"}

# SDXL base 1.0 vae/config.json (the released values).
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024, scaling_factor=0.13025,
                force_upcast=True)
# DC-AE f32c32 of SANA (dc-ae-f32c32-sana-1.x): 3 residual and 3 EfficientViT levels, widths 128 ... 1024.
_LEVELS = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
_MULTISCALES = ((),) * 3 + ((5,),) * 3
SANA_DC_AE = dict(in_channels=3, latent_channels=32, attention_head_dim=32, encoder_block_types=_LEVELS,
                  decoder_block_types=_LEVELS, encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                  decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                  encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                  encoder_qkv_multiscales=_MULTISCALES, decoder_qkv_multiscales=_MULTISCALES,
                  downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                  decoder_act_fns="silu", scaling_factor=0.41407)


# --------------------------------------------------------------------------- #
# The mini world's batch sizes (--run)
# --------------------------------------------------------------------------- #
def mini_batch_sizes(args):
    torch.set_num_threads(args.threads)
    record, _ = read_run(args.run)
    subject = record["config"]["placeholder"].strip("<>")
    class_noun = {r["subject"]: r["class"] for r in read_subjects(WORLD / "subjects.csv")}[subject]
    templates = read_prompt_set("mini", live=False, path=WORLD / "prompt_sets.json")
    images = {}
    for batch in args.batch_sizes:
        cfg = SampleConfig(steps=25, guidance_scale=4.0, device="cpu", batch_size=batch)
        best = float("inf")
        for _ in range(2):
            # fresh for each run: the concept is added to it
            pipe = FAMILIES["sd"].load_pipeline(record["config"]["model"], *cfg.placement())
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                sample(args.run, tmp, subject, class_noun, templates, [0, 1], "mini", cfg, pipe=pipe)
                best = min(best, time.perf_counter() - start)
                images[batch] = np.stack([np.asarray(Image.open(p)) for p in sorted(Path(tmp).rglob("*.png"))])
        diff = int(np.abs(images[batch].astype(int) - images[args.batch_sizes[0]].astype(int)).max())
        print(f"batch {batch:3d}: {best:6.2f} s for {len(images[batch])} images "
              f"(max pixel difference to batch {args.batch_sizes[0]}: {diff})", flush=True)


# --------------------------------------------------------------------------- #
# Pipelines of random weights (--shapes)
# --------------------------------------------------------------------------- #
def real_pipeline(label: str, device: torch.device, dtype: torch.dtype):
    """The full pipeline at its released shapes, random weights (seeded: every build is the same)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting a fresh model to bf16 warns about fp32 modules (it has none)
    try:
        return _real_pipeline(label, device, dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _real_pipeline(label: str, device: torch.device, dtype: torch.dtype):
    from diffusers import (AutoencoderDC, AutoencoderKL, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           SanaPipeline, StableDiffusionXLPipeline)

    from benchmarks.step_time import gemma2, sana_transformer, sdxl_text_encoders, sdxl_unet
    from tests.tiny import clip_tokenizer, gemma_tokenizer

    torch.manual_seed(0)
    if label == "sdxl":
        with torch.device(device):  # the modules only: schedulers keep their tables on the CPU
            enc_l, enc_g = sdxl_text_encoders()
            vae, unet = AutoencoderKL(**SDXL_VAE), sdxl_unet()
        scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                           prediction_type="epsilon")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=enc_l, text_encoder_2=enc_g, tokenizer=clip_tokenizer(),
                                         tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
                                         add_watermarker=False)
    else:
        with torch.device(device):
            encoder, vae, transformer = gemma2(), AutoencoderDC(**SANA_DC_AE), sana_transformer(label)
        # The released SANA 1.5 sampler: DPM-Solver++ on flow-matching sigmas, flow shift 3.
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, final_sigmas_type="zero",
            lower_order_final=True, timestep_spacing="linspace", steps_offset=0)
        pipe = SanaPipeline(tokenizer=gemma_tokenizer(), text_encoder=encoder, vae=vae, transformer=transformer,
                            scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def tiny_pipeline(label: str, workdir: Path):
    from diffusers import DiffusionPipeline

    from tests import tiny

    folder = workdir / label
    if not (folder / "model_index.json").is_file():
        getattr(tiny, f"build_{label}")(folder)
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_settings(family_name: str, pipe, args) -> dict:
    """The pipeline call of ``dti sample`` at the family's protocol (tiny: the pipeline's own size)."""
    cfg = SampleConfig(steps=args.steps)
    if args.shapes == "tiny":
        size = pipe.vae_scale_factor * accel.denoiser_of(pipe).config.sample_size
        cfg = dataclasses.replace(cfg, height=size, width=size, resolution_binning=False)
    _, call = pipeline_call(FAMILIES[family_name], pipe, cfg)
    return {**call, "output_type": "np"}


def to_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((images * 255).round().clip(0, 255).astype(np.uint8))


def run_variant(label: str, spec: str, args, device: torch.device, dtype: torch.dtype, workdir: Path) -> dict:
    acfg = accel.parse_variant(spec, accel.SampleAccel)
    family_name = (REAL if args.shapes == "real" else TINY)[label]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    pipe = real_pipeline(label, device, dtype) if args.shapes == "real" else tiny_pipeline(label, workdir)
    build_s = time.perf_counter() - t0
    notes = accel.apply_to_pipeline(pipe, acfg, device)
    call = call_settings(family_name, pipe, args)
    batch = args.batch_size
    if acfg.sample_batch == "auto":
        batch = accel.auto_sample_batch(pipe, call, device, args.max_batch, acfg, fallback=batch)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    denoiser = accel.denoiser_of(pipe)
    box = capture_next_call(denoiser) if spec == "eager" else {}

    def generate(steps: int) -> tuple[float, np.ndarray]:
        generators = [torch.Generator().manual_seed(i) for i in range(batch)]
        sync()
        start = time.perf_counter()
        with torch.no_grad(), accel.attention_context(acfg):
            images = pipe(prompt=prompts, generator=generators, **{**call, "num_inference_steps": steps}).images
        sync()
        return time.perf_counter() - start, images

    first_call_s, _ = generate(args.warmup_steps)  # compiles, at the shapes of the timed calls
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timed = [generate(call["num_inference_steps"]) for _ in range(args.repeats)]
    seconds = [t for t, _ in timed]
    images = to_uint8(timed[-1][1])
    result = {"config": label, "variant": spec, "accel_notes": notes, "shapes": args.shapes, "family": family_name,
              "batch_size": batch, "height": call["height"], "width": call["width"],
              "steps": call["num_inference_steps"], "guidance_scale": call["guidance_scale"],
              "seconds_per_image": min(seconds) / batch, "call_s": seconds, "first_call_s": first_call_s,
              "build_s": build_s, "device": str(device), "dtype": str(dtype)}
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    setting = [call["height"], call["width"], call["num_inference_steps"]]
    result.update(compare(spec, box, denoiser, images, acfg, device, dtype, args.reference, setting))
    return result


def compare(spec: str, box: dict, denoiser, images: torch.Tensor, acfg, device, dtype, reference: str,
            setting: list) -> dict:
    """The eager variant stores its first denoiser call, that call's output and its images; any other
    variant replays the call through its own denoiser and compares outputs and images."""
    if spec == "eager":
        call, rest = flatten_call(box)
        args, kwargs = unflatten_call(call, rest, device)
        with torch.no_grad(), accel.attention_context(acfg):
            out = first_output(denoiser(*args, **kwargs))
        tensors = {**{f"call.{k}": v for k, v in call.items()}, "output": out.cpu(), "images": images}
        save_reference(reference, tensors, {**rest, "setting": setting})
        return {}
    ref = load_reference(reference)
    if ref is None:
        return {"reference": "none: run the eager variant first"}
    tensors, rest = ref
    if rest.get("setting") != setting:
        return {"reference": f"made at (height, width, steps) {rest.get('setting')}, not {setting}"}
    call = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("call.")}
    args, kwargs = unflatten_call(call, rest, device)
    with torch.no_grad(), accel.attention_context(acfg):
        out = first_output(denoiser(*args, **kwargs))
    n = min(len(images), len(tensors["images"]))  # an auto batch may differ: the same seeds come first
    diff = (images[:n].int() - tensors["images"][:n].int()).abs().float()
    tol = accel.TOLERANCE[dtype]
    err, mean_diff = rel_error(out, tensors["output"]), float(diff.mean())
    return {"denoiser_rel_error": err, "image_mean_abs_diff": mean_diff, "image_max_abs_diff": float(diff.max()),
            "within_tolerance": err <= tol["denoiser"] and mean_diff <= tol["image"]}


def print_table(results: list[dict]):
    w = max([7] + [len(r["variant"]) for r in results])
    head = (f"{'config':<10} {'variant':<{w}} {'batch':>5} {'size':>9} {'steps':>5} {'s/image':>8} {'1st call s':>10} "
            f"{'denoiser err':>12} {'image diff mean/max':>19} {'ok':>3}")
    print(head)
    print("-" * len(head))
    for r in results:
        err = f"{r['denoiser_rel_error']:.1e}" if "denoiser_rel_error" in r else "-"
        diff = (f"{r['image_mean_abs_diff']:.2f} / {r['image_max_abs_diff']:.0f}" if "image_mean_abs_diff" in r
                else "-")
        ok = {True: "yes", False: "NO"}.get(r.get("within_tolerance"), "-")
        print(f"{r['config']:<10} {r['variant']:<{w}} {r['batch_size']:>5} {r['height']:>4}x{r['width']:<4} "
              f"{r['steps']:>5} {r['seconds_per_image']:>8.3f} {r['first_call_s']:>10.1f} {err:>12} {diff:>19} "
              f"{ok:>3}")
        for note in r["accel_notes"]:
            print(f"    {note}")


def accel_variants(args) -> int:
    from benchmarks.step_time import machine

    if args.shapes == "real" and not torch.cuda.is_available():
        print("--shapes real needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if args.shapes == "real" else "cpu")
    dtype = torch.bfloat16 if args.shapes == "real" else torch.float32
    info = machine()
    print(f"{info['date_utc']}  {info.get('gpu', info['cpu'])}  torch {info['torch']}  diffusers {info['diffusers']}"
          f"  shapes {args.shapes} on {device}, {str(dtype).replace('torch.', '')}", flush=True)
    log = Results(args.out, {"machine": info, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])})
    failed = 0
    with tempfile.TemporaryDirectory(prefix="dti_sampling_") as tmp:
        for label in args.labels:
            # without --reference, the eager variant's outputs stay in the temporary folder for this run
            reference = (args.reference.replace("{config}", label) if args.reference
                         else str(Path(tmp) / f"{label}_reference.safetensors"))
            args_for = argparse.Namespace(**{**vars(args), "reference": reference})
            for spec in args.variants:
                print(f"[{label}] [{spec}] building and sampling ...", flush=True)
                try:
                    log.add(run_variant(label, spec, args_for, device, dtype, Path(tmp)))
                except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
                    failed += 1
                    print(f"[{label}] [{spec}] failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                          flush=True)
                    log.add({"config": label, "variant": spec, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                torch._dynamo.reset()  # compiled code holds the modules: free them for the next variant
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print()
    print_table([r for r in log.data["results"] if "error" not in r])
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished mini-world run directory (the batch-size comparison)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--shapes", choices=("tiny", "real"),
                        help="random-weight pipelines: tiny (tests/tiny.py, CPU) or real (released shapes, CUDA)")
    parser.add_argument("--families", default=None,
                        help="comma-separated: tiny sd,sdxl,sana (default all); real sdxl, sana-1.6b, sana-4.8b, or "
                             "sana for both (default sdxl,sana)")
    parser.add_argument("--accel", action="append", metavar="SPEC",
                        help="a variant of the dti.accel settings: eager, or comma-separated key=value "
                             "(compile=default,channels_last=true,fuse_qkv=true,attention=cudnn,sample_batch=auto); "
                             "repeat for several (default: eager); put eager first to compare against it")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default: real 4, tiny 2)")
    parser.add_argument("--max-batch", type=int, default=32, help="the most images per call of sample_batch=auto")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps of the timed calls (default: the family's protocol; tiny 3)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed first call (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per variant; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: mini 2, others all cores)")
    parser.add_argument("--reference", metavar="FILE.safetensors",
                        help="the eager variant's outputs are written here, other variants compare against them "
                             "(also in a later run); {config} in the name stands for the configuration")
    parser.add_argument("--out", metavar="FILE.json", help="write the results as JSON (after each variant)")
    args = parser.parse_args(argv)
    if args.run:
        args.threads = args.threads or 2
        return mini_batch_sizes(args)
    if not args.shapes:
        parser.error("give --run (mini world) or --shapes (random-weight pipelines)")
    valid = REAL if args.shapes == "real" else TINY
    labels = []
    for item in (args.families or ("sdxl,sana" if args.shapes == "real" else "sd,sdxl,sana")).split(","):
        item = item.strip().lower()
        names = ["sana-1.6b", "sana-4.8b"] if (args.shapes == "real" and item == "sana") else [item]
        for name in names:
            if name not in valid:
                parser.error(f"--families: {name!r} is not a {args.shapes} configuration; choose from "
                             f"{', '.join(valid)}")
            labels.append(name)
    args.labels = list(dict.fromkeys(labels))
    args.variants = args.accel or ["eager"]
    for spec in args.variants:
        try:
            accel.parse_variant(spec, accel.SampleAccel)
        except DTIError as exc:
            parser.error(f"--accel {spec}: {exc}")
    args.batch_size = args.batch_size or (4 if args.shapes == "real" else 2)
    args.steps = args.steps or (None if args.shapes == "real" else 3)
    for name in ("batch_size", "max_batch", "warmup_steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return accel_variants(args)


if __name__ == "__main__":
    sys.exit(main())
