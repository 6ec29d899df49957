"""Interpolation between two learned concepts: the path, the run directories it writes, and the
analysis end to end on the tiny SD pipeline with tiny metric models."""

import json
import math
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.interpolation import _path_name, _path_title, interpolate_vectors, interpolation, main, plot_grid, \
    write_interpolated_runs
from dti import DTIError, TrainConfig, load_embeddings, train
from tests import tiny
from dti.embeddings import read_run
from dti.families import FAMILIES
from dti.sample import SampleConfig, sample

TEMPLATES = ["a {} in the jungle"]


def _angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = torch.nn.functional.normalize(x.double(), dim=1), torch.nn.functional.normalize(y.double(), dim=1)
    return 2 * torch.atan2((x - y).norm(dim=1), (x + y).norm(dim=1))


def _on_sphere(k: int, d: int, m: float, seed: int) -> torch.Tensor:
    x = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    return m * torch.nn.functional.normalize(x, dim=1)


def test_slerp_keeps_m_star_and_moves_at_constant_speed_on_the_great_circle():
    m = 0.37
    a, b = _on_sphere(3, 16, m, 0), _on_sphere(3, 16, m, 1)
    omega = _angle(a, b)
    for t in torch.linspace(0, 1, 11).tolist():
        e = interpolate_vectors(a, b, t, "slerp", norm=m)
        assert e.dtype == a.dtype
        assert torch.allclose(e.norm(dim=1).double(), torch.full((3,), m, dtype=torch.float64), rtol=1e-6)
        assert torch.allclose(_angle(e, a), t * omega, atol=1e-5)        # angle to a grows linearly in t ...
        assert torch.allclose(_angle(e, b), (1 - t) * omega, atol=1e-5)  # ... along the arc between a and b
    assert torch.equal(interpolate_vectors(a, b, 0.0, "slerp", m), a)  # the ends are the concepts, bit for bit
    assert torch.equal(interpolate_vectors(a, b, 1.0, "slerp", m), b)
    # without a norm: the rows' lengths blend linearly
    e = interpolate_vectors(a, 3 * b, 0.5, "slerp")
    assert torch.allclose(e.norm(dim=1), torch.full((3,), 2 * m), rtol=1e-6)

    # near-parallel rows (sin(omega) ~ 0) fall back to normalised lerp: finite, on the sphere
    close = a.double() + 1e-12 * torch.randn(3, 16, dtype=torch.float64)
    e = interpolate_vectors(a.double(), close, 0.5, "slerp", m)
    assert torch.isfinite(e).all() and torch.allclose(e.norm(dim=1), torch.full((3,), m, dtype=torch.float64))
    assert torch.allclose(e, a.double(), atol=1e-10)
    with pytest.raises(DTIError, match="opposite directions"):
        interpolate_vectors(a, -a, 0.5, "slerp", m)


def test_lerp_is_the_straight_line():
    a, b = torch.randn(2, 8), 5 * torch.randn(2, 8)
    for t in (0.0, 0.3, 1.0):
        assert torch.allclose(interpolate_vectors(a, b, t, "lerp"), (1 - t) * a + t * b, rtol=1e-6, atol=1e-7)
    with pytest.raises(DTIError, match="slerp only"):
        interpolate_vectors(a, b, 0.5, "lerp", norm=1.0)


@pytest.fixture(scope="module")
def runs(tiny_models, ref_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("interp_runs")

    def run(name, method="dti", initializer="dog", seed=0, steps=2, family="sd"):
        cfg = TrainConfig(method=method, model=str(tiny_models[family]), images=str(ref_images),
                          placeholder=f"<{name}>", initializer=initializer, steps=steps, seed=seed).set(
            ["resolution=64", "batch_size=1", "device=cpu"])
        return train(cfg, root / name)

    return {"a": run("a", seed=0), "b": run("b", initializer="cat", seed=1),
            "ti_a": run("ti_a", method="ti", steps=1),
            "ti_b": run("ti_b", method="ti", initializer="cat", seed=1, steps=1),
            "two": run("two", initializer="stuffed animal", steps=1),
            "sdxl": run("sdxl", family="sdxl", steps=1)}


def test_interpolated_runs_are_ordinary_runs(runs, tiny_models, tmp_path):
    rec_a, (a,) = read_run(runs["a"])
    rec_b, (b,) = read_run(runs["b"])
    dirs = write_interpolated_runs(runs["a"], runs["b"], [0, 0.25, 1], tmp_path / "dti")
    assert [d.name for d in dirs] == ["t_0", "t_0.25", "t_1"]
    record, (e,) = read_run(dirs[1])
    assert record["method"] == "interpolation" and record["mode"] == "slerp" and record["t"] == 0.25
    assert record["tokens"] == rec_a["tokens"] and record["status"] == "complete"
    assert record["source_runs"] == [str(runs["a"].resolve()), str(runs["b"].resolve())]
    assert record["source_methods"] == ["dti", "dti"]
    assert e.norm(dim=1).tolist() == pytest.approx(rec_a["m_star_values"], rel=1e-6)
    assert torch.equal(read_run(dirs[0])[1][0], a) and torch.equal(read_run(dirs[2])[1][0], b)

    # TI runs: lerp by default, the straight line by hand
    _, (ta,) = read_run(runs["ti_a"])
    _, (tb,) = read_run(runs["ti_b"])
    (ti_dir,) = write_interpolated_runs(runs["ti_a"], runs["ti_b"], [0.25], tmp_path / "ti")
    record, (e,) = read_run(ti_dir)
    assert record["mode"] == "lerp"
    assert torch.allclose(e, 0.75 * ta + 0.25 * tb, rtol=1e-6, atol=1e-7)

    # own placeholders: every point loads into one pipeline beside the others
    own = write_interpolated_runs(runs["a"], runs["b"], [0, 0.5], tmp_path / "own", own_placeholders=True)
    pipe = FAMILIES["sd"].load_pipeline(str(tiny_models["sd"]), *SampleConfig().placement())
    concepts = [load_embeddings(pipe, d) for d in own]
    assert [c.placeholder for c in concepts] == ["<a@0>", "<a@0.5>"]
    assert concepts[1].prompt("a {}") == "a <a@0.5>"


def test_mismatched_or_unfinished_runs_are_refused(runs, tmp_path):
    with pytest.raises(DTIError, match="differ in family: 'sd'.*'sdxl'"):
        write_interpolated_runs(runs["a"], runs["sdxl"], [0.5], tmp_path / "x")
    with pytest.raises(DTIError, match="vectors per encoder: 1 vs 2 in text_encoder"):
        write_interpolated_runs(runs["a"], runs["two"], [0.5], tmp_path / "x")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["b"], unfinished)
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "running"}))
    with pytest.raises(DTIError, match="unfinished run"):
        write_interpolated_runs(runs["a"], unfinished, [0.5], tmp_path / "x")
    with pytest.raises(DTIError, match="repeat"):
        write_interpolated_runs(runs["a"], runs["b"], [0.5, 0.50], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def test_interpolation_end_to_end(runs, ref_images, metric_models, tmp_path, capsys):
    refs_b = tiny.write_reference_images(tmp_path / "refs_b", n=2, seed=1)
    cfg = SampleConfig().set(["steps=2"])
    work, figures, tables = tmp_path / "work", tmp_path / "figures", tmp_path / "tables"
    df = interpolation(runs["a"], runs["b"], [0, 0.5, 1], TEMPLATES, [0, 1], "dog", "cat", ref_images, refs_b, work,
                       metric_ids=metric_models, sample_cfg=cfg, figures=figures, tables=tables)
    out, err = capsys.readouterr()
    # one plain line per point, and no progress bar of the pipeline's denoising loop (the command line
    # also silences the loading bars, below)
    assert "interpolation (slerp): t = 0.5 sampled (2/3 points, 2 images each)" in out
    bars = [b for b in re.split(r"[\r\n]", out + err) if "%|" in b and "Loading" not in b]
    assert bars == []
    csv = pd.read_csv(tables / "interpolation.csv")
    assert len(csv) == len(df) == 3 * 2 * 1 * 2 * 2  # t x seed x template x metric x against
    assert list(csv.columns[:7]) == ["t", "mode", "template", "seed", "metric", "against", "value"]
    assert csv.groupby(["t", "metric", "against"]).size().eq(2).all() and set(csv["mode"]) == {"slerp"}
    assert set(csv["metric"]) == {"dinov2", "siglip"} and set(csv["against"]) == {"a", "b"}
    assert csv["value"].notna().all() and csv[csv["metric"] == "siglip"]["value"].between(0, 1).all()
    image = csv[csv["metric"] == "dinov2"].pivot_table(index=["t", "seed"], columns="against", values="value")
    assert not np.allclose(image["a"], image["b"])  # the two subjects' references score differently

    # the path's ends are the concepts: same images as sampling each run on its own (fresh pipeline, own token id)
    for t, run in ((0.0, runs["a"]), (1.0, runs["b"])):
        direct = pd.read_csv(sample(run, tmp_path / f"direct_{t}", "s", "dog", TEMPLATES, [0, 1], "p", cfg))
        for seed, file in zip(direct["seed"], direct["file"]):
            along = csv[(csv["t"] == t) & (csv["seed"] == seed)]["file"].iloc[0]
            assert np.abs(_pixels(along) - _pixels(tmp_path / f"direct_{t}" / file)).max() <= 2
    for name in ("interpolation_grid_dti", "interpolation_scores_dti"):  # named by method: DTI's and TI's differ
        assert (figures / f"{name}.png").stat().st_size > 5000
        caption = (figures / f"{name}.caption.txt").read_text().strip()
        assert caption.startswith("DTI, slerp") and "<a> (t = 0) → <b> (t = 1)" in caption and caption.endswith(".")
    assert not (figures / "interpolation_grid.png").exists()

    # the command line, rerun on the same work folder: intact images of unchanged points are kept
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TEMPLATES) + "\n")
    files = sorted(set(csv["file"]))
    stamps = [os.stat(f).st_mtime_ns for f in files]
    ids = [f"--model-id={k}={v}" for k, v in metric_models.items()]
    args = ["--run-a", str(runs["a"]), "--run-b", str(runs["b"]), "--ts", "0", "0.5", "1", "--prompts", str(prompts),
            "--seeds", "0", "1", "--references-a", str(ref_images), "--references-b", str(refs_b),
            "--class-a", "dog", "--class-b", "cat", *ids, "--figures", str(figures), "--tables", str(tmp_path / "t2"),
            "--work", str(work), "--set", "steps=2"]
    capsys.readouterr()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "%|" not in out + err and "\r" not in out + err  # a log of plain lines
    assert [os.stat(f).st_mtime_ns for f in files] == stamps
    again = pd.read_csv(tmp_path / "t2" / "interpolation.csv")
    assert np.allclose(again["value"], csv["value"])
    # the straight path instead: its ends are the same vectors (images kept), its middle is not (redone)
    assert main(args + ["--mode", "lerp"]) == 0
    middle = [f"{os.sep}t_0.5{os.sep}" in f for f in files]
    assert any(middle) and not all(middle)
    for file, stamp, redone in zip(files, stamps, middle):
        assert (os.stat(file).st_mtime_ns != stamp) == redone, file
    capsys.readouterr()
    assert main(args + ["--text-metric", "dinov2"]) == 2
    assert "'dinov2' is not a text metric" in capsys.readouterr().err
    assert math.isfinite(df["value"].mean())


def test_the_grid_names_its_method_shows_both_concepts_references_and_the_prompts_as_sampled(tmp_path):
    cells = []
    for t in (0.0, 1.0):
        for seed in (0, 1):
            file = tmp_path / f"{t}_{seed}.png"
            Image.new("RGB", (8, 8), (int(255 * t), 0, 0)).save(file)
            cells.append({"t": t, "template": 0, "seed": seed, "file": str(file)})
    refs = {key: [Image.new("RGB", (8, 8), colour)] * 3 for key, colour in (("a", "blue"), ("b", "green"))}
    path = {"methods": ["ti"], "mode": "lerp", "concepts": {"a": "<dog>", "b": "<cat>"},
            "nouns": {"a": "dog", "b": "cat"}}
    fig = plot_grid(pd.DataFrame(cells), ["a {} in the jungle"], path, tmp_path / "fig", references=refs)
    assert _path_name(path) == "ti" and (tmp_path / "fig" / "interpolation_grid_ti.png").is_file()
    texts = [t.get_text() for t in fig.texts]
    assert texts[0] == _path_title(path) == "TI, lerp (straight line): <dog> (t = 0) → <cat> (t = 1)"
    assert any(t.startswith("concept a (t = 0): <dog> (dog)") for t in texts)
    assert any(t.startswith("concept b (t = 1): <cat> (cat)") for t in texts)
    assert "a <dog@t> in the jungle (seed 1)" in [t.replace("\n", " ") for t in texts]
    shown = [ax.images[0].get_array()[0, 0].tolist() for ax in fig.axes]
    assert shown == [[0, 0, 255]] * 3 + [[0, 128, 0]] * 3 + [[0, 0, 0], [255, 0, 0]] * 2  # references, then rows
