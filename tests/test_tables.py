"""The main and ablation tables from aggregated summaries: values, order, paper columns, formats."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from dti import DTIError, stats, tables
from dti.aggregate import write_tables
from dti.io import write_json


def summary_of(tmp_path, name, scores: dict, references: str | None = None) -> str:
    """summary.csv as ``dti aggregate`` writes it, of two subjects a and b: {method: (image values, text
    values)}; the mean over the two, and as interval their range (what a bootstrap over two subjects
    gives; written here so that these tests depend on the tables alone, not on the interval method).
    ``references``: the summary's `references` column (masked, unmasked; None: no such column)."""
    rows = []
    for method, values in scores.items():
        for metric, (a, b) in zip(("dinov2", "siglip"), values):
            rows.append({"method": method, "metric": metric, **({"references": references} if references else {}),
                         "mean": (a + b) / 2, "ci_low": min(a, b), "ci_high": max(a, b), "n_subjects": 2,
                         "n_expected_subjects": 2})
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(tmp_path / name / "summary.csv", index=False)
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
    assert "| TI-rescaled | 0.200 [" in md and "| **0.561** | 0.292 |" in md  # display names; paper's TI beside ours
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert r"DTI & 0.500 {\scriptsize [0.400, 0.600]} & \textbf{0.600} {\scriptsize [0.500, 0.700]} & 2/2" in tex
    assert pd.read_csv(tmp_path / "out" / "main.csv")["label"].tolist() == ["ti", "ti_rescaled", "dti", "newer"]


def test_ablation_table_puts_the_default_row_last(tmp_path):
    default = summary_of(tmp_path, "default", {"dti": ((0.4, 0.6), (0.5, 0.7)), "ti": ((0.9, 0.9), (0.1, 0.1))})
    cell = summary_of(tmp_path, "cell", {"dti": ((0.0, 0.2), (0.9, 0.9))})
    label = tables.cell_label("rsgd", "mean", 0)
    table = tables.ablation_table({label: cell}, default, tmp_path / "out", "dinov2", "siglip",
                                  "rsgd, m*=mean, kappa=0.0001", paper="sdxl")
    assert table["label"].tolist() == ["rsgd, m*=mean, kappa=0.0", "rsgd, m*=mean, kappa=0.0001"]
    assert table["image_mean"].tolist() == pytest.approx([0.1, 0.5])  # the default row is DTI's, not TI's
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| kappa = 0 | 0.100 [" in md and "| **0.507** | 0.436 |" in md
    assert "| DTI (default: RSGD, m* = mean, kappa = 1e-4) | **0.500** [" in md


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
    assert "| **0.561** | 0.292 | yes | no |" in (tmp_path / "out" / "main.md").read_text()
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert "{lccccc}" in tex and r"& 2/2 & \textbf{0.561} & 0.292 \\" in tex
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


def test_readers_see_arrows_bold_best_values_and_booktabs_while_the_csv_stays_plain(tmp_path):
    # DTI and CrossInit tie on text at the shown precision: both bold; TI is best on image alone
    summary = summary_of(tmp_path, "main", {"ti": ((0.8, 0.9), (0.1, 0.2)), "crossinit": ((0.5, 0.6), (0.4, 0.6)),
                                            "dti": ((0.3, 0.4), (0.45, 0.55))})
    tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "sdxl")
    md = (tmp_path / "out" / "main.md").read_text().splitlines()
    assert "| | image (dinov2) ↑ | text (siglip) ↑ | subjects |" in md
    rows = {line.split(" | ")[0][2:]: line for line in md if line.startswith("| ") and "---" not in line}
    assert rows["TI"].startswith("| TI | **0.850** [") and "| 0.150 [" in rows["TI"]
    assert "| **0.500** [" in rows["CrossInit"] and "| **0.500** [" in rows["DTI"]
    assert sum(line.count("**") for line in rows.values()) == 2 * 3
    tex = (tmp_path / "out" / "main.tex").read_text().splitlines()
    assert [line for line in tex if line.endswith("rule")] == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"Image (dinov2) $\uparrow$" in tex[3] and r"TI & \textbf{0.850} {\scriptsize [0.800, 0.900]}" in tex[5]
    csv = (tmp_path / "out" / "main.csv").read_text()
    assert "**" not in csv and "↑" not in csv and "textbf" not in csv
    assert pd.read_csv(tmp_path / "out" / "main.csv")["label"].tolist() == ["ti", "crossinit", "dti"]


def test_extra_metrics_are_columns_after_text_with_their_own_intervals_and_best(tmp_path):
    """The mini world's main table adds the read-out's measures (`--extra-metric`): each a column of its own,
    its best in bold, its numbers in the CSV; a metric the summary lacks is a one-line error."""
    summary = summary_of(tmp_path, "main", {"ti": ((0.8, 0.9), (0.1, 0.2)), "dti": ((0.3, 0.4), (0.45, 0.55))})
    frame = pd.read_csv(summary)
    extra = pd.DataFrame([{"method": m, "metric": "attr_prompt", "mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1,
                           "n_subjects": 2, "n_expected_subjects": 2} for m, v in (("ti", 0.55), ("dti", 0.9))])
    pd.concat([frame, extra]).to_csv(summary, index=False)
    table = tables.main_table(summary, tmp_path / "out", "dinov2", "siglip", "mini", extra_metrics=("attr_prompt",))
    assert table.set_index("label")["attr_prompt_mean"].to_dict() == pytest.approx({"ti": 0.55, "dti": 0.9})
    md = (tmp_path / "out" / "main.md").read_text().splitlines()
    assert "| | image (dinov2) ↑ | text (siglip) ↑ | attr_prompt ↑ | subjects |" in md
    assert "|---|---|---|---|---|" in md
    rows = {line.split(" | ")[0][2:]: line for line in md if line.startswith("| ") and "---" not in line}
    assert rows["DTI"].endswith("| **0.900** [0.800, 1.000] | 2/2 |")
    assert rows["TI"].endswith("| 0.550 [0.450, 0.650] | 2/2 |")
    tex = (tmp_path / "out" / "main.tex").read_text().splitlines()
    assert r"\begin{tabular}{lcccc}" in tex and r"attr\_prompt $\uparrow$ & Subjects" in tex[3]
    assert pd.read_csv(tmp_path / "out" / "main.csv")["attr_prompt_ci_high"].tolist() == pytest.approx([0.65, 1.0])
    with pytest.raises(DTIError, match="no 'attr_subject' scores for 'ti' in the summary"):
        tables.main_table(summary, tmp_path / "out2", "dinov2", "siglip", "mini", extra_metrics=("attr_subject",))


@pytest.mark.parametrize("label,shown", [
    ("rsgd, m*=mean, kappa=0.0", "kappa = 0"), ("rsgd, m*=mean, kappa=0.0005", "kappa = 5e-4"),
    ("adamw, m*=mean, kappa=0.0001", "AdamW"), ("rsgd, m*=min, kappa=0.0001", "m* = min"),
    ("rsgd, m*=5.0, kappa=0.0001", "m* = 5"), ("adamw, m*=max, kappa=0.0", "AdamW, m* = max, kappa = 0"),
    ("rsgd, m*=mean, kappa=0.0001", "DTI (default: RSGD, m* = mean, kappa = 1e-4)"),
    ("my own label", "my own label")])
def test_ablation_cells_are_shown_by_what_they_change_from_the_default(label, shown):
    assert tables.cell_display(label, "rsgd, m*=mean, kappa=0.0001") == shown


def dti_run(root, name, kappa=0.0001, method="dti"):
    run = root / name
    write_json({"status": "complete", "config": {"method": method, "direction_optimizer": "rsgd", "m_star": "mean",
                                                 "kappa": kappa}}, run / "run.json")
    return run


def test_the_default_ablation_row_is_labelled_from_its_runs(tmp_path):
    runs = [dti_run(tmp_path, "a", 5e-5), dti_run(tmp_path, "b", 5e-5)]
    assert tables.default_cell_label(runs) == "rsgd, m*=mean, kappa=5e-05"
    default = summary_of(tmp_path, "default", {"dti": ((0.4, 0.6), (0.5, 0.7))})
    cell = summary_of(tmp_path, "cell", {"dti": ((0.0, 0.2), (0.9, 0.9))})
    table = tables.ablation_table({tables.cell_label("rsgd", "mean", 0): cell}, default, tmp_path / "out", "dinov2",
                                  "siglip", None, default_runs=runs)
    assert table["label"].tolist() == ["rsgd, m*=mean, kappa=0.0", "rsgd, m*=mean, kappa=5e-05"]
    assert "| DTI (default: RSGD, m* = mean, kappa = 5e-5) |" in (tmp_path / "out" / "ablation.md").read_text()
    with pytest.raises(DTIError, match="default DTI runs differ in settings"):
        tables.default_cell_label(runs + [dti_run(tmp_path, "c", 1e-4)])
    with pytest.raises(DTIError, match="is a 'ti' run"):
        tables.default_cell_label([dti_run(tmp_path, "d", method="ti")])
    with pytest.raises(DTIError, match="no DTI runs given"):
        tables.ablation_table({}, default, tmp_path / "out", "dinov2", "siglip", None)


def per_subject_of(summary: str, values: dict):
    """per_subject.csv beside ``summary`` (as `dti aggregate` writes it): {metric: {subject: mean}} for dti."""
    rows = [{"method": "dti", "metric": metric, "references": "unmasked", "subject": subject, "mean": v}
            for metric, by_subject in values.items() for subject, v in by_subject.items()]
    pd.DataFrame(rows).to_csv(Path(summary).parent / "per_subject.csv", index=False)


def test_the_ablation_is_also_paired_cell_minus_default_per_subject(tmp_path):
    subjects = ["a", "b", "c", "d", "e", "f"]
    default = summary_of(tmp_path, "default", {"dti": ((0.4, 0.6), (0.5, 0.7))})
    cell = summary_of(tmp_path, "cell", {"dti": ((0.0, 0.2), (0.9, 0.9))})
    image_default = dict(zip(subjects, [0.5, 0.6, 0.7, 0.4, 0.5, 0.6]))
    image_cell = dict(zip(subjects, [0.4, 0.6, 0.5, 0.3, 0.45, 0.5]))
    per_subject_of(default, {"dinov2": image_default, "siglip": dict.fromkeys(subjects, 0.3)})
    per_subject_of(cell, {"dinov2": image_cell, "siglip": {s: 0.3 for s in subjects[:3]}})  # text: 3 subjects only
    label = tables.cell_label("rsgd", "mean", 0)
    tables.ablation_table({label: cell}, default, tmp_path / "out", "dinov2", "siglip", "rsgd, m*=mean, kappa=0.0001")
    paired = pd.read_csv(tmp_path / "out" / "ablation_paired.csv").set_index("metric")
    diffs = np.array([image_cell[s] - image_default[s] for s in subjects])
    interval = scipy.stats.bootstrap((diffs,), np.mean, method="BCa", n_resamples=stats.N_RESAMPLES,
                                     random_state=stats.RANDOM_STATE).confidence_interval
    row = paired.loc["dinov2"]
    assert row["cell"] == label and row["n_subjects"] == 6
    assert row["diff_mean"] == pytest.approx(diffs.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high))
    # a subject the cell lacks: no difference, a note naming the subjects without a pair
    assert np.isnan(paired.loc["siglip", "diff_mean"]) and "no pair for d, e, f" in paired.loc["siglip", "note"]
    md = (tmp_path / "out" / "ablation_paired.md").read_text()
    assert f"| kappa = 0 | dinov2 | 6 | {diffs.mean():+.3f} [{interval.low:.3f}, {interval.high:.3f}] |" in md
