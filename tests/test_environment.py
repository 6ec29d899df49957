"""The pinned environment: requirements.lock holds the tested set, environment.yml is made from it, and the
interpreter running these tests has exactly the locked versions (the README's set-up installs the lock)."""

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Requirement]:
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {Requirement(line).name.lower().replace("_", "-"): Requirement(line) for line in lines}


def test_environment_file_is_made_from_the_lock():
    done = subprocess.run([sys.executable, "tools/lock.py", "check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = (ROOT / "environment.yml").read_text()
    for name, req in locked().items():
        assert str(req.specifier) in env, name


def test_every_dependency_is_locked_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    lock = locked()
    for line in wanted:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{name} is a dependency but not in requirements.lock"
        version = next(iter(lock[name].specifier)).version
        assert req.specifier.contains(version), f"{name}: locked {version} is outside pyproject's {req.specifier}"


def test_this_interpreter_has_the_locked_versions():
    for name, req in locked().items():
        if req.marker is not None and not Marker(str(req.marker)).evaluate():
            continue  # not for this platform
        assert metadata.version(name) == next(iter(req.specifier)).version, name


def test_snakemake_conda_environments_install_the_project_after_the_pins():
    """`--sdm conda` copies environment.yml next to the environment it builds, so the file must not install the
    project by a relative path; the post-deploy script beside it (Snakemake finds it by the file's name) does."""
    pip = [line.strip() for line in (ROOT / "environment.yml").read_text().splitlines() if line.startswith("      - ")]
    assert pip and not any(line.startswith(("- '-e", '- "-e', "- -e")) for line in pip)
    script = ROOT / "environment.post-deploy.sh"
    assert script.is_file() and "pip install --no-deps -e" in script.read_text()
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
