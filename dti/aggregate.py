"""From per-image scores to tables. A training seed's value is the mean over its images, a subject's
the mean over its seeds; a method's is the unweighted mean over subjects, with a BCa 95% interval over
subjects (dti/stats.py: none below 5 subjects, a note instead). With a baseline, ``paired.csv`` holds
the paired differences baseline - method per metric, computed per subject. Missing images or subjects
are NaN, never 0."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .io import DTIError, atomic_path, one_line

SEED = "train_seed"  # the training seed; the scores' own ``seed`` column is the image's sampling seed
SEED_FILE = re.compile(r"seed(\d+)\.csv")  # the workflow's scores/<method>/<subject>/seed<N>.csv


def _keys(scores: pd.DataFrame) -> list[str]:
    """Grouping keys; tables keep saying whether references were masked when the scores say so."""
    return ["method", "metric"] + (["references"] if "references" in scores.columns else [])


def seed_means(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric, subject, training seed): the mean over its images (NaN if any image
    is missing) and the mean over the images present. Scores without a training seed are one seed."""
    scores = scores if SEED in scores.columns else scores.assign(**{SEED: np.nan})
    keys = _keys(scores)
    g = scores.groupby(keys + ["subject", SEED], sort=True, dropna=False)["value"]
    out = g.agg(mean_available="mean", n_images="size", n_missing=lambda v: int(v.isna().sum())).reset_index()
    out["mean"] = out["mean_available"].where(out["n_missing"] == 0)
    return out[keys + ["subject", SEED, "mean", "mean_available", "n_images", "n_missing"]]


def subject_means(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric, subject): the mean over its seeds of each seed's image mean (NaN if
    any image is missing), the same over the images present, and the image and seed counts."""
    per_seed = seed_means(scores)
    keys = _keys(scores) + ["subject"]
    strict = stats.seed_average(per_seed, keys, "mean", SEED)
    g = per_seed.groupby(keys, sort=True, dropna=False)
    out = strict.merge(g["mean_available"].mean().reset_index(), on=keys)
    out = out.merge(g[["n_images", "n_missing"]].sum().reset_index(), on=keys)
    return out[keys + ["mean", "mean_available", "n_images", "n_missing", "n_seeds"]]


def _expected(g: pd.DataFrame, subjects: list[str] | None) -> list[str]:
    return sorted(set(subjects) if subjects is not None else set(g["subject"]))


def summarize(scores: pd.DataFrame, subjects: list[str] | None = None) -> pd.DataFrame:
    """One row per (method, metric). ``mean`` and its interval are NaN unless every expected
    subject (``subjects``, else those present) has all its images; ``mean_available`` averages
    what is there; ``note`` says why an interval is missing."""
    per_subject = subject_means(scores)
    keys = _keys(scores)
    rows = []
    for key, g in per_subject.groupby(keys, sort=True, dropna=False):
        expected = _expected(g, subjects)
        by_subject = g.set_index("subject").reindex(expected)
        estimate = stats.bca(by_subject["mean"].to_numpy(dtype=float))
        missing = [s for s in expected if s not in set(g["subject"])]
        rows.append({
            **dict(zip(keys, key)),
            "mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high,
            "mean_available": (float(np.nanmean(by_subject["mean_available"])) if g["mean_available"].notna().any()
                               else float("nan")),
            "n_subjects": int(by_subject["mean"].notna().sum()), "n_expected_subjects": len(expected),
            "missing_subjects": " ".join(missing),
            "n_images": int(g["n_images"].sum()), "n_missing_images": int(g["n_missing"].sum()),
            "note": estimate.note,
        })
    return pd.DataFrame(rows)


def _check_baseline(scores: pd.DataFrame, baseline: str) -> list[str]:
    methods = sorted(set(scores["method"]))
    if baseline not in methods:
        raise DTIError(f"paired baseline {baseline!r} is not among the scored methods ({', '.join(methods)})")
    return methods


PAIRED_COLUMNS = ["method_a", "method_b", "metric", "n_subjects", "diff_mean", "ci_low", "ci_high", "note"]


def paired_differences(scores: pd.DataFrame, baseline: str, subjects: list[str] | None = None) -> pd.DataFrame:
    """One row per (other method, metric): ``baseline`` - method over subjects, each subject's
    difference taken after averaging its seeds, with a BCa interval (dti/stats.py)."""
    methods = _check_baseline(scores, baseline)
    per_subject = subject_means(scores)
    keys = [k for k in _keys(scores) if k != "method"]
    rows = []
    for key, g in per_subject.groupby(keys, sort=True, dropna=False):
        by_method = {m: x.set_index("subject")["mean"] for m, x in g.groupby("method")}
        expected = _expected(g, subjects)
        for other in (m for m in methods if m != baseline):
            estimate = stats.paired(by_method.get(baseline, pd.Series(dtype=float)),
                                    by_method.get(other, pd.Series(dtype=float)), expected)
            rows.append({"method_a": baseline, "method_b": other, **dict(zip(keys, key)), "n_subjects": estimate.n,
                         "diff_mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high,
                         "note": estimate.note})
    columns = PAIRED_COLUMNS[:3] + keys[1:] + PAIRED_COLUMNS[3:]
    return pd.DataFrame(rows, columns=columns)


NEEDED = ("method", "metric", "subject", "value")


def _read_score_file(path: Path) -> pd.DataFrame:
    """One score file, checked: a CSV with the needed columns and a numeric ``value`` (NaN allowed:
    a missing image), else a one-line error naming the file."""
    if not path.is_file():
        raise DTIError(f"scores file {path} not found")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DTIError(f"scores file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DTIError(f"scores file {path} is not a readable CSV ({one_line(exc)})") from None
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise DTIError(f"scores file {path} lacks column(s) {', '.join(missing)}")
    value = frame["value"]
    if not pd.api.types.is_numeric_dtype(value) or pd.api.types.is_bool_dtype(value):
        bad = pd.to_numeric(value, errors="coerce").isna() & value.notna()
        row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
        raise DTIError(f"scores file {path}: column value is not numeric (row {row + 1}: {str(value.iloc[row])!r})")
    return frame


def read_scores(paths: list[str | Path]) -> pd.DataFrame:
    """Every file's rows, with the training seed (``train_seed``) from the file's name ``seed<N>.csv``
    when the file has no such column (else unknown: NA)."""
    frames = []
    for path in map(Path, paths):
        frame = _read_score_file(path)
        if SEED not in frame.columns:
            match = SEED_FILE.fullmatch(path.name)
            frame[SEED] = pd.array([int(match[1]) if match else pd.NA] * len(frame), dtype="Int64")
        frames.append(frame)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if scores.empty:
        raise DTIError(f"no score rows with columns {sorted(NEEDED)} in {', '.join(map(str, paths))}")
    return scores


def write_tables(scores: pd.DataFrame, out_dir: str | Path, subjects: list[str] | None = None,
                 paired_against: str | None = None) -> Path:
    """``per_seed.csv``, ``per_subject.csv``, ``summary.csv`` and its Markdown view; with
    ``paired_against`` (a method) also ``paired.csv`` and ``paired.md``: that method minus each other."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DTIError(f"tables output {out_dir} is a file; give a folder")
    if paired_against is not None:
        _check_baseline(scores, paired_against)
    summary = summarize(scores, subjects)
    tables = {"per_seed.csv": seed_means(scores), "per_subject.csv": subject_means(scores), "summary.csv": summary}
    texts = {"summary.md": summary_markdown(summary)}
    if paired_against is not None:
        tables["paired.csv"] = paired = paired_differences(scores, paired_against, subjects)
        texts["paired.md"] = paired_markdown(paired)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    for name, text in texts.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
    return out_dir


def summary_markdown(summary: pd.DataFrame) -> str:
    lines = ["Mean over subjects (each the mean over its training seeds); 95% BCa bootstrap interval over subjects.",
             "", "| method | metric | references | mean | 95% interval | subjects | missing images |",
             "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        refs = getattr(r, "references", "unmasked")
        interval = stats.interval_text(r.ci_low, r.ci_high, r.note)
        lines.append(f"| {r.method} | {r.metric} | {refs} | {r.mean:.3f} | {interval} | "
                     f"{r.n_subjects}/{r.n_expected_subjects} | {r.n_missing_images} |")
    return "\n".join(lines) + "\n"


def paired_markdown(paired: pd.DataFrame) -> str:
    lines = ["Paired differences A - B: per subject (after averaging its training seeds), then the mean over "
             "subjects with a 95% BCa bootstrap interval over subjects.", "",
             "| A | B | metric | references | subjects | A - B | 95% interval |", "|---|---|---|---|---|---|---|"]
    for r in paired.itertuples():
        refs = getattr(r, "references", "unmasked")
        lines.append(f"| {r.method_a} | {r.method_b} | {r.metric} | {refs} | {r.n_subjects} | {r.diff_mean:.3f} | "
                     f"{stats.interval_text(r.ci_low, r.ci_high, r.note)} |")
    return "\n".join(lines) + "\n"
