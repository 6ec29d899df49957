"""The code follows the project's linter configuration (ruff, [tool.ruff] in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_snakemake_lint_is_clean():
    """Snakemake's own linter (logs, software environments, params instead of globals in shell commands, rules
    apart from functions) finds nothing in the workflow, for the default and a paper configuration."""
    from conftest import run_snakemake

    for args in ([], ["--configfile", "experiments/sdxl.yaml"]):
        done = run_snakemake("--lint", *args, cores=None)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert "Lints for" not in done.stdout + done.stderr
