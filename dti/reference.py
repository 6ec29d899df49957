"""A committed reference of a configuration's tables, and the check that a fresh run matches it.

    python -m dti.reference save  --results results/mini --reference results/reference/mini
    python -m dti.reference check --results results/mini --reference results/reference/mini
    python -m dti.reference readme --readme experiments/mini/README.md --reference results/reference/mini

``save`` copies the tables (CSV, Markdown, LaTeX) and figures (PNG, captions) of a finished
run. ``readme`` writes the reference's tables into a README between the marker lines
``<!-- table: tables/claims.md -->`` and ``<!-- end table -->`` (the path relative to the
reference), so that a README shows the committed tables as they were generated, not copies.
``check`` compares every numeric column of the reference's CSV tables with the fresh run's, cell
by cell, and fails naming the first cell off by more than the tolerance (absolute, default 0.02:
runs on another CPU or library build differ in the last bits, and sampling amplifies that a
little; a change of method or protocol moves scores far more).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .io import DTIError, atomic_path, one_line

TABLES = ("main.csv", "ablation.csv", "ablation_paired.csv", "final_norms.csv", "vocab_norms.csv",
          "positional_probe.csv", "claims.csv", "main_scores/per_subject.csv", "main_scores/paired.csv",
          "step_sizes.csv")
# What describes the machine that ran the jobs, not the results: never saved, never compared.
MACHINE_SPECIFIC = ("job_costs",)
TOLERANCE = 0.02


def _check_tolerance(tolerance) -> float:
    """A finite number >= 0: NaN would pass every cell (``diff > nan`` is false), a negative one none."""
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        raise DTIError(f"tolerance {tolerance!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DTIError(f"tolerance {tolerance!r} must be a finite number >= 0")
    return value


def _tables_in(folder: Path) -> list[str]:
    return [name for name in TABLES if (folder / "tables" / name).is_file()]


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DTIError(f"{path} is not a readable CSV table ({one_line(exc)})") from None


def save(results: Path, reference: Path):
    """Copy a finished run's tables and figures; a results folder with none of ``TABLES`` is refused
    (an empty reference would make every later check pass)."""
    results, reference = Path(results), Path(reference)
    if not _tables_in(results):
        raise DTIError(f"results folder {results} has no tables to save (none of {', '.join(TABLES)} in "
                       f"{results / 'tables'})")
    (reference / "tables").mkdir(parents=True, exist_ok=True)
    (reference / "figures").mkdir(parents=True, exist_ok=True)
    # Every table, the per-subject and per-metric summaries below tables/ too: a README may cite any.
    for path in sorted((results / "tables").rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".md", ".tex") and path.stem not in MACHINE_SPECIFIC:
            target = reference / "tables" / path.relative_to(results / "tables")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    for path in sorted((results / "figures").rglob("*")):
        if path.is_file() and path.suffix in (".png", ".txt") and path.name.split(".")[0] not in MACHINE_SPECIFIC:
            target = reference / "figures" / path.relative_to(results / "figures")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)


def compare(results: Path, reference: Path, tolerance: float = TOLERANCE) -> list[str]:
    """Differences beyond ``tolerance``, one line each (empty: the run matches). A reference with none
    of ``TABLES`` is an error; a check that compared no number at all is a difference, never a match."""
    results, reference = Path(results), Path(reference)
    tolerance = _check_tolerance(tolerance)
    names = _tables_in(reference)
    if not names:
        raise DTIError(f"reference {reference} has no tables (none of {', '.join(TABLES)} in {reference / 'tables'})")
    problems, compared = [], 0
    for name in names:
        ref_path, new_path = reference / "tables" / name, results / "tables" / name
        if not new_path.is_file():
            problems.append(f"{new_path} is missing")
            continue
        ref = _read_table(ref_path)
        try:
            new = _read_table(new_path)
        except DTIError as exc:  # the run's table is broken: a difference, reported with the others
            problems.append(str(exc))
            continue
        if ref.shape != new.shape or list(ref.columns) != list(new.columns):
            problems.append(f"{name}: shape or columns differ ({ref.shape} vs {new.shape})")
            continue
        for column in ref.columns:
            a, b = ref[column], new[column]
            if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
                x, y = a.to_numpy(float), b.to_numpy(float)
                compared += int((~np.isnan(x)).sum())
                bad = np.flatnonzero((np.abs(x - y) > tolerance) | (np.isnan(x) != np.isnan(y)))
                if len(bad):
                    i = int(bad[0])
                    problems.append(f"{name}: {column} row {i}: reference {a.iloc[i]:.4f}, run {b.iloc[i]:.4f} "
                                    f"(tolerance {tolerance})")
            elif not a.astype(str).equals(b.astype(str)):
                problems.append(f"{name}: column {column} differs")
    if not compared:
        problems.append(f"no number was compared: the reference's tables ({', '.join(names)}) have no numeric cell "
                        "that the run's could be checked against")
    return problems


README_BLOCK = re.compile(r"(<!-- table: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def fill_readme(text: str, reference: Path) -> str:
    """``text`` with each marked block replaced by the reference's file it names."""
    def table(m: re.Match) -> str:
        path = reference / m.group("path")
        if not path.is_file():
            raise DTIError(f"the README names {m.group('path')}, which {reference} does not have")
        return m.group(1) + path.read_text().rstrip("\n") + "\n" + m.group(4)

    return README_BLOCK.sub(table, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dti.reference", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "check", "readme"])
    parser.add_argument("--results", help="save, check: a finished run's results folder, e.g. results/mini")
    parser.add_argument("--readme", help="readme: the README whose marked blocks get the reference's tables")
    parser.add_argument("--reference", required=True, help="the committed reference, e.g. results/reference/mini")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"absolute, >= 0 (default {TOLERANCE})")
    args = parser.parse_args(argv)
    needed = "--readme" if args.action == "readme" else "--results"
    if getattr(args, needed[2:]) is None:
        parser.error(f"{args.action} needs {needed}")
    reference = Path(args.reference)
    try:
        if args.action == "readme":
            readme = Path(args.readme)
            if not readme.is_file():
                raise DTIError(f"{readme} is not a file")
            text = fill_readme(readme.read_text(), reference)
            with atomic_path(readme) as tmp:
                tmp.write_text(text)
            return 0
        results = Path(args.results)
        if args.action == "save":
            save(results, reference)
            return 0
        problems = compare(results, reference, args.tolerance)
    except DTIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    print("matches the reference" if not problems else f"{len(problems)} difference(s) beyond {args.tolerance}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
