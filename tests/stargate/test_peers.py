"""Stargate as a subprocess, driven by real initiators: libiscsi's tools and conformance
suite, QEMU's iscsi block driver, fio's libiscsi engine. Plus the robustness cases: killed
clients, garbage, silent clients, and SIGKILL of the target itself mid-write."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from iscsicore.login import LoginDone
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.peers.fio import job_errors, run_fio
from tests.peers.tools import (
    PeerToolError,
    iscsi_inq,
    iscsi_ls,
    iscsi_readcapacity16,
    iscsi_url,
    qemu_img_convert,
    qemu_io,
    run_tool,
)
from tests.stargate.client import TestInitiator, clear_unit_attention, read10, write10
from topology.naming import target_name_for

HOST = "127.0.0.1"
MiB = 1 << 20


@dataclass
class StargateProcess:
    process: ManagedProcess
    port: int
    data_dir: Path

    def url(self, vdisk_id: str, **credentials: str) -> str:
        return iscsi_url(HOST, self.port, target_name_for(vdisk_id), 0, **credentials)

    @property
    def portal(self) -> str:
        return iscsi_url(HOST, self.port)


StargateFactory = Callable[..., StargateProcess]


@pytest.fixture
def start_stargate_process(
    process_reaper: ProcessReaper, tmp_data_dir: Path
) -> Iterator[StargateFactory]:
    def start(
        *vdisks: str, extra: tuple[str, ...] = (), data_dir: Path | None = None
    ) -> StargateProcess:
        port = _free_port()
        directory = data_dir or tmp_data_dir
        argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
        argv += ["--data-dir", str(directory), "--log-level", "INFO", *extra]
        for vdisk in vdisks or ("vd1:64M", "vd2:32M"):
            argv += ["--vdisk", vdisk]
        process = process_reaper.spawn(argv, name="stargate")
        process.wait_for_port(HOST, port, timeout=20)
        return StargateProcess(process, port, directory)

    yield start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------
# libiscsi tools


def test_iscsi_ls_lists_every_vdisk_with_its_size(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("iscsi-ls")
    target = start_stargate_process("vd1:64M", "vd2:32M")
    listed = {entry.name: entry for entry in iscsi_ls(target.portal)}
    assert set(listed) == {target_name_for("vd1"), target_name_for("vd2")}
    assert listed[target_name_for("vd1")].portal == f"{HOST}:{target.port},1"
    for name, megabytes in ((target_name_for("vd1"), 64), (target_name_for("vd2"), 32)):
        (lun,) = listed[name].luns
        assert lun.lun == 0 and lun.device_type == "DIRECT_ACCESS"
        # iscsi-ls prints the last LBA's offset rounded down: 64M shows as 63M.
        assert lun.size_text in (f"{megabytes}M", f"{megabytes - 1}M")


def test_iscsi_inq_and_readcapacity16(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("iscsi-inq")
    target = start_stargate_process("vd1:64M")
    inquiry = iscsi_inq(target.url("vd1"))
    assert inquiry.device_type == "DIRECT_ACCESS"
    assert inquiry.fields["Peripheral Qualifier"] == "CONNECTED"
    capacity = iscsi_readcapacity16(target.url("vd1"))
    assert capacity.block_size == 512
    assert capacity.total_size == 64 * MiB
    assert capacity.last_lba == 64 * MiB // 512 - 1


def test_chap_and_acl_with_libiscsi(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("iscsi-inq")
    allowed = "iqn.2026-11.test:allowed"
    target = start_stargate_process(
        "vd1:16M", extra=("--chap", "alice:alice-secret-12", "--allow", allowed)
    )
    url = target.url("vd1", user="alice", password="alice-secret-12")
    inquiry = run_tool(["iscsi-inq", "-i", allowed, url])
    assert "DIRECT_ACCESS" in inquiry.stdout
    with pytest.raises(PeerToolError):
        run_tool(["iscsi-inq", "-i", allowed, target.url("vd1", user="alice", password="wrong")])
    with pytest.raises(PeerToolError):
        run_tool(["iscsi-inq", "-i", "iqn.2026-11.test:stranger", url])
    hidden = run_tool(["iscsi-ls", "-i", "iqn.2026-11.test:stranger", target.portal])
    assert "vmdisk-vd1" not in hidden.stdout


# ---------------------------------------------------------------------------------------
# QEMU


def test_qemu_img_convert_in_and_out_is_byte_identical(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory, tmp_path: Path
) -> None:
    require_tool("qemu-img")
    target = start_stargate_process("vd1:32M")
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(32 * MiB))
    qemu_img_convert(source, target.url("vd1"))
    back = tmp_path / "back.raw"
    qemu_img_convert(target.url("vd1"), back)
    assert back.read_bytes() == source.read_bytes()


def test_qemu_io_writes_and_reads_patterns(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("qemu-io")
    target = start_stargate_process("vd1:32M")
    url = target.url("vd1")
    qemu_io(url, ["write -P 0xa5 0 1M", "write -P 0x5a 1M 64k", "write -P 0x33 4095k 1k"])
    output = qemu_io(
        url, ["read -P 0xa5 0 1M", "read -P 0x5a 1M 64k", "read -P 0x33 4095k 1k", "flush"]
    )
    assert output.count("read ") >= 3
    with pytest.raises(PeerToolError):
        qemu_io(url, ["read -P 0x11 0 4k"])  # verification can fail: the check is real


@pytest.mark.slow
def test_fio_libiscsi_verify_workload(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("fio")
    target = start_stargate_process("vd1:64M")
    report = run_fio(
        target.url("vd1"),
        rw="randwrite",
        block_size="4k",
        iodepth=16,
        size="16M",
        verify="crc32c",
        timeout=300,
    )
    assert job_errors(report) == [0]
    job = report["jobs"][0]
    assert job["write"]["io_bytes"] >= 16 * MiB
    assert job["read"]["io_bytes"] >= 16 * MiB  # the verify pass read everything back


@pytest.mark.slow
def test_many_vdisks_written_and_verified_at_once(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    """16 fio processes, a connection each, write and verify their own vDisk at the same
    time: every connection is read by the server's one reader hub, whose turns interleave
    them; each must get exactly its own data back."""
    require_tool("fio")
    count = 16
    target = start_stargate_process(*(f"vd{index}:8M" for index in range(count)))

    def write_and_verify(index: int) -> dict[str, Any]:
        return run_fio(
            target.url(f"vd{index}"),
            rw="randwrite",
            block_size="4k",
            iodepth=2,
            size="4M",
            verify="crc32c",
            options={"randseed": index + 1},
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        reports = list(pool.map(write_and_verify, range(count)))
    for report in reports:
        assert job_errors(report) == [0]
        job = report["jobs"][0]
        assert job["write"]["io_bytes"] >= 4 * MiB
        assert job["read"]["io_bytes"] >= 4 * MiB  # the verify pass read it all back


# ---------------------------------------------------------------------------------------
# Robustness


def _qemu_io_works(url: str) -> None:
    qemu_io(url, ["write -P 0x42 2M 64k", "read -P 0x42 2M 64k"])


def test_a_client_killed_mid_io_does_not_hurt_the_others(
    require_tool: Callable[..., str],
    start_stargate_process: StargateFactory,
    process_reaper: ProcessReaper,
) -> None:
    require_tool("qemu-img")
    target = start_stargate_process("vd1:64M", "vd2:64M")
    bench = process_reaper.spawn(
        ["qemu-img", "bench", "-f", "raw", "-w", "-c", "10000000", "-d", "32", target.url("vd1")],
        name="qemu-img-bench",
    )
    time.sleep(1.5)
    assert bench.is_running()
    bench.kill()  # SIGKILL mid-I/O: the target sees a connection vanish with commands queued
    _qemu_io_works(target.url("vd2"))
    _qemu_io_works(target.url("vd1"))
    assert target.process.is_running()


def test_garbage_and_silent_clients_do_not_hurt_the_others(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("qemu-io")
    target = start_stargate_process("vd1:16M", extra=("--login-timeout", "1"))
    silent = socket.create_connection((HOST, target.port))
    vandals = []
    for payload in (os.urandom(4096), b"\x03" + os.urandom(47), b"\x01\x80" + b"\xff" * 100):
        vandal = socket.create_connection((HOST, target.port))
        vandal.sendall(payload)
        vandals.append(vandal)
    _qemu_io_works(target.url("vd1"))
    silent.settimeout(5)
    assert silent.recv(10) == b"", "a client that says nothing is dropped after the timeout"
    for vandal in vandals:
        assert _closed_by_peer(vandal, timeout=5), "garbage must end the connection"
        vandal.close()
    silent.close()
    _qemu_io_works(target.url("vd1"))
    assert target.process.is_running()


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_sigkill_loses_no_acknowledged_write(
    start_stargate_process: StargateFactory, tmp_data_dir: Path
) -> None:
    """Write numbered blocks as fast as the target acknowledges them, SIGKILL the target
    mid-stream, restart it on the same files: every acknowledged block reads back."""
    target = start_stargate_process("vd1:16M")
    acknowledged = trio.run(_write_until_killed, target)
    assert len(acknowledged) > 50, "the workload should have made progress before the kill"
    restarted = start_stargate_process("vd1", data_dir=target.data_dir)
    mismatched = trio.run(_verify_blocks, restarted, acknowledged)
    assert mismatched == []


BLOCKS_PER_WRITE = 8


def _pattern(lba: int, generation: int) -> bytes:
    stamp = struct.pack(">QQ", lba, generation)
    return stamp * (BLOCKS_PER_WRITE * 512 // len(stamp))


async def _write_until_killed(target: StargateProcess) -> dict[int, int]:
    initiator = await TestInitiator.connect(target.port)
    outcome = await initiator.login(target_name_for("vd1"))
    assert isinstance(outcome, LoginDone)
    await clear_unit_attention(initiator)
    acknowledged: dict[int, int] = {}
    lbas = range(0, 16 * MiB // 512, BLOCKS_PER_WRITE)
    killed_at = time.monotonic() + 1.0
    try:
        for generation in range(1, 1000):
            for lba in lbas:
                result = await initiator.scsi(
                    write10(lba, BLOCKS_PER_WRITE), write_data=_pattern(lba, generation)
                )
                if result.status == 0:
                    acknowledged[lba] = generation
                if time.monotonic() > killed_at and target.process.is_running():
                    os.kill(target.process.pid, signal.SIGKILL)
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass
    target.process.kill()
    return acknowledged


async def _verify_blocks(target: StargateProcess, acknowledged: dict[int, int]) -> list[int]:
    initiator = await TestInitiator.connect(target.port)
    outcome = await initiator.login(target_name_for("vd1"))
    assert isinstance(outcome, LoginDone)
    await clear_unit_attention(initiator)
    wrong = []
    for lba, generation in acknowledged.items():
        result = await initiator.scsi(
            read10(lba, BLOCKS_PER_WRITE), read_length=BLOCKS_PER_WRITE * 512
        )
        # The write in flight at the kill may or may not have landed: accept that one newer.
        data = bytes(result.data)
        if data not in (_pattern(lba, generation), _pattern(lba, generation + 1)):
            wrong.append(lba)
    return wrong


# ---------------------------------------------------------------------------------------
# Process lifecycle and CLI


def test_sigterm_shuts_down_cleanly(start_stargate_process: StargateFactory) -> None:
    target = start_stargate_process("vd1:16M")
    target.process.popen.send_signal(signal.SIGTERM)
    assert target.process.popen.wait(timeout=15) == 0
    assert "Traceback" not in target.process.log_text()


def test_existing_vdisk_is_reopened_with_its_data(
    require_tool: Callable[..., str], start_stargate_process: StargateFactory
) -> None:
    require_tool("qemu-io")
    first = start_stargate_process("vd1:16M")
    qemu_io(first.url("vd1"), ["write -P 0x77 0 64k"])
    first.process.stop()
    second = start_stargate_process("vd1", data_dir=first.data_dir)
    qemu_io(second.url("vd1"), ["read -P 0x77 0 64k"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vdisk", "vd1:12Q", "--memory"], "cannot parse size"),
        (["--vdisk", "vd1:1000", "--memory"], "multiple of 512"),
        (["--vdisk", "vd1:1M"], "--data-dir is required"),
        (["--vdisk", "vd1", "--memory"], "does not exist"),
        (["--vdisk", "vd1:1M", "--memory", "--portal", "nonsense"], "HOST:PORT"),
        (["--vdisk", "vd1:1M", "--memory", "--mutual-chap", "a:b"], "needs --chap"),
        (["--vdisk", "vd1:1M", "--memory", "--chap", "nocolon"], "USER:SECRET"),
        (["--vdisk", "vd1:1M", "--memory", "--queue-depth", "0"], "at least 1"),
        (["--vdisk", "vd1:1M", "--memory", "--busy-poll-us", "-5"], "between 0 and"),
    ],
)
def test_cli_reports_bad_arguments_without_a_traceback(args: list[str], message: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "target", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cli_reports_a_busy_port(start_stargate_process: StargateFactory) -> None:
    target = start_stargate_process("vd1:1M")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "stargate",
            "target",
            "--memory",
            "--vdisk",
            "x:1M",
            "--portal",
            f"{HOST}:{target.port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2 and "cannot listen" in completed.stderr
    assert "Traceback" not in completed.stderr
