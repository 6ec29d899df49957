"""Vocabulary norms and nearest words on tiny pipelines and short runs."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import pytest

from analysis.common import learned_vectors, load_text_encoders
from analysis.nearest_words import nearest_words
from analysis.vocab_norms import learned_norm_table, main as vocab_main, vocab_norm_table
from dti import TrainConfig, train
from dti.families import vocab_norm_stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tiny_models, ref_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_runs")
    out = []
    for method, lr in (("ti", 0.5), ("dti", 0.001)):
        cfg = TrainConfig(method=method, model=str(tiny_models["sdxl"]), images=str(ref_images),
                          placeholder="<sks>", initializer="dog", steps=2).set(
            ["resolution=64", "batch_size=1", f"lr={lr}", "device=cpu"])
        out.append(train(cfg, root / method))
    return out


def test_vocab_norms_match_training_statistics_and_mark_learned_tokens(tiny_models, runs, tmp_path):
    encoders = load_text_encoders(str(tiny_models["sdxl"]))
    assert [e.name for e in encoders] == ["text_encoder", "text_encoder_2"]
    stats = vocab_norm_table(encoders).set_index("encoder")
    for enc in encoders:
        expected = vocab_norm_stats(enc.table)
        assert stats.loc[enc.name, "mean"] == pytest.approx(expected["mean"])
        assert stats.loc[enc.name, "max"] == pytest.approx(expected["max"])
    learned = learned_norm_table(learned_vectors(runs), stats.reset_index()).set_index("method")
    assert learned.loc["dti", "ratio_to_vocab_mean"].tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert (learned.loc["ti", "ratio_to_vocab_mean"] > 2).all()  # lr 0.5 for 2 steps inflates TI
    vocab_main(["--model", str(tiny_models["sdxl"]), "--runs", *map(str, runs), "--figures", str(tmp_path / "f"),
                "--tables", str(tmp_path / "t")])
    assert (tmp_path / "f" / "vocab_norms.png").stat().st_size > 5000
    assert pd.read_csv(tmp_path / "t" / "learned_norms.csv").shape[0] == 4


def test_nearest_words_by_cosine_follow_the_direction_and_by_distance_the_norm(tiny_models):
    encoders = load_text_encoders(str(tiny_models["sdxl"]))
    enc = encoders[0]
    table = enc.table
    dog = table[enc.tokenizer("dog", add_special_tokens=False).input_ids[0]]
    # The largest row, and a vector pointing mostly along it but shrunk to a small norm.
    big = table[table.norm(dim=1).argmax()]
    small = 0.05 * torch.nn.functional.normalize(big + 0.5 * dog * big.norm() / dog.norm(), dim=0) * dog.norm()
    runs = [{"method": "scaled_dog", "run": "a/seed0", "vectors": {enc.name: (8 * dog)[None]}},
            {"method": "small", "run": "b/seed0", "vectors": {enc.name: small[None]}}]
    got = nearest_words([enc], runs, k=5).set_index(["method", "by", "rank"])
    # A word's own direction, whatever the norm, is its nearest word by cosine (cosine 1).
    assert got.loc[("scaled_dog", "cosine", 1), "token"] == "dog</w>"
    assert got.loc[("scaled_dog", "cosine", 1), "value"] == pytest.approx(1.0, abs=1e-5)
    # Both measures agree with a direct computation, and they rank differently for the small vector.
    for method, v in (("scaled_dog", 8 * dog), ("small", small)):
        cos = torch.nn.functional.cosine_similarity(table, v[None], dim=1)
        dist = torch.cdist(table[None], v[None, None])[0, :, 0]
        want_cos = enc.tokenizer.convert_ids_to_tokens(cos.argsort(descending=True)[:5].tolist())
        want_dist = enc.tokenizer.convert_ids_to_tokens(dist.argsort()[:5].tolist())
        assert [got.loc[(method, "cosine", r), "token"] for r in range(1, 6)] == want_cos
        assert [got.loc[(method, "euclidean", r), "token"] for r in range(1, 6)] == want_dist
    small_cos = [got.loc[("small", "cosine", r), "token"] for r in range(1, 6)]
    small_dist = [got.loc[("small", "euclidean", r), "token"] for r in range(1, 6)]
    assert small_cos != small_dist
    # Ranks are ordered: cosine descending, distance ascending; every (run, measure) has k rows.
    for (by, _), g in nearest_words([enc], runs, k=5).groupby(["by", "method"]):
        values = g.sort_values("rank")["value"].tolist()
        assert values == sorted(values, reverse=(by == "cosine")) and len(values) == 5


def test_contextual_map_places_words_and_learned_tokens(tiny_models, runs, tmp_path):
    from analysis.contextual_map import WORDS, last_state, main as map_main

    encoders = load_text_encoders(str(tiny_models["sdxl"]))
    enc = encoders[0]
    dog_row = enc.table[enc.tokenizer("dog", add_special_tokens=False).input_ids]
    # a learned token equal to the word's own row is the word, in context
    assert torch.allclose(last_state(enc, "a photo of a {}", "dog", dog_row), last_state(enc, "a photo of a {}", "dog"),
                          atol=1e-5)
    map_main(["--model", str(tiny_models["sdxl"]), "--runs", *map(str, runs), "--figures", str(tmp_path / "f"),
              "--tables", str(tmp_path / "t")])
    df = pd.read_csv(tmp_path / "t" / "contextual_map.csv")
    n_words = sum(len(w) for w in WORDS.values())
    assert len(df) == 2 * (n_words + len(runs)) and set(df["encoder"]) == {"text_encoder", "text_encoder_2"}
    words = df[(df["kind"] != "learned") & (df["encoder"] == "text_encoder")]
    assert abs(words["pc1"].mean()) < 1e-6 and words["pc1"].var() >= words["pc2"].var()  # PCA of the words
    assert (tmp_path / "f" / "contextual_map.png").stat().st_size > 5000


def test_ablation_view_puts_each_cell_at_its_image_and_text_scores(tmp_path):
    from analysis.ablation_view import main as view_main

    from dti.aggregate import write_tables

    rows = []
    for label, image, text in (("ti", 0.56, 0.29), ("dti", 0.45, 0.52), ("rsgd/min/0.1", 0.03, 0.07),
                               ("rsgd/mean/0.5", 0.28, 0.69)):
        for subject, wobble in zip("abcde", (-0.02, -0.01, 0.0, 0.01, 0.02)):  # five: enough for an interval
            rows += [(label, "dinov2", subject, image + wobble), (label, "siglip", subject, text + wobble)]
    scores = pd.DataFrame(rows, columns=["method", "metric", "subject", "value"])
    write_tables(scores[scores["method"].isin(["ti", "dti"])], tmp_path / "main")
    write_tables(scores[~scores["method"].isin(["ti", "dti"])], tmp_path / "abl")
    view_main(["--main", str(tmp_path / "main" / "summary.csv"), "--ablation", str(tmp_path / "abl" / "summary.csv"),
               "--figures", str(tmp_path / "f"), "--tables", str(tmp_path / "t")])
    table = pd.read_csv(tmp_path / "t" / "ablation_view.csv").set_index("label")
    assert table.loc["rsgd/mean/0.5", "text_mean"] == pytest.approx(0.69)
    assert table.loc["ti", "image_mean"] == pytest.approx(0.56) and table.loc["ti", "source"] == "main"
    assert (table["image_ci_low"] <= table["image_mean"]).all() and (table["text_ci_high"] >= table["text_mean"]).all()
    assert (tmp_path / "f" / "ablation_view.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="metric 'clip_t' is not in the main summary"):
        view_main(["--main", str(tmp_path / "main" / "summary.csv"), "--ablation",
                   str(tmp_path / "abl" / "summary.csv"), "--text-metric", "clip_t", "--figures", str(tmp_path / "f"),
                   "--tables", str(tmp_path / "t")])


def test_figures_name_encoders_by_model_and_methods_by_display_name(tiny_models, runs, tmp_path):
    from analysis.labels import encoder_label
    from analysis.training_curves import main as curves_main
    from dti.methods import display_name

    assert [display_name(m) for m in ("ti", "ti_rescaled", "crossinit", "dti", "newer")] == \
        ["TI", "TI-rescaled", "CrossInit", "DTI", "newer"]
    assert encoder_label("sdxl", "text_encoder", 768) == "CLIP ViT-L"
    assert encoder_label("sdxl", "text_encoder_2", 1280) == "OpenCLIP bigG"
    assert encoder_label("sana", "text_encoder", 2304) == "Gemma-2"
    assert encoder_label("sd", "text_encoder", 64) == "mini-world CLIP"
    assert encoder_label("sdxl", "text_encoder_2", 64) == "text encoder 2 (width 64)"  # the tiny test model
    mini = ROOT / "experiments" / "mini" / "world" / "pipeline"
    if (mini / "model_index.json").is_file():
        assert [e.label for e in load_text_encoders(str(mini))] == ["mini-world CLIP"]

    curves_main(["--runs", *map(str, runs), "--figures", str(tmp_path / "f"), "--tables", str(tmp_path / "t")])
    from analysis.training_curves import load_logs, plot_cosine_drift

    df, _, labels = load_logs(runs)
    assert labels == {"text_encoder": "text encoder (width 32)", "text_encoder_2": "text encoder 2 (width 64)"}
    fig = plot_cosine_drift(df, tmp_path / "f", labels)
    # small multiples: a column per method (paper order, display names), a row per encoder and measure
    assert [ax.get_title() for ax in fig.axes[:2]] == ["TI", "DTI"] and len(fig.axes) == 2 * 2 * 2
    assert fig.axes[2].get_ylabel().startswith("text encoder (width 32)")
    for name in ("norm_growth", "cosine_drift"):
        assert (tmp_path / "f" / f"{name}.png").stat().st_size > 5000


def test_vocab_norms_give_every_method_its_own_lane(tiny_models, runs, tmp_path):
    from analysis.vocab_norms import plot

    encoders = load_text_encoders(str(tiny_models["sdxl"]))
    learned = learned_norm_table(learned_vectors(runs), vocab_norm_table(encoders))
    same = learned[learned["method"] == "dti"].assign(method="ti_rescaled")  # at exactly DTI's norms
    fig = plot(encoders, pd.concat([learned, same]), tmp_path)
    marks = {c.get_label(): c.get_offsets() for c in fig.axes[0].collections if c.get_label() in ("DTI", "TI-rescaled")}
    assert (marks["DTI"][:, 0] == marks["TI-rescaled"][:, 0]).all()  # one norm ...
    assert (marks["DTI"][:, 1] != marks["TI-rescaled"][:, 1]).all()  # ... in two lanes: both visible
    assert fig.axes[0].get_title() == "text encoder (width 32)"


def test_labels_are_placed_without_overprinting(tmp_path):
    import matplotlib.pyplot as plt

    from analysis.common import place_labels

    rng = np.random.default_rng(0)
    xs, ys = rng.normal(0, 0.3, 14), rng.normal(0, 0.3, 14)
    xs[1], ys[1] = xs[0], ys[0]  # two points at one spot share one label
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(xs, ys)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    placed = place_labels(ax, xs, ys, [f"label {i}" for i in range(14)])
    texts, boxes = zip(*placed)
    assert sorted(texts)[:2] == ["label 0 / label 1", "label 10"] and len(boxes) == 13
    assert sorted(texts) == sorted(t.get_text() for t in ax.texts)  # every one drawn
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    plt.close(fig)


def test_ablation_view_names_cells_by_what_they_change(tmp_path):
    from analysis.ablation_view import plot, point_labels, trade_off_table

    from dti.aggregate import write_tables
    from dti.tables import cell_label

    cells = [cell_label("adamw", "mean", 1e-4), cell_label("rsgd", "mean", 0), cell_label("rsgd", "mean", 1e-4)]
    rows = [(label, metric, subject, 0.3 + 0.01 * k + 0.02 * s)
            for k, label in enumerate(["ti", "dti"] + cells) for s, subject in enumerate("abcde")
            for metric in ("dinov2", "siglip")]
    scores = pd.DataFrame(rows, columns=["method", "metric", "subject", "value"])
    write_tables(scores[scores["method"].isin(["ti", "dti"])], tmp_path / "main")
    write_tables(scores[~scores["method"].isin(["ti", "dti"])], tmp_path / "abl")
    table = trade_off_table(pd.read_csv(tmp_path / "main" / "summary.csv"),
                            pd.read_csv(tmp_path / "abl" / "summary.csv"), "dinov2", "siglip")
    # the default cell: the ablation summary's last (dti tables writes it last), or named
    assert point_labels(table) == ["DTI", "TI", "AdamW", "kappa = 0", "DTI default"]
    assert point_labels(table, cells[1])[2:] == ["AdamW, kappa = 1e-4", "DTI default", "kappa = 1e-4"]
    fig = plot(table, "dinov2", "siglip", tmp_path)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["AdamW", "DTI", "DTI default", "TI", "kappa = 0"]
