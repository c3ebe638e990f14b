"""Persistent reservations outlive the stargate process that granted them (SPC-4 5.13:
registrations and the reservation survive power loss when APTPL is set; stargate keeps them
in DIR/<id>.pr.json always, as a cluster's shared state must).

A real `stargate target` process: register and reserve (Write Exclusive) through iSCSI,
stop the process with SIGTERM, start a new one on the same data directory, and ask again
with PERSISTENT RESERVE IN; another initiator still conflicts on a write. Then the same
across a 2-node cluster: the vDisk moves to the other stargate at a login there, and its
reservation state comes along.
"""

from __future__ import annotations

import signal
import struct
import sys
from pathlib import Path

import trio

from iscsicore.login import LoginDone
from iscsicore.scsi.opcodes import ScsiStatus
from tests.cluster.conftest import RunningCluster, cluster_dir, stargate_cluster
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.stargate.client import TestInitiator, clear_unit_attention, write10
from topology.naming import target_name_for

HOST = "127.0.0.1"
VDISK = "prd"
HOLDER_ISID = 0x400000AB0001  # fixed: the same I_T nexus after the restart
OTHER_ISID = 0x400000AB0002
KEY = 0x0123456789ABCDEF
WRITE_EXCLUSIVE = 0x01
PR_IN, PR_OUT = 0x5E, 0x5F
READ_KEYS, READ_RESERVATION = 0x00, 0x01
REGISTER, RESERVE = 0x00, 0x01


def pr_out(action: int, reservation_type: int = 0) -> bytes:
    return struct.pack(">BBBxxIB", PR_OUT, action, reservation_type, 24, 0)


def pr_out_parameters(key: int, service_action_key: int) -> bytes:
    return struct.pack(">QQ8x", key, service_action_key)


def pr_in(action: int, allocation_length: int = 256) -> bytes:
    return struct.pack(">BB5xHB", PR_IN, action, allocation_length, 0)


def start_target(reaper: ProcessReaper, data_dir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--data-dir", str(data_dir), "--vdisk", f"{VDISK}:16M", "--log-level", "INFO"]
    process = reaper.spawn(argv, name="stargate")
    process.wait_for_port(HOST, port, timeout=30)
    return process, port


async def session(port: int, isid: int, host: str = HOST, vdisk: str = VDISK) -> TestInitiator:
    initiator = await TestInitiator.connect(port, host)
    outcome = await initiator.login(target_name_for(vdisk), isid=isid)
    assert isinstance(outcome, LoginDone)
    await clear_unit_attention(initiator)
    return initiator


async def register_and_reserve(port: int, host: str = HOST, vdisk: str = VDISK) -> None:
    holder = await session(port, HOLDER_ISID, host, vdisk)
    for cdb, parameters in (
        (pr_out(REGISTER), pr_out_parameters(0, KEY)),
        (pr_out(RESERVE, WRITE_EXCLUSIVE), pr_out_parameters(KEY, 0)),
    ):
        result = await holder.scsi(cdb, write_data=parameters)
        assert result.status == ScsiStatus.GOOD, result.sense.hex()
    await holder.close()


async def reservation_state(
    port: int, host: str = HOST, vdisk: str = VDISK
) -> tuple[list[int], int | None, int | None, int]:
    """(registered keys, reservation key, type, status of a write from another nexus)."""
    holder = await session(port, HOLDER_ISID, host, vdisk)
    keys = await holder.scsi(pr_in(READ_KEYS), read_length=256)
    reservation = await holder.scsi(pr_in(READ_RESERVATION), read_length=256)
    await holder.close()
    other = await session(port, OTHER_ISID, host, vdisk)
    write = await other.scsi(write10(0, 1), write_data=bytes(512))
    await other.close()
    assert keys.status == reservation.status == ScsiStatus.GOOD
    key_bytes = struct.unpack_from(">I", keys.data, 4)[0]
    registered = [struct.unpack_from(">Q", keys.data, 8 + 8 * i)[0] for i in range(key_bytes // 8)]
    held = struct.unpack_from(">I", reservation.data, 4)[0]
    if not held:
        return registered, None, None, int(write.status or 0)
    return (
        registered,
        struct.unpack_from(">Q", reservation.data, 8)[0],
        reservation.data[21] & 0x0F,
        int(write.status or 0),
    )


def test_registrations_and_the_reservation_survive_a_restart(
    process_reaper: ProcessReaper, tmp_data_dir: Path
) -> None:
    process, port = start_target(process_reaper, tmp_data_dir)
    trio.run(register_and_reserve, port)
    before = trio.run(reservation_state, port)
    assert before == ([KEY], KEY, WRITE_EXCLUSIVE, ScsiStatus.RESERVATION_CONFLICT)

    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=30) == 0
    _restarted, new_port = start_target(process_reaper, tmp_data_dir)

    after = trio.run(reservation_state, new_port)
    assert after == before


def test_pr_cdb_helpers_match_the_spc4_layout() -> None:
    assert pr_out(RESERVE, WRITE_EXCLUSIVE)[:3] == bytes([PR_OUT, RESERVE, WRITE_EXCLUSIVE])
    assert len(pr_out(REGISTER)) == 10 and struct.unpack_from(">I", pr_out(REGISTER), 5)[0] == 24
    assert (
        len(pr_in(READ_KEYS)) == 10 and struct.unpack_from(">H", pr_in(READ_KEYS, 300), 7)[0] == 300
    )


def test_registrations_and_the_reservation_move_with_the_vdisk_to_another_stargate(
    stargate_cluster: RunningCluster,
) -> None:
    cluster = stargate_cluster
    cluster.cli("vm", "create", "pr", "--node", "1", "--disks", "1", "--size", "16M")
    first, second = (cluster.spec.node(node_id) for node_id in (1, 2))
    trio.run(register_and_reserve, first.cvm_advertised_port, first.cvm_advertised_address, "pr-0")
    on_first = trio.run(
        reservation_state, first.cvm_advertised_port, first.cvm_advertised_address, "pr-0"
    )
    assert on_first == ([KEY], KEY, WRITE_EXCLUSIVE, ScsiStatus.RESERVATION_CONFLICT)
    # A login at stargate 2 moves the vDisk there.
    on_second = trio.run(
        reservation_state, second.cvm_advertised_port, second.cvm_advertised_address, "pr-0"
    )
    assert on_second == on_first
    listing = {row["id"]: row for row in cluster.cli_json("vdisk", "list", "--json")}
    assert listing["pr-0"]["serving_node"] == 2


__all__ = ["cluster_dir", "stargate_cluster"]  # fixtures, imported for pytest
