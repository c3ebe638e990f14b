"""Packet capture with tshark: what Wireshark's iSCSI dissector makes of a conversation.

    with IscsiCapture(ports=[port], directory=tmp_path) as capture:
        iscsi_inq(url)
    assert capture.malformed() == []
    assert "Login Command" in capture.summaries()

Wireshark is an independent decoder: a PDU it flags as malformed, or an expert error, is a
bug in whoever sent it. Captures run on the loopback interface and need root (or
CAP_NET_RAW for dumpcap).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.helpers.procs import ManagedProcess, ProcessError, spawn
from tests.peers.tools import run_tool


@dataclass(frozen=True)
class CapturedPdu:
    frame: int
    source_port: int
    destination_port: int
    opcodes: list[int]  # one frame may carry several PDUs
    summary: str  # Wireshark's Info column, e.g. "Login Response (Success)"


@dataclass
class IscsiCapture:
    """A capture of the TCP ports ``ports`` on ``interface``, decoded as iSCSI by tshark."""

    ports: Sequence[int]
    directory: Path
    interface: str = "lo"
    start_timeout: float = 15.0

    path: Path = field(init=False)
    process: ManagedProcess | None = field(default=None, init=False)
    _probe: socket.socket | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = self.directory / f"iscsi-{'-'.join(map(str, self.ports))}.pcapng"

    def __enter__(self) -> IscsiCapture:
        # dumpcap (the capture engine under tshark, quicker to start) captures; tshark only
        # decodes. Packets reach the file in batches, so the filter also takes UDP datagrams
        # to a probe port, with a marker: once a marker is in the file, all before it is too.
        self._probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._probe.bind(("127.0.0.1", 0))
        port_filter = " or ".join(f"tcp port {port}" for port in self.ports)
        probe_filter = f"udp port {self._probe.getsockname()[1]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            ["dumpcap", "-q", "-i", self.interface, "-f", f"({port_filter}) or {probe_filter}",
             "-w", str(self.path)],
            log_dir=self.directory,
            name="dumpcap",
        )  # fmt: skip
        try:
            self._wait_for_marker(b"start")
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Wait until everything sent so far is in the file, then stop dumpcap (SIGINT)."""
        if self.process is None:
            return
        try:
            self._wait_for_marker(b"end")
        finally:
            self._close()

    def _close(self) -> None:
        process, self.process = self.process, None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5.0)
            process.kill()

    def _wait_for_marker(self, kind: bytes) -> None:
        """Send marker datagrams until one of them shows up in the capture file."""
        assert self.process is not None and self._probe is not None
        marker = b"stargate-emu capture probe: " + kind + b" " + os.urandom(8).hex().encode()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.process.is_running():
            self._probe.sendto(marker, self._probe.getsockname())
            time.sleep(0.05)
            with contextlib.suppress(FileNotFoundError):
                if marker in self.path.read_bytes():
                    return
        raise ProcessError(
            f"dumpcap did not capture its {kind.decode()} probe:\n{self.process.describe()}"
        )

    def _decode(self, *args: str) -> str:
        decode_as = [arg for port in self.ports for arg in ("-d", f"tcp.port=={port},iscsi")]
        return run_tool(["tshark", "-r", str(self.path), *decode_as, *args], timeout=60).stdout

    def pdus(self) -> list[CapturedPdu]:
        fields = ["frame.number", "tcp.srcport", "tcp.dstport", "iscsi.opcode", "_ws.col.Info"]
        output = self._decode(
            "-Y", "iscsi", "-T", "fields", "-E", "separator=/t", "-E", "aggregator=;",
            *(arg for name in fields for arg in ("-e", name)),
        )  # fmt: skip
        pdus = []
        for line in output.splitlines():
            frame, source, destination, opcodes, summary = line.split("\t", 4)
            codes = [int(code, 16) for code in opcodes.split(";") if code]
            pdus.append(CapturedPdu(int(frame), int(source), int(destination), codes, summary))
        return pdus

    def summaries(self) -> list[str]:
        return [pdu.summary.strip() for pdu in self.pdus()]

    def malformed(self) -> list[str]:
        """Frames Wireshark calls malformed or flags with an expert error (one line each)."""
        output = self._decode("-Y", '_ws.malformed or _ws.expert.severity >= "error"')
        return [line for line in output.splitlines() if line.strip()]
