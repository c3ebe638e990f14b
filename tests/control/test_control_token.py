"""The control token file: private, created once even when processes race, refused when
unusable; and the check every page runs."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from control.control_token import (
    ControlTokenError,
    check_control,
    ensure_token,
    read_token,
)
from control.http import HttpRequest


def test_created_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "control.token"
    token = ensure_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) == 64 and ensure_token(path) == token == read_token(path)
    assert [entry.name for entry in path.parent.iterdir()] == ["control.token"]  # no leftovers


def _ensure(path: str) -> str:
    return ensure_token(path)


def test_racing_processes_agree_on_one_token(tmp_path: Path) -> None:
    path = str(tmp_path / "control.token")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        tokens = pool.map(_ensure, [path] * 8)
    assert len(set(tokens)) == 1


@pytest.mark.parametrize("content", ["", "  \n", "two words", "x" * 2000])
def test_unusable_token_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "control.token"
    path.write_text(content)
    with pytest.raises(ControlTokenError, match="no usable token"):
        ensure_token(path)


def test_check_control() -> None:
    def request(method: str, authorization: str | None) -> HttpRequest:
        headers = {} if authorization is None else {"authorization": authorization}
        return HttpRequest(method, "/faults", {}, b"", headers)

    assert check_control(request("GET", None), "secret") is None
    assert check_control(request("POST", "Bearer secret"), "secret") is None
    assert check_control(request("DELETE", "bearer  secret "), "secret") is None
    for header in (None, "", "Basic c2VjcmV0", "Bearer", "Bearer "):
        denied = check_control(request("POST", header), "secret", where="/x/control.token")
        assert denied is not None and denied.status == 401
        assert b"/x/control.token" in denied.body
    denied = check_control(request("PUT", "Bearer secreT"), "secret")
    assert denied is not None and denied.status == 403
