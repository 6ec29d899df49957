"""Aggregation: per-subject means, unweighted means over subjects, NaN for anything missing, intervals,
training seeds from the score files, paired differences."""

import re

import numpy as np
import pandas as pd
import pytest

from dti.aggregate import read_scores, subject_means, summarize, write_tables
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
    assert np.isnan(summary.loc["m", "ci_low"]) and summary.loc["m", "note"].startswith("n too small for an interval")
    assert np.isnan(summary.loc["n", "mean"]) and summary.loc["n", "mean_available"] == 3.0
    assert summary.loc["n", "n_missing_images"] == 1
    with_missing = summarize(scores, subjects=["A", "B", "C"]).set_index("method")
    assert np.isnan(with_missing.loc["m", "mean"]) and with_missing.loc["m", "missing_subjects"] == "C"
    assert with_missing.loc["m", "mean_available"] == 2.0 and with_missing.loc["m", "n_subjects"] == 2
    write_tables(scores, tmp_path)
    shown = (tmp_path / "summary.md").read_text()
    assert "| m | x | unmasked | 2.000 | n too small for an interval: n=2 < 5 |" in shown
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2
    assert not (tmp_path / "paired.csv").exists()  # only when asked for a baseline


def write_scores(path, method, subject, values, metric="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"method": method, "metric": metric, "subject": subject, "seed": range(len(values)),
                  "value": values}).to_csv(path, index=False)
    return path


def test_training_seed_comes_from_the_file_name_and_seeds_are_averaged_per_subject(tmp_path):
    scores = tmp_path / "scores"
    files = [write_scores(scores / "dti" / "a" / "seed0.csv", "dti", "a", [1.0, 1.0]),
             write_scores(scores / "dti" / "a" / "seed7.csv", "dti", "a", [3.0, 5.0, 7.0]),
             write_scores(scores / "dti" / "b" / "seed0.csv", "dti", "b", [2.0]),
             write_scores(tmp_path / "loose.csv", "dti", "c", [4.0])]  # a file of no seed still reads
    frame = read_scores(files)
    assert frame.groupby("subject")["train_seed"].agg(lambda v: sorted(v.dropna().unique())).to_dict() == \
        {"a": [0, 7], "b": [0], "c": []}
    assert frame["seed"].tolist()[:2] == [0, 1]  # the image's sampling seed stays as it was
    write_tables(frame, tmp_path / "tables")
    per_seed = pd.read_csv(tmp_path / "tables" / "per_seed.csv")
    assert per_seed[per_seed["subject"] == "a"].set_index("train_seed")["mean"].to_dict() == {0: 1.0, 7: 5.0}
    per_subject = pd.read_csv(tmp_path / "tables" / "per_subject.csv").set_index("subject")
    assert per_subject.loc["a", "mean"] == 3.0 and per_subject.loc["a", "n_seeds"] == 2  # (1 + 5) / 2, not 17/5
    assert per_subject.loc["a", "n_images"] == 5 and per_subject.loc["c", "n_seeds"] == 1
    # the columns readers rely on stay, in their order; the seed count comes after them
    assert pd.read_csv(tmp_path / "tables" / "per_subject.csv").columns.tolist() == [
        "method", "metric", "subject", "mean", "mean_available", "n_images", "n_missing", "n_seeds"]
    with_seed = pd.DataFrame({"method": "m", "metric": "x", "subject": "a", "value": [1.0], "train_seed": [4]})
    kept = tmp_path / "kept_seed1.csv"
    with_seed.to_csv(kept, index=False)
    assert read_scores([kept])["train_seed"].tolist() == [4]  # a recorded seed beats the file name


def test_paired_table_of_a_baseline_against_every_other_method(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for subject in "abcdef":
        base = rng.uniform(0.2, 0.6)
        for method, shift in (("dti", 0.2), ("ti", 0.0), ("ti_rescaled", 0.2)):
            rows += [{"method": method, "metric": "text", "subject": subject, "value": base + shift + noise}
                     for noise in rng.normal(0, 0.01, size=3)]
    scores = pd.DataFrame(rows)
    with pytest.raises(DTIError, match="paired baseline 'crossinit' is not among the scored methods"):
        write_tables(scores, tmp_path / "bad", paired_against="crossinit")
    assert not (tmp_path / "bad").exists()
    write_tables(scores, tmp_path / "t", paired_against="dti")
    paired = pd.read_csv(tmp_path / "t" / "paired.csv")
    assert list(paired.columns) == ["method_a", "method_b", "metric", "n_subjects", "diff_mean", "ci_low", "ci_high",
                                    "note"]
    rows = paired.set_index("method_b")
    assert rows.loc["ti", "ci_low"] > 0.15 and rows.loc["ti", "ci_high"] < 0.25  # a clear, consistent gain
    assert rows.loc["ti_rescaled", "ci_low"] < 0 < rows.loc["ti_rescaled", "ci_high"]  # none
    assert (rows["n_subjects"] == 6).all()
    text = (tmp_path / "t" / "paired.md").read_text()
    assert "| dti | ti | text | unmasked | 6 |" in text and "BCa" in text
    three = scores[scores["subject"].isin(list("abc"))]
    write_tables(three, tmp_path / "few", paired_against="dti")
    assert "n too small for an interval: n=3 < 5" in (tmp_path / "few" / "paired.md").read_text()


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
