"""Processes a test starts: spawn with a log file, wait for a TCP port, stop by PID.

Every process gets its own session (so its process group id is its PID) and writes stdout and
stderr to a log file. Stopping sends SIGTERM to that group, waits, then SIGKILL. Failures
raise `ProcessError` with the tail of the log, so a test that fails says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.helpers.net import tcp_port_answers

LOG_TAIL_CHARS = 4000


class ProcessError(RuntimeError):
    """A spawned process died, or did not become ready in time."""


@dataclass
class ManagedProcess:
    """A process started by `spawn`, with its log file."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] | None = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "...\n" + text[-chars:]

    def describe(self) -> str:
        state = "running" if self.is_running() else f"exited with {self.popen.returncode}"
        return (
            f"{self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}\n"
            f"--- log {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_for_port(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Return once ``host:port`` accepts a connection; raise if the process dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ProcessError(f"exited before {host}:{port} answered:\n{self.describe()}")
            if tcp_port_answers(host, port, timeout=0.2):
                return
            time.sleep(0.05)
        raise ProcessError(f"{host}:{port} did not answer within {timeout} s:\n{self.describe()}")

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds; return the exit code."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the process group (what is left of it) and reap the process."""
        self._signal(signal.SIGKILL)
        try:
            returncode = self.popen.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # unkillable (D state): leave it, say so
            returncode = None
        self._close_log()
        return returncode

    def _signal(self, signum: signal.Signals) -> None:
        # start_new_session=True made the group id equal to our child's PID; the group holds
        # only what that child started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_dir: Path,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` with stdout and stderr going to a log file in ``log_dir``."""
    words = [os.fspath(word) for word in argv]
    label = name or Path(words[0]).name
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}-{time.monotonic_ns()}.log"
    log_file = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            words,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    return ManagedProcess(label, words, popen, log_path, log_file)


@dataclass
class ProcessReaper:
    """Remembers every process a test started and stops them all, newest first."""

    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        process = spawn(argv, log_dir=self.log_dir, name=name, env=env, cwd=cwd)
        self.processes.append(process)
        return process

    def track(self, process: ManagedProcess) -> ManagedProcess:
        """Adopt a process started elsewhere (e.g. by `TgtdTarget`) as a safety net."""
        self.processes.append(process)
        return process

    def reap_all(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=3.0)

    def report(self) -> str:
        return "\n\n".join(process.describe() for process in self.processes)
