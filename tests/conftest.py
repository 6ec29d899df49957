import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dti import tiny  # noqa: E402

BUILDERS = {"sd": tiny.build_sd, "sdxl": tiny.build_sdxl, "sana": tiny.build_sana}


def dreambooth_dir() -> Path | None:
    """The DreamBooth images: $DTI_DREAMBOOTH, else data/dreambooth, else a shared copy beside the checkout."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("DTI_DREAMBOOTH"), root / "data" / "dreambooth", root.parent / "shared" / "dreambooth"):
        if candidate and (Path(candidate) / "dog").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight pipelines of each family, saved as diffusers folders (built once)."""
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def ref_images(tmp_path_factory):
    """Four small reference photos of one subject, of different aspect ratios."""
    return tiny.write_reference_images(tmp_path_factory.mktemp("images"), n=4)


@pytest.fixture(scope="session")
def metric_models(tmp_path_factory):
    """Model ids (local folders) of tiny random-weight DINOv2, DINO, SigLIP and open_clip models."""
    return tiny.build_metric_models(tmp_path_factory.mktemp("metric_models"))
