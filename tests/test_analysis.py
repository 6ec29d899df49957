"""Vocabulary norms and nearest words on tiny pipelines and short runs."""

import pandas as pd
import torch
import pytest

from analysis.common import learned_vectors, load_text_encoders
from analysis.nearest_words import nearest_words
from analysis.vocab_norms import learned_norm_table, main as vocab_main, vocab_norm_table
from dti import TrainConfig, train
from dti.families import vocab_norm_stats


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
        for subject, wobble in (("a", -0.01), ("b", 0.01)):
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
