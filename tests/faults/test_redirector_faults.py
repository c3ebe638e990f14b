"""Login faults at a real redirector process, armed with `stargate fault add --redirector`:
a refused login (0x0301) and a redirect loop back to the redirector itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from initiator.errors import LoginError, RedirectError
from initiator.login_flow import LoginOptions, establish
from initiator.url import Portal
from stargate.target import target_name_for
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster


def _fault(directory: Path, *words: str, where: tuple[str, ...] = ("--redirector", "1")) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "fault", *words, "--dir", str(directory), *where],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_redirector_refuses_then_loops_then_behaves(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(tmp_path / "cluster", process_reaper, nodes=1, stable_window=1)
    cluster.create_vm("vm1", disks=1, size="16M", home=1)
    cluster.start_stargates()
    cluster.start_redirector(1)
    node = cluster.node(1)
    portal = Portal(node.redirector_address, PORT)
    target = target_name_for("vm1-0")

    async def login() -> int:
        established = await establish(portal, target, LoginOptions())
        await established.connection.aclose()
        return established.redirects

    _fault(cluster.directory, "add", "login_fail", "--vdisk", "vm1-0", "--status", "0x0301",
           "--count", "1")  # fmt: skip
    with pytest.raises(LoginError, match=r"(?i)0x0301|service.unavailable"):
        trio.run(login)
    assert trio.run(login) == 1  # count=1: the next login is redirected to the CVM as usual

    _fault(
        cluster.directory, "add", "login_redirect", "--portal", f"{node.redirector_address}:{PORT}"
    )
    with pytest.raises(RedirectError, match="loop"):
        trio.run(login)
    _fault(cluster.directory, "clear")
    assert trio.run(login) == 1

    # The same CLI arms faults on a running CVM, through its HTTP page.
    cvm = ("--node", "1")
    _fault(cluster.directory, "add", "busy", "--vdisk", "vm1-0", "--count", "3", where=cvm)
    listing = json.loads(_fault(cluster.directory, "list", "--json", where=cvm))
    (page,) = listing.values()
    assert [f["kind"] for f in page["faults"]] == ["busy"]
    assert "cleared 1" in _fault(cluster.directory, "clear", where=cvm)
