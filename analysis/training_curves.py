"""Norm growth and cosine drift of the learned vectors over training.

Reads the per-step logs (``train_log.csv``) of several runs and draws, per text encoder,
the learned vectors' norm against the step with the vocabulary's norm range shaded, and
their cosine to the initial embedding and to the initializer word's row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.common import METHOD_COLOURS, read_record, run_label, save_figure, write_csv
from dti.embeddings import run_method


def load_logs(run_dirs: list[Path]) -> tuple[pd.DataFrame, dict]:
    """All trained runs' logs as one tidy frame, and each encoder's vocabulary norm statistics."""
    frames, vocab = [], {}
    for run in sorted(Path(r) for r in run_dirs):
        record = read_record(run)
        for enc, stats in record["vocab_norms"].items():
            vocab.setdefault(enc, stats)
        log = run / "train_log.csv"
        if not log.exists():  # TI-rescaled has no training of its own
            continue
        df = pd.read_csv(log)
        df["encoder"] = df["encoder"].map(dict(enumerate(record["encoders"])))
        df.insert(0, "run", run_label(run))
        df.insert(0, "method", run_method(record))
        frames.append(df)
    if not frames:
        raise ValueError("no training logs among the given runs")
    return pd.concat(frames, ignore_index=True), vocab


def final_norms(run_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in sorted(Path(r) for r in run_dirs):
        record = read_record(run)
        for enc, norms in record["final_norms"].items():
            mean = record["vocab_norms"][enc]["mean"]
            for j, n in enumerate(norms):
                rows.append({"method": run_method(record), "run": run_label(run), "encoder": enc, "vector": j,
                             "norm": n, "vocab_mean": mean, "ratio_to_vocab_mean": n / mean})
    return pd.DataFrame(rows)


def _per_method(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and range over runs and vectors, per method and step."""
    return df.groupby(["method", "step"])[column].agg(["mean", "min", "max"]).reset_index()


def plot_norm_growth(df: pd.DataFrame, vocab: dict, out_dir: Path):
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 3.6), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        stats = vocab[enc]
        ax.axhspan(stats["min"], stats["max"], color="0.85", label="vocabulary range")
        ax.axhline(stats["mean"], color="0.4", ls="--", lw=1, label="vocabulary mean")
        for method, g in _per_method(df[df["encoder"] == enc], "norm").groupby("method"):
            colour = METHOD_COLOURS.get(method)
            ax.plot(g["step"], g["mean"], color=colour, label=method)
            ax.fill_between(g["step"], g["min"], g["max"], color=colour, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("L2 norm of learned vector")
        ax.set_title(enc)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out_dir, "norm_growth",
          "Norm of the learned token embedding against training step (line: mean over runs and vectors, "
          "band: range), with the vocabulary's norm range shaded and its mean dashed.")


def plot_cosine_drift(df: pd.DataFrame, out_dir: Path):
    panels = [("cos_to_initial", "cosine to initial embedding"),
              ("cos_to_initializer", "cosine to initializer word's embedding")]
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(len(encoders), 2, figsize=(10, 3.4 * len(encoders)), squeeze=False)
    for row, enc in zip(axes, encoders):
        for ax, (column, label) in zip(row, panels):
            for method, g in _per_method(df[df["encoder"] == enc], column).groupby("method"):
                colour = METHOD_COLOURS.get(method)
                ax.plot(g["step"], g["mean"], color=colour, label=method)
                ax.fill_between(g["step"], g["min"], g["max"], color=colour, alpha=0.2)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.set_title(enc)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out_dir, "cosine_drift",
          "Cosine of the learned token embedding to its initial value and to the initializer word's embedding "
          "against training step (line: mean over runs and vectors, band: range).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (trained or rescaled)")
    parser.add_argument("--figures", required=True, help="folder for the figures (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV tables")
    args = parser.parse_args(argv)
    figures, tables = Path(args.figures), Path(args.tables)
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    df, vocab = load_logs(args.runs)
    write_csv(df, tables / "training_curves.csv")
    write_csv(final_norms(args.runs), tables / "final_norms.csv")
    plot_norm_growth(df, vocab, figures)
    plot_cosine_drift(df, figures)


if __name__ == "__main__":
    main()
