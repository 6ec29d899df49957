"""The main and ablation tables from aggregated summaries: values, order, paper columns, formats."""

import pandas as pd
import pytest

from dti import DTIError, tables
from dti.aggregate import write_tables


def summary_of(tmp_path, name, scores: dict) -> str:
    """summary.csv of made-up per-image scores: {method: (image values, text values)} over subjects a, b."""
    rows = []
    for method, (image, text) in scores.items():
        for subject, i, t in zip("ab", image, text):
            rows += [{"method": method, "metric": "dinov2", "subject": subject, "value": i},
                     {"method": method, "metric": "siglip", "subject": subject, "value": t}]
    write_tables(pd.DataFrame(rows), tmp_path / name)
    return str(tmp_path / name / "summary.csv")


def test_main_table_orders_methods_and_prints_the_papers_numbers(tmp_path):
    summary = summary_of(tmp_path, "main", {"dti": ((0.4, 0.6), (0.5, 0.7)), "ti": ((0.6, 0.8), (0.2, 0.4)),
                                            "ti_rescaled": ((0.1, 0.3), (0.4, 0.6))})
    table = tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl")
    assert table["label"].tolist() == ["ti", "ti_rescaled", "dti"]  # the paper's order, absent methods left out
    assert table.set_index("label").loc["ti", "image_mean"] == pytest.approx(0.7)
    assert table.set_index("label").loc["dti", "text_mean"] == pytest.approx(0.6)
    md = (tmp_path / "out" / "main.md").read_text()
    assert "| TI-rescaled | 0.200 [" in md and "| 0.561 | 0.292 |" in md  # display names; paper's TI beside ours
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert "DTI & 0.500 & 0.600" in tex
    assert pd.read_csv(tmp_path / "out" / "main.csv")["label"].tolist() == ["ti", "ti_rescaled", "dti"]


def test_ablation_table_puts_the_default_row_last(tmp_path):
    default = summary_of(tmp_path, "default", {"dti": ((0.4, 0.6), (0.5, 0.7)), "ti": ((0.9, 0.9), (0.1, 0.1))})
    cell = summary_of(tmp_path, "cell", {"dti": ((0.0, 0.2), (0.9, 0.9))})
    label = tables.cell_label("rsgd", "mean", 0)
    table = tables.ablation_table({label: cell}, default, tmp_path / "out", "dinov2", "siglip",
                                  "rsgd, m*=mean, kappa=0.0001", paper="sdxl")
    assert table["label"].tolist() == ["rsgd, m*=mean, kappa=0.0", "rsgd, m*=mean, kappa=0.0001"]
    assert table["image_mean"].tolist() == pytest.approx([0.1, 0.5])  # the default row is DTI's, not TI's
    assert "| 0.507 | 0.436 |" in (tmp_path / "out" / "ablation.md").read_text()


def test_unknown_paper_model_and_missing_metric_are_one_line_errors(tmp_path):
    summary = summary_of(tmp_path, "main", {"dti": ((0.4, 0.6), (0.5, 0.7))})
    with pytest.raises(DTIError, match="no reported main numbers for 'sd3'"):
        tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "x", paper="sd3")
    with pytest.raises(DTIError, match="no 'clip_t' scores for 'dti'"):
        tables.main_table(summary, tmp_path / "out", "dinov2", "clip_t", "x")
