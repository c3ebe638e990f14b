"""QEMU's iscsi driver (qemu-io, libiscsi underneath) against faults armed live with the
`stargate fault` CLI on a running `stargate target --http`."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.conftest import FaultyTarget
from tests.peers.tools import qemu_io, run_tool

EIO = "Input/output error"


def _qemu_io_output(url: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    completed = run_tool([*argv, url], timeout=120, check=False)
    return completed.stdout + completed.stderr


def test_qemu_retries_busy_and_task_set_full(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    require_tool("qemu-io")
    target = faulty_target("--memory")
    url = target.url()
    qemu_io(url, ["write -P 0x5a 0 64k"])
    target.fault("add", "busy", "--opcode", "0x28", "--count", "2")
    # Checked in order: two BUSY first, then two TASK SET FULL (QEMU retries up to 5 times).
    target.fault("add", "task_set_full", "--opcode", "0x28", "--count", "2")
    output = qemu_io(url, ["read -P 0x5a 0 64k"])  # raises if the read or the pattern fails
    assert "read 65536/65536" in output
    fired = [event["kind"] for event in target.faults()["events"]]
    assert fired.count("busy") == 2 and fired.count("task_set_full") == 2
    assert target.faults()["faults"] == []  # both used up: disarmed themselves


def test_qemu_sees_a_medium_error_only_in_the_injected_range(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    require_tool("qemu-io")
    target = faulty_target("--memory")
    url = target.url()
    # LBA 2048..2055 is the 4 KiB at 1 MiB.
    target.fault("add", "check_condition", "--opcode", "0x28", "--lba", "2048-2055",
                 "--sense", "3/0x11/0")  # fmt: skip
    failed = _qemu_io_output(url, "read 1M 4k")
    assert "read failed" in failed and EIO in failed, failed
    neighbours = _qemu_io_output(url, "read 0 1M", "read 1028k 64k", "write -P 7 1M 4k")
    assert "failed" not in neighbours, neighbours
    assert "read failed" in _qemu_io_output(url, "read 1020k 8k")  # overlaps the range
    target.fault("clear")
    assert "failed" not in _qemu_io_output(url, "read -P 7 1M 4k")


def test_null_backend_reads_zeros_and_discards_writes(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    require_tool("qemu-io")
    target = faulty_target("--null")
    url = target.url()
    qemu_io(url, ["write -P 0x5a 0 1M", "flush"])
    output = qemu_io(url, ["read -P 0 0 1M"])  # the write went nowhere
    assert "read 1048576/1048576" in output
