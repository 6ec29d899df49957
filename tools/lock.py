"""The pinned environment: ``requirements.lock`` (every package of the tested set, exact versions) and
``environment.yml`` (the same pins for conda and Snakemake's ``--sdm conda``), made from one source.

    python tools/lock.py freeze   # after a tested upgrade: lock the current environment, then write environment.yml
    python tools/lock.py env      # write environment.yml from requirements.lock
    python tools/lock.py check    # exit 1 if environment.yml is not what requirements.lock makes

Refresh: in a fresh virtual environment, `pip install -U -e '.[test,track]'`, run the whole test suite and
the default workflow (its reference check must pass), then `python tools/lock.py freeze` and commit both files.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK, ENV = ROOT / "requirements.lock", ROOT / "environment.yml"
# Torch's CUDA wheels exist for Linux x86_64 only; elsewhere pip takes torch's own build without them.
CUDA_ONLY = ("nvidia-", "cuda-", "triton")
CUDA_MARKER = 'platform_system == "Linux" and platform_machine == "x86_64"'


def pins(lines) -> list[str]:
    """``name==version`` requirement lines (markers kept), sorted by name, comments and blanks dropped."""
    out = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return sorted(out, key=lambda line: line.split("==")[0].lower())


def freeze() -> list[str]:
    """The current interpreter's packages, exact versions, without the project itself."""
    done = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--all"], check=True,
                          capture_output=True, text=True)
    lines = []
    for line in pins(done.stdout.splitlines()):
        name = line.split("==")[0].lower()
        if "==" not in line or name in ("pip", "setuptools", "wheel", "dti"):
            continue  # the installer's own tools, and anything not pinned by version (a local path)
        lines.append(f"{line}; {CUDA_MARKER}" if name.startswith(CUDA_ONLY) else line)
    return lines


def lock_text(lines: list[str]) -> str:
    head = [f"# The tested set: every package, exact versions (Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}).",
            "# Made by `python tools/lock.py freeze`; install with `pip install -r requirements.lock -e '.[test]'`."]
    return "\n".join(head + lines) + "\n"


def env_text(lines: list[str]) -> str:
    """environment.yml: conda's Python, then every pin through pip. Not the project itself: Snakemake's
    ``--sdm conda`` builds from a copy of this file elsewhere, where a relative ``-e .`` would miss the checkout,
    so environment.post-deploy.sh (run by Snakemake after it builds the environment) installs it."""
    python = ".".join(platform.python_version_tuple()[:2])
    for line in Path(LOCK).read_text().splitlines():
        if line.startswith("# The tested set") and "(Python " in line:
            python = ".".join(line.split("(Python ")[1].split(",")[0].split(".")[:2])
    out = ["# Generated from requirements.lock by `python tools/lock.py env`: do not edit by hand.",
           "# Then the project: `conda env create -f environment.yml && conda activate dti && pip install -e .`",
           "# (snakemake --sdm conda does that step itself, with environment.post-deploy.sh).",
           "name: dti", "channels:", "  - conda-forge", "dependencies:", f"  - python={python}", "  - pip",
           "  - pip:"]
    out += [f"      - '{line}'" for line in lines]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    command = (argv or sys.argv[1:] or ["check"])[0]
    if command == "freeze":
        LOCK.write_text(lock_text(freeze()))
    if command in ("freeze", "env"):
        ENV.write_text(env_text(pins(LOCK.read_text().splitlines())))
        return 0
    if command == "check":
        expected = env_text(pins(LOCK.read_text().splitlines()))
        if ENV.read_text() != expected:
            print("environment.yml differs from what requirements.lock makes: run `python tools/lock.py env`",
                  file=sys.stderr)
            return 1
        return 0
    print(f"unknown command {command!r}; use freeze, env or check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
