"""Ablation view: every ablation cell and every main-table method as one labelled point in the
plane of image fidelity (x) against text fidelity (y), with 95% intervals over subjects.

Input: summary tables written by ``python -m dti aggregate`` (one row per method/cell and metric;
the ``method`` column holds the label)."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.common import METHOD_COLOURS, save_figure, write_csv


def trade_off_table(main: pd.DataFrame, ablation: pd.DataFrame, image_metric: str, text_metric: str) -> pd.DataFrame:
    """One row per label: image and text means with their intervals, and which table it came from."""
    rows = []
    for source, summary in (("main", main), ("ablation", ablation)):
        for metric in (image_metric, text_metric):
            if metric not in set(summary["metric"]):
                raise ValueError(f"metric {metric!r} is not in the {source} summary "
                                 f"(it has {', '.join(sorted(set(summary['metric'])))})")
        for label, g in summary.groupby("method", sort=True):
            by_metric = g.set_index("metric")
            row = {"source": source, "label": label}
            for metric, axis in ((image_metric, "image"), (text_metric, "text")):
                for col in ("mean", "ci_low", "ci_high"):
                    row[f"{axis}_{col}"] = float(by_metric.loc[metric, col])
            rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, image_metric: str, text_metric: str, out_dir: Path):
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for r in table.itertuples():
        main = r.source == "main"
        colour = METHOD_COLOURS.get(r.label, "tab:gray") if main else "black"
        ax.errorbar(r.image_mean, r.text_mean,
                    xerr=[[r.image_mean - r.image_ci_low], [r.image_ci_high - r.image_mean]],
                    yerr=[[r.text_mean - r.text_ci_low], [r.text_ci_high - r.text_mean]],
                    fmt="s" if main else "o", color=colour, ms=7 if main else 5, capsize=2, lw=0.8)
        ax.annotate(r.label, (r.image_mean, r.text_mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"image fidelity ({image_metric})")
    ax.set_ylabel(f"text fidelity ({text_metric})")
    ax.set_title("squares: main-table methods; dots: ablation cells")
    save_figure(fig, out_dir, "ablation_view",
                "Image fidelity against text fidelity for every ablation cell and main-table method (mean over "
                "subjects with 95% bootstrap intervals), showing each setting's trade-off.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--main", required=True, help="summary.csv of the main table's methods")
    parser.add_argument("--ablation", required=True, help="summary.csv of the ablation cells")
    parser.add_argument("--image-metric", default="dinov2")
    parser.add_argument("--text-metric", default="siglip")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    args = parser.parse_args(argv)
    table = trade_off_table(pd.read_csv(args.main), pd.read_csv(args.ablation), args.image_metric, args.text_metric)
    write_csv(table, Path(args.tables) / "ablation_view.csv")
    plot(table, args.image_metric, args.text_metric, Path(args.figures))


if __name__ == "__main__":
    main()
