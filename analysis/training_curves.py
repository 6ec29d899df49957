"""Norm growth and cosine drift of the learned vectors over training.

Reads the per-step logs (``train_log.csv``) of several runs and draws, per text encoder,
the learned vectors' norm against the step with the vocabulary's norm range shaded, and
their cosine to the initial embedding and to the initializer word's row (one small panel per
method, so that the methods' spreads never pile up on one another).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.common import read_record, run_encoder_labels, run_label, save_figure, write_csv
from analysis.labels import colour, linestyle, method_label, method_order
from dti.embeddings import run_method


def load_logs(run_dirs: list[Path]) -> tuple[pd.DataFrame, dict, dict]:
    """All trained runs' logs as one tidy frame, each encoder's vocabulary norm statistics, and each
    encoder's name for readers."""
    frames, vocab, labels = [], {}, {}
    for run in sorted(Path(r) for r in run_dirs):
        record = read_record(run)
        for enc, stats in record["vocab_norms"].items():
            vocab.setdefault(enc, stats)
        if record.get("status") == "complete":
            labels = {**run_encoder_labels(run), **labels}
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
    return pd.concat(frames, ignore_index=True), vocab, labels


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
    """Mean, range and quartiles over runs and vectors, per method and step."""
    g = df.groupby(["method", "step"])[column]
    out = g.agg(["mean", "min", "max", "median"])
    out["q1"], out["q3"] = g.quantile(0.25), g.quantile(0.75)
    return out.reset_index()


def _methods(df: pd.DataFrame) -> list[str]:
    return method_order(df["method"])


def plot_norm_growth(df: pd.DataFrame, vocab: dict, out_dir: Path, labels: dict | None = None):
    labels = labels or {}
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 3.6), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        stats = vocab[enc]
        ax.axhspan(stats["min"], stats["max"], color="0.85", label="vocabulary range")
        ax.axhline(stats["mean"], color="0.4", ls="--", lw=1, label="vocabulary mean")
        curves = _per_method(df[df["encoder"] == enc], "norm")
        for method in _methods(df):
            g = curves[curves["method"] == method]
            ax.plot(g["step"], g["mean"], color=colour(method), ls=linestyle(method), label=method_label(method))
            ax.fill_between(g["step"], g["min"], g["max"], color=colour(method), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("L2 norm of learned vector")
        ax.set_title(labels.get(enc, enc))
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out_dir, "norm_growth",
          "Norm of the learned token embedding against training step (line: mean over runs and vectors, "
          "band: range), with the vocabulary's norm range shaded and its mean dashed.")
    return fig


def plot_cosine_drift(df: pd.DataFrame, out_dir: Path, labels: dict | None = None):
    """Small multiples: a row per (encoder, measure), a column per method; each panel shows its method's
    median and interquartile band over runs and vectors, with the other methods' medians in grey."""
    labels = labels or {}
    measures = [("cos_to_initial", "cosine to\ninitial embedding"),
                ("cos_to_initializer", "cosine to initializer\nword's embedding")]
    encoders = list(dict.fromkeys(df["encoder"]))
    methods = _methods(df)
    rows = [(enc, m) for enc in encoders for m in measures]
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(3.2 * len(methods), 2.6 * len(rows)),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for axes_row, (enc, (column, label)) in zip(axes, rows):
        curves = _per_method(df[df["encoder"] == enc], column)
        for ax, method in zip(axes_row, methods):
            for other in methods:  # the others' medians, for comparison
                g = curves[curves["method"] == other]
                if other != method:
                    ax.plot(g["step"], g["median"], color="0.75", lw=0.9)
            g = curves[curves["method"] == method]
            ax.fill_between(g["step"], g["q1"], g["q3"], color=colour(method), alpha=0.25, lw=0)
            ax.plot(g["step"], g["median"], color=colour(method), lw=1.8)
            ax.axhline(0, color="0.85", lw=0.6, zorder=0)
            ax.label_outer()
        axes_row[0].set_ylabel(f"{labels.get(enc, enc)}\n{label}")
    for ax, method in zip(axes[0], methods):
        ax.set_title(method_label(method), color=colour(method), fontweight="bold")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    fig.suptitle("line: median over runs and vectors; band: interquartile range; grey: the other methods' medians",
                 fontsize=8)
    save_figure(fig, out_dir, "cosine_drift",
                "Cosine of the learned token embedding to its initial value (top) and to the initializer word's "
                "embedding (bottom) against training step, one panel per method (line: median over runs and "
                "vectors, band: interquartile range; grey: the other methods' medians).")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (trained or rescaled)")
    parser.add_argument("--figures", required=True, help="folder for the figures (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV tables")
    args = parser.parse_args(argv)
    figures, tables = Path(args.figures), Path(args.tables)
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    df, vocab, labels = load_logs(args.runs)
    # the logged values are float32: 7 significant digits keep all of them (the float64 repr of a float32 is
    # twice as long, and this table has a row per step of every run)
    write_csv(df, tables / "training_curves.csv", float_format="%.7g")
    write_csv(final_norms(args.runs), tables / "final_norms.csv")
    plot_norm_growth(df, vocab, figures, labels)
    plot_cosine_drift(df, figures, labels)


if __name__ == "__main__":
    main()
