"""Ablation view: every ablation cell and every main-table method as one labelled point in the
plane of image fidelity (x) against text fidelity (y), with 95% intervals over subjects.

Input: summary tables written by ``python -m dti aggregate`` (one row per method/cell and metric;
the ``method`` column holds the label). The ablation summary is ``dti tables ablation``'s, whose
last label is the default cell."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.common import place_labels, save_figure, write_csv
from analysis.labels import colour, marker, method_label
from dti.tables import cell_display

CELL_COLOUR = "0.15"


def trade_off_table(main: pd.DataFrame, ablation: pd.DataFrame, image_metric: str, text_metric: str) -> pd.DataFrame:
    """One row per label, in the summaries' order: image and text means with their intervals, and which
    table it came from."""
    rows = []
    for source, summary in (("main", main), ("ablation", ablation)):
        for metric in (image_metric, text_metric):
            if metric not in set(summary["metric"]):
                raise ValueError(f"metric {metric!r} is not in the {source} summary "
                                 f"(it has {', '.join(sorted(set(summary['metric'])))})")
        for label, g in summary.groupby("method", sort=False):
            by_metric = g.set_index("metric")
            row = {"source": source, "label": label}
            for metric, axis in ((image_metric, "image"), (text_metric, "text")):
                for col in ("mean", "ci_low", "ci_high"):
                    row[f"{axis}_{col}"] = float(by_metric.loc[metric, col])
            rows.append(row)
    return pd.DataFrame(rows)


def _default(table: pd.DataFrame, default_cell: str | None) -> str:
    """The default cell's label: the given one, else the ablation's last (``dti tables`` writes it last)."""
    cells = table.loc[table["source"] == "ablation", "label"].tolist()
    return default_cell or (cells[-1] if cells else "")


def point_labels(table: pd.DataFrame, default_cell: str | None = None) -> list[str]:
    """What each point is called: methods by display name, ablation cells by what they change from the
    default, the default cell as "DTI default"."""
    default = _default(table, default_cell)
    return [method_label(r.label) if r.source == "main" else
            "DTI default" if r.label == default else cell_display(r.label, default) for r in table.itertuples()]


def plot(table: pd.DataFrame, image_metric: str, text_metric: str, out_dir: Path, default_cell: str | None = None):
    fig, ax = plt.subplots(figsize=(6.4, 5))
    names = point_labels(table, default_cell)
    colours = []
    for r in table.itertuples():
        main = r.source == "main"
        shade = colour(r.label) if main else CELL_COLOUR
        colours.append(shade)
        # a missing interval (too few subjects) draws no bar
        ax.errorbar(r.image_mean, r.text_mean,
                    xerr=np.nan_to_num([[r.image_mean - r.image_ci_low], [r.image_ci_high - r.image_mean]]),
                    yerr=np.nan_to_num([[r.text_mean - r.text_ci_low], [r.text_ci_high - r.text_mean]]),
                    fmt=marker(r.label) if main else "o", color=shade, ms=8 if main else 5, capsize=2, lw=0.7,
                    alpha=0.9, elinewidth=0.6)
    ax.set_xlabel(f"image fidelity ({image_metric}) ↑")
    ax.set_ylabel(f"text fidelity ({text_metric}) ↑")
    default = _default(table, default_cell)
    about = cell_display(default, default).removeprefix("DTI (").removesuffix(")")
    ax.set_title(f"coloured: main-table methods (all subjects)\nblack: DTI ablation cells (ablation subjects), "
                 f"each changing one setting of the {about}", fontsize=8)
    ax.margins(0.08)
    fig.tight_layout()
    bars = [(r.image_ci_low, r.text_mean, r.image_ci_high, r.text_mean) for r in table.itertuples()]
    bars += [(r.image_mean, r.text_ci_low, r.image_mean, r.text_ci_high) for r in table.itertuples()]
    place_labels(ax, table["image_mean"].to_numpy(), table["text_mean"].to_numpy(), names, colours, fontsize=7.5,
                 obstacles=bars)
    save_figure(fig, out_dir, "ablation_view",
                "Image fidelity against text fidelity for every ablation cell and main-table method (mean over "
                "subjects with 95% bootstrap intervals), showing each setting's trade-off.")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--main", required=True, help="summary.csv of the main table's methods")
    parser.add_argument("--ablation", required=True, help="summary.csv of the ablation cells")
    parser.add_argument("--default-cell", help="label of the default cell (default: the ablation summary's last)")
    parser.add_argument("--image-metric", default="dinov2")
    parser.add_argument("--text-metric", default="siglip")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    args = parser.parse_args(argv)
    table = trade_off_table(pd.read_csv(args.main), pd.read_csv(args.ablation), args.image_metric, args.text_metric)
    write_csv(table, Path(args.tables) / "ablation_view.csv")
    plot(table, args.image_metric, args.text_metric, Path(args.figures), args.default_cell)


if __name__ == "__main__":
    main()
