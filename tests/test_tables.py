"""The main and ablation tables from aggregated summaries: values, order, paper columns, formats."""

import pandas as pd
import pytest

from dti import DTIError, tables
from dti.aggregate import write_tables


def summary_of(tmp_path, name, scores: dict, references: str | None = None) -> str:
    """summary.csv of made-up per-image scores: {method: (image values, text values)} over subjects a, b;
    ``references``: the scores' `references` column (masked, unmasked; None: no such column)."""
    rows = []
    for method, (image, text) in scores.items():
        for subject, i, t in zip("ab", image, text):
            rows += [{"method": method, "metric": "dinov2", "subject": subject, "value": i},
                     {"method": method, "metric": "siglip", "subject": subject, "value": t}]
    if references:
        rows = [{**row, "references": references} for row in rows]
    write_tables(pd.DataFrame(rows), tmp_path / name)
    return str(tmp_path / name / "summary.csv")


def test_main_table_orders_methods_and_prints_the_papers_numbers(tmp_path):
    summary = summary_of(tmp_path, "main", {"dti": ((0.4, 0.6), (0.5, 0.7)), "newer": ((0.5, 0.5), (0.5, 0.5)),
                                            "ti": ((0.6, 0.8), (0.2, 0.4)), "ti_rescaled": ((0.1, 0.3), (0.4, 0.6))})
    table = tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl")
    # the paper's order, absent methods left out; a method the paper has not (a new one) after them
    assert table["label"].tolist() == ["ti", "ti_rescaled", "dti", "newer"]
    assert table.set_index("label").loc["ti", "image_mean"] == pytest.approx(0.7)
    assert table.set_index("label").loc["dti", "text_mean"] == pytest.approx(0.6)
    md = (tmp_path / "out" / "main.md").read_text()
    assert "| TI-rescaled | 0.200 [" in md and "| 0.561 | 0.292 |" in md  # display names; paper's TI beside ours
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert "DTI & 0.500 & 0.600" in tex
    assert pd.read_csv(tmp_path / "out" / "main.csv")["label"].tolist() == ["ti", "ti_rescaled", "dti", "newer"]


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


def test_paper_numbers_in_every_format_with_whether_they_lie_inside_our_interval(tmp_path):
    # SDXL's paper numbers: TI 0.561 / 0.292, DTI 0.450 / 0.522. TI's image interval [0.5, 0.6] holds
    # 0.561 and its text interval [0.1, 0.2] misses 0.292; DTI's the other way round.
    summary = summary_of(tmp_path, "main", {"ti": ((0.5, 0.6), (0.1, 0.2)), "dti": ((0.3, 0.4), (0.5, 0.6))})
    tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl")
    csv = pd.read_csv(tmp_path / "out" / "main.csv", dtype=str, keep_default_na=False).set_index("label")
    assert (csv.loc["ti", "paper_image"], csv.loc["ti", "paper_text"]) == ("0.561", "0.292")
    assert (csv.loc["ti", "paper_image_inside"], csv.loc["ti", "paper_text_inside"]) == ("true", "false")
    assert (csv.loc["dti", "paper_image_inside"], csv.loc["dti", "paper_text_inside"]) == ("false", "true")
    assert "| 0.561 | 0.292 | yes | no |" in (tmp_path / "out" / "main.md").read_text()
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert "{lcccc}" in tex and "TI & 0.550 & 0.150 & 0.561 & 0.292 \\\\" in tex
    # without paper numbers: no paper columns anywhere
    tables.main_table(summary, tmp_path / "bare", "dinov2", "siglip", "sdxl")
    assert "paper_image_inside" not in pd.read_csv(tmp_path / "bare" / "main.csv").columns
    assert "Paper" not in (tmp_path / "bare" / "main.tex").read_text()


def test_inside_is_empty_without_a_paper_number_or_an_interval(tmp_path):
    # a missing subject leaves our interval NaN; an ablation cell the paper lacks has no number
    rows = [{"method": "dti", "metric": m, "subject": "a", "value": 0.5} for m in ("dinov2", "siglip")]
    write_tables(pd.DataFrame(rows), tmp_path / "s", subjects=["a", "b"])
    tables.main_table(tmp_path / "s" / "summary.csv", tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl")
    csv = pd.read_csv(tmp_path / "out" / "main.csv", dtype=str, keep_default_na=False)
    assert csv.loc[0, "paper_image_inside"] == "" and csv.loc[0, "paper_text_inside"] == ""
    cell = summary_of(tmp_path, "cell", {"dti": ((0.1, 0.2), (0.3, 0.4))})
    table = tables.ablation_table({"rsgd, m*=max, kappa=0.0001": cell}, cell, tmp_path / "abl", "dinov2", "siglip",
                                  "rsgd, m*=mean, kappa=0.0001", paper="sdxl")
    assert table["paper_image_inside"].tolist() == [None, False]


@pytest.mark.parametrize("preset,warned", [("code", False), ("paper", True), (None, False)])
def test_a_preset_other_than_the_papers_numbers_prints_a_warning(tmp_path, preset, warned):
    # SDXL's printed numbers came from preset `code`; SANA's from `paper` (paper_numbers.json)
    summary = summary_of(tmp_path, "main", {"dti": ((0.4, 0.6), (0.5, 0.7))})
    table = tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl", preset=preset)
    md = (tmp_path / "out" / "main.md").read_text()
    assert ("**Warning**: the paper's numbers correspond to preset `code`" in md) == warned
    assert (f"Preset: `{preset}`." in md) == bool(preset)
    assert (table.get("preset", pd.Series([None])).tolist()[0]) == preset
    tables.main_table(summary, tmp_path / "sana", "dinov2", "siglip", "sana_1.6b", paper="sana_1.6b", preset="code")
    assert "correspond to preset `paper`, these runs used `code`" in (tmp_path / "sana" / "main.md").read_text()
    tables.main_table(summary, tmp_path / "none", "dinov2", "siglip", "x", preset="paper")  # no paper numbers
    assert "Warning" not in (tmp_path / "none" / "main.md").read_text()


@pytest.mark.parametrize("references,ours,caveat", [
    ("masked", "masked references", False), ("unmasked", "unmasked references", True),
    (None, "references of unrecorded or mixed kinds", True)])
def test_main_table_says_whether_references_were_masked(tmp_path, references, ours, caveat):
    summary = summary_of(tmp_path, "main", {"dti": ((0.4, 0.6), (0.5, 0.7))}, references)
    table = tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl", paper="sdxl")
    assert table["image_references"].tolist() == [references or ""]
    md = (tmp_path / "out" / "main.md").read_text()
    assert f"Our image scores used {ours}" in md
    assert "The paper's DINOv2 numbers came from masked references" in md
    assert ("ours are not directly comparable" in md) == caveat
    tables.main_table(summary, tmp_path / "bare", "dinov2", "siglip", "mini")
    bare = (tmp_path / "bare" / "main.md").read_text()
    assert f"Our image scores used {ours}" in bare and "paper's DINOv2" not in bare


def test_mixed_masked_and_unmasked_scores_are_refused(tmp_path):
    rows = [{"method": "dti", "metric": m, "subject": s, "value": 0.5, "references": r}
            for m in ("dinov2", "siglip") for s, r in (("a", "masked"), ("b", "unmasked"))]
    write_tables(pd.DataFrame(rows), tmp_path / "s")
    with pytest.raises(DTIError, match="'dinov2' scores of 'dti' mix reference kinds"):
        tables.main_table(tmp_path / "s" / "summary.csv", tmp_path / "out", "dinov2", "siglip", "x")
