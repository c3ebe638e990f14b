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


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    """import-linter's `lint-imports`, from this interpreter's environment."""
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(script), "--no-cache", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240.0,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_imports_go_only_down_the_floors() -> None:
    """The contracts in pyproject.toml: iscsicore < topology < faults < control <
    initiator | stargate < redirector < cluster, and the redirector never imports stargate."""
    completed = lint_imports()
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Contracts: 2 kept, 0 broken." in completed.stdout


def test_import_contracts_see_the_real_imports(tmp_path: Path) -> None:
    """The floors contract is not vacuous: a contract the tree breaks (the target's
    connection imports iscsicore, a floor below) is reported broken, with that import."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["iscsicore", "stargate"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "upside down"\n'
        'type = "layers"\n'
        'layers = ["iscsicore", "stargate"]\n'
    )
    completed = lint_imports("--config", str(config))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "stargate is not allowed to import iscsicore" in completed.stdout
    assert "stargate.server -> iscsicore." in completed.stdout


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
