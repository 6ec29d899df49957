"""Benchmark data: the subjects table and prompt sets, the data command, reference preprocessing."""

import json
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dti import DTIError
from dti.cli import main
from dti.data import (fetch_dreambooth, list_images, load_reference, open_image, open_rgb, read_prompt_set,
                      read_subjects, to_rgb)

from conftest import dreambooth_dir


def test_benchmark_tables():
    subjects = read_subjects()
    assert len(subjects) == 30 and sum(s["live"] for s in subjects) == 9
    assert len(read_prompt_set("dti_simple", live=False)) == 41
    assert len(read_prompt_set("dreambooth", live=True)) == 25


def test_data_command_from_a_local_copy(tmp_path):
    root = dreambooth_dir()
    if root is None:
        pytest.skip("DreamBooth images not present")
    out = fetch_dreambooth(tmp_path / "dreambooth", from_dir=root)
    assert sum(1 for p in out.rglob("*.jpg")) == 158
    assert pd.read_csv(out / "subjects.csv").shape == (30, 5)
    assert fetch_dreambooth(out) == out  # present and intact: left as is
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "vase")
    with pytest.raises(DTIError, match="missing subject folders: vase"):
        fetch_dreambooth(tmp_path / "again", from_dir=broken)
    assert not (tmp_path / "again").exists()


def test_dreambooth_images_load_and_preprocess():
    root = dreambooth_dir()
    if root is None:
        pytest.skip("DreamBooth images not present")
    subjects = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(subjects) == 30
    files = [f for s in subjects for f in list_images(s)]
    assert len(files) == 158
    for f in files[::10]:
        ref = load_reference(f, 64, 8)
        assert min(ref.pixels.shape[1:]) == 64 and ref.pixels.shape[1] % 8 == 0 and ref.pixels.shape[2] % 8 == 0
        assert -1.0 <= ref.pixels.min() and ref.pixels.max() <= 1.0


# --- reading photos: 16-bit, EXIF orientation, broken files, decompression bombs ------------------

def _gradient16(w=64, h=32):
    return (np.arange(w * h, dtype=np.uint32).reshape(h, w) * 65535 // (w * h - 1)).astype(np.uint16)


def _png_header_only(path, width, height):
    """A PNG that claims ``width`` x ``height`` 8-bit greyscale but holds a few bytes of pixel data:
    a check that decodes before checking the size would fail on the truncated data instead."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _fake_model(root):
    """A folder whose model_index.json names an SD pipeline and nothing else: any attempt to load it fails."""
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def _train(model, images, out):
    return main(["train", "--model", str(model), "--method", "dti", "--images", str(images), "--placeholder",
                 "<sks>", "--initializer", "dog", "--out", str(out)])


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    grey = _gradient16()
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(open_rgb(tmp_path / "g16.png"))
    expected = np.rint(grey / 257.0).astype(np.uint8)
    assert rgb.shape == (32, 64, 3) and (rgb == expected[..., None]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # a gradient, not all white
    ref = load_reference(tmp_path / "g16.png", 32, 8)  # as training reads it
    assert ref.pixels.std() > 0.3 and (ref.pixels < 0).any()
    # mode I (e.g. 32-bit TIFF) in the 16-bit range scales the same; beyond it, the scale is unknown
    wide = Image.fromarray(grey.astype(np.int32), "I")
    assert (np.asarray(to_rgb(wide)) == expected[..., None]).all()
    with pytest.raises(DTIError, match=r"values outside 0\.\.65535"):
        to_rgb(Image.fromarray(grey.astype(np.int32) * 4, "I"))
    # mode F: read as 0..1
    unit = Image.fromarray((grey / 65535.0).astype(np.float32), "F")
    assert np.abs(np.asarray(to_rgb(unit)).astype(int) - expected[..., None]).max() <= 1
    with pytest.raises(DTIError, match=r"values outside 0\.\.1"):
        to_rgb(Image.fromarray(grey.astype(np.float32), "F"))


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[...] = (0, 0, 255)
    stored[12:, :8] = (255, 0, 0)  # bottom-left as stored: top-left once turned upright (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = open_rgb(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)  # width and height swapped
    r, g, b = upright.getpixel((0, 0))
    assert r > 200 and b < 60
    r, g, b = upright.getpixel((19, 39))
    assert b > 200 and r < 60
    assert load_reference(tmp_path / "phone.jpg", 16, 8).original_size == (40, 20)  # (height, width), upright


def test_truncated_images_are_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(folder / "a.jpg")
    data = (folder / "a.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(folder / "b.jpg") as im:
        im.verify()  # what the check used to do: it passes a truncated JPEG
    with pytest.raises(DTIError, match="b.jpg: not a readable image") as info:
        list_images(folder)
    assert "\n" not in str(info.value)
    model = _fake_model(tmp_path / "model")
    assert _train(model, folder, tmp_path / "run") == 2
    assert "b.jpg: not a readable image" in _error(capsys)
    assert not (tmp_path / "run").exists()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "b.png")
    (folder / "b.jpg").unlink()
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(DTIError, match="b.png: not a readable image"):
        list_images(folder)


def test_decompression_bombs_are_refused_from_the_header(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    bomb = _png_header_only(folder / "bomb.png", 14000, 14000)  # 196 MP: PIL's own error
    assert bomb.stat().st_size < 200
    with pytest.raises(DTIError, match=r"bomb.png is too large: 196000000 pixels, over the limit of 89478485"):
        list_images(folder)
    model = _fake_model(tmp_path / "model")
    assert _train(model, folder, tmp_path / "run") == 2
    assert "bomb.png is too large" in _error(capsys)
    assert not (tmp_path / "run").exists()
    _png_header_only(bomb, 10000, 10000)  # 100 MP: only PIL's warning; refused by the size check
    with pytest.raises(DTIError, match=r"bomb.png is too large: 10000x10000 = 100000000 pixels"):
        list_images(folder)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some libraries switch PIL's check off
    _png_header_only(bomb, 14000, 14000)
    with pytest.raises(DTIError, match=r"bomb.png is too large: 14000x14000"):
        open_image(bomb, "reference")
