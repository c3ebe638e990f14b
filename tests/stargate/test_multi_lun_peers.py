"""A `stargate target` process serving a 3-LUN target (``--vdisk A --lun B --lun C``) and
one single-LUN target, driven by real initiators: iscsi-ls, iscsi-inq,
iscsi-readcapacity16, qemu-img and a part of libiscsi's conformance suite on each LUN (the
whole suite on LUN 1: tests/conformance/test_libiscsi_suite.py, slow)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance.test_libiscsi_suite import QUIET_NOP, report, run_suite
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.peers.tools import (
    PeerToolError,
    iscsi_inq,
    iscsi_ls,
    iscsi_readcapacity16,
    iscsi_url,
    qemu_img_convert,
)
from topology.naming import target_name_for

HOST = "127.0.0.1"
MiB = 1 << 20
GROUP = "vg-0"  # the 3-LUN target's name and LUN 0
LUN_SIZES = {0: 32 * MiB, 1: 48 * MiB, 2: 16 * MiB}
LUN_IDS = {0: "vg-0", 1: "vg-1", 2: "vg-2"}
SINGLE = "solo"
# Every family that touches per-LUN state (unit attentions, SPC-2 and persistent
# reservations, LOGICAL UNIT RESET, identity) plus the plain read and write paths.
SUITE_PART = (
    "ALL.Inquiry,ALL.TestUnitReady,ALL.ReadCapacity16,ALL.Read10,ALL.Write10,"
    "ALL.Reserve6,ALL.ProutRegister,ALL.ProutReserve,ALL.PrinReadKeys,ALL.iSCSITMF,ALL.iSCSIResiduals"
)


@dataclass(frozen=True)
class MultiLunTarget:
    process: ManagedProcess
    port: int

    def url(self, lun: int, target: str = GROUP) -> str:
        return iscsi_url(HOST, self.port, target_name_for(target), lun)


@pytest.fixture
def multi_lun_target(
    require_tool: Callable[..., str], process_reaper: ProcessReaper, tmp_data_dir: Path
) -> Iterator[MultiLunTarget]:
    require_tool("iscsi-ls")
    port = free_port()
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--data-dir", str(tmp_data_dir), "--log-level", "INFO", *QUIET_NOP]
    argv += ["--vdisk", f"{LUN_IDS[0]}:{LUN_SIZES[0]}"]
    for number in (1, 2):
        argv += ["--lun", f"{LUN_IDS[number]}:{LUN_SIZES[number]}"]
    argv += ["--vdisk", f"{SINGLE}:8M"]
    process = process_reaper.spawn(argv, name="stargate")
    process.wait_for_port(HOST, port, timeout=30)
    yield MultiLunTarget(process, port)
    assert process.is_running(), "a client crashed the target"


def test_iscsi_ls_shows_every_lun_of_every_target(multi_lun_target: MultiLunTarget) -> None:
    listed = {entry.name: entry for entry in iscsi_ls(iscsi_url(HOST, multi_lun_target.port))}
    assert set(listed) == {target_name_for(GROUP), target_name_for(SINGLE)}
    luns = listed[target_name_for(GROUP)].luns
    assert [lun.lun for lun in luns] == [0, 1, 2]
    assert {lun.device_type for lun in luns} == {"DIRECT_ACCESS"}
    for lun in luns:  # iscsi-ls counts from the last LBA: 48M shows as 47M
        megabytes = LUN_SIZES[lun.lun] // MiB
        assert lun.size_text in (f"{megabytes}M", f"{megabytes - 1}M")
    assert [lun.lun for lun in listed[target_name_for(SINGLE)].luns] == [0]


def test_iscsi_inq_on_lun_1_and_on_an_absent_lun(
    require_tool: Callable[..., str], multi_lun_target: MultiLunTarget
) -> None:
    require_tool("iscsi-inq")
    inquiry = iscsi_inq(multi_lun_target.url(1))
    assert inquiry.fields["Peripheral Qualifier"] == "CONNECTED"
    assert inquiry.device_type == "DIRECT_ACCESS"
    # Each LUN is its own vDisk: its own unit serial number and size.
    serials = {
        number: iscsi_inq(multi_lun_target.url(number), vpd_page=0x80).output
        for number in LUN_SIZES
    }
    assert len(set(serials.values())) == 3, serials
    for number, size in LUN_SIZES.items():
        assert iscsi_readcapacity16(multi_lun_target.url(number)).total_size == size
    # libiscsi connects with TEST UNIT READY, which an absent LUN answers LOGICAL UNIT NOT
    # SUPPORTED: iscsi-inq gives up there. (Its INQUIRY, qualifier 3, is checked with raw
    # PDUs in test_multi_lun.py.)
    with pytest.raises(PeerToolError, match="LOGICAL_UNIT_NOT_SUPPORTED"):
        iscsi_inq(multi_lun_target.url(7))


def test_qemu_img_round_trip_to_lun_2_is_byte_identical(
    require_tool: Callable[..., str], multi_lun_target: MultiLunTarget, tmp_path: Path
) -> None:
    require_tool("qemu-img")
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(LUN_SIZES[2]))
    back = tmp_path / "back.raw"
    qemu_img_convert(source, multi_lun_target.url(2))
    qemu_img_convert(multi_lun_target.url(2), back)
    assert back.read_bytes() == source.read_bytes()
    # Nothing of it landed on the other LUNs (fresh sparse vDisks read as zeros).
    for number in (0, 1):
        other = tmp_path / f"lun{number}.raw"
        qemu_img_convert(multi_lun_target.url(number), other)
        assert other.read_bytes() == bytes(LUN_SIZES[number])


def test_conformance_part_on_luns_1_and_2_passes_what_lun_0_passes(
    require_tool: Callable[..., str], multi_lun_target: MultiLunTarget, tmp_path: Path
) -> None:
    require_tool("iscsi-test-cu")
    outcomes = {}
    for number in (0, 1, 2):
        summary = run_suite([multi_lun_target.url(number)], SUITE_PART, timeout=600)
        counts = report(summary, f"lun{number}", tmp_path)
        assert summary.consistent and summary.failed == 0, counts
        outcomes[number] = summary.outcomes
    assert outcomes[0] and len(outcomes[0]) >= 40
    assert outcomes[1] == outcomes[0]
    assert outcomes[2] == outcomes[0]
