#!/usr/bin/env python
"""Cheaper samplers for a mini world: what the base model draws, and what it costs, per sampler.

    python benchmarks/mini_sampler.py --world experiments/mini/world --out results/mini_sampler \\
        --samplers ddim:25 ddim:12 dpm:10 dpm:12 dpm:15 --threads 2

For each sampler (``miniworld.models.make_sampler``, the scheduler a build would export, at a number of
steps) runs the base-model gate of ``miniworld.gates`` on its seeds (160 held-out captions each, guidance
4.0, the read-out judging) and times it. Sampling is most of the default workflow's denoiser calls after
training, and its cost is linear in the steps, so a sampler that draws as well in fewer steps shortens
the workflow without touching any method.

``RULE``, fixed before measuring, chooses the world's sampler (``python -m miniworld.build ... --set
sampler=NAME --set sampling_steps=N`` re-exports a finished build). Writes ``samplers.json`` (every number)
and ``samplers.md`` (the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dti.io import atomic_path, package_versions, write_json  # noqa: E402
from miniworld import gates, models, world  # noqa: E402

TOLERANCE = 0.01  # the rule's allowance below DDIM-25, per attribute, on the minimum over seeds
REFERENCE = ("ddim", 25)
DEFAULT_SAMPLERS = [("ddim", 25), ("ddim", 12), ("dpm", 10), ("dpm", 12), ("dpm", 15)]
RULE = (f"The world keeps DDIM at 25 steps unless a sampler with fewer steps scores, on every base-model "
        f"attribute, a minimum over seeds at least DDIM-25's minimum minus {TOLERANCE}; the cheapest such "
        f"sampler (fewest steps; DPM-Solver++ before DDIM at equal steps) becomes the world's.")


def parse_sampler(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    if name not in models.SAMPLERS or not steps.isdigit() or int(steps) < 1:
        names = ", ".join(models.SAMPLERS)
        raise argparse.ArgumentTypeError(f"a sampler is NAME:STEPS with NAME one of {names}, not {text!r}")
    return name, int(steps)


def choose(results: dict[str, dict]) -> str:
    """``RULE`` on ``{"name:steps": {"min": {attribute: value}}}``."""
    reference = results[f"{REFERENCE[0]}:{REFERENCE[1]}"]["min"]
    passing = [key for key, r in results.items()
               if all(r["min"][a] >= reference[a] - TOLERANCE for a in reference)]
    return min(passing, key=lambda key: (int(key.split(":")[1]), key.split(":")[0] != "dpm"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="A mini world folder.")
    parser.add_argument("--out", required=True, help="Folder for samplers.json/md and the per-image CSVs.")
    parser.add_argument("--samplers", nargs="+", type=parse_sampler, default=DEFAULT_SAMPLERS,
                        help="NAME:STEPS ... (default: ddim:25 ddim:12 dpm:10 dpm:12 dpm:15)")
    parser.add_argument("--n", type=int, default=160, help="Captions per seed (the gates use 160).")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if REFERENCE not in args.samplers:
        raise SystemExit(f"error: the samplers must include {REFERENCE[0]}:{REFERENCE[1]}, the reference")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DiffusionPipeline

    world_dir, out = Path(args.world), Path(args.out)
    pipe = DiffusionPipeline.from_pretrained(world_dir / "pipeline", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    readout = models.Readout.load(world_dir / "readout", "cpu")
    results = {}
    for name, steps in args.samplers:
        key = f"{name}:{steps}"
        pipe.scheduler = models.make_sampler(name)
        sampling = {"steps": steps, "guidance_scale": world.GUIDANCE_SCALE}
        per_seed, seconds = [], 0.0
        for seed in gates.GATE_SEEDS:
            t0 = time.perf_counter()
            per_seed.append(gates.base_model(pipe, readout, args.n, seed=303 + seed, out=out / key.replace(":", "_"),
                                             sampling=sampling, grid=False))
            seconds += time.perf_counter() - t0
        attributes = list(per_seed[0])
        results[key] = {"per_seed": per_seed, "min": {a: min(r[a] for r in per_seed) for a in attributes},
                        "mean": {a: float(np.mean([r[a] for r in per_seed])) for a in attributes},
                        "ms_per_image": round(1000 * seconds / (args.n * len(gates.GATE_SEEDS)), 2)}
        print(key, results[key]["min"], results[key]["ms_per_image"], "ms/image", flush=True)
    chosen = choose(results)
    write_json({"results": results, "chosen": chosen, "rule": RULE,
                "n": args.n, "seeds": list(gates.GATE_SEEDS), "threads": torch.get_num_threads(),
                "versions": package_versions()}, out / "samplers.json")
    attributes = list(results[chosen]["min"])
    lines = ["| sampler | " + " | ".join(f"{a} (min)" for a in attributes) + " | ms per image |",
             "|---" * (len(attributes) + 2) + "|"]
    for key, r in results.items():
        mark = " (chosen)" if key == chosen else ""
        lines.append(f"| {key}{mark} | " + " | ".join(f"{r['min'][a]:.3f}" for a in attributes)
                     + f" | {r['ms_per_image']} |")
    with atomic_path(out / "samplers.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
