"""Aggregation: per-subject means, unweighted means over subjects, NaN for anything missing, intervals."""

import numpy as np
import pandas as pd

from dti.aggregate import bootstrap_interval, subject_means, summarize, write_tables


def test_aggregation_with_nan_and_uneven_image_counts(tmp_path):
    rows = [("m", "x", "A", v) for v in (1.0, 1.0, 1.0, 1.0)] + [("m", "x", "B", 3.0)]
    rows += [("n", "x", "A", v) for v in (1.0, 2.0, 3.0)] + [("n", "x", "B", v) for v in (4.0, np.nan)]
    scores = pd.DataFrame(rows, columns=["method", "metric", "subject", "value"])
    per = subject_means(scores).set_index(["method", "subject"])
    assert per.loc[("n", "B"), "mean_available"] == 4.0 and np.isnan(per.loc[("n", "B"), "mean"])
    assert per.loc[("n", "B"), "n_missing"] == 1
    summary = summarize(scores).set_index("method")
    assert summary.loc["m", "mean"] == 2.0  # unweighted over subjects, not 7/5 over images
    assert summary.loc["m", "ci_low"] >= 1.0 and summary.loc["m", "ci_high"] <= 3.0
    assert np.isnan(summary.loc["n", "mean"]) and summary.loc["n", "mean_available"] == 3.0
    assert summary.loc["n", "n_missing_images"] == 1
    with_missing = summarize(scores, subjects=["A", "B", "C"]).set_index("method")
    assert np.isnan(with_missing.loc["m", "mean"]) and with_missing.loc["m", "missing_subjects"] == "C"
    assert with_missing.loc["m", "mean_available"] == 2.0 and with_missing.loc["m", "n_subjects"] == 2
    write_tables(scores, tmp_path)
    assert "| m | x | unmasked | 2.000 |" in (tmp_path / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = np.array([0.2, 0.5, 0.4, 0.9, 0.3])
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)
    assert low < values.mean() < high
