#!/usr/bin/env python
"""Time sampling one mini-world subject's prompt set at several batch sizes (images per pipeline call).

    python benchmarks/sampling.py --run results/mini/runs/dti/lagoon_circle/seed0 --batch-sizes 2 8 32

For each batch size (the pipeline loaded fresh, not timed) samples the 15 "mini" prompts at
seeds 0 and 1 (30 images, 25 steps, guidance 4.0, as the workflow) into a fresh temporary folder,
twice, and prints the faster wall time. Also checks that every batch size gives the same images
(each image has its own seeded noise), printing the largest pixel difference to batch size 1's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dti.data import read_prompt_set, read_subjects
from dti.embeddings import read_run
from dti.families import FAMILIES
from dti.sample import SampleConfig, sample

WORLD = Path("experiments/mini/world")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished mini-world run directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
