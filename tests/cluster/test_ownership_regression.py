"""Issue 13, finding 1, replayed against real CVM processes: ownership never goes backwards.

Node 1 owns the vDisk and is stopped (SIGSTOP). A login at node 3 starts taking it over and
two WRITEs of "OLD" park there while node 3 waits for node 1; node 3 is stopped too and the
initiator gives up (closes its connection). Node 1 resumes, "NEW" is written (GOOD) through
node 2. Six (or two) seconds later node 3 resumes. It must not take the vDisk from node 2 without
asking it, nor run the parked writes of a connection that is gone: the vDisk holds NEW.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from cluster.provision import create_vm
from control.client import vdisk_table
from control.http import http_json
from iscsicore.login import LoginDone
from iscsicore.pdu import R2T, ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.redirector.cluster import HTTP_PORT, PORT, START_TIMEOUT, make_spec
from tests.stargate.client import TestInitiator, clear_unit_attention, read10, write10
from topology.naming import TARGET_NAME_PREFIX
from topology.ownership import OwnershipRecord, read_record
from topology.spec import ClusterPaths, ClusterSpec

BLOCK = 512
RELEASE_TIMEOUT = 1.5  # the CVMs' --release-timeout: parked commands expire after 3.5 s
OLD = b"OLD".ljust(BLOCK, b".")
NEW = b"NEW".ljust(BLOCK, b"!")


def start_cvms(directory: Path, spec: ClusterSpec, reaper: ProcessReaper) -> list[ManagedProcess]:
    processes = []
    for node in spec.nodes:
        argv: list[str | Path] = [sys.executable, "-m", "cluster.cvm", "--dir", directory]
        argv += ["--node", str(node.node_id), "--release-timeout", str(RELEASE_TIMEOUT)]
        processes.append(reaper.spawn(argv, name=f"stargate-{node.node_id}"))
    for node, process in zip(spec.nodes, processes, strict=True):
        process.wait_for_port(node.cvm_address, PORT, timeout=START_TIMEOUT)
    return processes


async def logged_in(spec: ClusterSpec, node_id: int, target: str) -> TestInitiator:
    initiator = await TestInitiator.connect(PORT, spec.node(node_id).cvm_address)
    assert isinstance(await initiator.login(target), LoginDone)
    return initiator


async def write_block(initiator: TestInitiator, data: bytes) -> int | None:
    return (await initiator.scsi(write10(0, 1), write_data=data, timeout=10)).status


async def settled_state(http_url: str, timeout: float) -> str:
    """ "serving" or "gone" once vm-0's claim at that stargate has settled, else its state."""
    state = "unknown"
    with trio.move_on_after(timeout):
        while True:
            _, document = await http_json("GET", f"{http_url}/vdisks")
            entry = next(entry for entry in document if entry["id"] == "vm-0")
            if entry["serving"]:
                return "serving"
            if entry["state"] is None:
                return "gone"
            state = str(entry["state"])
            await trio.sleep(0.05)
    return state


# 6 s: as reported (node 3's acquisition outlives its time limit); 2 s: it is still within
# it, so node 3 starts over against node 2 and may take the vDisk from it, properly.
@pytest.mark.parametrize("pause", [6.0, 2.0])
async def test_a_resumed_claimer_neither_steals_nor_runs_writes_of_a_gone_connection(
    tmp_data_dir: Path, process_reaper: ProcessReaper, pause: float
) -> None:
    directory = tmp_data_dir / "cluster"
    spec = make_spec(directory, 3, stable_window=5.0)
    assert all(node.http_port == HTTP_PORT for node in spec.nodes)
    create_vm(directory, "vm", home_node=1, disks=1, size="1M")
    paths = ClusterPaths(directory)
    record_path = paths.ownership_file("vm-0")
    target = f"{TARGET_NAME_PREFIX}vm-0"
    cvms = start_cvms(directory, spec, process_reaper)
    try:
        first = await logged_in(spec, 1, target)  # node 1 owns the vDisk, epoch 1
        await clear_unit_attention(first)
        assert await write_block(first, b"\0" * BLOCK) == 0
        await first.close()
        assert read_record(record_path) == OwnershipRecord(1, 1)

        process_signal(cvms[0], signal.SIGSTOP)
        gone = await logged_in(spec, 3, target)  # node 3 asks node 1, which cannot answer
        assert gone.params.immediate_data
        for _ in range(2):  # the first one absorbs the power-on unit attention
            await gone.send(gone.command(write10(0, 1), write_data=OLD, immediate_data=OLD))
        assert await gone.receive_or_none(0.3) is None  # both parked at node 3
        process_signal(cvms[2], signal.SIGSTOP)
        await gone.close()  # the initiator gives up on node 3
        process_signal(cvms[0], signal.SIGCONT)

        new = await logged_in(spec, 2, target)
        await clear_unit_attention(new)  # waits, parked, for node 2's acquisition
        assert await write_block(new, NEW) == 0
        assert (await new.scsi(read10(0, 1), read_length=BLOCK)).data == NEW
        assert read_record(record_path) == OwnershipRecord(2, 2)

        await trio.sleep(pause)
        process_signal(cvms[2], signal.SIGCONT)
        # Node 3 either gives up (its acquisition outlived its time limit) or asks node 2
        # and takes the vDisk from it: never epoch 3 without asking node 2, never OLD.
        state = await settled_state(spec.node(3).http_url, timeout=4 * RELEASE_TIMEOUT)
        assert state in ("gone", "serving"), state
        record = read_record(record_path)
        assert record == (OwnershipRecord(3, 3) if state == "serving" else OwnershipRecord(2, 2))
        await trio.sleep(0.5)  # what node 3 would run, it has run by now
        with (paths.vdisks / "vm-0.img").open("rb") as image:
            assert image.read(BLOCK) == NEW
        await new.close()
        reader = await logged_in(spec, 3, target)
        await clear_unit_attention(reader)
        assert (await reader.scsi(read10(0, 1), read_length=BLOCK)).data == NEW
        await reader.close()
    finally:
        for process in cvms:  # stopped processes cannot handle the SIGTERM of the reaper
            if process.is_running():
                process_signal(process, signal.SIGCONT)


def process_signal(process: ManagedProcess, signum: signal.Signals) -> None:
    os.kill(process.pid, signum)  # by pid, the process this test started


async def test_a_resumed_owner_runs_nothing_that_waited_through_its_pause(
    tmp_data_dir: Path, process_reaper: ProcessReaper
) -> None:
    """Node 1 is stopped with a WRITE waiting for its Data-Out (R2T sent) and a plain WRITE
    (all immediate data: the inline fast path) in its socket; node 2 takes the vDisk over and
    writes NEW. Resumed, node 1 proves its epoch before anything: neither write lands."""
    directory = tmp_data_dir / "cluster"
    spec = make_spec(directory, 2, stable_window=5.0)
    create_vm(directory, "vm", home_node=1, disks=1, size="1M")
    paths = ClusterPaths(directory)
    target = f"{TARGET_NAME_PREFIX}vm-0"
    cvms = start_cvms(directory, spec, process_reaper)
    try:
        waiting = await logged_in(spec, 1, target)
        await clear_unit_attention(waiting)
        plain = await logged_in(spec, 1, target)
        await clear_unit_attention(plain)
        pending = waiting.command(write10(0, 1), write_data=OLD)  # no immediate data: R2T
        await waiting.send(pending)
        r2t = await waiting.receive()
        assert isinstance(r2t, R2T) and r2t.itt == pending.itt

        process_signal(cvms[0], signal.SIGSTOP)
        await plain.send(plain.command(write10(0, 1), write_data=OLD, immediate_data=OLD))
        taker = await logged_in(spec, 2, target)
        await clear_unit_attention(taker)  # node 2 takes over once node 1 does not answer
        assert await write_block(taker, NEW) == 0
        assert read_record(paths.ownership_file("vm-0")) == OwnershipRecord(2, 2)

        process_signal(cvms[0], signal.SIGCONT)
        await waiting.send_data_out(pending.itt, r2t.ttt, OLD, 0, BLOCK)
        # Its pages, first thing after the pause, do not claim it serves the vDisk.
        _, stats = await http_json("GET", f"{spec.node(1).http_url}/stats.json")
        assert stats["vdisks"]["vm-0"]["serving"] is False
        assert [await serving_entry(spec, node_id) for node_id in (1, 2)] == [None, 2]
        assert {row["id"]: row["serving_node"] for row in await vdisk_table(spec, paths)} == {
            "vm-0": 2
        }
        for initiator in (waiting, plain):  # BUSY, or the connection dropped: never GOOD
            status = await status_or_drop(initiator)
            assert status in (None, ScsiStatus.BUSY), status
        with (paths.vdisks / "vm-0.img").open("rb") as image:
            assert image.read(BLOCK) == NEW
        assert (await taker.scsi(read10(0, 1), read_length=BLOCK)).data == NEW
    finally:
        for process in cvms:
            if process.is_running():
                process_signal(process, signal.SIGCONT)


async def serving_entry(spec: ClusterSpec, node_id: int) -> int | None:
    """The epoch at which that stargate's /vdisks page says it serves vm-0, else None."""
    _, document = await http_json("GET", f"{spec.node(node_id).http_url}/vdisks")
    entry = next(entry for entry in document if entry["id"] == "vm-0")
    assert entry["serving"] is (entry["serving_epoch"] is not None)
    return entry["serving_epoch"]


async def status_or_drop(initiator: TestInitiator) -> int | None:
    """The status of the next SCSI Response, or None if the target drops the connection."""
    with trio.fail_after(10):
        while True:
            try:
                pdu = await initiator.receive(10)
            except (EOFError, trio.BrokenResourceError):
                return None
            if isinstance(pdu, ScsiResponse):
                return pdu.status


async def test_a_command_parked_past_its_bound_is_answered_busy_not_run(
    tmp_data_dir: Path, process_reaper: ProcessReaper
) -> None:
    """Node 2 parks a WRITE while it asks node 1 (stopped) to release, and is stopped itself
    for longer than the bound (release timeout + 2 s). Resumed, it wins the vDisk, but the
    WRITE that waited that long is answered BUSY, on its live connection, and not run; the
    initiator's retry then runs."""
    directory = tmp_data_dir / "cluster"
    spec = make_spec(directory, 2, stable_window=5.0)
    create_vm(directory, "vm", home_node=1, disks=1, size="1M")
    paths = ClusterPaths(directory)
    target = f"{TARGET_NAME_PREFIX}vm-0"
    cvms = start_cvms(directory, spec, process_reaper)
    try:
        first = await logged_in(spec, 1, target)
        await clear_unit_attention(first)
        process_signal(cvms[0], signal.SIGSTOP)
        late = await logged_in(spec, 2, target)
        command = late.command(write10(0, 1), write_data=OLD, immediate_data=OLD)
        await late.send(command)
        assert await late.receive_or_none(0.3) is None  # parked at node 2
        process_signal(cvms[1], signal.SIGSTOP)
        await trio.sleep(RELEASE_TIMEOUT + 2.5)
        process_signal(cvms[1], signal.SIGCONT)
        status = await status_or_drop(late)
        assert status == ScsiStatus.BUSY, status
        with (paths.vdisks / "vm-0.img").open("rb") as image:
            assert image.read(BLOCK) == b"\0" * BLOCK
        # (The watcher may answer it before the acquisition completes, or after.)
        with trio.move_on_after(5):
            while read_record(paths.ownership_file("vm-0")) != OwnershipRecord(2, 2):
                await trio.sleep(0.05)
        assert read_record(paths.ownership_file("vm-0")) == OwnershipRecord(2, 2)
        result = await late.scsi(write10(0, 1), write_data=NEW)  # the retry: runs at once
        if result.status == ScsiStatus.CHECK_CONDITION:  # the power-on unit attention
            result = await late.scsi(write10(0, 1), write_data=NEW)
        assert result.status == 0
        with (paths.vdisks / "vm-0.img").open("rb") as image:
            assert image.read(BLOCK) == NEW
    finally:
        for process in cvms:
            if process.is_running():
                process_signal(process, signal.SIGCONT)
