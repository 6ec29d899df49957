"""`dti generate`: a run's concept from one free prompt, deterministic per seed, with a JSON sidecar."""

import json

import numpy as np
import pytest
from PIL import Image

from dti import DTIError
from dti.cli import main
from dti.generate import generate
from dti.sample import SampleConfig

FAST = SampleConfig().set(["steps=2", "device=cpu"])


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def test_same_seed_same_image_other_prompt_other_image(sd_run, tmp_path, capsys):
    args = ["generate", "--run", str(sd_run), "a photo of {} on the beach", "--seed", "3", "--steps", "2",
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.png")
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    [other] = generate(sd_run, "a red {} in the jungle", tmp_path / "c.png", seed=3, cfg=FAST)
    a, b, c = pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"), pixels(other)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)  # a fixed seed gives the same image
    assert not np.array_equal(a, c)  # the prompt conditions the image

    about = json.loads((tmp_path / "a.json").read_text())
    assert about["prompt"] == "a photo of <sks> on the beach" and about["template"] == "a photo of {} on the beach"
    assert (about["seed"], about["steps"], about["guidance_scale"]) == (3, 2, 7.5)
    assert about["run"] == str(sd_run) and about["method"] == "dti" and about["file"] == "a.png"
    assert about["versions"]["diffusers"] and about["versions"]["torch"]


def test_several_images_into_a_folder_each_from_its_own_seed(sd_run, tmp_path):
    files = generate(sd_run, "a photo of {}", tmp_path / "out", seed=5, num_images=2, cfg=FAST)
    assert [f.name for f in files] == ["a_photo_of_x_seed5.png", "a_photo_of_x_seed6.png"]
    assert [json.loads(f.with_suffix(".json").read_text())["seed"] for f in files] == [5, 6]
    [alone] = generate(sd_run, "a photo of {}", tmp_path / "alone.png", seed=6, cfg=FAST)
    # the second image of the batch is the one seed 6 gives alone (up to float rounding across batch sizes)
    assert np.abs(pixels(files[1]) - pixels(alone)).max() <= 2
    assert not np.array_equal(pixels(files[0]), pixels(files[1]))


@pytest.mark.parametrize("prompt, out, extra, message", [
    ("a photo of a dog", "x.png", [], "has no {} where the concept goes"),
    ("a {} and a {}", "x.png", [], "must hold {} once"),
    ("a {name}", "x.png", [], "must hold {} once"),
    ("a photo of {}", "x.png", ["--num-images", "2"], "names one image; give a folder for 2 images"),
    ("a photo of {}", "x", ["--num-images", "0"], "--num-images must be >= 1"),
    ("a photo of {}", "x.png", ["--steps", "0"], "steps must be >= 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(sd_run, tmp_path, capsys, prompt, out, extra, message):
    assert main(["generate", "--run", str(sd_run), prompt, "--out", str(tmp_path / out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_generate_needs_a_finished_run(tmp_path):
    with pytest.raises(DTIError, match="is not a run directory"):
        generate(tmp_path, "a photo of {}", tmp_path / "x.png")
