"""The statistics behind every interval of the tables: subjects are the unit of replication.

* Seeds nest inside subjects: a training seed's value is the mean over its images, a subject's value
  the mean over its seeds, so a subject trained at 3 seeds weighs as much as one trained at 1.
* An interval is a BCa bootstrap over subjects (``scipy.stats.bootstrap``, 95%, fixed random state),
  of the mean of the subjects' values, or of their paired differences (method A - method B per
  subject, after averaging seeds): every method runs on the same subjects.
* Fewer than ``MIN_SUBJECTS`` subjects give no interval (a bootstrap over 3 values says nothing);
  subjects that all agree give the interval [mean, mean] (BCa is undefined there), and a missing
  value gives NaN: each with a note that says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

MIN_SUBJECTS = 5
CONFIDENCE = 0.95
N_RESAMPLES = 9999
RANDOM_STATE = 0
TOO_FEW = "n too small for an interval"


@dataclass(frozen=True)
class Estimate:
    """A mean over subjects with its interval; ``low``/``high`` are NaN when there is none (``note`` says why)."""
    mean: float
    low: float
    high: float
    n: int
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return not (np.isnan(self.low) or np.isnan(self.high))


def bca(values, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
        random_state: int = RANDOM_STATE) -> Estimate:
    """The mean of per-subject ``values`` with its BCa interval (resampling subjects)."""
    x = np.asarray(values, dtype=float)
    nan = float("nan")
    if x.size == 0:
        return Estimate(nan, nan, nan, 0, "no subjects")
    if np.isnan(x).any():
        return Estimate(nan, nan, nan, int((~np.isnan(x)).sum()), "a subject's value is missing")
    mean = float(x.mean())
    if x.size < MIN_SUBJECTS:
        return Estimate(mean, nan, nan, x.size, f"{TOO_FEW}: n={x.size} < {MIN_SUBJECTS}")
    if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):  # no spread (up to rounding): BCa's acceleration is 0/0
        return Estimate(mean, mean, mean, x.size, "all subjects equal: interval is the mean (BCa undefined)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = stats.bootstrap((x,), np.mean, method="BCa", confidence_level=confidence,
                                 n_resamples=n_resamples, random_state=random_state)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):
        why = " ".join(str(caught[-1].message).split())[:120] if caught else "no reason given"
        return Estimate(mean, nan, nan, x.size, f"BCa undefined ({why})")
    return Estimate(mean, low, high, x.size)


def paired(a: pd.Series, b: pd.Series, subjects=None) -> Estimate:
    """A - B over subjects (both indexed by subject, seeds already averaged) with its BCa interval.
    ``subjects``: those expected (default: every subject of either); one without both values makes
    the difference NaN, named in the note: a pair with a hole is not a paired comparison."""
    subjects = sorted(set(a.index) | set(b.index)) if subjects is None else list(subjects)
    diff = a.reindex(subjects).astype(float) - b.reindex(subjects).astype(float)
    unpaired = [str(s) for s, d in diff.items() if pd.isna(d)]
    if unpaired:
        nan = float("nan")
        return Estimate(nan, nan, nan, len(subjects) - len(unpaired), f"no pair for {', '.join(unpaired)}")
    return bca(diff.to_numpy())


def interval_text(low: float, high: float, note: str) -> str:
    """``[low, high]``, or the note that says why there is none."""
    if np.isnan(low) or np.isnan(high):
        return note or "n/a"
    return f"[{low:.3f}, {high:.3f}]" + (f" ({note})" if note else "")


def _strict_mean(values: pd.Series) -> float:
    return float(values.mean(skipna=False))


def seed_average(frame: pd.DataFrame, keys: list[str], value: str = "value", seed: str = "train_seed") -> pd.DataFrame:
    """One row per ``keys`` (which include the subject): ``value`` averaged within each seed, then over the
    seeds, and ``n_seeds``. Any NaN makes the result NaN (a missing seed is missing, not skipped); rows
    of an unknown seed (NaN) count as one seed."""
    per_seed = frame.groupby(keys + [seed], dropna=False, sort=True)[value].agg(_strict_mean)
    grouped = per_seed.groupby(level=list(range(len(keys))), dropna=False, sort=True)
    return pd.DataFrame({value: grouped.agg(_strict_mean), "n_seeds": grouped.size()}).reset_index()
