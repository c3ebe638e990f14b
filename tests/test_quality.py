"""Code quality as tests: ruff's lint and format checks and mypy, with their output on failure.

Run from the repository root with the versions pinned by the venv, so `./run tests` and an
editor agree. Configuration lives in pyproject.toml.
"""

from __future__ import annotations

import shutil
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


@pytest.mark.parametrize("script", ["run", ".ci/run"])
def test_shell_scripts_parse_and_pass_shellcheck(script: str) -> None:
    syntax = subprocess.run(
        ["bash", "-n", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert syntax.returncode == 0, syntax.stderr
    assert (REPO_ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    lint = subprocess.run(
        ["shellcheck", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize(("arguments", "exit_code"), [(["--help"], 0), (["no-such-command"], 2)])
def test_run_script_explains_its_commands(arguments: list[str], exit_code: int) -> None:
    """Usage needs no set-up: it answers at once, naming the two user-facing commands."""
    completed = subprocess.run(
        ["./run", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == exit_code
    assert "./run demo" in completed.stderr
    assert "./run tests" in completed.stderr
    assert "./run soak" in completed.stderr
