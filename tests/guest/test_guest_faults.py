"""stargate's blackhole fault against the real Linux initiator (open-iscsi in a QEMU guest).

One ``stargate target --memory --http`` per test; the guest reaches it at 10.0.2.100:3260
through a guestfwd relay, sets short NOP-Out timeouts and a replacement_timeout as a user
would, starts fio and announces it; the host then arms ``drop_connection --mode blackhole
--duration S`` with the ``stargate fault`` CLI. The target stops answering that connection
but keeps its socket open: only the initiator's NOP-Out timeout finds out.

While it is armed the fault also swallows new logins of its vDisk: the initiator's new TCP
connections are accepted and never answered, as a dead path would behave. Once ``duration``
has passed, the fault is gone, the held connections are closed, and the next login's session
works.

* shorter than replacement_timeout: the initiator's logins inside the window time out, the
  first one after it succeeds, the queued I/O is retried and fio ends without an error;
* longer than replacement_timeout: every login times out (login_timeout 5 s), the session
  stays blocked, replacement_timeout expires, the kernel fails the queued I/O, fio reports
  EIO, and the guest reports that as the expected outcome.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.guest.harness import Guest, GuestImage, GuestResult, format_steps
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from topology.naming import target_name_for

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
GUEST_PORTAL = "10.0.2.100"
GUEST_PORT = 3260
VDISK = "vd1"


@dataclass
class BlackholeTarget:
    process: ManagedProcess
    port: int
    http_port: int
    token_file: Path  # the page's control token (--control-token-file)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def fault(self, *words: str) -> str:
        """``stargate fault WORDS... --url <this target>``, as a user types it."""
        argv = [sys.executable, "-m", "stargate", "fault", *words, "--url", self.url]
        argv += ["--token-file", str(self.token_file)]
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout


@pytest.fixture
def target(process_reaper: ProcessReaper, tmp_path: Path) -> BlackholeTarget:
    port, http_port = free_port(HOST), free_port(HOST)
    token_file = tmp_path / "control.token"
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--advertise", f"{GUEST_PORTAL}:{GUEST_PORT}", "--memory"]
    argv += ["--vdisk", f"{VDISK}:64M", "--http", f"{HOST}:{http_port}"]
    argv += ["--control-token-file", str(token_file)]
    process = process_reaper.spawn(argv, name="stargate-blackhole")
    process.wait_for_port(HOST, port, timeout=30)
    process.wait_for_port(HOST, http_port, timeout=30)
    return BlackholeTarget(process, port, http_port, token_file)


def run_blackhole(
    image: GuestImage,
    target: BlackholeTarget,
    request: pytest.FixtureRequest,
    *,
    expect: str,
    blackhole_seconds: float,
    env: dict[str, str],
) -> GuestResult:
    with Guest(
        image,
        {GUEST_PORTAL: target.port},
        "fault_blackhole",
        env={"TARGET_IQN": target_name_for(VDISK), "EXPECT": expect, **env},
        timeout=80,
        name=request.node.name,
    ) as guest:
        guest.wait_for("blackhole", timeout=60)
        armed = target.fault(
            "add", "drop_connection", "--mode", "blackhole",
            "--duration", str(blackhole_seconds),
        )  # fmt: skip
        armed_at = time.monotonic()
        print(f"armed: {armed.strip()}")
        guest.signal("blackhole")
        result = guest.wait_done()
        print(f"guest done {time.monotonic() - armed_at:.1f} s after the blackhole was armed")
        print(f"\n{format_steps(guest.steps)}\nvalues: {guest.values}\nlogs: {guest.workdir}")
    return result


@pytest.mark.timeout(120)
def test_blackhole_shorter_than_replacement_timeout_is_ridden_out(
    guest_image: GuestImage, target: BlackholeTarget, request: pytest.FixtureRequest
) -> None:
    # NOP-Out every 2 s, 2 s to answer: the dark connection is found within ~4 s; the 6 s
    # blackhole ends well inside the 15 s replacement_timeout.
    result = run_blackhole(
        guest_image,
        target,
        request,
        expect="survive",
        blackhole_seconds=6.0,
        env={"REPLACEMENT_TIMEOUT": "15", "IO_SECONDS": "22", "FIO_BOUND": "45"},
    )
    result.assert_passed("login", "fio-running", "connection-dropped", "fio", "session-recovered")
    assert result.values["fio_eio"] == "no"


@pytest.mark.timeout(120)
def test_blackhole_longer_than_replacement_timeout_fails_io(
    guest_image: GuestImage, target: BlackholeTarget, request: pytest.FixtureRequest
) -> None:
    # replacement_timeout 5 s against a 30 s blackhole (the blackhole swallows logins): the queued
    # I/O must fail with EIO, well before the blackhole ends.
    result = run_blackhole(
        guest_image,
        target,
        request,
        expect="eio",
        blackhole_seconds=30.0,
        env={"REPLACEMENT_TIMEOUT": "5", "IO_SECONDS": "40", "FIO_BOUND": "40"},
    )
    result.assert_passed("login", "fio-running", "connection-dropped", "io-error")
    assert result.values["fio_eio"] == "yes"
