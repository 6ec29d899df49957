"""Nearest vocabulary words of each learned token, by cosine and by Euclidean distance: the
direction carries the meaning (cosine neighbours are related words), the norm does not (a
large-norm token's Euclidean neighbours are just the largest rows)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.common import learned_vectors, load_text_encoders, write_csv
from dti.inspection import nearest


def nearest_words(encoders, runs: list[dict], k: int = 10) -> pd.DataFrame:
    rows = []
    by_name = {e.name: e for e in encoders}
    for run in runs:
        for enc_name, vectors in run["vectors"].items():
            enc = by_name[enc_name]
            table = enc.table
            for j, v in enumerate(vectors.float()):
                for by, top in zip(("cosine", "euclidean"), nearest(table, v, k)):
                    for rank, (value, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
                        rows.append({"method": run["method"], "run": run["run"], "encoder": enc_name, "vector": j,
                                     "by": by, "rank": rank, "token": enc.tokenizer.convert_ids_to_tokens(idx),
                                     "value": value})
    return pd.DataFrame(rows, columns=["method", "run", "encoder", "vector", "by", "rank", "token", "value"])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="+", required=True, help="finished run directories")
    parser.add_argument("--tables", required=True)
    parser.add_argument("--k", type=int, default=10, help="neighbours per token and measure")
    return parser


def analyse(args, encoders):
    """Write the tables and figures of ``args`` (from ``parser()``) with the text encoders already loaded."""
    table = nearest_words(encoders, learned_vectors(args.runs), args.k)
    write_csv(table, Path(args.tables) / "nearest_words.csv")


def main(argv=None):
    args = parser().parse_args(argv)
    analyse(args, load_text_encoders(args.model))


if __name__ == "__main__":
    main()
