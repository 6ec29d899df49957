#!/usr/bin/env python
"""Summarise a benchmarks/gpu_check.sh folder: one CSV and one Markdown table of every measurement,
the fastest variant within tolerance per model and stage, the goals met or not, and measured-times
files (eager, and the fastest settings) in the form benchmarks/cost_table.py reads, with its tables.

    python benchmarks/gpu_summary.py OUT_FOLDER
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cost_table  # noqa: E402
from dti.io import atomic_path  # noqa: E402

# benchmark configuration -> the model id of the paper configuration it stands for
MODELS = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
          "sana-1.6b": "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
          "sana-4.8b": "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers"}
FAMILY = {"sdxl": "sdxl", "sana-1.6b": "sana", "sana-4.8b": "sana"}
# The goals on one H100/H200: seconds per DTI training step, seconds per sampled image.
GOALS = {("sdxl", "train"): 0.150, ("sdxl", "sample"): 1.3}
FIELDS = ["stage", "config", "variant", "seconds", "unit", "batch_size", "resolution", "steps", "first_call_s",
          "error_vs_eager", "image_mean_abs_diff", "within_tolerance", "peak_memory_gib", "file", "error"]


def rows_of(folder: Path) -> list[dict]:
    """One row per measured (or failed) variant in the folder's JSON files."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "results" not in data:
            continue
        stage = "train" if "train" in path.stem else "sample"
        for r in data["results"]:
            row = {"stage": stage, "config": r.get("config"), "variant": r.get("variant"), "file": path.name,
                   "error": r.get("error", "")}
            if "error" not in r and stage == "train":
                row.update(seconds=r["dti"]["median_ms"] / 1e3 if "dti" in r else None, unit="s per DTI step",
                           batch_size=r["batch_size"], resolution=r["resolution"], first_call_s=r["first_step_s"],
                           error_vs_eager=r.get("grad_rel_error"), grad_accum=r["grad_accum"])
            elif "error" not in r:
                row.update(seconds=r["seconds_per_image"], unit="s per image", batch_size=r["batch_size"],
                           resolution=r["height"], steps=r["steps"], first_call_s=r["first_call_s"],
                           error_vs_eager=r.get("denoiser_rel_error"),
                           image_mean_abs_diff=r.get("image_mean_abs_diff"))
            if "error" not in r:
                row.update(within_tolerance=True if r.get("variant") == "eager" else r.get("within_tolerance"),
                           peak_memory_gib=r.get("peak_memory_gib"), gpu=data.get("machine", {}).get("gpu", "CPU"))
            rows.append(row)
    return rows


def best(rows: list[dict]) -> dict:
    """(config, stage) -> the eager row and the fastest row within tolerance."""
    out = {}
    for row in rows:
        if row["error"] or row.get("seconds") is None:
            continue
        entry = out.setdefault((row["config"], row["stage"]), {})
        if row["variant"] == "eager":
            entry["eager"] = row
        if row.get("within_tolerance") and row["seconds"] < entry.get("best", {}).get("seconds", float("inf")):
            entry["best"] = row
    return out


def times_file(chosen: dict, which: str) -> dict:
    """Measured times in cost_table.py's form, from the ``which`` row ("eager" or "best") of each."""
    times = {"_about": f"benchmarks/gpu_summary.py: the {which} variant of each model and stage "
                       "(random weights at real shapes, bf16)"}
    for (config, stage), entry in sorted(chosen.items()):
        row = entry.get(which)
        if row is None or config not in MODELS:
            continue
        model = times.setdefault(MODELS[config], {"family": FAMILY[config], "train": None, "sample": None,
                                                  "score": None})
        shape = ({"batch_size": row["batch_size"], "grad_accum": row.get("grad_accum", 1),
                  "resolution": row["resolution"]} if stage == "train"
                 else {"batch_size": row["batch_size"], "height": row["resolution"], "width": row["resolution"],
                       "steps": row["steps"]})
        model[stage] = {"seconds": row["seconds"], **shape, "gpu": row.get("gpu"),
                        "settings": row["variant"], "source": f"benchmarks/gpu_check.sh ({row['file']})"}
    return times


def write(path: Path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: gpu_summary.py OUT_FOLDER (a gpu_check.sh output folder)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    rows = rows_of(folder)
    with atomic_path(folder / "summary.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    chosen = best(rows)
    lines = ["| stage | config | variant | time | first call s | error vs eager | image diff | ok |", "|" + "---|" * 8]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['stage']} | {r['config']} | {r['variant']} | failed: {r['error'][:120]} | | | | |")
            continue
        err = "" if r.get("error_vs_eager") is None else f"{r['error_vs_eager']:.1e}"
        diff = "" if r.get("image_mean_abs_diff") is None else f"{r['image_mean_abs_diff']:.2f}"
        time_text = "-" if r.get("seconds") is None else f"{r['seconds']:.3f} {r['unit']}"
        lines.append(f"| {r['stage']} | {r['config']} | {r['variant']} | {time_text} | {r['first_call_s']:.0f} | "
                     f"{err} | {diff} | {r.get('within_tolerance')} |")
    lines.append("")
    for (config, stage), goal in GOALS.items():
        row = chosen.get((config, stage), {}).get("best")
        verdict = "not measured" if row is None else (
            f"{row['seconds']:.3f} s with {row['variant']}: {'met' if row['seconds'] <= goal else 'NOT met'}")
        lines.append(f"- goal {config} {stage} <= {goal} s: {verdict}")
    for which in ("eager", "best"):
        times = times_file(chosen, which)
        times_path = folder / f"measured_times_{which}.json"
        write(times_path, json.dumps(times, indent=1) + "\n")
        table_rows, missing = cost_table.rows_for(cost_table.CONFIGS, str(times_path))
        lines += ["", f"Cost table, {which} variants:", "",
                  cost_table.markdown(table_rows, missing, times_path.name)]
    write(folder / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
