"""Code quality as tests: ruff's lint and format checks and mypy, with their output on failure.

Run from the repository root with the versions pinned by the venv, so `./run tests` and an
editor agree. Configuration lives in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_checker(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    "checker",
    [
        pytest.param(("ruff", "check", "--no-fix", "."), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", "--diff", "."), id="ruff-format"),
        pytest.param(("mypy",), id="mypy"),
    ],
)
def test_code_quality(checker: tuple[str, ...]) -> None:
    completed = run_checker(*checker)
    if completed.returncode != 0:
        pytest.fail(
            f"{' '.join(checker)} found problems (exit {completed.returncode}):\n"
            f"{completed.stdout}{completed.stderr}",
            pytrace=False,
        )
