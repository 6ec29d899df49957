"""Vocabulary norms (paper Fig. 1a): the text encoders' embedding-row norms, with the learned
tokens of each method marked, and a table of mean, std, min and max per encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.common import METHOD_COLOURS, learned_vectors, load_text_encoders, save_figure, write_csv


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
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 3.6), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        norms = enc.table.norm(dim=1).numpy()
        norms = norms[norms > 0]
        marks = learned[learned["encoder"] == enc.name]
        top = max(norms.max(), marks["norm"].max() if len(marks) else 0) * 1.5
        bins = np.geomspace(norms.min(), top, 80)
        ax.hist(norms, bins=bins, color="0.6", label="vocabulary rows")
        for style, (method, g) in zip(["-", "--", ":", "-."] * 4, marks.groupby("method")):
            for i, n in enumerate(g["norm"]):  # styles differ so that methods at the same norm stay visible
                ax.axvline(n, color=METHOD_COLOURS.get(method), ls=style, lw=1.4, label=method if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("L2 norm of embedding row")
        ax.set_ylabel("number of rows")
        ax.set_title(enc.name)
        ax.legend(fontsize=8)
    save_figure(fig, out_dir, "vocab_norms",
                "Histogram of the text encoders' vocabulary embedding norms (log scale) with each method's "
                "learned token norms marked as vertical lines.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished run directories to mark")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    args = parser.parse_args(argv)
    encoders = load_text_encoders(args.model)
    stats = vocab_norm_table(encoders)
    learned = learned_norm_table(learned_vectors(args.runs), stats)
    write_csv(stats, Path(args.tables) / "vocab_norms.csv")
    write_csv(learned, Path(args.tables) / "learned_norms.csv")
    plot(encoders, learned, Path(args.figures))


if __name__ == "__main__":
    main()
