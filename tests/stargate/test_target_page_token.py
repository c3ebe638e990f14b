"""The HTTP page of a plain `stargate target --http` (issue 13, finding 7): its fault
controls need the control token, from --control-token-file or a file it makes and names."""

from __future__ import annotations

import json
import re
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper

HOST = "127.0.0.1"
FAULT = json.dumps({"kind": "busy", "count": 1}).encode()


def _start(reaper: ProcessReaper, *options: str) -> tuple[ManagedProcess, str]:
    port, http_port = free_port(HOST), free_port(HOST)
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--http", f"{HOST}:{http_port}", "--vdisk", "vd1:16M", *options]
    process = reaper.spawn(argv, name="stargate")
    process.wait_for_port(HOST, http_port, timeout=30)
    return process, f"http://{HOST}:{http_port}"


def _post(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"{url}/faults", data=FAULT, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _printed_token_file(process: ManagedProcess) -> Path:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"control token in (\S+)", process.log_text())
        if match:
            return Path(match[1])
        time.sleep(0.05)
    raise AssertionError(f"no token file printed:\n{process.log_tail()}")


def test_token_from_the_given_file(process_reaper: ProcessReaper, tmp_path: Path) -> None:
    token_file = tmp_path / "page.token"
    token_file.write_text("lab-token-0123456789abcdef\n")
    _process, url = _start(process_reaper, "--memory", "--control-token-file", str(token_file))
    assert _post(url, None) == 401
    assert _post(url, "wrong") == 403
    assert _post(url, "lab-token-0123456789abcdef") == 200
    with urllib.request.urlopen(f"{url}/faults", timeout=10) as response:  # reads stay open
        assert len(json.load(response)["faults"]) == 1


def test_token_made_next_to_the_data(process_reaper: ProcessReaper, tmp_data_dir: Path) -> None:
    process, url = _start(process_reaper, "--data-dir", str(tmp_data_dir))
    token_file = _printed_token_file(process)
    assert token_file == tmp_data_dir / "control.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert _post(url, None) == 401
    assert _post(url, token_file.read_text().strip()) == 200


def test_token_made_for_a_memory_target(process_reaper: ProcessReaper) -> None:
    process, url = _start(process_reaper, "--memory")
    token_file = _printed_token_file(process)
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        assert _post(url, None) == 401
        assert _post(url, token_file.read_text().strip()) == 200
    finally:
        token_file.unlink(missing_ok=True)
        token_file.parent.rmdir()
