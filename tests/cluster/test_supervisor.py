"""The supervisor with stand-in processes: pid files guarded against recycled pids, state
and health through SIGSTOP/SIGCONT, graceful and forced stops."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cluster.supervisor import (
    Health,
    ManagedProcess,
    PidRecord,
    ProcessKind,
    Supervisor,
    _proc_stat,
    managed_processes,
)
from tests.helpers.net import free_port, unique_loopback_address
from topology.spec import ClusterSpec

LISTENER = """
import signal, socket, sys, time
if sys.argv[3] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket()
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(8)
while True:
    time.sleep(1)
"""


def stand_in(name: str, *, ignore_term: bool = False) -> ManagedProcess:
    """A redirector-kind process that only listens: health is a TCP connect."""
    address, port = unique_loopback_address(), free_port()
    mode = "ignore-term" if ignore_term else "normal"
    argv = (sys.executable, "-c", LISTENER, address, str(port), mode)
    return ManagedProcess(name, ProcessKind.REDIRECTOR, 1, address, port, None, argv)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    ClusterSpec.create(tmp_path, 2)
    supervisor = Supervisor(tmp_path)
    try:
        yield supervisor
    finally:  # whatever a failed test left running, by its recorded (and verified) pid
        for pid_file in supervisor.paths.run.glob("*.pid"):
            record = PidRecord.from_json(pid_file.read_text())
            stat = _proc_stat(record.pid)
            if record.pid != os.getpid() and stat is not None and stat[1] == record.start_ticks:
                os.kill(record.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(record.pid, 0)


def test_the_cluster_processes(supervisor: Supervisor, tmp_path: Path) -> None:
    names = [process.name for process in supervisor.processes]
    assert names == ["stargate-1", "redirector-1", "stargate-2", "redirector-2"]
    stargate = supervisor.stargate(2)
    assert stargate.argv[1:] == (
        "-m",
        "cluster.cvm",
        "--dir",
        str(tmp_path),
        "--node",
        "2",
    )
    assert (stargate.address, stargate.port, stargate.http_port) == ("127.77.2.2", 3261, 2009)
    redirector = supervisor.process("redirector-1")
    assert redirector.argv[1:3] == ("-m", "redirector") and redirector.http_port is None
    spec = ClusterSpec.load(tmp_path)
    assert len(managed_processes(spec, tmp_path, redirectors=False)) == 2


async def test_start_state_health_and_stop(supervisor: Supervisor) -> None:
    process = stand_in("listener")
    assert supervisor.state(process) == (None, "not started")
    pid = supervisor.start(process)
    assert supervisor.start(process) == pid  # running already: not started twice
    assert await supervisor.wait_ready([process], timeout=15) == []
    assert supervisor.state(process) == (pid, "running")
    supervisor.send(process, signal.SIGSTOP)
    assert supervisor.state(process) == (pid, "stopped")
    assert await supervisor.probe(process) is Health.STOPPED
    assert supervisor.stop(process, grace=5)  # SIGCONT first, or SIGTERM could not act
    assert supervisor.state(process) == (None, "not started")  # pid file removed
    assert _proc_stat(pid) is None
    assert await supervisor.probe(process) is Health.DOWN
    assert "starting listener" in supervisor.log_tail(process)


async def test_sigkill_after_the_grace_period(supervisor: Supervisor) -> None:
    process = stand_in("stubborn", ignore_term=True)
    pid = supervisor.start(process)
    assert await supervisor.wait_ready([process], timeout=15) == []
    with trio.fail_after(10):
        assert supervisor.stop_many([process], grace=0.5) == ["stubborn"]
    assert _proc_stat(pid) is None


def test_a_recycled_pid_is_never_taken_for_ours(supervisor: Supervisor) -> None:
    process = stand_in("ghost")
    stat = _proc_stat(os.getpid())
    assert stat is not None
    pid_file = supervisor.paths.pid_file("ghost")
    pid_file.write_text(PidRecord(os.getpid(), stat[1] + 1).to_json())  # same pid, other start
    assert supervisor.pid_of(process) is None
    assert not supervisor.stop(process)  # nothing signalled: this test process lives on
    assert not pid_file.exists()
    pid_file.write_text(PidRecord(os.getpid(), stat[1]).to_json())
    assert supervisor.pid_of(process) == os.getpid()
    pid_file.unlink()
    with pytest.raises(ProcessLookupError):
        supervisor.send(process, signal.SIGCONT)
