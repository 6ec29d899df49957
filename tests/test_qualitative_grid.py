"""The qualitative figure from images sampled on disk: which images it picks, that it draws exactly
those, and one-line errors before any figure is written."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import qualitative_grid as qg
from dti import DTIError, TrainConfig, train
from dti.sample import SampleConfig, sample
from tests import tiny

TEMPLATES = ["a {} in the jungle", "a {} on the beach", "a red {}"]
SUBJECT = "toy"


@pytest.fixture(scope="module")
def layout(tiny_models, ref_images, tmp_path_factory):
    """A results folder's samples/ (TI and DTI of one subject, 3 prompts x 2 seeds) and references/."""
    root = tmp_path_factory.mktemp("qualitative")
    cfg = SampleConfig().set(["steps=2"])
    for method in ("ti", "dti"):
        run_cfg = TrainConfig(method=method, model=str(tiny_models["sd"]), images=str(ref_images), placeholder="<sks>",
                              initializer="dog", steps=1).set(["resolution=64", "batch_size=1", "device=cpu"])
        run = train(run_cfg, root / "runs" / method / SUBJECT / "seed0")
        sample(run, root / "samples" / method / SUBJECT / "seed0", SUBJECT, "dog", TEMPLATES, [0, 1], "test", cfg)
    tiny.write_reference_images(root / "references" / SUBJECT, n=3, seed=2)
    return root


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB"))


def test_prompts_are_spread_evenly():
    assert qg.spread(range(15), 6) == [0, 3, 6, 8, 11, 14]
    assert qg.spread([9, 4], 6) == [4, 9]  # fewer than asked: all of them
    with pytest.raises(DTIError, match="at least 1"):
        qg.spread(range(3), 0)


def test_grid_shows_each_methods_image_at_one_seed_for_the_chosen_prompts(layout, tmp_path):
    args = ["--samples", str(layout / "samples"), "--references", str(layout / "references"), "--figures",
            str(tmp_path / "fig"), "--tables", str(tmp_path / "tab"), "--seed", "1", "--n-prompts", "2"]
    assert qg.main(args) == 0
    chosen = pd.read_csv(tmp_path / "tab" / "qualitative_grid.csv")
    # methods in the paper's order (TI before DTI), prompts 0 and 2 of 0-2, sampling seed 1 throughout
    assert chosen["method"].tolist() == ["ti", "ti", "dti", "dti"]
    assert chosen["prompt_index"].tolist() == [0, 2] * 2 and set(chosen["seed"]) == {1}
    assert chosen["prompt"].tolist()[:2] == ["a <sks> in the jungle", "a red <sks>"]
    for r in chosen.itertuples():
        manifest = pd.read_csv(qg.manifest_path(layout / "samples", r.method, SUBJECT, 0))
        row = manifest[(manifest["prompt_index"] == r.prompt_index) & (manifest["seed"] == 1)].iloc[0]
        assert r.file == str(qg.manifest_path(layout / "samples", r.method, SUBJECT, 0).parent / row["file"])
    assert (tmp_path / "fig" / f"qualitative_grid_{SUBJECT}.png").stat().st_size > 5000
    assert "TI, DTI" in (tmp_path / "fig" / f"qualitative_grid_{SUBJECT}.caption.txt").read_text()

    # the figure draws the references, then exactly those images, methods as rows and prompts as columns
    refs = [Image.open(p).convert("RGB") for p in sorted((layout / "references" / SUBJECT).iterdir())]
    fig = qg.plot_subject(chosen, refs, tmp_path / "again", train_seed=0)
    drawn = [ax.images[0].get_array() for ax in fig.axes]
    expected = [_pixels(r) for r in refs] + [_pixels(f) for f in chosen["file"]]
    assert len(drawn) == len(expected) and all(np.array_equal(d, e) for d, e in zip(drawn, expected))
    rows = [t.get_text() for t in fig.texts]
    assert "TI" in rows and "DTI" in rows and "a <sks> in the\njungle" in rows


@pytest.mark.parametrize("extra,message", [
    (["--seed", "5"], "has no images at sampling seed 5 (its seeds: 0, 1)"),
    (["--methods", "crossinit"], "no samples of crossinit for toy at training seed 0"),
    (["--prompts", "7"], "ti/toy has no prompt 7 at seed 0"),
    (["--train-seed", "3"], "no sampled images under"),
    (["--subjects", "cat"], "no samples of ti for cat"),
])
def test_bad_input_is_one_line_before_any_figure(layout, tmp_path, capsys, extra, message):
    args = ["--samples", str(layout / "samples"), "--references", str(layout / "references"), "--figures",
            str(tmp_path / "fig")]
    assert qg.main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "fig").exists()


def test_a_missing_reference_folder_is_refused_before_drawing(layout, tmp_path):
    with pytest.raises(DTIError, match="image folder .*elsewhere.*toy does not exist"):
        qg.qualitative_grids(layout / "samples", tmp_path / "elsewhere", tmp_path / "fig")
    assert not (tmp_path / "fig").exists()
