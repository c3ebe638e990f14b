"""The guest harness proven against tgtd: Linux open-iscsi in QEMU, tgtd on the host's loopback.

Each test boots one guest (about 10 s to a login under TCG) running one scenario from
``scenarios/``. The guest reaches tgtd through a guestfwd at 10.0.2.100:3260 (and 10.0.2.101
for a second target).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.guest.harness import RELAY, Guest, GuestImage, format_steps, parse_control_line
from tests.helpers.net import free_port
from tests.helpers.procs import spawn
from tests.peers.tgtd import MiB, RedirectTo, TgtdTarget

TARGET_IQN = "iqn.2026-11.test.tgtd:guest"
FIRST_PORTAL = "10.0.2.100"
SECOND_PORTAL = "10.0.2.101"
GUEST_PORT = 3260
DOWN_SECONDS = 4.0

TgtdFactory = Callable[..., TgtdTarget]


def report(guest: Guest) -> None:
    """Print the steps (shown with -s or on failure) and the log location."""
    print(f"\n{format_steps(guest.steps)}\nvalues: {guest.values}\nlogs: {guest.workdir}")


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_discovery_login_session(
    guest_image: GuestImage, tgtd_factory: TgtdFactory, request: pytest.FixtureRequest
) -> None:
    tgtd = tgtd_factory(iqn=TARGET_IQN, lun_sizes=[64 * MiB])
    with Guest(
        guest_image,
        {FIRST_PORTAL: tgtd.port},
        "tgtd_login",
        env={"TARGET_IQN": TARGET_IQN},
        timeout=180,
        name=request.node.name,
    ) as guest:
        result = guest.wait_done()
        report(guest)
    result.assert_passed("discovery", "login", "session", "logout")
    assert result.values["current_portal"] == f"{FIRST_PORTAL}:{GUEST_PORT},1"
    assert result.values["disk_bytes"] == str(64 * MiB)


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_ext4_survives_relogin(
    guest_image: GuestImage, tgtd_factory: TgtdFactory, request: pytest.FixtureRequest
) -> None:
    tgtd = tgtd_factory(iqn=TARGET_IQN, lun_sizes=[128 * MiB])
    with Guest(
        guest_image,
        {FIRST_PORTAL: tgtd.port},
        "tgtd_ext4",
        env={"TARGET_IQN": TARGET_IQN},
        timeout=240,
        name=request.node.name,
    ) as guest:
        result = guest.wait_done()
        report(guest)
    result.assert_passed("mkfs", "write", "fsck", "logout", "relogin", "verify", "fsck-again")


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_fio_verify_raw_disk(
    guest_image: GuestImage, tgtd_factory: TgtdFactory, request: pytest.FixtureRequest
) -> None:
    tgtd = tgtd_factory(iqn=TARGET_IQN, lun_sizes=[64 * MiB])
    with Guest(
        guest_image,
        {FIRST_PORTAL: tgtd.port},
        "tgtd_fio_verify",
        env={"TARGET_IQN": TARGET_IQN, "FIO_SIZE": "12m"},
        timeout=240,
        name=request.node.name,
    ) as guest:
        result = guest.wait_done()
        report(guest)
    result.assert_passed("login", "fio")


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_login_follows_redirect(
    guest_image: GuestImage, tgtd_factory: TgtdFactory, request: pytest.FixtureRequest
) -> None:
    # The second tgtd serves the disk; the first answers every login with 0x0101 pointing at
    # the second's guest-side address (tgtd's loop guard only compares with the initiator's
    # own address, which is the relay's 127.0.0.1 here, not 10.0.2.101).
    serving = tgtd_factory(iqn=TARGET_IQN, lun_sizes=[32 * MiB])
    redirecting = tgtd_factory(
        iqn=TARGET_IQN,
        lun_sizes=[32 * MiB],
        redirect=RedirectTo(port=GUEST_PORT, address=SECOND_PORTAL, reason="Temporary"),
    )
    with Guest(
        guest_image,
        {FIRST_PORTAL: redirecting.port, SECOND_PORTAL: serving.port},
        "redirect",
        env={"TARGET_IQN": TARGET_IQN, "EXPECT_PORTAL": f"{SECOND_PORTAL}:{GUEST_PORT}"},
        timeout=180,
        name=request.node.name,
    ) as guest:
        result = guest.wait_done()
        report(guest)
    result.assert_passed("login", "redirected", "io")
    assert result.values["current_portal"].startswith(f"{SECOND_PORTAL}:{GUEST_PORT}")
    assert result.values["persistent_portal"].startswith(f"{FIRST_PORTAL}:{GUEST_PORT}")


def kill_tgtd(tgtd: TgtdTarget) -> None:
    assert tgtd.process is not None
    tgtd.process.kill()  # SIGKILL by PID (its process group)


def restart_tgtd_keeping_data(tgtd: TgtdTarget) -> None:
    """Start a new tgtd over the killed one's LUN files, on a fresh port.

    TgtdTarget.start() would truncate the LUN files, and a tgtd restarted on its old port
    listens before tgtadm has created its target: a login landing in that window gets
    "target not found". So the new tgtd is configured on a fresh port first and the guest's
    portal is re-pointed at it afterwards (`Guest.repoint`): the guest cannot tell.
    """
    tgtd.port = free_port(tgtd.host)
    tgtd.control_socket = tgtd._unused_control_socket()
    tgtd.process = spawn(
        ["tgtd", "-f", "-C", str(tgtd.control_socket), "--iscsi", f"portal={tgtd.portal}"],
        log_dir=tgtd.log_dir or tgtd.data_dir or Path("/tmp"),
        name=f"tgtd-{tgtd.control_socket}-restarted",
    )
    tgtd.process.wait_for_port(tgtd.host, tgtd.port, timeout=10)
    tgtd.tgtadm("--op", "show", "--mode", "target")
    tid = str(tgtd.tid)
    tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", tid, "-T", tgtd.iqn)
    for lun, path in enumerate(tgtd.lun_paths, start=1):
        tgtd.tgtadm(
            "--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(lun),
            "-b", str(path), "--bstype", tgtd.backing_store,
        )  # fmt: skip
    tgtd.tgtadm("--op", "bind", "--mode", "target", "--tid", tid, "-I", "ALL")


@pytest.mark.slow
@pytest.mark.timeout(390)
def test_target_killed_and_restarted_during_fio(
    guest_image: GuestImage, tgtd_factory: TgtdFactory, request: pytest.FixtureRequest
) -> None:
    tgtd = tgtd_factory(iqn=TARGET_IQN, lun_sizes=[128 * MiB])
    with Guest(
        guest_image,
        {FIRST_PORTAL: tgtd.port},
        "tgtd_restart_fio",
        env={"TARGET_IQN": TARGET_IQN, "FIO_SIZE": "32m", "REPLACEMENT_TIMEOUT": "120"},
        timeout=300,
        name=request.node.name,
    ) as guest:
        guest.wait_for("kill-target", timeout=150)
        kill_tgtd(tgtd)
        killed_at = time.monotonic()
        restart_tgtd_keeping_data(tgtd)
        # Down long enough for the initiator to retry against the closed port at least once
        # (DefaultTime2Wait is 2 s); those attempts are closed at once by the relay.
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - killed_at)))
        guest.repoint(FIRST_PORTAL, tgtd.port)
        print(f"tgtd down for {time.monotonic() - killed_at:.2f} s")
        guest.signal("kill-target")
        result = guest.wait_done()
        report(guest)
    result.assert_passed("fio-running", "connection-dropped", "session-recovered", "fio")


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_closed_portal_fails_fast(guest_image: GuestImage, request: pytest.FixtureRequest) -> None:
    # Nothing listens on the host port and the relay has no patience: it must close the
    # guest's connection at once without sending it anything (busybox nc as the relay once
    # sent its "can't connect" message, which the initiator parsed as a PDU).
    with Guest(
        guest_image,
        {FIRST_PORTAL: free_port()},
        "closed_portal",
        env={"MAX_SECONDS": "15"},
        timeout=180,
        name=request.node.name,
        connect_patience=0,
    ) as guest:
        result = guest.wait_done()
        report(guest)
    result.assert_passed("no-bytes", "discovery-fails", "fails-fast")


# --- the harness's own parts, no QEMU (fast) -------------------------------------------------


def start_relay(route_file: Path) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """relay.py as slirp runs it: the guest's end of a socket pair as stdin/stdout/stderr."""
    guest_end, relay_end = socket.socketpair()
    relay = subprocess.Popen(
        [sys.executable, "-I", "-S", str(RELAY), str(route_file)],
        stdin=relay_end.fileno(),
        stdout=relay_end.fileno(),
        stderr=relay_end.fileno(),
    )
    relay_end.close()
    guest_end.settimeout(10)
    return guest_end, relay


def test_relay_holds_the_connection_until_the_portal_answers(tmp_path: Path) -> None:
    port = free_port()
    route_file = tmp_path / "route"
    route_file.write_text(f"127.0.0.1 {port} 20\n")
    guest, relay = start_relay(route_file)
    try:
        guest.sendall(b"login")  # sent while nothing listens: buffered by the relay
        time.sleep(0.6)
        assert relay.poll() is None
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(10)
            connection, _ = server.accept()
            with connection:
                assert connection.recv(100) == b"login"
                connection.sendall(b"response")
                assert guest.recv(100) == b"response"
        assert guest.recv(100) == b""  # the target closed: the guest sees it
        guest.close()  # and closes its side, as the initiator does: the relay is done
        assert relay.wait(timeout=10) == 0
    finally:
        relay.kill()
        relay.wait()
        guest.close()
    assert "to 127.0.0.1" in (tmp_path / "route.log").read_text()


def test_relay_without_patience_closes_at_once_and_silently(tmp_path: Path) -> None:
    route_file = tmp_path / "route"
    route_file.write_text(f"127.0.0.1 {free_port()} 0\n")
    guest, relay = start_relay(route_file)
    try:
        started = time.monotonic()
        assert guest.recv(100) == b""
        assert time.monotonic() - started < 5
        assert relay.wait(timeout=10) == 1
    finally:
        relay.kill()
        relay.wait()
        guest.close()


def test_control_lines_parse() -> None:
    step = parse_control_line("STEP fio PASS rc=0 IOPS=1.2k", 1.0)
    assert step is not None and step.kind == "STEP" and step.passed
    assert step.name == "fio" and step.detail == "rc=0 IOPS=1.2k"
    failed = parse_control_line("STEP login FAIL", 1.0)
    assert failed is not None and failed.passed is False and failed.detail == ""
    waiting = parse_control_line("WAITING kill-target", 2.0)
    assert waiting is not None and (waiting.kind, waiting.name) == ("WAITING", "kill-target")
    assert parse_control_line("some console noise", 3.0) is None
