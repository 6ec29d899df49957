"""Benchmark data: the subjects table and prompt sets, the data command, reference preprocessing."""

import shutil

import pandas as pd
import pytest

from dti import DTIError
from dti.data import fetch_dreambooth, list_images, load_reference, read_prompt_set, read_subjects

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
