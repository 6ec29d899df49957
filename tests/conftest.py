import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests import tiny  # noqa: E402

BUILDERS = {"sd": tiny.build_sd, "sdxl": tiny.build_sdxl, "sana": tiny.build_sana}
ROOT = Path(__file__).resolve().parents[1]
MINI_WORLD = ROOT / "experiments" / "mini" / "world"


def run_snakemake(*args, cores: int | None = 2) -> subprocess.CompletedProcess:
    """Real Snakemake in the repository root (offline), output captured."""
    cmd = [sys.executable, "-m", "snakemake", *(["--cores", str(cores)] if cores else []), *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)


@pytest.fixture(scope="session")
def smoke_local(tmp_path_factory) -> Path:
    """The results folder of one local run of the smoke configuration (shared by the workflow and
    cluster tests, so that it runs once)."""
    if not (MINI_WORLD / "pipeline" / "model_index.json").is_file():
        pytest.skip("no shipped mini world")
    results = tmp_path_factory.mktemp("smoke_local")
    run = run_snakemake("--configfile", "experiments/smoke.yaml", "--config", f"results_dir={results}")
    assert run.returncode == 0, run.stderr[-3000:]
    return results


def dreambooth_dir() -> Path | None:
    """The DreamBooth images: $DTI_DREAMBOOTH, else data/dreambooth, else a shared copy beside the checkout."""
    root = Path(__file__).resolve().parents[1]
    candidates = (os.environ.get("DTI_DREAMBOOTH"), root / "data" / "dreambooth", root.parent / "shared" / "dreambooth")
    for candidate in candidates:
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


@pytest.fixture(scope="session")
def sd_run(tiny_models, ref_images, tmp_path_factory):
    """A one-step DTI run on the tiny SD pipeline (sampling and command-line tests start from it)."""
    from dti import TrainConfig, train

    cfg = TrainConfig(method="dti", model=str(tiny_models["sd"]), images=str(ref_images), placeholder="<sks>",
                      initializer="dog", steps=1).set(["resolution=64", "batch_size=1"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "dti")
