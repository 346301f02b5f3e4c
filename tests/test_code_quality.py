"""Lint, types and layer contracts, as CI runs them: ruff, mypy and import-linter must pass.

Each tool runs as a subprocess from the virtualenv running the tests (its configuration is in
pyproject.toml: [tool.ruff], [tool.mypy], [tool.importlinter]); on failure the test shows what the
tool printed. Caches go to build/ (git-ignored), so a rerun takes seconds.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
# A cold mypy run over the package takes about 10 s; this only catches a hung tool.
TIMEOUT = 300

CHECKS = {
    "ruff": ["ruff", "check", "--no-fix", "analyzer", "tests", "benchmarks", "tools"],
    "mypy": ["mypy"],  # the package, per [tool.mypy] files
    "import-linter": ["lint-imports", "--no-logo", "--cache-dir", "build/import-linter-cache"],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_passes(name):
    tool, *arguments = CHECKS[name]
    executable = BIN / tool
    assert executable.exists(), f"{tool} is not installed next to {sys.executable}: pip install -e '.[test]'"
    result = subprocess.run([str(executable), *arguments], cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"{tool} failed (exit status {result.returncode}):\n{result.stdout}{result.stderr}", pytrace=False)
