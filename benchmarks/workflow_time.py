"""Where the default workflow's time goes, and what training runs in groups buys.

    python benchmarks/workflow_time.py groups   [--sizes 1 2 4 8 16] [--steps 40]
    python benchmarks/workflow_time.py [--json FILE] workflow [--configfile experiments/mini.yaml] [--cores 8]
                                       [--results-dir DIR] [--log FILE]

``groups``: training throughput on the mini world's shipped pipeline, one process, the workflow's
settings (resolution 32, batch 4, posterior means): for each group size G, G DTI runs (the world's
subjects in turn, each its own placeholder and seed) load the pipeline once and step together
(``dti.train.group_step``); after 5 warm-up steps, ``--steps`` group steps are timed. Reported:
run-steps per second (G x steps / seconds), ms per run-step, the speed-up over G = 1, and the
seconds to load the pipeline and set the runs up (what every training process pays once).

``workflow``: a fresh ``snakemake --cores N`` of a configuration into a temporary results folder (or
``--results-dir``, whose folder of that configuration must not exist yet), timed from launch to exit,
split by stage (training, sampling, scoring, rescaling, analyses and tables) from the times Snakemake
logs as each job starts and ends (1 s resolution): per stage the jobs, their summed seconds (jobs side
by side add up to more than the wall time) and the wall seconds while any of them ran; start-up is
launch to the first job. Nothing else should run on the machine meanwhile. A failed run (a reference
check that does not pass comes last) is still timed, and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

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


STAGES = ("train", "sample", "score", "rescale")  # the rest: analyses and tables


def stage_of(rule: str) -> str:
    base = re.sub(r"(_ablation)?(_part\d+)?$", "", rule)
    return base if base in STAGES else "analyses and tables"


def job_intervals(log: str) -> list[tuple[str, datetime, datetime]]:
    """(rule, start, end) of every job, from the timestamps Snakemake prints before a job starts and ends."""
    lines, starts, jobs = log.splitlines(), {}, []
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
    for i, line in enumerate(lines):
        m = stamp.match(line)
        if not m or i + 1 >= len(lines):
            continue
        when = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        started = re.match(r"^(?:local)?rule (\w+):$", lines[i + 1])
        finished = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", lines[i + 1])
        if started:
            jobid = next(re.match(r"\s+jobid: (\d+)", x).group(1) for x in lines[i + 2:] if re.match(r"\s+jobid:", x))
            starts[jobid] = (started.group(1), when)
        elif finished and finished.group(1) in starts:
            rule, begin = starts.pop(finished.group(1))
            jobs.append((rule, begin, when))
    return jobs


def union_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + (b - a).total_seconds(), b
        elif b > end:
            total, end = total + (b - end).total_seconds(), b
    return total


def workflow_time(configfile: str | None, cores: int, log: str | None = None, results_dir: str | None = None) -> dict:
    """``results_dir``: where the run writes (its configuration's folder there must not exist: a fresh run);
    default a temporary folder, removed after."""
    with contextlib.ExitStack() as stack:
        if results_dir is None:
            results_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="workflow_time_"))
        cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", f"results_dir={results_dir}"]
        if configfile:
            cmd[3:3] = ["--configfile", configfile]
        name = yaml.safe_load(Path(configfile or ROOT / "experiments" / "mini.yaml").read_text())["name"]
        if (Path(results_dir) / name).exists():
            raise SystemExit(f"{Path(results_dir) / name} exists: a timed run starts fresh; move it away first")
        launched = datetime.now().replace(microsecond=0)
        start = time.perf_counter()
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if log:  # Snakemake's own output: every job's start and end, for a closer look than the stages
            Path(log).write_text(run.stdout + run.stderr)
        if run.returncode != 0:  # still timed (a failed reference check comes last), and said so
            print(f"snakemake failed (exit {run.returncode}):\n{run.stderr[-3000:]}", file=sys.stderr)
    jobs = job_intervals(run.stdout + run.stderr)
    stages = {}
    for stage in sorted({stage_of(rule) for rule, _, _ in jobs}):
        mine = [(a, b) for rule, a, b in jobs if stage_of(rule) == stage]
        stages[stage] = {"jobs": len(mine), "job_seconds": sum((b - a).total_seconds() for a, b in mine),
                         "wall_seconds": union_seconds(mine)}
    first = min((a for _, a, _ in jobs), default=None)
    return {"wall_s": wall, "jobs": len(jobs), "startup_s": (first - launched).total_seconds() if first else None,
            "stages": stages, "config": configfile or "experiments/mini.yaml", "cores": cores,
            "returncode": run.returncode}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("groups", help="training throughput per group size")
    g.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    g.add_argument("--steps", type=int, default=40, help="timed group steps per size (default 40)")
    w = sub.add_parser("workflow", help="a fresh workflow run, timed, split by stage")
    w.add_argument("--configfile", help="configuration (default: the mini world's)")
    w.add_argument("--cores", type=int, default=8)
    w.add_argument("--log", help="also keep Snakemake's output in this file")
    w.add_argument("--results-dir", help="write the run's results here (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args()
    if args.what == "groups":
        result = group_throughput(args.sizes, args.steps)
        print("| runs per group | run-steps/s | ms per run-step | speed-up | set-up s |\n|---|---|---|---|---|")
        for r in result:
            print(f"| {r['group']} | {r['run_steps_per_s']:.1f} | {r['ms_per_run_step']:.2f} | "
                  f"{r['speedup']:.2f} | {r['setup_s']:.1f} |")
    else:
        result = workflow_time(args.configfile, args.cores, args.log, args.results_dir)
        startup = "n/a" if result["startup_s"] is None else f"{result['startup_s']:.0f} s"
        print(f"{result['config']}: {result['jobs']} jobs, wall {result['wall_s'] / 60:.1f} min "
              f"({result['wall_s']:.0f} s), start-up {startup}")
        print("| stage | jobs | job seconds | wall seconds while it ran |\n|---|---|---|---|")
        for stage, s in result["stages"].items():
            print(f"| {stage} | {s['jobs']} | {s['job_seconds']:.0f} | {s['wall_seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if args.what == "groups" or result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
