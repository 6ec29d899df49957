"""Where the default workflow's time goes, and what training runs in groups buys.

    python benchmarks/workflow_time.py groups   [--sizes 1 2 4 8 16] [--steps 40]
    python benchmarks/workflow_time.py workflow [--configfile experiments/mini.yaml] [--cores 8]

``groups``: training throughput on the mini world's shipped pipeline, one process, the workflow's
settings (resolution 32, batch 4, posterior means): for each group size G, G DTI runs (the world's
subjects in turn, each its own placeholder and seed) load the pipeline once and step together
(``dti.train.group_step``); after 5 warm-up steps, ``--steps`` group steps are timed. Reported:
run-steps per second (G x steps / seconds), ms per run-step, the speed-up over G = 1, and the
seconds to load the pipeline and set the runs up (what every training process pays once).

``workflow``: a fresh ``snakemake --cores N`` of a configuration into a temporary results folder,
timed from launch to exit; the split by stage comes from Snakemake's benchmark files (summed job
seconds: with jobs side by side they add up to more than the wall time) and from its log (start-up:
launch to the first job). Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "experiments" / "mini" / "world"


def group_throughput(sizes: list[int], steps: int, warmup: int = 5) -> list[dict]:
    import torch

    from dti.config import TrainConfig
    from dti.data import list_images, read_subjects
    from dti.families import family_class
    from dti.train import Trainer, group_step, resolve_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    subjects = read_subjects(WORLD / "subjects.csv")
    rows = []
    for size in sizes:
        start = time.perf_counter()
        cfgs = []
        for i in range(size):
            subject = subjects[i % len(subjects)]
            images = WORLD / "subjects" / subject["subject"]
            cfg = TrainConfig(method="dti", model=str(WORLD / "pipeline"), images=str(images),
                              placeholder=f"<{subject['subject']}{i}>", initializer=subject["initializer"], seed=i,
                              family="sd").set(["resolution=32", "device=cpu", "latent_sampling=mode"])
            cfgs.append(resolve_config(cfg))
        family = family_class("sd").load(cfgs[0].model, torch.device("cpu"), torch.float32, cfgs[0])
        trainers = [Trainer(cfg, list_images(cfg.images), family) for cfg in cfgs]
        setup = time.perf_counter() - start
        for _ in range(warmup):
            group_step(trainers, trainers)
        start = time.perf_counter()
        for _ in range(steps):
            group_step(trainers, trainers)
        seconds = time.perf_counter() - start
        rows.append({"group": size, "run_steps_per_s": size * steps / seconds,
                     "ms_per_run_step": 1000 * seconds / (size * steps), "setup_s": setup})
        print(f"group {size:3d}: {rows[-1]['run_steps_per_s']:7.1f} run-steps/s, "
              f"{rows[-1]['ms_per_run_step']:6.2f} ms per run-step, set-up {setup:.1f} s", file=sys.stderr)
    for row in rows:
        row["speedup"] = row["run_steps_per_s"] / rows[0]["run_steps_per_s"]
    return rows


def stage_of(path: Path, results: Path) -> str:
    parts = path.relative_to(results).parts
    stage = parts[parts.index("benchmarks") + 1]
    if stage == "ablation":
        return "train"  # the cells' training jobs: benchmarks/ablation/<cell>/
    return stage if stage in ("train", "sample", "score") else "analyses"


def snakemake_timestamps(log: str) -> list[datetime]:
    return [datetime.strptime(" ".join(m.split()), "%a %b %d %H:%M:%S %Y")
            for m in re.findall(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", log, re.M)]


def workflow_time(configfile: str | None, cores: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="workflow_time_") as tmp:
        cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", f"results_dir={tmp}"]
        if configfile:
            cmd[3:3] = ["--configfile", configfile]
        launched = datetime.now().replace(microsecond=0)
        start = time.perf_counter()
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(f"snakemake failed:\n{run.stderr[-3000:]}")
        results = Path(tmp)
        stages: dict[str, dict] = {}
        for path in sorted(results.glob("**/benchmarks/**/*.tsv")):
            lines = path.read_text().splitlines()
            seconds = float(lines[-1].split("\t")[0])
            entry = stages.setdefault(stage_of(path, results), {"jobs": 0, "job_seconds": 0.0})
            entry["jobs"] += 1
            entry["job_seconds"] += seconds
        stamps = snakemake_timestamps(run.stdout + run.stderr)
        jobs = len(re.findall(r"^(?:local)?rule \w+:", run.stdout + run.stderr, re.M))
    return {"wall_s": wall, "jobs": jobs, "startup_s": (stamps[0] - launched).total_seconds() if stamps else None,
            "stages": stages, "config": configfile or "experiments/mini.yaml", "cores": cores}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("groups", help="training throughput per group size")
    g.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    g.add_argument("--steps", type=int, default=40, help="timed group steps per size (default 40)")
    w = sub.add_parser("workflow", help="a fresh workflow run, timed, split by stage")
    w.add_argument("--configfile", help="configuration (default: the mini world's)")
    w.add_argument("--cores", type=int, default=8)
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args()
    if args.what == "groups":
        result = group_throughput(args.sizes, args.steps)
        print("| runs per group | run-steps/s | ms per run-step | speed-up | set-up s |\n|---|---|---|---|---|")
        for r in result:
            print(f"| {r['group']} | {r['run_steps_per_s']:.1f} | {r['ms_per_run_step']:.2f} | "
                  f"{r['speedup']:.2f} | {r['setup_s']:.1f} |")
    else:
        result = workflow_time(args.configfile, args.cores)
        total_jobs = sum(s["job_seconds"] for s in result["stages"].values())
        print(f"{result['config']}: {result['jobs']} jobs, wall {result['wall_s'] / 60:.1f} min "
              f"({result['wall_s']:.0f} s), start-up {result['startup_s']} s")
        print("| stage | jobs | job seconds | share of job seconds |\n|---|---|---|---|")
        for stage, s in sorted(result["stages"].items()):
            print(f"| {stage} | {s['jobs']} | {s['job_seconds']:.0f} | {s['job_seconds'] / total_jobs:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
