"""The reference check: equal within the tolerance, a named failure beyond it."""

import pandas as pd

from dti import reference


def write(root, image_mean):
    (root / "tables").mkdir(parents=True)
    pd.DataFrame({"label": ["ti", "dti"], "image_mean": image_mean, "text_mean": [0.3, 0.5]}).to_csv(
        root / "tables" / "main.csv", index=False)


def test_reference_check(tmp_path):
    write(tmp_path / "ref", [0.40, 0.50])
    write(tmp_path / "close", [0.41, 0.50])
    write(tmp_path / "far", [0.40, 0.60])
    assert reference.compare(tmp_path / "close", tmp_path / "ref") == []
    problems = reference.compare(tmp_path / "far", tmp_path / "ref")
    assert len(problems) == 1 and "image_mean row 1" in problems[0]
    assert reference.main(["check", "--results", str(tmp_path / "far"), "--reference", str(tmp_path / "ref")]) == 1
    reference.save(tmp_path / "close", tmp_path / "saved")
    assert reference.compare(tmp_path / "close", tmp_path / "saved") == []
