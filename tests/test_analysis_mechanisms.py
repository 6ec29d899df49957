"""The mechanism analyses on tiny random-weight encoders: position probe and residual-stream angle bound."""

import pandas as pd
import pytest
import torch

from analysis import contextual_map as cm
from analysis import nearest_words as nw
from analysis import positional_probe as pp
from analysis import residual_stagnation as rs
from analysis import token_analyses as ta
from analysis import vocab_norms as vn
from analysis.common import load_text_encoders, run_label
from dti.families import FAMILIES
from dti.families import vocab_norm_stats
from dti.io import write_json

# Small enough for CPU-seconds; the tiny CLIP's position rows are as long as its token rows
# (both drawn with std 0.02), so at 1x the probe has a real signal to find.
PROBE = dict(n_train=16, n_test=16, hidden=64, steps=150)
# The tiny encoders' sub-layer updates are large next to their token rows, so the bound only
# applies from tens of times the mean norm on; TI tokens reach about 50x.
WIDE_SCALES = (1, 16, 64, 256, 1024)


@pytest.fixture(scope="module")
def encoders(tiny_models):
    return {family: load_text_encoders(str(path)) for family, path in tiny_models.items()}


def fake_run(root, name, method, family, encoders, ratio, initializer="dog"):
    """A finished run directory whose single vector lies along the initializer's row at ``ratio`` x the mean norm."""
    rows, norms = [], {}
    for enc in encoders:
        ids, slots = rs.prompt_with_slots(enc.tokenizer, rs.TEMPLATE, initializer, 1)
        row = enc.table[ids[slots[0]]]
        norms[enc.name] = vocab_norm_stats(enc.table)
        rows.append((row / row.norm() * ratio * norms[enc.name]["mean"])[None])
    run = root / name
    FAMILIES[family].write_embedding_files(run, "<sks>", rows, {"method": method})
    write_json({"status": "complete", "tokens": ["<sks>"], "encoders": [e.name for e in encoders],
                "vocab_norms": norms, "config": {"method": method, "initializer": initializer}}, run / "run.json")
    return run


def test_probe_accuracy_falls_as_the_norm_grows(encoders):
    df = pp.probe_model(None, scales=(0.5, 1, 16), encoders=encoders["sdxl"], **PROBE)
    for enc, d in df.groupby("encoder"):
        acc = d.set_index("scale")["accuracy"]
        assert acc[0.5] > 0.9 and acc[1] > 0.8, (enc, acc.to_dict())
        assert acc[16] < 0.15 and acc[16] < acc[1] - 0.6, (enc, acc.to_dict())


def test_probe_separates_norm_from_direction(encoders, tmp_path):
    enc = encoders["sd"]
    runs = [fake_run(tmp_path, "ti", "ti", "sd", enc, 50.0), fake_run(tmp_path, "dti", "dti", "sd", enc, 1.0)]
    df = pp.probe_model(None, runs, scales=(1,), encoders=enc, **PROBE).set_index(["run", "condition"])
    ti, dti = (run_label(r) for r in runs)  # "<parent folder>/ti", "<parent folder>/dti"
    assert ti.endswith("/ti") and dti.endswith("/dti")
    assert df.loc[(ti, "learned"), "scale"] == pytest.approx(50.0, rel=1e-4)
    assert df.loc[(ti, "learned"), "accuracy"] < 0.15
    # The same direction at the mean norm carries the position again.
    assert df.loc[(ti, "learned_rescaled"), "accuracy"] > 0.8
    assert df.loc[(dti, "learned"), "accuracy"] > 0.8


def test_probe_reports_rotary_encoder_not_applicable(encoders):
    df = pp.probe_model(None, encoders=encoders["sana"], **PROBE)
    assert len(df) == 1 and df["condition"].iloc[0] == pp.NOT_APPLICABLE
    assert df["accuracy"].isna().all()


@pytest.mark.parametrize("family", ["sd", "sdxl", "sana"])
def test_residual_stream_is_the_sum_of_the_hooked_updates(encoders, family):
    for enc in encoders[family]:
        ids, slots = rs.prompt_with_slots(enc.tokenizer, rs.TEMPLATE, "dog", 2)
        rows = torch.randn(2, enc.table.shape[1], generator=torch.Generator().manual_seed(0))
        t = rs.trace(enc, ids, rows * 20, slots)
        rebuilt = t["x0"] + t["updates"].sum(dim=1).cumsum(dim=0)  # [L, k, d]: x_0 plus the updates so far
        err = (rebuilt - t["outputs"]).norm(dim=-1) / t["outputs"].norm(dim=-1)
        assert err.max() < 1e-4, (family, enc.name, err)
        # x_0 is what the first layer reads: the row (Gemma-2: times its embedding scale), plus CLIP's position.
        parts = pp.additive_positions(enc.model)
        expected = rows * 20 * getattr(enc.model.get_input_embeddings(), "scalar_embed_scale", 1.0)
        if parts is not None:
            expected = expected + parts[0][slots]
        torch.testing.assert_close(t["x0"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sdxl", "sana"])
def test_measured_angle_never_exceeds_the_bound(encoders, family, tmp_path):
    runs = [fake_run(tmp_path, "ti", "ti", family, encoders[family], 50.0)]
    df = rs.stagnation_model(None, runs, scales=WIDE_SCALES, encoders=encoders[family])
    applicable = df[df["bound_applicable"]]
    assert len(applicable) >= len(df) // 3, "the bound must apply somewhere for the test to mean anything"
    assert (applicable["angle_deg"] <= applicable["bound_deg"] + 1e-6).all()
    assert df.loc[~df["bound_applicable"], "bound_deg"].isna().all()
    assert (df.loc[~df["bound_applicable"], "note"] == rs.NOT_APPLICABLE).all()
    assert set(df["condition"]) == {"sweep_initializer_direction", "learned"}
    # Past the bound's threshold the angle shrinks as the norm grows.
    for _, d in df[(df["condition"] != "learned") & (df["scale"] >= 64)].groupby(["encoder", "layer"]):
        assert d.sort_values("scale")["angle_deg"].is_monotonic_decreasing


def test_main_writes_outputs_deterministically(tiny_models, encoders, tmp_path):
    runs = [str(fake_run(tmp_path, "ti", "ti", "sd", encoders["sd"], 50.0))]
    model = str(tiny_models["sd"])
    for out in ("a", "b"):
        pp.main(["--model", model, "--runs", *runs, "--figures", str(tmp_path / out / "fig"), "--tables",
                 str(tmp_path / out / "tab"), "--seed", "3", "--train-rows", "8", "--test-rows", "8",
                 "--hidden", "32", "--steps", "60"])
        rs.main(["--model", model, "--runs", *runs, "--figures", str(tmp_path / out / "fig"),
                 "--tables", str(tmp_path / out / "tab")])
    for table in ("positional_probe.csv", "residual_stagnation.csv"):
        a, b = (tmp_path / out / "tab" / table for out in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
        assert len(pd.read_csv(a)) > 0
    for name in ("positional_probe", "residual_stagnation"):
        for ext in ("png", "pdf", "caption.txt"):
            assert (tmp_path / "a" / "fig" / f"{name}.{ext}").stat().st_size > 0


def test_probe_figure_for_a_rotary_only_model(tiny_models, tmp_path):
    pp.main(["--model", str(tiny_models["sana"]), "--figures", str(tmp_path / "fig"), "--tables", str(tmp_path)])
    df = pd.read_csv(tmp_path / "positional_probe.csv")
    assert df["condition"].tolist() == [pp.NOT_APPLICABLE]
    assert (tmp_path / "fig" / "positional_probe.png").exists()


def test_stagnation_legend_names_the_bound_only_where_it_is_drawn(encoders, tmp_path):
    for ratio, scales, drawn in ((1.0, (1, 2), False), (50.0, WIDE_SCALES, True)):
        runs = [fake_run(tmp_path / str(drawn), "ti", "ti", "sd", encoders["sd"], ratio)]
        df = rs.stagnation_model(None, runs, scales=scales, encoders=encoders["sd"])
        last = df[df["layer"] == df["layer"].max()]
        assert last["bound_applicable"].any() == drawn
        fig = rs.plot_stagnation(df, tmp_path / str(drawn), labels={"text_encoder": "CLIP ViT-L"})
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert ("bound arcsin(S_L/|x_0|)" in legend) == drawn and "TI token" in legend
        notes = [t.get_text() for t in fig.axes[0].texts]
        assert any(n.startswith("bound not drawn") for n in notes) != drawn
        assert fig.axes[0].get_title().startswith("CLIP ViT-L (L = ")


def test_probe_draws_every_learned_token_it_names(encoders, tmp_path):
    enc = encoders["sd"]
    # TI-rescaled and DTI tokens at one norm and direction: the same accuracy, both must show
    runs = [fake_run(tmp_path, "ti", "ti", "sd", enc, 50.0), fake_run(tmp_path, "dti", "dti", "sd", enc, 1.0),
            fake_run(tmp_path, "ti_rescaled", "ti_rescaled", "sd", enc, 1.0)]
    df = pp.probe_model(None, runs, scales=(1, 16), encoders=enc, **PROBE)
    fig = pp.plot_probe(df, tmp_path)
    ax = fig.axes[0]
    points = [tuple(p) for c in ax.collections for p in c.get_offsets()]
    assert len(points) == 3 * 2 and len(set(points)) == len(points)  # 3 runs, as trained and rescaled, none hidden
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "vocabulary directions", "chance", "TI", "TI-rescaled", "DTI", "learned token, as trained",
        "same direction at the mean norm"]


def test_token_analyses_in_one_process_write_what_each_command_writes(tiny_models, encoders, tmp_path):
    """`analysis.token_analyses` (the workflow's rule) loads the encoders once and runs the five analyses;
    each table must equal the one its own command writes, byte for byte."""
    runs = [str(fake_run(tmp_path, "ti", "ti", "sd", encoders["sd"], 50.0)),
            str(fake_run(tmp_path, "dti", "dti", "sd", encoders["sd"], 1.0))]
    model, alone, together = str(tiny_models["sd"]), tmp_path / "alone", tmp_path / "together"
    probe = ["--seed", "3", "--train-rows", "8", "--test-rows", "8", "--hidden", "32", "--steps", "40"]
    out = ["--model", model, "--figures", str(alone / "fig"), "--tables", str(alone / "tab")]
    vn.main([*out, "--runs", *runs])
    nw.main(["--model", model, "--tables", str(alone / "tab"), "--runs", runs[0]])
    pp.main([*out, "--runs", *runs, *probe])
    rs.main([*out, "--runs", runs[0], "--initializer", "cat"])
    cm.main([*out, "--runs", *runs, "--related", "cat", "dog", "--unrelated", "car"])
    ta.main(["--model", model, "--runs", *runs, "--first-runs", runs[0], "--figures", str(together / "fig"),
             "--tables", str(together / "tab"), "--initializer", "cat", "--related", "cat", "dog",
             "--unrelated", "car", "--probe", *probe])
    tables = sorted(p.name for p in (alone / "tab").iterdir())
    assert tables == sorted(p.name for p in (together / "tab").iterdir()) and len(tables) == 6
    for name in tables:
        assert (alone / "tab" / name).read_bytes() == (together / "tab" / name).read_bytes(), name
    assert sorted(p.name for p in (together / "fig").glob("*.png")) == sorted(
        f"{n}.png" for n in ("vocab_norms", "positional_probe", "residual_stagnation", "contextual_map"))


def test_token_analyses_refuse_a_bad_option_before_loading(tmp_path):
    with pytest.raises(SystemExit):  # the probe's own parser refuses it; no model named here exists
        ta.main(["--model", str(tmp_path / "none"), "--runs", "r", "--first-runs", "r", "--figures", "f",
                 "--tables", "t", "--probe", "--steps", "many"])
