"""Step sizes: how far each run's learned vectors turn per step, and how much DTI's vMF prior weighs
against the data gradients, for every run of the main table and of the ablation cells.

    python -m analysis.step_sizes --runs RUN [RUN ...] --tables results/mini/tables

Writes ``step_sizes.csv``, one row per run: its method and settings (direction optimizer, m*, kappa,
learning rate), the angle its vectors turn in the first step and the median over training, and the
median and quartiles of ``prior_ratio`` = kappa / |dL/dv| per vector (``dti.methods``). kappa is an
absolute weight: with data gradients of size |dL/dv| the prior adds a pull kappa / |dL/dv| as large
as the data's before the step is normalised, so the ratio, not kappa, says whether the prior acts.
RSGD turns v by atan(lr) per step whatever the gradient; AdamW's angle depends on its own lr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.common import read_record, write_csv
from dti.embeddings import run_method

COLUMNS = ["run", "method", "cell", "direction_optimizer", "m_star", "kappa", "lr", "steps", "first_angle_deg",
           "median_angle_deg", "prior_ratio_median", "prior_ratio_q25", "prior_ratio_q75"]


def cell_of(run: Path) -> str:
    """The ablation cell a run belongs to (its folder under ``ablation/``), or "main"."""
    parts = run.parts
    return parts[parts.index("ablation") + 1] if "ablation" in parts else "main"


def step_sizes(run: Path) -> dict:
    record = read_record(run)
    cfg, method = record["config"], run_method(record)
    log = pd.read_csv(run / "train_log.csv")
    steps = log[log["step"] >= 1]
    first = steps[steps["step"] == steps["step"].min()] if len(steps) else steps
    adamw = method == "dti" and cfg.get("direction_optimizer") == "adamw"
    ratio = steps["prior_ratio"].dropna() if "prior_ratio" in steps else pd.Series(dtype=float)
    return {
        "run": f"{run.parts[-3]}/{run.parts[-2]}/{run.name}", "method": method, "cell": cell_of(run),
        "direction_optimizer": cfg.get("direction_optimizer") if method == "dti" else "adamw",
        "m_star": cfg.get("m_star") if method == "dti" else "", "kappa": cfg.get("kappa") if method == "dti" else "",
        "lr": cfg.get("adamw_lr") if adamw else cfg.get("lr"), "steps": int(steps["step"].max()) if len(steps) else 0,
        "first_angle_deg": float(first["angle_deg"].mean()) if len(first) else float("nan"),
        "median_angle_deg": float(steps["angle_deg"].median()) if len(steps) else float("nan"),
        "prior_ratio_median": float(ratio.median()) if len(ratio) else float("nan"),
        "prior_ratio_q25": float(ratio.quantile(0.25)) if len(ratio) else float("nan"),
        "prior_ratio_q75": float(ratio.quantile(0.75)) if len(ratio) else float("nan"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="trained run folders (TI-rescaled ones are skipped)")
    p.add_argument("--tables", required=True, help="folder for step_sizes.csv")
    args = p.parse_args(argv)
    runs = [Path(r) for r in sorted(args.runs) if (Path(r) / "train_log.csv").is_file()]
    table = pd.DataFrame([step_sizes(r) for r in runs], columns=COLUMNS)
    write_csv(table, Path(args.tables) / "step_sizes.csv")
    summary = table.groupby(["cell", "method"], sort=True)[["first_angle_deg", "median_angle_deg",
                                                             "prior_ratio_median"]].median()
    print(summary.to_string())


if __name__ == "__main__":
    main()
