"""Start, stop, signal and inspect the cluster's processes, by pid file.

Per node two processes: ``stargate-<i>`` (``python -m cluster.cvm``) and
``redirector-<i>`` (``python -m redirector``). Each is started in its own session with its
output appended to DIR/logs/<name>.log; DIR/run/<name>.pid records its pid and the kernel's
start time of that pid, so a recycled pid is never signalled in its place.

Health is what an initiator would see: a stargate answers when its HTTP page does (a
stopped process still accepts TCP connections into its backlog, so a TCP connect proves
nothing), a redirector when its iSCSI port accepts and the process is not stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import trio

from control.control_token import cluster_token
from control.http import HttpError, http_request
from topology.spec import ClusterPaths, ClusterSpec, NodeSpec

STOP_GRACE = 5.0
PROBE_TIMEOUT = 1.0
READY_TIMEOUT = 20.0
STATE_CHANGE_TIMEOUT = 2.0


class ProcessKind(Enum):
    STARGATE = "stargate"
    REDIRECTOR = "redirector"


class Health(Enum):
    UP = "up"  # answers
    STARTING = "starting"  # running, not answering yet (or unresponsive)
    STOPPED = "stopped"  # SIGSTOPped
    DOWN = "down"  # no process


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    kind: ProcessKind
    node_id: int
    address: str
    port: int
    http_port: int | None
    argv: tuple[str, ...]


def managed_processes(
    spec: ClusterSpec, directory: Path, *, redirectors: bool = True
) -> list[ManagedProcess]:
    processes = []
    for node in spec.nodes:
        processes.append(stargate_process(node, directory))
        if redirectors:
            processes.append(redirector_process(node, directory))
    return processes


def stargate_process(node: NodeSpec, directory: Path) -> ManagedProcess:
    argv = (sys.executable, "-m", "cluster.cvm", "--dir", str(directory))
    return ManagedProcess(
        node.stargate_name,
        ProcessKind.STARGATE,
        node.node_id,
        node.cvm_address,
        node.cvm_port,
        node.http_port,
        (*argv, "--node", str(node.node_id)),
    )


def redirector_process(node: NodeSpec, directory: Path) -> ManagedProcess:
    argv = (sys.executable, "-m", "redirector", "--dir", str(directory))
    return ManagedProcess(
        node.redirector_name,
        ProcessKind.REDIRECTOR,
        node.node_id,
        node.redirector_address,
        node.redirector_port,
        None,
        (*argv, "--node", str(node.node_id)),
    )


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid apart

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        raw = json.loads(text)
        return cls(int(raw["pid"]), int(raw["start_ticks"]))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a live pid, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    kind: str
    node: int
    pid: int | None
    state: str  # running, stopped, exited, not started
    health: str
    address: str
    log: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Supervisor:
    def __init__(self, directory: Path | str, *, redirectors: bool | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.paths = ClusterPaths(self.directory)
        self.spec = ClusterSpec.load(self.directory)
        if redirectors is None:  # whatever `cluster up` chose, as recorded by its pid files
            redirectors = not self._stargates_only_marker.exists()
        self.redirectors = redirectors
        self.processes = managed_processes(self.spec, self.directory, redirectors=redirectors)

    @property
    def _stargates_only_marker(self) -> Path:
        return self.paths.run / "stargates-only"

    def remember_mode(self, *, redirectors: bool) -> None:
        self.paths.run.mkdir(parents=True, exist_ok=True)
        if redirectors:
            self._stargates_only_marker.unlink(missing_ok=True)
        else:
            self._stargates_only_marker.write_text("no redirectors were started\n")

    def process(self, name: str) -> ManagedProcess:
        for process in self.processes:
            if process.name == name:
                return process
        raise ValueError(f"no process {name!r} in this cluster")

    def stargate(self, node_id: int) -> ManagedProcess:
        return self.process(self.spec.node(node_id).stargate_name)

    # -- pids ---------------------------------------------------------------------------

    def pid_of(self, process: ManagedProcess) -> int | None:
        """The live pid recorded for ``process`` (None: not started, exited, recycled)."""
        try:
            record = PidRecord.from_json(self.paths.pid_file(process.name).read_text())
        except (FileNotFoundError, ValueError, KeyError):
            return None
        self._reap(record.pid)
        stat = _proc_stat(record.pid)
        if stat is None or stat[1] != record.start_ticks or stat[0] in ("Z", "X"):
            return None
        return record.pid

    @staticmethod
    def _reap(pid: int) -> None:
        # When this process started it (foreground `cluster up`, tests), collect the zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def start(self, process: ManagedProcess) -> int:
        """Start ``process`` unless it runs already; returns its pid."""
        running = self.pid_of(process)
        if running is not None:
            return running
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        cluster_token(self.directory)  # DIR/control.token, read by every process at start
        log_path = self.paths.log_file(process.name)
        with log_path.open("ab") as log_file:
            log_file.write(f"--- {time.strftime('%F %T')} starting {process.name}\n".encode())
            log_file.flush()
            child = subprocess.Popen(
                process.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C of the CLI is not the cluster's signal
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        stat = _proc_stat(child.pid)
        record = PidRecord(child.pid, stat[1] if stat else 0)
        self.paths.pid_file(process.name).write_text(record.to_json() + "\n")
        return child.pid

    def send(self, process: ManagedProcess, signum: signal.Signals) -> int:
        """Send ``signum`` to the process by its recorded pid; returns the pid."""
        pid = self.pid_of(process)
        if pid is None:
            raise ProcessLookupError(f"{process.name} is not running")
        os.kill(pid, signum)
        if signum in (signal.SIGSTOP, signal.SIGCONT):
            # Delivery is asynchronous: return once the state shows it, so that what the
            # caller does next (a status, a test's check) sees the process stopped/running.
            want_stopped = signum == signal.SIGSTOP
            deadline = time.monotonic() + STATE_CHANGE_TIMEOUT
            while time.monotonic() < deadline:
                stat = _proc_stat(pid)
                if stat is None or (stat[0] == "T") == want_stopped:
                    break
                time.sleep(0.005)
        return pid

    def stop(self, process: ManagedProcess, *, grace: float = STOP_GRACE) -> bool:
        """SIGTERM (after SIGCONT: a stopped process cannot exit), SIGKILL after ``grace``.
        Returns True if it was running."""
        pid = self.pid_of(process)
        if pid is None:
            self.paths.pid_file(process.name).unlink(missing_ok=True)
            return False
        for signum in (signal.SIGCONT, signal.SIGTERM):
            os.kill(pid, signum)
        if not self._wait_gone(process, grace):
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(process, grace)
        self.paths.pid_file(process.name).unlink(missing_ok=True)
        return True

    def stop_many(self, processes: list[ManagedProcess], *, grace: float = STOP_GRACE) -> list[str]:
        """`stop` for several processes at once: all are signalled, then waited for together.
        Returns the names of those that were running."""
        running = [(process, self.pid_of(process)) for process in processes]
        running_now = [(process, pid) for process, pid in running if pid is not None]
        for _, pid in running_now:
            for signum in (signal.SIGCONT, signal.SIGTERM):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(self.pid_of(p) for p, _ in running_now):
            time.sleep(0.02)
        for process, _ in running_now:
            survivor = self.pid_of(process)
            if survivor is not None:
                os.kill(survivor, signal.SIGKILL)
                self._wait_gone(process, grace)
        for process in processes:
            self.paths.pid_file(process.name).unlink(missing_ok=True)
        return [process.name for process, _ in running_now]

    def kill(self, process: ManagedProcess) -> int:
        pid = self.send(process, signal.SIGKILL)
        self._wait_gone(process, STOP_GRACE)
        return pid

    def _wait_gone(self, process: ManagedProcess, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_of(process) is None:
                return True
            time.sleep(0.02)
        return self.pid_of(process) is None

    # -- state and health ---------------------------------------------------------------

    def state(self, process: ManagedProcess) -> tuple[int | None, str]:
        pid = self.pid_of(process)
        if pid is None:
            return None, "exited" if self.paths.pid_file(process.name).exists() else "not started"
        stat = _proc_stat(pid)
        return pid, "stopped" if stat is not None and stat[0] == "T" else "running"

    async def probe(self, process: ManagedProcess) -> Health:
        pid, state = self.state(process)
        if pid is None:
            return Health.DOWN
        if state == "stopped":
            return Health.STOPPED
        if process.http_port is not None:
            url = f"http://{process.address}:{process.http_port}/stats.json"
            try:
                response = await http_request("GET", url, timeout=PROBE_TIMEOUT)
                answering_pid = response.json_body().get("pid") if response.status == 200 else None
            except (HttpError, ValueError, AttributeError):
                return Health.STARTING
            # Another process on the same address (a second cluster) must not pass for ours.
            return Health.UP if answering_pid == pid else Health.STARTING
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                stream = await trio.open_tcp_stream(process.address, process.port)
            except OSError:
                return Health.STARTING
            await trio.aclose_forcefully(stream)
            return Health.UP
        return Health.STARTING

    async def statuses(self) -> list[ProcessStatus]:
        healths: dict[str, Health] = {}

        async def probe_one(process: ManagedProcess) -> None:
            healths[process.name] = await self.probe(process)

        async with trio.open_nursery() as nursery:
            for process in self.processes:
                nursery.start_soon(probe_one, process)
        result = []
        for process in self.processes:
            pid, state = self.state(process)
            result.append(
                ProcessStatus(
                    process.name,
                    process.kind.value,
                    process.node_id,
                    pid,
                    state,
                    healths[process.name].value,
                    f"{process.address}:{process.port}",
                    str(self.paths.log_file(process.name)),
                )
            )
        return result

    async def start_all(self, timeout: float = READY_TIMEOUT) -> str | None:
        """Start every process of the cluster and wait until each answers; None when all
        did, else the names of those that did not in time."""
        for process in self.processes:
            self.start(process)
        not_ready = await self.wait_ready(self.processes, timeout)
        return ", ".join(process.name for process in not_ready) or None

    async def wait_ready(
        self, processes: list[ManagedProcess], timeout: float = READY_TIMEOUT
    ) -> list[ManagedProcess]:
        """Wait until every process answers; returns those that did not in time."""
        pending = list(processes)
        with trio.move_on_after(timeout):
            while pending:
                healths = [await self.probe(process) for process in pending]
                dead = [p for p, h in zip(pending, healths, strict=True) if h is Health.DOWN]
                if dead:
                    return dead  # exited: waiting longer will not help
                pending = [p for p, h in zip(pending, healths, strict=True) if h is not Health.UP]
                if pending:
                    await trio.sleep(0.05)
        return pending

    def log_tail(self, process: ManagedProcess, lines: int = 5) -> str:
        try:
            text = self.paths.log_file(process.name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
