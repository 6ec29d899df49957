"""Job costs: the wall time and peak memory of every training, sampling and scoring job, from the
benchmark files Snakemake writes beside the results (``benchmarks/<stage>/...tsv``, one per job).

    python -m analysis.job_costs --results results/mini --figures results/mini/figures --tables results/mini/tables

Writes ``job_costs.csv`` (one row per stage: jobs, total, mean and longest wall seconds, CPU seconds,
largest resident memory) and a figure of each stage's job times. The numbers describe the machine
that ran the jobs, so they are never part of a reference check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.common import save_figure, write_csv

# The folder right under a `benchmarks/` folder names the stage; the ablation's training jobs sit under
# benchmarks/ablation/<cell>/.
STAGES = {"train": "training", "ablation": "training (ablation)", "sample": "sampling", "score": "scoring"}


def read_benchmarks(results: Path) -> pd.DataFrame:
    """One row per job: its stage, its file, and Snakemake's measures (s, max_rss in MB, cpu_time)."""
    rows = []
    for path in sorted(results.glob("**/benchmarks/*/**/*.tsv")):
        parts = path.relative_to(results).parts
        stage = parts[parts.index("benchmarks") + 1]
        if "ablation" in parts[:parts.index("benchmarks")]:  # a cell's own sampling and scoring
            stage = f"{stage}_ablation"
        table = pd.read_csv(path, sep="\t")
        if table.empty:
            continue
        last = table.iloc[-1]  # `--benchmark-repeats` writes several rows; the last is the latest
        rows.append({"stage": stage, "job": str(path.relative_to(results)), "seconds": float(last["s"]),
                     "max_rss_mb": float(last.get("max_rss", float("nan"))),
                     "cpu_seconds": float(last.get("cpu_time", float("nan")))})
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb", "cpu_seconds"])


def stage_label(stage: str) -> str:
    base, _, ablation = stage.partition("_")
    label = STAGES.get(base, base)
    return f"{label} (ablation)" if ablation and "ablation" not in label else label


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per stage: jobs, total / mean / longest wall seconds, CPU seconds, largest resident memory (MB)."""
    if jobs.empty:
        return pd.DataFrame(columns=["stage", "jobs", "total_s", "mean_s", "max_s", "cpu_s", "max_rss_mb"])
    grouped = jobs.groupby("stage", sort=True)
    out = pd.DataFrame({"jobs": grouped.size(), "total_s": grouped["seconds"].sum(),
                        "mean_s": grouped["seconds"].mean(), "max_s": grouped["seconds"].max(),
                        "cpu_s": grouped["cpu_seconds"].sum(), "max_rss_mb": grouped["max_rss_mb"].max()})
    out = out.reset_index()
    out["stage"] = out["stage"].map(stage_label)
    return out.round(2)


def plot(jobs: pd.DataFrame, out_dir: Path):
    order = ["train", "ablation", "sample", "sample_ablation", "score", "score_ablation"]  # the workflow's order
    present = set(jobs["stage"]) if not jobs.empty else set()
    stages = [s for s in order if s in present] + sorted(present - set(order))
    stages.reverse()  # the first stage on top
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * max(len(stages), 1)))
    for i, stage in enumerate(stages):
        seconds = jobs.loc[jobs["stage"] == stage, "seconds"]
        ax.scatter(seconds, [i] * len(seconds), s=12, alpha=0.5, color="tab:blue")
        ax.scatter([seconds.median()], [i], marker="|", s=300, color="black")
    ax.set_yticks(range(len(stages)), [stage_label(s) for s in stages])
    ax.set_xlabel("wall time per job (s)")
    ax.set_title("Job times (dots: jobs; bar: median)")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, out_dir, "job_costs",
                "Wall time of each training, sampling and scoring job (Snakemake's benchmark files) on the "
                "machine that ran them; totals and memory in tables/job_costs.csv.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="a configuration's results folder")
    p.add_argument("--figures", required=True, help="folder for job_costs.png")
    p.add_argument("--tables", required=True, help="folder for job_costs.csv")
    args = p.parse_args(argv)
    jobs = read_benchmarks(Path(args.results))
    summary = summarise(jobs)
    write_csv(summary, Path(args.tables) / "job_costs.csv")
    plot(jobs, Path(args.figures))
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
