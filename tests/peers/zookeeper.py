"""One ZooKeeper server (Debian's `zookeeper`), in the foreground, for the tests.

Standalone, on 127.0.0.1 and a free port, tickTime 500 ms (sessions of 1-10 s), a temporary
dataDir, no admin server, no fsync; stopped by PID. Ready (answers `ruok`) in about 1 s.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessError, spawn

JARS = (
    Path("/usr/share/java/zookeeper.jar"),
    Path("/usr/share/java/slf4j-log4j12.jar"),
    Path("/usr/share/java/log4j-1.2.jar"),
)
TICK_MS = 500
READY_TIMEOUT = 20.0

_LOG4J = """log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d %-5p %m%n
"""


def missing_jars() -> list[Path]:
    return [jar for jar in JARS if not jar.exists()]


def four_letter_word(port: int, word: bytes = b"ruok", timeout: float = 0.5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(word)
        chunks = []
        while chunk := connection.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class ZooKeeperServer:
    directory: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    def start(self) -> None:
        conf = self.directory / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        (conf / "log4j.properties").write_text(_LOG4J)
        (conf / "zoo.cfg").write_text(
            f"tickTime={TICK_MS}\n"
            f"dataDir={self.directory / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,stat,mntr\n"
            "forceSync=no\n"
        )
        classpath = ":".join([str(conf), *(str(jar) for jar in JARS)])
        self.process = spawn(
            [
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-cp",
                classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(conf / "zoo.cfg"),
            ],
            log_dir=self.directory / "logs",
            name="zookeeper",
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise ProcessError(f"ZooKeeper exited:\n{self.process.describe()}")
            try:
                if four_letter_word(self.port) == b"imok":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ProcessError(f"ZooKeeper not ready in {timeout} s:\n{self.process.describe()}")

    def url(self, path: str | None = None, *, session_timeout: float | None = None) -> str:
        """A coordinator URL for a fresh path of its own (tests never share znodes)."""
        path = path or f"/test-{uuid.uuid4().hex[:12]}"
        query = "" if session_timeout is None else f"?session_timeout={session_timeout:g}"
        return f"zk://127.0.0.1:{self.port}{path}{query}"

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the server: its clients' sessions go quiet."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.is_running():
                os.kill(self.process.pid, signal.SIGCONT)  # a frozen JVM cannot exit
            self.process.stop(grace=5.0)
            self.process = None
