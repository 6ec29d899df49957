"""From per-image scores to tables: mean over images per subject, then the unweighted mean over
subjects with a bootstrap 95% interval over subjects. Missing images or subjects are NaN, never 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import DTIError, atomic_path, one_line


def _keys(scores: pd.DataFrame) -> list[str]:
    """Grouping keys; tables keep saying whether references were masked when the scores say so."""
    return ["method", "metric"] + (["references"] if "references" in scores.columns else [])


def subject_means(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric, subject): the mean over its images (NaN if any image is
    missing) and the mean over the images present."""
    keys = _keys(scores)
    g = scores.groupby(keys + ["subject"], sort=True)["value"]
    out = g.agg(mean_available="mean", n_images="size", n_missing=lambda v: int(v.isna().sum())).reset_index()
    out["mean"] = out["mean_available"].where(out["n_missing"] == 0)
    return out[keys + ["subject", "mean", "mean_available", "n_images", "n_missing"]]


def bootstrap_interval(values: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean, resampling the values (subjects) with replacement."""
    if len(values) == 0 or np.isnan(values).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(scores: pd.DataFrame, subjects: list[str] | None = None, n_boot: int = 10_000,
              seed: int = 0) -> pd.DataFrame:
    """One row per (method, metric). ``mean`` and its interval are NaN unless every expected
    subject (``subjects``, else those present) has all its images; ``mean_available`` averages
    what is there."""
    per_subject = subject_means(scores)
    keys = _keys(scores)
    rows = []
    for key, g in per_subject.groupby(keys, sort=True):
        expected = sorted(set(subjects) if subjects is not None else set(g["subject"]))
        by_subject = g.set_index("subject").reindex(expected)
        strict = by_subject["mean"].to_numpy(dtype=float)
        low, high = bootstrap_interval(strict, n_boot, seed)
        missing = [s for s in expected if s not in set(g["subject"])]
        rows.append({
            **dict(zip(keys, key)),
            "mean": float(strict.mean()) if len(strict) and not np.isnan(strict).any() else float("nan"),
            "ci_low": low, "ci_high": high,
            "mean_available": (float(np.nanmean(by_subject["mean_available"])) if g["mean_available"].notna().any()
                               else float("nan")),
            "n_subjects": int(by_subject["mean"].notna().sum()), "n_expected_subjects": len(expected),
            "missing_subjects": " ".join(missing),
            "n_images": int(g["n_images"].sum()), "n_missing_images": int(g["n_missing"].sum()),
        })
    return pd.DataFrame(rows)


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
    frames = [_read_score_file(Path(path)) for path in paths]
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if scores.empty:
        raise DTIError(f"no score rows with columns {sorted(NEEDED)} in {', '.join(map(str, paths))}")
    return scores


def write_tables(scores: pd.DataFrame, out_dir: str | Path, subjects: list[str] | None = None) -> Path:
    """``per_subject.csv``, ``summary.csv`` and a Markdown view of the summary."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DTIError(f"tables output {out_dir} is a file; give a folder")
    summary = summarize(scores, subjects)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("per_subject.csv", subject_means(scores)), ("summary.csv", summary)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    return out_dir


def summary_markdown(summary: pd.DataFrame) -> str:
    lines = ["| method | metric | references | mean | 95% interval | subjects | missing images |",
             "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        refs = getattr(r, "references", "unmasked")
        lines.append(f"| {r.method} | {r.metric} | {refs} | {r.mean:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] | "
                     f"{r.n_subjects}/{r.n_expected_subjects} | {r.n_missing_images} |")
    return "\n".join(lines) + "\n"
