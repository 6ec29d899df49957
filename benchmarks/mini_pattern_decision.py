#!/usr/bin/env python
"""When does a mini world's denoiser decide the pattern it draws, and does the caption decide it?

    python benchmarks/mini_pattern_decision.py --world experiments/mini/world --out results/mini_pattern --threads 2

For the base-model gate's held-out captions (``miniworld.gates.held_out_scenes``, the word-use seeds), the
ground-truth render's latent is noised to the sampler's first timestep below START and sampled to the end
with the world's protocol (sampler, steps, guidance), once with the asked caption and once with its
pattern word replaced (``gates.scene_caption``). The read-out then says which pattern was drawn. Late
starts keep the render's own marks whatever the caption says; START 1000 is plain generation from noise
(the base-model gate). Where the swapped caption is followed, the word still decides the marks. Writes
``pattern_decision.json`` (every number) and ``pattern_decision.md`` (the table).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dti.io import DTIError, atomic_path, package_versions, write_json  # noqa: E402
from miniworld import gates, models, world  # noqa: E402
from miniworld.build import _token_ids  # noqa: E402

STARTS = (300, 500, 700, 800, 900, 1000)  # of the 1,000 training timesteps; 1000: from pure noise


@torch.no_grad()
def guided_states(pipe, captions: list[str]) -> torch.Tensor:
    """The text states of a guided batch: the empty caption's for each image, then the captions'."""
    states = pipe.text_encoder(input_ids=_token_ids(pipe.tokenizer, ["", *captions])).last_hidden_state
    return torch.cat([states[:1].expand(len(captions), -1, -1), states[1:]])


@torch.no_grad()
def drawn_patterns(pipe, readout, x0: torch.Tensor, states: torch.Tensor, start: int, sampling: dict, seed: int):
    """The read-out's pattern of each image sampled from ``x0`` noised to the first timestep below ``start``,
    with the captions of ``states`` (``guided_states``); also the number of sampling steps run."""
    sched = pipe.scheduler
    sched.set_timesteps(sampling["steps"])
    skip = int((sched.timesteps >= start).sum())
    if skip == len(sched.timesteps):
        raise SystemExit(f"error: no sampling step starts below timestep {start}")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    first = sched.timesteps[skip]
    x = noise * sched.init_noise_sigma if skip == 0 else sched.add_noise(x0, noise, first.expand(len(x0)))
    sched.set_begin_index(skip)
    for t in sched.timesteps[skip:]:
        both = sched.scale_model_input(torch.cat([x, x]), t)
        uncond, cond = pipe.unet(both, t, encoder_hidden_states=states).sample.chunk(2)
        x = sched.step(uncond + sampling["guidance_scale"] * (cond - uncond), t, x).prev_sample
    images = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return readout.predict(pixels)["pattern"], len(sched.timesteps) - skip


def measure(pipe, readout, n: int, seed: int, sampling: dict) -> dict[str, dict]:
    scenes = gates.held_out_scenes(n, seed)
    x0 = gates.scene_latents(pipe.vae, scenes)
    asked = [s.labels["pattern"] for s in scenes]
    swapped, swapped_captions = gates.replaced_captions(scenes, "pattern")
    states = {"asked": guided_states(pipe, [gates.scene_caption(s) for s in scenes]),
              "swapped": guided_states(pipe, swapped_captions)}  # once per caption set, for every start
    out = {}
    for start in STARTS:
        drawn = {k: drawn_patterns(pipe, readout, x0, states[k], start, sampling, seed) for k in states}
        out[str(start)] = {
            "steps": drawn["asked"][1],
            "asked_drawn": float(np.mean([d == a for d, a in zip(drawn["asked"][0], asked)])),
            "swapped_drawn": float(np.mean([d == s for d, s in zip(drawn["swapped"][0], swapped)])),
            "swapped_keeps_render": float(np.mean([d == a for d, a in zip(drawn["swapped"][0], asked)]))}
        print(f"seed {seed} start {start}: {out[str(start)]}", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="A mini world folder.")
    parser.add_argument("--out", required=True, help="Folder for pattern_decision.json/md.")
    parser.add_argument("--n", type=int, default=160, help="Captions per seed (the gates use 160).")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DiffusionPipeline

    world_dir, out = Path(args.world), Path(args.out)
    try:
        gates.check_world(world_dir)  # its read-out must read this code's renders
    except DTIError as e:
        raise SystemExit(f"error: {e}") from None
    pipe = DiffusionPipeline.from_pretrained(world_dir / "pipeline", safety_checker=None)
    readout = models.Readout.load(world_dir / "readout", "cpu")
    sampling = world.sampling_of(world_dir)
    per_seed = {404 + s: measure(pipe, readout, args.n, 404 + s, sampling) for s in gates.GATE_SEEDS}
    keys = ("asked_drawn", "swapped_drawn", "swapped_keeps_render")
    summary = {str(start): {k: {"mean": float(np.mean([r[str(start)][k] for r in per_seed.values()])),
                                "min": min(r[str(start)][k] for r in per_seed.values()),
                                "max": max(r[str(start)][k] for r in per_seed.values())} for k in keys}
               for start in STARTS}
    write_json({"per_seed": per_seed, "summary": summary, "n": args.n, "sampling": sampling,
                "threads": torch.get_num_threads(), "versions": package_versions()}, out / "pattern_decision.json")
    first = next(iter(per_seed.values()))
    lines = ["| start below timestep | sampling steps | asked caption: asked pattern drawn | swapped caption: "
             "swapped pattern drawn | swapped caption: the render's pattern kept |", "|---|---|---|---|---|"]
    for start in STARTS:
        cells = [f"{summary[str(start)][k]['mean']:.3f} ({summary[str(start)][k]['min']:.3f}-"
                 f"{summary[str(start)][k]['max']:.3f})" for k in keys]
        lines.append(f"| {start} | {first[str(start)]['steps']} | " + " | ".join(cells) + " |")
    with atomic_path(out / "pattern_decision.md") as tmp:
        tmp.write_text("Mean (min-max) over seeds " + ", ".join(map(str, per_seed)) + f", {args.n} captions each.\n\n"
                       + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
