"""Calibration: DTI's kappa and the AdamW ablation row's learning rate, chosen on validation subjects.

    python -m analysis.calibration --runs RUN [RUN ...] --target-prior-ratio 0.1 --out DIR

The runs are DTI runs on the subjects table's **validation** subjects (``snakemake calibration`` trains
them; no reported table uses those subjects): RSGD with kappa = 0, and AdamW on the direction at each
learning rate of a grid (kappa = 0). Both rules were fixed before anything was measured:

* **kappa**: the vMF prior adds kappa * mu to the data gradient before RSGD normalises the step, so what
  it weighs is kappa / |dL/dv| (the prior ratio, ``dti.methods``), not kappa. The rule: the prior weighs
  ``target_prior_ratio`` of the data gradient at the typical step, kappa = target x G, with G the median
  over the RSGD runs of each run's median |dL/dv| over its steps. The ablation's kappa cells are the same
  rule at other ratios (``kappa_at_ratio``), so that they span the range where the prior goes from
  negligible to as strong as the data.
* **AdamW's learning rate**: RSGD turns a direction by atan(lr) every step; the AdamW row must turn it
  by as much at its median step, or it measures a step-size mismatch instead of the optimizer. The rule:
  per grid lr, the median over runs of each run's median angle per step; the lr at which that equals
  atan(lr) of the RSGD runs, interpolated linearly in log(lr) and log(angle) between the two grid lrs around it.
  A grid that does not bracket it is an error (widen the grid).

Writes ``calibration.csv`` (one row per run), ``calibration.json`` (the rules, their inputs and the chosen
values) and ``calibration.md``. The configuration records the chosen values beside the rule.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.common import read_record, write_csv
from dti.embeddings import run_method
from dti.io import DTIError, atomic_path, write_json

COLUMNS = ["run", "subject", "seed", "direction_optimizer", "lr", "kappa", "steps", "grad_norm_median",
           "median_angle_deg"]


def run_row(run: Path) -> dict:
    """One calibration run: its settings, and the medians over its steps (step >= 1) of |dL/dv| and of the
    angle its vectors turn per step."""
    record = read_record(run)
    cfg = record["config"]
    if run_method(record) != "dti":
        raise DTIError(f"{run} is a {run_method(record)} run; calibration reads DTI runs only")
    log = pd.read_csv(run / "train_log.csv")
    steps = log[log["step"] >= 1]
    optimizer = cfg.get("direction_optimizer", "rsgd")
    return {"run": str(run), "subject": run.parts[-2], "seed": cfg.get("seed"),  # <prefix>/runs/dti/<subject>/seed<N>
            "direction_optimizer": optimizer, "lr": cfg["adamw_lr"] if optimizer == "adamw" else cfg["lr"],
            "kappa": cfg.get("kappa"), "steps": int(steps["step"].max()) if len(steps) else 0,
            "grad_norm_median": float(steps["grad_norm"].median()),
            "median_angle_deg": float(steps["angle_deg"].median())}


def kappa_at_ratio(grad_norm: float, ratio: float) -> float:
    """The kappa whose prior weighs ``ratio`` of a data gradient of size ``grad_norm``."""
    return ratio * grad_norm


def matching_lr(lrs, angles, target_deg: float) -> float:
    """The lr whose angle is ``target_deg``, interpolated in log-log between the grid lrs around it."""
    order = np.argsort(lrs)
    lrs, angles = np.asarray(lrs, float)[order], np.asarray(angles, float)[order]
    if len(lrs) < 2 or np.any(np.diff(angles) <= 0):
        raise DTIError(f"AdamW's angle must grow with its lr over at least two grid lrs; measured {angles.tolist()} "
                       f"degrees at lrs {lrs.tolist()}")
    if not angles[0] <= target_deg <= angles[-1]:
        raise DTIError(f"RSGD's {target_deg:.3f} degrees per step lies outside AdamW's {angles[0]:.3f}-"
                       f"{angles[-1]:.3f} over lrs {lrs[0]:g}-{lrs[-1]:g}: widen calibration.adamw_lrs")
    log_lr = np.interp(math.log(target_deg), np.log(angles), np.log(lrs))
    return float(math.exp(log_lr))


def calibrate(rows: pd.DataFrame, target_ratio: float, cell_ratios=(0.01, 1.0)) -> dict:
    """The chosen kappa and AdamW lr (rules in the module docstring), with what they were chosen from."""
    rsgd = rows[(rows["direction_optimizer"] == "rsgd") & (rows["kappa"] == 0)]
    adamw = rows[(rows["direction_optimizer"] == "adamw") & (rows["kappa"] == 0)]
    if rsgd.empty:
        raise DTIError("no RSGD run with kappa = 0 among the calibration runs: kappa cannot be calibrated")
    if adamw.empty:
        raise DTIError("no AdamW run with kappa = 0 among the calibration runs: its lr cannot be calibrated")
    if rsgd["lr"].nunique() != 1:
        raise DTIError(f"the RSGD calibration runs must share one lr, not {sorted(rsgd['lr'].unique())}")
    rsgd_lr = float(rsgd["lr"].iloc[0])
    grad_norm = float(rsgd["grad_norm_median"].median())
    per_lr = adamw.groupby("lr", sort=True)["median_angle_deg"].median()
    target_deg = math.degrees(math.atan(rsgd_lr))
    return {
        "subjects": sorted(rows["subject"].unique().tolist()), "runs": len(rows),
        "kappa": {"rule": "kappa = target_prior_ratio x median over RSGD runs (kappa 0) of median |dL/dv|",
                  "target_prior_ratio": target_ratio, "grad_norm_median": grad_norm,
                  "chosen": kappa_at_ratio(grad_norm, target_ratio),
                  "cells": {f"{r:g}": kappa_at_ratio(grad_norm, r) for r in cell_ratios}},
        "adamw_lr": {"rule": "the AdamW lr whose median angle per step equals RSGD's atan(lr), log-log interpolated",
                     "rsgd_lr": rsgd_lr, "rsgd_angle_deg": target_deg,
                     "grid": {f"{lr:g}": float(a) for lr, a in per_lr.items()},
                     "chosen": matching_lr(per_lr.index.to_numpy(), per_lr.to_numpy(), target_deg)},
    }


def calibration_md(result: dict) -> str:
    k, a = result["kappa"], result["adamw_lr"]
    lines = [f"Calibration on the validation subjects ({', '.join(result['subjects'])}; {result['runs']} runs).", "",
             "| setting | rule | measured | chosen |", "|---|---|---|---|",
             f"| kappa | prior ratio {k['target_prior_ratio']:g} of the median data gradient | median \\|dL/dv\\| "
             f"{k['grad_norm_median']:.4g} | {k['chosen']:.3g} |",
             *(f"| kappa (ablation cell) | prior ratio {r} | | {v:.3g} |" for r, v in k["cells"].items()),
             f"| AdamW lr | median angle per step = RSGD's {a['rsgd_angle_deg']:.3f} degrees | "
             + ", ".join(f"{lr}: {deg:.3f} deg" for lr, deg in a["grid"].items()) + f" | {a['chosen']:.3g} |"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="DTI run folders on the validation subjects")
    p.add_argument("--target-prior-ratio", type=float, required=True, help="kappa / |dL/dv| the default kappa aims at")
    p.add_argument("--cell-ratios", type=float, nargs="+", default=[0.01, 1.0],
                   help="prior ratios of the ablation's kappa cells")
    p.add_argument("--out", required=True, help="folder for calibration.csv, .json and .md")
    args = p.parse_args(argv)
    try:
        rows = pd.DataFrame([run_row(Path(r)) for r in sorted(args.runs)], columns=COLUMNS)
        result = calibrate(rows, args.target_prior_ratio, args.cell_ratios)
    except DTIError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    write_csv(rows, out / "calibration.csv")
    write_json(result, out / "calibration.json")
    with atomic_path(out / "calibration.md") as tmp:
        tmp.write_text(calibration_md(result))
    print(calibration_md(result), end="")


if __name__ == "__main__":
    main()
