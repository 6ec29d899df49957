"""Aggregation: per-subject means, unweighted means over subjects, NaN for anything missing, intervals."""

import re

import numpy as np
import pandas as pd
import pytest

from dti.aggregate import bootstrap_interval, read_scores, subject_means, summarize, write_tables
from dti.cli import main
from dti.io import DTIError


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


def test_bad_score_files_are_refused_in_one_line(tmp_path, capsys):
    good = tmp_path / "good.csv"
    pd.DataFrame({"method": ["m"], "metric": ["x"], "subject": ["A"], "value": [0.5]}).to_csv(good, index=False)
    empty, binary, text_values = tmp_path / "empty.csv", tmp_path / "binary.csv", tmp_path / "text.csv"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)) * 8)
    text_values.write_text("method,metric,subject,value\nm,x,A,0.5\nm,x,B,high\n")
    out = tmp_path / "tables"
    for bad, message in ((empty, "empty.csv is empty"), (binary, "binary.csv is not a readable CSV"),
                         (text_values, "text.csv: column value is not numeric .row 2: 'high'")):
        with pytest.raises(DTIError, match=message):
            read_scores([good, bad])
        assert main(["aggregate", "--scores", str(good), str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0])
        assert not out.exists()
    assert main(["aggregate", "--scores", str(good), "--out", str(out)]) == 0  # NaN values stay allowed
    assert pd.read_csv(out / "summary.csv").loc[0, "mean"] == 0.5
