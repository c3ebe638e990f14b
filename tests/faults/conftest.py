"""A `stargate target` process with its HTTP control page, for the real-initiator tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.net import free_port as _free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.peers.tools import iscsi_url
from topology.naming import target_name_for

HOST = "127.0.0.1"


@dataclass
class FaultyTarget:
    process: ManagedProcess
    port: int
    http_port: int
    token_file: Path  # the page's control token (--control-token-file)

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def url(self, vdisk_id: str = "vd1") -> str:
        return iscsi_url(HOST, self.port, target_name_for(vdisk_id), 0)

    def fault(self, *words: str) -> str:
        """Run `stargate fault WORDS... --url <this target>`; returns its output."""
        argv = [sys.executable, "-m", "stargate", "fault", *words, "--url", self.http_url]
        argv += ["--token-file", str(self.token_file)]
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    def faults(self) -> dict[str, Any]:
        document = json.loads(self.fault("list", "--json"))
        return dict(document[self.http_url])


@pytest.fixture
def faulty_target(
    process_reaper: ProcessReaper, tmp_path: Path
) -> Iterator[Callable[..., FaultyTarget]]:
    def start(*extra: str) -> FaultyTarget:
        port, http_port = _free_port(), _free_port()
        token_file = tmp_path / f"control-{http_port}.token"
        argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
        argv += ["--http", f"{HOST}:{http_port}", "--vdisk", "vd1:64M", *extra]
        argv += ["--control-token-file", str(token_file)]
        process = process_reaper.spawn(argv, name="stargate")
        process.wait_for_port(HOST, port, timeout=30)
        process.wait_for_port(HOST, http_port, timeout=30)
        return FaultyTarget(process, port, http_port, token_file)

    yield start
