#!/usr/bin/env python
"""GPU-hours of the paper configurations: their job counts times the measured per-step and per-image times.

    python benchmarks/cost_table.py                                  # print the tables
    python benchmarks/cost_table.py --readme benchmarks/README.md    # rewrite that file's generated section
    python benchmarks/cost_table.py --times gpu_check/measured_times.json   # other measurements

The jobs are counted from each configuration as the workflow expands it: every trained method x
subject x seed (each preset's step count and gradient accumulation, resolved with the family's and
the method's defaults), the post-hoc methods (TI-rescaled: sampled and scored, not trained), and every
ablation cell x ablation subject x seed; each sampled run makes prompts x sampling seeds images (the
subject's live or object prompt set). So the tables follow the configurations when they change.

GPU-hours per stage: training = steps x seconds per step (scaled by the configuration's gradient
accumulation over the measured one), sampling and scoring = images x seconds per image. Wall time on
N GPUs: the SLURM profile (profiles/slurm) sends train, rescale, sample and score of one run as one
job (TI's job also samples and scores TI-rescaled); those jobs are placed longest first on N GPUs.
Not counted: loading the models at each job's start, queue waits, and the CPU jobs (tables, figures).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dti.config import TrainConfig  # noqa: E402
from dti.data import read_prompt_set, read_subjects  # noqa: E402
from dti.families import FAMILIES  # noqa: E402
from dti.io import DTIError, atomic_path  # noqa: E402
from dti.methods import METHODS, method_class  # noqa: E402
from dti.sample import SampleConfig  # noqa: E402
from dti.train import resolve_config  # noqa: E402

CONFIGS = ["experiments/sdxl.yaml", "experiments/sana_1.6b.yaml", "experiments/sana_4.8b.yaml"]
TIMES = "benchmarks/measured_times.json"
GPUS = (1, 8, 32)
STAGES = ("train", "sample", "score")
START, END = "<!-- cost_table.py: start -->", "<!-- cost_table.py: end -->"


@dataclass
class Job:
    """One cluster job: a run's training (0 steps: none) and the images it samples and scores, in
    ``runs`` sampling (and scoring) jobs of the workflow."""
    steps: int
    grad_accum: int
    batch_size: int
    resolution: int
    images: int
    runs: int = 1


def train_settings(config: dict, method: str, preset: str | None) -> dict:
    """One method's train settings, layered as the workflow does (experiments/rules/common.smk): the
    configuration's per-method settings beat the preset's, which beat the shared ones (configuration,
    then preset)."""
    chosen = (config.get("presets") or {}).get(preset) or {}
    layers = [chosen.get("train"), config.get("train"), (chosen.get("train_by_method") or {}).get(method),
              (config.get("train_by_method") or {}).get(method)]
    merged = {}
    for layer in layers:
        merged.update(layer or {})
    return merged


def resolved(family: str, method: str, settings: dict) -> TrainConfig:
    items = [f"{k}={v}" for k, v in sorted(settings.items())]
    return resolve_config(TrainConfig(method=method, family=family).set(items))


def count_jobs(config: dict, family: str, preset: str | None) -> list[Job]:
    """Every cluster job of one configuration and preset."""
    data = config["data"]
    table = {row["subject"]: row for row in read_subjects(ROOT / data["subjects_file"])}
    subjects = config.get("subjects") or list(table)
    n_seeds = len(config["sample"]["seeds"])

    def images(subject: str) -> int:
        return len(read_prompt_set(data["prompt_set"], table[subject]["live"], ROOT / data["prompts_file"])) * n_seeds

    def job(method: str, settings: dict, subject: str, sampled_runs: int) -> Job:
        cfg = resolved(family, method, settings)
        return Job(cfg.steps, cfg.grad_accum, cfg.batch_size, cfg.resolution, sampled_runs * images(subject),
                   sampled_runs)

    methods = config["methods"]
    # A post-hoc method's run is made in its source's job (rule rescale joins that job's group).
    derived = {m: 1 + sum(c.post_hoc and c.source_method == m for c in METHODS.values()) for m in methods}
    jobs = [job(m, train_settings(config, m, preset), s, derived[m])
            for m in methods if not method_class(m).post_hoc for s in subjects for _ in config["seeds"]]
    ablation = config.get("ablation") or {}
    dti = train_settings(config, "dti", preset)
    for cell in ablation.get("cells") or []:
        jobs += [job("dti", {**dti, **cell}, s, 1)
                 for s in (ablation.get("subjects") or subjects) for _ in config["seeds"]]
    return jobs


def job_seconds(job: Job, times: dict) -> dict:
    """GPU seconds of each measured stage of one job (a stage not measured is absent)."""
    out = {}
    if times.get("train"):
        t = times["train"]
        out["train"] = job.steps * t["seconds"] * job.grad_accum / t.get("grad_accum", 1)
    for stage in ("sample", "score"):
        if times.get(stage):
            out[stage] = job.images * times[stage]["seconds"]
    return out


def makespan(durations: list[float], gpus: int) -> float:
    """Longest-first placement of independent jobs on ``gpus`` GPUs: the time the last one ends."""
    ends = [0.0] * min(gpus, max(len(durations), 1))
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(ends, ends[0] + d)  # ends is a heap: its first item is the earliest free GPU
    return max(ends)


def mismatches(config: dict, jobs: list[Job], times: dict) -> list[str]:
    """Where the configuration runs at other shapes than were measured (times taken as they are)."""
    notes = []
    t = times.get("train")
    if t:
        shapes = {(j.batch_size, j.resolution) for j in jobs}
        if shapes != {(t["batch_size"], t["resolution"])}:
            notes.append(f"training measured at batch {t['batch_size']}, {t['resolution']} px; the configuration "
                         f"trains at {', '.join(f'batch {b}, {r} px' for b, r in sorted(shapes))}")
    s = times.get("sample")
    if s:
        # what `dti sample` will use: the configuration's settings over the family's protocol
        asked = {**FAMILIES[times["family"]].sample_defaults, "batch_size": SampleConfig().batch_size,
                 **(config["sample"].get("settings") or {})}
        other = {k: asked[k] for k in ("height", "width", "steps", "batch_size") if k in asked and asked[k] != s.get(k)}
        if other:
            notes.append(f"sampling measured at {s['height']}x{s['width']} px, {s['steps']} steps, batch "
                         f"{s['batch_size']}; the configuration samples with {other}")
    return notes


def estimate(config: dict, times: dict, preset: str | None, gpus=GPUS) -> dict:
    """The cost row of one configuration and preset."""
    jobs = count_jobs(config, times["family"], preset)
    per_job = [job_seconds(j, times) for j in jobs]
    measured = [s for s in STAGES if times.get(s)]
    total = {s: sum(p[s] for p in per_job) / 3600 if s in measured else None for s in STAGES}
    durations = [sum(p.values()) for p in per_job]
    runtime = (config.get("resources") or {})
    return {
        "configuration": config["name"], "preset": preset or "-", "model": config["model"],
        "train_runs": sum(j.steps > 0 for j in jobs), "steps": sorted({j.steps for j in jobs if j.steps}),
        "train_steps": sum(j.steps for j in jobs), "images": sum(j.images for j in jobs), "jobs": len(jobs),
        "gpu_hours": total, "complete": len(measured) == len(STAGES),
        "gpu_hours_total": sum(v for v in total.values() if v is not None),
        "wall_hours": {n: makespan(durations, n) / 3600 for n in gpus},
        # per workflow job (a rule's runtime limit): one sampling or scoring job per sampled run
        "longest_minutes": {s: max((p[s] / (j.runs if s != "train" else 1) for j, p in zip(jobs, per_job)),
                                   default=0.0) / 60 for s in measured},
        "declared_minutes": {s: (runtime.get(s) or {}).get("runtime") for s in measured},
        "notes": mismatches(config, jobs, times),
    }


def presets_of(config: dict) -> list[str | None]:
    """The default preset first, then the others (none: the configuration as it stands)."""
    names = list(config.get("presets") or {})
    default = config.get("preset") or (names[0] if names else None)
    return [default] + [p for p in names if p != default]


def located(path: str) -> Path:
    """A path as given, else relative to the repository root (the defaults are)."""
    return Path(path) if Path(path).exists() else ROOT / path


def rows_for(config_paths: list[str], times_path: str, gpus=GPUS) -> tuple[list[dict], list[str]]:
    all_times = json.loads(located(times_path).read_text())
    rows, missing = [], []
    for path in config_paths:
        config = yaml.safe_load(located(path).read_text())
        times = all_times.get(config["model"])
        if not times:
            missing.append(f"{config['name']}: no measurements of {config['model']} in {times_path}")
            continue
        rows += [estimate(config, times, preset, gpus) for preset in presets_of(config)]
    return rows, missing


def hours(value: float | None) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def markdown(rows: list[dict], missing: list[str], times_path: str, gpus=GPUS) -> str:
    head = ["configuration", "preset", "training runs", "steps per run", "images", "training GPU-h",
            "sampling GPU-h", "scoring GPU-h", "total GPU-h"] + [f"wall, {n} GPU{'s' * (n > 1)}" for n in gpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        total = ("" if r["complete"] else "≥ ") + hours(r["gpu_hours_total"])
        walls = [("" if r["complete"] else "≥ ") + hours(r["wall_hours"][n]) + " h" for n in gpus]
        lines.append("| " + " | ".join([
            r["configuration"], r["preset"], f"{r['train_runs']:,}", ", ".join(map(str, r["steps"])),
            f"{r['images']:,}", *(hours(r["gpu_hours"][s]) for s in STAGES), total, *walls]) + " |")
    lines.append("")
    lines.append(f"Times from `{times_path}`; `≥`: a stage is not measured, so the total and the wall times "
                 "count the measured stages only.")
    for r in rows:
        limits = [f"{s} {m:.0f} min (declared {r['declared_minutes'][s]} min)"
                  for s, m in r["longest_minutes"].items() if r["declared_minutes"].get(s)]
        over = [s for s, m in r["longest_minutes"].items()
                if r["declared_minutes"].get(s) and m > r["declared_minutes"][s]]
        line = (f"- {r['configuration']} ({r['preset']}): {r['jobs']:,} cluster jobs; longest job per rule: "
                + "; ".join(limits or ["-"]))
        if over:
            line += f". **Over the declared runtime: {', '.join(over)}** (raise `resources` in the configuration)"
        lines.append(line + ".")
        lines += [f"  - note: {n}" for n in r["notes"]]
    lines += [f"- {m}" for m in missing]
    return "\n".join(lines) + "\n"


def write_readme(path: Path, section: str):
    """Replace the text between the START and END markers of ``path`` (atomically)."""
    text = path.read_text()
    if START not in text or END not in text:
        raise DTIError(f"{path} has no {START} ... {END} section to rewrite")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    with atomic_path(path) as tmp:
        tmp.write_text(f"{before}{START}\n{section}{END}{after}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="configuration files (default: the paper's)")
    parser.add_argument("--times", default=TIMES, help=f"measured times, JSON (default {TIMES})")
    parser.add_argument("--gpus", type=int, nargs="+", default=list(GPUS), help="GPU counts of the wall times")
    parser.add_argument("--readme", metavar="FILE.md", help="rewrite this file's generated section")
    parser.add_argument("--json", metavar="FILE.json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.gpus):
        parser.error("--gpus must be >= 1")
    try:
        rows, missing = rows_for(args.configs, args.times, tuple(args.gpus))
        section = markdown(rows, missing, args.times, tuple(args.gpus))
        print(section, end="")
        if args.readme:
            write_readme(Path(args.readme), section)
        if args.json:
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(rows, indent=1))
    except (DTIError, OSError, KeyError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
