"""Source trees whose stargate the A/B benchmark serves side by side: a commit checked out
into a temporary ``git worktree`` (removed on the way out, also on error) or a directory as
it is, and the environment under which ``python -m stargate`` imports that tree's code.

    with checked_out("HEAD~3") as baseline:
        StargateServer(source_tree=baseline.path) ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: the tree this benchmark code runs from: the default candidate, and the repository whose
#: revisions the baseline names
THIS_TREE = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_SECONDS = 120.0
IMPORT_CHECK_TIMEOUT_SECONDS = 60.0
#: the hot path's packages, under these names before issue 14's refactoring and after it
PROBED_PACKAGES = ("stargate", "iscsicore")


class TreeError(RuntimeError):
    """A revision or directory that cannot be benchmarked; the message says why."""


@dataclass(frozen=True)
class SourceTree:
    label: str  # what was asked for: a revision ("HEAD~3") or a path
    path: Path
    commit: str  # full hash, "+dirty" when tracked files differ from it; "unknown" outside git

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "path": str(self.path), "commit": self.commit}


def python_environment(tree: Path) -> dict[str, str]:
    """Our environment with ``tree`` as the only PYTHONPATH entry: its packages come before
    the venv's editable install (whose finder sits after the path finder)."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def git(args: Sequence[str], repo: Path) -> str:
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TreeError(f"git {' '.join(args)} in {repo}: {error}") from error
    if completed.returncode != 0:
        detail = completed.stderr.strip() or f"exit status {completed.returncode}"
        raise TreeError(f"git {' '.join(args)} in {repo}: {detail}")
    return completed.stdout.strip()


def resolve_commit(revision: str, repo: Path = THIS_TREE) -> str:
    try:
        return git(["rev-parse", "--verify", "--end-of-options", f"{revision}^{{commit}}"], repo)
    except TreeError as error:
        raise TreeError(f"{revision!r} names no commit: {error}") from error


@contextmanager
def checked_out(revision: str, repo: Path = THIS_TREE) -> Iterator[SourceTree]:
    """``revision`` of ``repo`` in a temporary worktree (detached HEAD), removed afterwards."""
    commit = resolve_commit(revision, repo)
    parent = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    path = parent / commit[:12]
    try:
        git(["worktree", "add", "--detach", "--quiet", str(path), commit], repo)
        yield SourceTree(revision, path, commit)
    finally:
        # --force: the target's __pycache__ files count as changes. TreeError: `add` failed,
        # so nothing is registered (the rmtree takes a half-made directory).
        with contextlib.suppress(TreeError):
            git(["worktree", "remove", "--force", str(path)], repo)
        shutil.rmtree(parent, ignore_errors=True)


def existing_tree(path: Path) -> SourceTree:
    """A directory as it is (uncommitted changes included), with its commit if it has one."""
    resolved = path.resolve()
    if not (resolved / "stargate").is_dir():
        raise TreeError(f"{resolved} has no stargate package")
    try:
        commit = git(["rev-parse", "HEAD"], resolved)
        changed = git(["status", "--porcelain", "--untracked-files=no"], resolved)
    except TreeError:
        return SourceTree(str(path), resolved, "unknown")
    return SourceTree(str(path), resolved, commit + ("+dirty" if changed else ""))


def check_imports_from(tree: SourceTree) -> dict[str, Path]:
    """Where a process started as the benchmark starts stargate (environment, working
    directory) imports the hot path's packages from; raise unless every one is inside the
    tree (else both arms could run the same code)."""
    probe = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    print(name, importlib.import_module(name).__file__ or '')"
    )
    try:
        completed = subprocess.run(
            [sys.executable, "-c", probe, *PROBED_PACKAGES],
            cwd=tree.path,
            env=python_environment(tree.path),
            capture_output=True,
            text=True,
            timeout=IMPORT_CHECK_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TreeError(f"importing from {tree.path}: {error}") from error
    if completed.returncode != 0:
        raise TreeError(f"importing from {tree.path} failed:\n{completed.stderr[-2000:]}")
    imported: dict[str, Path] = {}
    for line in completed.stdout.splitlines():
        name, _, file = line.partition(" ")
        if not file:
            raise TreeError(f"{name} in {tree.path} is no regular package (no __init__.py)")
        imported[name] = Path(file).resolve()
        if not imported[name].is_relative_to(tree.path.resolve()):
            raise TreeError(f"{name} started from {tree.path} imports {imported[name]} instead")
    return imported
