"""Subject-level statistics: seeds nested in subjects, BCa intervals, paired differences, the degenerate cases."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dti import stats
from dti.aggregate import paired_differences, summarize


def scipy_bca(values) -> tuple[float, float]:
    """The interval straight from scipy, with the settings dti.stats documents."""
    ci = scipy_stats.bootstrap((np.asarray(values, dtype=float),), np.mean, method="BCa", confidence_level=0.95,
                               n_resamples=9999, random_state=0).confidence_interval
    return float(ci.low), float(ci.high)


def image_rows(method, subject, seed, values, metric="text"):
    return [{"method": method, "metric": metric, "subject": subject, "train_seed": seed, "value": v} for v in values]


def test_paired_bootstrap_matches_scipy_on_hand_computed_differences():
    # six subjects; subject c has two training seeds for both methods, subject f two for dti only
    rows = []
    rows += image_rows("dti", "a", 0, [0.6, 0.8]) + image_rows("ti", "a", 0, [0.5, 0.5])
    rows += image_rows("dti", "b", 0, [0.4]) + image_rows("ti", "b", 0, [0.45])
    rows += image_rows("dti", "c", 0, [0.9, 0.7]) + image_rows("dti", "c", 1, [0.5])
    rows += image_rows("ti", "c", 0, [0.2]) + image_rows("ti", "c", 1, [0.4, 0.4, 0.4])
    rows += image_rows("dti", "d", 0, [0.55]) + image_rows("ti", "d", 0, [0.35])
    rows += image_rows("dti", "e", 0, [0.3, 0.5]) + image_rows("ti", "e", 0, [0.1])
    rows += image_rows("dti", "f", 0, [1.0]) + image_rows("dti", "f", 1, [0.6]) + image_rows("ti", "f", 0, [0.7])
    scores = pd.DataFrame(rows)
    # by hand: each seed's mean over its images, each subject's mean over its seeds, then dti - ti
    dti = {"a": 0.7, "b": 0.4, "c": (0.8 + 0.5) / 2, "d": 0.55, "e": 0.4, "f": (1.0 + 0.6) / 2}
    ti = {"a": 0.5, "b": 0.45, "c": (0.2 + 0.4) / 2, "d": 0.35, "e": 0.1, "f": 0.7}
    diffs = [dti[s] - ti[s] for s in "abcdef"]
    row = paired_differences(scores, "dti").iloc[0]
    assert (row["method_a"], row["method_b"], row["metric"], row["n_subjects"]) == ("dti", "ti", "text", 6)
    assert row["diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    low, high = scipy_bca(diffs)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert row["note"] == "" or pd.isna(row["note"])
    # the pairing matters: an unpaired interval of the two means is another (wider) thing
    assert high - low < (scipy_bca(list(dti.values()))[1] - scipy_bca(list(dti.values()))[0])


def test_seeds_nest_inside_subjects():
    # subject a: 3 seeds (means 1, 2, 6: their images 1 | 1, 3 | 6), subject b: 1 seed (10)
    rows = (image_rows("m", "a", 0, [1.0]) + image_rows("m", "a", 1, [1.0, 3.0]) + image_rows("m", "a", 2, [6.0])
            + image_rows("m", "b", 0, [10.0]))
    summary = summarize(pd.DataFrame(rows)).iloc[0]
    assert summary["mean"] == pytest.approx((3.0 + 10.0) / 2)  # a subject weighs 1, whatever its seeds or images
    assert summary["mean"] != pytest.approx(np.mean([1, 1, 3, 6, 10]))  # not pooled over images
    assert summary["mean"] != pytest.approx(np.mean([1, 2, 6, 10]))  # nor over seeds
    per_seed = stats.seed_average(pd.DataFrame(rows), ["subject"]).set_index("subject")
    assert per_seed.loc["a", "value"] == pytest.approx(3.0) and per_seed.loc["a", "n_seeds"] == 3
    assert per_seed.loc["b", "n_seeds"] == 1


def test_a_missing_seed_value_is_missing_not_skipped():
    frame = pd.DataFrame({"subject": ["a", "a", "b"], "train_seed": [0, 1, 0], "value": [1.0, np.nan, 2.0]})
    out = stats.seed_average(frame, ["subject"]).set_index("subject")
    assert np.isnan(out.loc["a", "value"]) and out.loc["b", "value"] == 2.0


def test_bca_matches_scipy_and_handles_small_degenerate_and_missing_samples():
    values = [0.21, 0.35, 0.18, 0.52, 0.44, 0.29]
    estimate = stats.bca(values)
    assert estimate.mean == pytest.approx(np.mean(values)) and estimate.n == 6 and estimate.note == ""
    assert (estimate.low, estimate.high) == scipy_bca(values)
    assert estimate.low < estimate.mean < estimate.high
    few = stats.bca([0.1, 0.5, 0.3])
    assert few.mean == pytest.approx(0.3) and not few.has_interval and few.n == 3
    assert few.note.startswith("n too small for an interval")
    same = stats.bca([1.0] * 6)  # BCa is 0/0 here: scipy gives NaN, we give [mean, mean] and say so
    assert (same.mean, same.low, same.high) == (1.0, 1.0, 1.0) and "all subjects equal" in same.note
    rounded = stats.bca([0.3, 0.1 + 0.2, 0.3, 0.3, 0.3])  # equal up to float rounding: no spread either
    assert rounded.low == rounded.high == rounded.mean and "all subjects equal" in rounded.note
    with pytest.warns(Warning):
        assert np.isnan(scipy_bca([1.0] * 6)[0])
    missing = stats.bca([0.1, np.nan, 0.3, 0.4, 0.5])
    assert np.isnan(missing.mean) and not missing.has_interval and missing.note
    assert stats.bca([]).note == "no subjects"


def test_paired_names_subjects_without_a_pair():
    a = pd.Series({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0})
    b = pd.Series({"a": 0.0, "b": 1.0, "c": 1.0, "d": 2.0})
    estimate = stats.paired(a, b)
    assert np.isnan(estimate.mean) and estimate.n == 4 and estimate.note == "no pair for e"
    full = stats.paired(a, b.reindex(list("abcde")).fillna(3.0))
    assert full.mean == pytest.approx(np.mean([1, 1, 2, 2, 2])) and full.has_interval
    assert stats.paired(a, b, subjects=list("abcd")).mean == pytest.approx(1.5)
