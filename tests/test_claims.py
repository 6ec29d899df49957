"""The claims table: verdict rules on constructed estimates, and every claim on a made-up results folder."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dti import claims, stats
from dti.aggregate import write_tables
from dti.io import DTIError

SUBJECTS = ["a", "b", "c", "d", "e"]
DEFAULT = "rsgd, m*=mean, kappa=0.0001"


def scipy_bca(values) -> tuple[float, float]:
    ci = scipy_stats.bootstrap((np.asarray(values, dtype=float),), np.mean, method="BCa", confidence_level=0.95,
                               n_resamples=9999, random_state=0).confidence_interval
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.3, +1, "reproduced"), (0.1, 0.3, -1, "contradicted"),
    (-0.3, -0.1, -1, "reproduced"), (-0.3, -0.1, +1, "contradicted"),
    (-0.1, 0.3, +1, "inconclusive (interval spans 0)"), (0.0, 0.3, +1, "inconclusive (interval spans 0)"),
    (0.2, 0.2, +1, "reproduced"),  # all subjects equal: the interval [mean, mean] decides
    (0.0, 0.0, -1, "inconclusive (interval spans 0)"),
])
def test_verdict_follows_the_interval_and_the_claims_direction(low, high, direction, expected):
    assert claims.verdict(stats.Estimate((low + high) / 2, low, high, 6), direction) == expected


def test_verdict_without_an_interval():
    few = stats.bca([0.4, 0.5, 0.6])  # far above zero, yet 3 subjects give no interval
    assert claims.verdict(few, +1) == "inconclusive (n=3)"
    assert claims.verdict(stats.bca([0.5]), -1) == "inconclusive (n=1)"
    undefined = stats.Estimate(0.3, float("nan"), float("nan"), 6, "BCa undefined")
    assert claims.verdict(undefined, +1) == "inconclusive (no interval)"
    assert claims.verdict(stats.Estimate(float("nan"), float("nan"), float("nan"), 0, "no ti"), +1) == "not measured"


def scores_rows(method, values: dict, seeds=(0,)):
    """Per-image scores: {metric: per-subject values}; each subject's two images straddle its value."""
    rows = []
    for metric, per_subject in values.items():
        for subject, value in zip(SUBJECTS, per_subject):
            for seed in seeds:
                rows += [{"method": method, "metric": metric, "subject": subject, "train_seed": seed,
                          "value": value + d, "references": "unmasked"} for d in (-0.01, 0.01)]
    return rows


MAIN = {"dti": {"mini_object": [0.30, 0.40, 0.35, 0.50, 0.45], "mini_clip_t": [0.60, 0.70, 0.65, 0.80, 0.75]},
        "ti": {"mini_object": [0.50, 0.60, 0.55, 0.70, 0.65], "mini_clip_t": [0.40, 0.50, 0.45, 0.50, 0.60]},
        "ti_rescaled": {"mini_object": [0.35, 0.30, 0.40, 0.45, 0.50], "mini_clip_t": [0.70, 0.60, 0.70, 0.75, 0.80]}}


def run_rows(method, subject_values: dict, **extra):
    """Analysis rows of runs ``<subject>/seed<N>``: {subject: [value per seed]}."""
    return [{"method": method, "run": f"{subject}/seed{seed}", "encoder": "text_encoder", "vector": 0, **extra,
             "value": v} for subject, values in subject_values.items() for seed, v in enumerate(values)]


@pytest.fixture
def results(tmp_path):
    """A results folder with every table the claims read (made-up values, real writers where there are)."""
    root = tmp_path / "results"
    tables = root / "tables"
    write_tables(pd.DataFrame(sum((scores_rows(m, v) for m, v in MAIN.items()), [])), tables / "main_scores")
    # final norms against a vocabulary max of 1; subject a trained at two seeds
    ti = run_rows("ti", {"a": [3.0, 5.0], "b": [2.0], "c": [2.5], "d": [6.0], "e": [4.0]})
    dti = run_rows("dti", {s: [1.0] for s in SUBJECTS})
    pd.DataFrame(ti + dti).rename(columns={"value": "norm"}).to_csv(tables / "final_norms.csv", index=False)
    pd.DataFrame({"encoder": ["text_encoder"], "mean": [0.5], "max": [1.0]}).to_csv(tables / "vocab_norms.csv",
                                                                                    index=False)
    probe = [{**run_rows("ti", {"a": [0]})[0], "condition": c, "accuracy": acc}
             for c, acc in (("learned", 0.05), ("learned_rescaled", 0.9))]  # one run, as the workflow's today
    pd.DataFrame(probe).drop(columns="value").to_csv(tables / "positional_probe.csv", index=False)
    words = [{"encoder": "text_encoder", "label": w, "kind": k, "method": "", "pc1": x, "pc2": 0.0}
             for w, k, x in (("circle", "related", 0.0), ("square", "related", 4.0), ("red", "unrelated", 10.0))]
    tokens = [{"encoder": "text_encoder", "label": "a/seed0", "kind": "learned", "method": m, "pc1": x, "pc2": 0.0}
              for m, x in (("dti", 1.0), ("ti", 9.0))]
    pd.DataFrame(words + tokens).to_csv(tables / "contextual_map.csv", index=False)
    curves = []
    for method, finals in (("dti", [0.9, 0.8, 0.85, 0.95, 0.9]), ("ti", [0.3, 0.5, 0.2, 0.4, 0.35])):
        for subject, final in zip(SUBJECTS, finals):
            curves += [{"method": method, "run": f"{subject}/seed0", "step": step, "encoder": "text_encoder",
                        "vector": 0, "cos_to_initializer": c} for step, c in ((0, 1.0), (10, final))]
    pd.DataFrame(curves).to_csv(tables / "training_curves.csv", index=False)
    # the ablation: the default and two cells on three subjects; no m* = 5.0 or min cell in this run
    pd.DataFrame({"label": ["adamw, m*=mean, kappa=0.0001", "rsgd, m*=mean, kappa=0.0", DEFAULT]}).to_csv(
        tables / "ablation.csv", index=False)
    cells = {"default": 0.5, "direction_optimizer~adamw_m_star~mean_kappa~0.0001": 0.4,
             "direction_optimizer~rsgd_m_star~mean_kappa~0.0": 0.45}
    for folder, value in cells.items():
        rows = [r for r in scores_rows("dti", {"mini_object": [value] * 5, "mini_clip_t": [value + 0.1] * 5})
                if r["subject"] in ("a", "b", "c")]
        write_tables(pd.DataFrame(rows), root / "ablation" / folder / "tables")
    return root


def test_every_claim_on_a_made_up_results_folder(results):
    table = claims.claims_table(results).set_index("claim")
    assert table.index.tolist() == [c.id for c in claims.CLAIMS]
    text = [d - t for d, t in zip(MAIN["dti"]["mini_clip_t"], MAIN["ti"]["mini_clip_t"])]
    row = table.loc["dti_text_over_ti"]
    assert row["effect"] == pytest.approx(np.mean(text)) and row["n"] == 5
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(scipy_bca(text), abs=1e-12)
    assert row["verdict"] == "reproduced" and row["paper"] == pytest.approx(0.522 - 0.292)
    image = [d - r for d, r in zip(MAIN["dti"]["mini_object"], MAIN["ti_rescaled"]["mini_object"])]
    assert table.loc["dti_image_over_ti_rescaled", "effect"] == pytest.approx(np.mean(image))
    assert table.loc["dti_image_over_ti_rescaled", "verdict"] == "inconclusive (interval spans 0)"
    assert table.loc["dti_image_below_ti", "verdict"] == "reproduced"  # TI 0.2 above DTI on every subject
    beyond = [(3.0 / 1.0 - 1 + 5.0 / 1.0 - 1) / 2, 1.0, 1.5, 5.0, 3.0]  # subject a: its two seeds averaged
    assert table.loc["ti_norm_leaves_vocabulary", "effect"] == pytest.approx(np.mean(beyond))
    assert table.loc["ti_norm_leaves_vocabulary", "verdict"] == "reproduced"
    assert table.loc["position_lost_at_ti_norm", "effect"] == pytest.approx(0.85)
    assert table.loc["position_lost_at_ti_norm", "verdict"] == "inconclusive (n=1)"
    assert table.loc["dti_token_in_context", "effect"] == pytest.approx(5.0 - 1.0)  # TI: 5 from square; DTI: 1
    cosines = np.array([0.9, 0.8, 0.85, 0.95, 0.9]) - np.array([0.3, 0.5, 0.2, 0.4, 0.35])  # the last step's
    assert table.loc["dti_keeps_initializer_direction", "effect"] == pytest.approx(cosines.mean())
    assert table.loc["dti_keeps_initializer_direction", "verdict"] == "reproduced"
    # the ablation: three subjects, so no interval; absent cells are named, not guessed
    assert table.loc["rsgd_over_adamw_image", "effect"] == pytest.approx(0.1)
    assert table.loc["rsgd_over_adamw_image", "verdict"] == "inconclusive (n=3)"
    assert table.loc["kappa_raises_text", "effect"] == pytest.approx(0.05)
    assert table.loc["m_star_5_hurts_text", "verdict"] == "not measured"
    assert table.loc["m_star_5_hurts_text", "note"] == "no ablation cell with m_star=5.0"
    assert table.loc["m_star_5_hurts_text", "paper"] == pytest.approx(0.373 - 0.522)
    no_paper = claims.claims_table(results, paper=None)
    assert no_paper["paper"].isna().all() and no_paper["verdict"].tolist() == table["verdict"].tolist()


def test_write_claims_writes_csv_and_markdown(results, tmp_path):
    out = claims.write_claims(results, tmp_path / "out")
    written = pd.read_csv(out / "claims.csv")
    assert written.columns.tolist() == claims.COLUMNS and len(written) == len(claims.CLAIMS)
    md = (out / "claims.md").read_text()
    assert "| DTI's text fidelity exceeds TI's | text: DTI - TI | 5 | +0.210 [" in md
    assert "n too small for an interval: n=3 < 5" in md and "| not measured |" in md
    kinds = [v.split(" (")[0] for v in written["verdict"]]
    tally = ", ".join(f"{kinds.count(k)} {k}" for k in ("reproduced", "contradicted", "inconclusive", "not measured"))
    assert md.rstrip().endswith(f"Of {len(written)} claims: {tally}.")
    assert sorted(p.name for p in out.iterdir()) == ["claims.csv", "claims.md"]  # no temporary file left
    claims.write_claims(results)
    assert (results / "tables" / "claims.md").read_text() == md


def test_missing_inputs_are_one_line_errors(results, tmp_path):
    with pytest.raises(DTIError, match="has no tables/ folder"):
        claims.claims_table(tmp_path / "nowhere")
    with pytest.raises(DTIError, match="no reported main numbers for 'sdxl_turbo'"):
        claims.claims_table(results, paper="sdxl_turbo")
    (results / "tables" / "training_curves.csv").unlink()
    with pytest.raises(DTIError, match=r"claims need .*training_curves\.csv, which is missing") as caught:
        claims.claims_table(results)
    assert "\n" not in str(caught.value)
    per_subject = results / "tables" / "main_scores" / "per_subject.csv"
    pd.read_csv(per_subject).assign(metric="other").to_csv(per_subject, index=False)
    with pytest.raises(DTIError, match="none of the protocols' metric pairs"):
        claims.claims_table(results)
