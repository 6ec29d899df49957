"""Vocabulary norms (paper Fig. 1a): the text encoders' embedding-row norms, with the learned
tokens of each method marked, and a table of mean, std, min and max per encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.common import learned_vectors, load_text_encoders, save_figure, write_csv
from analysis.labels import colour, marker, method_label, method_order

HISTOGRAM_SHARE = 0.55  # of the panel's height; above it, one lane per method


def vocab_norm_table(encoders) -> pd.DataFrame:
    rows = []
    for enc in encoders:
        norms = enc.table.norm(dim=1)
        norms = norms[norms > 0]  # padding rows of some tables are all zero
        rows.append({"encoder": enc.name, "rows": int(norms.numel()), "mean": norms.mean().item(),
                     "std": norms.std().item(), "min": norms.min().item(), "max": norms.max().item()})
    return pd.DataFrame(rows)


def learned_norm_table(runs: list[dict], stats: pd.DataFrame) -> pd.DataFrame:
    mean = stats.set_index("encoder")["mean"]
    rows = [{"method": r["method"], "run": r["run"], "encoder": enc, "vector": j, "norm": float(v.norm()),
             "ratio_to_vocab_mean": float(v.norm()) / mean[enc]}
            for r in runs for enc, vecs in r["vectors"].items() for j, v in enumerate(vecs)]
    return pd.DataFrame(rows, columns=["method", "run", "encoder", "vector", "norm", "ratio_to_vocab_mean"])


def plot(encoders, learned: pd.DataFrame, out_dir: Path):
    """The histogram in the lower part of each panel; above it a lane per method with a tick and a marker
    at each learned token's norm, so that methods at the same norm (DTI and TI-rescaled) both show."""
    methods = method_order(learned["method"])
    fig, axes = plt.subplots(1, len(encoders), figsize=(5.6 * len(encoders), 3.8), squeeze=False)
    lane = (1 - HISTOGRAM_SHARE - 0.04) / max(len(methods), 1)
    for ax, enc in zip(axes[0], encoders):
        norms = enc.table.norm(dim=1).numpy()
        norms = norms[norms > 0]
        marks = learned[learned["encoder"] == enc.name]
        top = max(norms.max(), marks["norm"].max() if len(marks) else 0) * 1.5
        bins = np.geomspace(norms.min(), top, 80)
        counts, _, _ = ax.hist(norms, bins=bins, color="0.6", label="vocabulary rows")
        ax.set_ylim(0, counts.max() / HISTOGRAM_SHARE)
        lanes = ax.get_xaxis_transform()  # x in data, y in axes fraction
        for i, method in enumerate(reversed(methods)):  # the first method in the top lane
            low = HISTOGRAM_SHARE + 0.04 + i * lane
            g = marks[marks["method"] == method]
            for n in g["norm"]:
                ax.axvline(n, low, low + lane * 0.8, color=colour(method), lw=1.2)
            ax.scatter(g["norm"], [low + lane * 0.4] * len(g), transform=lanes, marker=marker(method),
                       s=40, color=colour(method), zorder=3, label=method_label(method))
            ax.text(1.01, low + lane * 0.4, method_label(method), transform=ax.transAxes, va="center",
                    fontsize=8, color=colour(method))
        ax.axhline(counts.max() * 1.02, color="0.85", lw=0.6)
        ax.axvline(norms.mean(), color="0.3", ls="--", lw=0.8, zorder=0)
        ax.text(norms.mean(), counts.max() * 1.02, " vocabulary mean", fontsize=7, color="0.3", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("L2 norm of embedding row (log scale)")
        ax.set_ylabel("number of vocabulary rows")
        ax.set_yticks([t for t in ax.get_yticks() if t <= counts.max()])
        ax.set_title(enc.label)
    fig.subplots_adjust(wspace=0.4)
    save_figure(fig, out_dir, "vocab_norms",
                "Histogram of each text encoder's vocabulary embedding norms (log scale), with each method's "
                "learned token norms marked in its own lane above it (one mark per run and vector); dashed: the "
                "vocabulary's mean norm.")
    return fig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished run directories to mark")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    return parser


def analyse(args, encoders):
    """Write the tables and figures of ``args`` (from ``parser()``) with the text encoders already loaded."""
    stats = vocab_norm_table(encoders)
    learned = learned_norm_table(learned_vectors(args.runs), stats)
    write_csv(stats, Path(args.tables) / "vocab_norms.csv")
    write_csv(learned, Path(args.tables) / "learned_norms.csv")
    plot(encoders, learned, Path(args.figures))


def main(argv=None):
    args = parser().parse_args(argv)
    analyse(args, load_text_encoders(args.model))


if __name__ == "__main__":
    main()
