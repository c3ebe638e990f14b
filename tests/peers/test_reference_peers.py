"""The peer harness proven against tgtd, the reference target.

Nothing here touches our own target: these tests show that the tools and parsers the other
suites rely on (libiscsi's tools, qemu-img, qemu-io, iscsi-test-cu, fio's libiscsi engine,
tgtd with CHAP and redirects) see what a real target does. When one of these fails, suspect
the harness or the machine, not stargate.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.helpers.net import free_port as pick_free_port
from tests.helpers.net import tcp_port_answers
from tests.helpers.procs import ProcessError, ProcessReaper
from tests.peers import tgtd as tgtd_module
from tests.peers import tools
from tests.peers.capture import IscsiCapture
from tests.peers.fio import (
    FioError,
    deb_src_stanzas,
    ensure_fio_libiscsi,
    fio_filename,
    job_errors,
    run_fio,
)
from tests.peers.tgtd import ChapAccount, MiB, RedirectTo, TgtdError, TgtdTarget

TgtdFactory = Callable[..., TgtdTarget]


@pytest.fixture
def tgtd(tgtd_factory: TgtdFactory) -> TgtdTarget:
    return tgtd_factory(lun_sizes=[24 * MiB])


# --- the process helpers themselves ----------------------------------------------------------


def test_wait_for_port_reports_a_process_that_died_with_its_log(
    process_reaper: ProcessReaper, free_port: int
) -> None:
    process = process_reaper.spawn(["sh", "-c", "echo cannot start: no config >&2; exit 3"])
    with pytest.raises(ProcessError, match="cannot start: no config"):
        process.wait_for_port("127.0.0.1", free_port, timeout=5)


def test_reaper_stops_a_process_that_ignores_sigterm(
    process_reaper: ProcessReaper, loopback_address: str, free_port: int
) -> None:
    listener = (
        "import signal, socket, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"server = socket.create_server(({loopback_address!r}, {free_port}))\n"
        "time.sleep(60)\n"
    )
    process = process_reaper.spawn([sys.executable, "-c", listener], name="stubborn")
    process.wait_for_port(loopback_address, free_port, timeout=10)
    assert process.stop(grace=0.2) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


# --- the tgtd fixture itself ----------------------------------------------------------------


def _processes_with_argument(argument: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_tgtd_on_a_taken_port_fails_and_leaves_nothing_running(
    free_port: int, tmp_data_dir: Path
) -> None:
    """tgtd itself keeps running when its port is taken, while the port's owner answers."""
    require_tool("tgtd")
    with (
        socket.create_server(("127.0.0.1", free_port)),
        pytest.raises(TgtdError, match="is taken"),
        TgtdTarget(port=free_port, data_dir=tmp_data_dir),
    ):
        pass
    assert _processes_with_argument(f"portal=127.0.0.1:{free_port}") == []


def test_tgtd_picks_another_port_when_the_free_one_was_taken_meanwhile(
    free_port: int, tgtd_factory: TgtdFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", free_port)):
        ports = iter([free_port, pick_free_port()])
        monkeypatch.setattr(tgtd_module, "free_port", lambda host: next(ports))
        target = tgtd_factory()
        assert target.port != free_port
        assert tools.iscsi_inq(target.url()).device_type == "DIRECT_ACCESS"


def test_tgtd_retries_when_its_control_socket_number_is_in_use(
    tgtd: TgtdTarget, tgtd_factory: TgtdFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = iter([tgtd.control_socket, 31_000 + os.getpid() % 1000])
    monkeypatch.setattr(TgtdTarget, "_unused_control_socket", staticmethod(lambda: next(numbers)))
    second = tgtd_factory()
    assert second.control_socket not in (0, tgtd.control_socket)
    assert tools.iscsi_inq(second.url()).device_type == "DIRECT_ACCESS"
    assert tools.iscsi_inq(tgtd.url()).device_type == "DIRECT_ACCESS"  # the first one untouched
    second.stop()
    assert (Path("/var/run/tgtd") / f"socket.{tgtd.control_socket}").exists()


def test_tgtd_restart_after_a_crash_keeps_port_and_data(tgtd: TgtdTarget) -> None:
    require_tool("qemu-io")
    tools.qemu_io(tgtd.url(), ["write -P 0x3c 512k 64k"])
    port, old_pid = tgtd.port, tgtd.process.pid if tgtd.process else 0
    tgtd.crash()
    assert not tcp_port_answers(tgtd.host, port)
    tgtd.restart()
    assert tgtd.port == port
    assert tgtd.process is not None and tgtd.process.pid != old_pid
    tools.qemu_io(tgtd.url(), ["read -P 0x3c 512k 64k", "read -P 0 0 64k"])
    (listed,) = tools.iscsi_ls(tgtd.portal_url())
    assert listed.portal == f"{tgtd.portal},1"  # only the real portal is left


def test_frozen_tgtd_accepts_but_never_answers_and_still_stops(tgtd: TgtdTarget) -> None:
    require_tool("iscsi-inq")
    tgtd.freeze()
    assert tgtd.process is not None
    assert Path(f"/proc/{tgtd.process.pid}/stat").read_text().split()[2] == "T"
    with pytest.raises(tools.PeerToolError, match="timed out"):
        tools.iscsi_inq(tgtd.url(), timeout=2)
    tgtd.freeze(False)
    assert tools.iscsi_inq(tgtd.url()).device_type == "DIRECT_ACCESS"
    tgtd.freeze()
    started = time.monotonic()
    tgtd.stop()
    assert time.monotonic() - started < 5


# --- libiscsi tools against tgtd -------------------------------------------------------------


def test_iscsi_ls_lists_the_target_and_its_luns(tgtd: TgtdTarget) -> None:
    require_tool("iscsi-ls")
    (listed,) = tools.iscsi_ls(tgtd.portal_url())
    assert listed.name == tgtd.iqn
    assert listed.portal == f"{tgtd.portal},1"
    assert [(lun.lun, lun.device_type) for lun in listed.luns] == [
        (0, "STORAGE_ARRAY_CONTROLLER"),
        (1, "DIRECT_ACCESS"),
    ]


def test_iscsi_inq_sees_a_disk(tgtd: TgtdTarget) -> None:
    require_tool("iscsi-inq")
    inquiry = tools.iscsi_inq(tgtd.url())
    assert inquiry.device_type == "DIRECT_ACCESS"
    assert inquiry.vendor == "IET"
    assert "04c0 SBC-3" in inquiry.all("Version Descriptor")
    serial = tools.iscsi_inq(tgtd.url(), vpd_page=0x80)
    assert "Unit Serial Number" in serial.fields


def test_iscsi_readcapacity16_reports_the_lun_size(tgtd_factory: TgtdFactory) -> None:
    require_tool("iscsi-readcapacity16")
    size = 40 * MiB + 4096
    capacity = tools.iscsi_readcapacity16(tgtd_factory(lun_sizes=[size]).url())
    assert capacity.block_size == 512
    assert capacity.total_size == size
    assert capacity.last_lba == size // 512 - 1


def test_chap_protected_target_needs_the_secret(tgtd_factory: TgtdFactory) -> None:
    require_tool("iscsi-inq")
    target = tgtd_factory(chap=ChapAccount("initiator-user", "secret-123456"))
    assert tools.iscsi_inq(target.url()).device_type == "DIRECT_ACCESS"
    with pytest.raises(tools.PeerToolError, match="Authentication failure"):
        tools.iscsi_inq(target.url(with_credentials=False))


def test_libiscsi_follows_a_temporary_redirect(tgtd_factory: TgtdFactory) -> None:
    """The front tgtd answers login with 0x0101 and the back one's address (one tgtd cannot
    redirect to 127.0.0.1 itself: see LOOPBACK_REDIRECT_ADDRESS). The sizes tell them apart."""
    require_tool("iscsi-readcapacity16")
    back = tgtd_factory(iqn="iqn.2026-11.test.tgtd:moved", lun_sizes=[24 * MiB])
    front = tgtd_factory(iqn=back.iqn, lun_sizes=[8 * MiB], redirect=RedirectTo(port=back.port))
    assert tools.iscsi_readcapacity16(front.url()).total_size == 24 * MiB
    assert tools.iscsi_inq(front.url()).device_type == "DIRECT_ACCESS"


def test_iscsi_url_matches_what_tgtd_fixture_builds(tgtd_factory: TgtdFactory) -> None:
    target = tgtd_factory(chap=ChapAccount("user", "secret-123456"))
    url = tools.iscsi_url(
        target.host, target.port, target.iqn, 1, user="user", password="secret-123456"
    )
    assert url == target.url()
    assert tools.iscsi_url("::1", 3260) == "iscsi://[::1]:3260"


# --- QEMU against tgtd -----------------------------------------------------------------------


def test_qemu_img_convert_round_trip_is_byte_identical(
    tgtd: TgtdTarget, tmp_data_dir: Path
) -> None:
    require_tool("qemu-img")
    original = tmp_data_dir / "random.img"
    original.write_bytes(os.urandom(24 * MiB))
    copied_back = tmp_data_dir / "back.img"
    tools.qemu_img_convert(original, tgtd.url())
    tools.qemu_img_convert(tgtd.url(), copied_back)
    assert copied_back.read_bytes() == original.read_bytes()
    assert tgtd.lun_paths[0].read_bytes() == original.read_bytes()


def test_qemu_io_writes_and_verifies_patterns(tgtd: TgtdTarget) -> None:
    require_tool("qemu-io")
    tools.qemu_io(
        tgtd.url(),
        [
            "write -P 0xa5 0 64k",
            "write -P 0x5a 1M 128k",
            "read -P 0xa5 0 64k",
            "read -P 0x5a 1M 128k",
        ],
    )
    data = tgtd.lun_paths[0].read_bytes()
    assert data[: 64 * 1024] == b"\xa5" * (64 * 1024)
    assert data[MiB : MiB + 128 * 1024] == b"\x5a" * (128 * 1024)


def test_qemu_io_wrapper_reports_a_pattern_mismatch(tgtd: TgtdTarget) -> None:
    require_tool("qemu-io")
    with pytest.raises(tools.PeerToolError, match="Pattern verification failed"):
        tools.qemu_io(tgtd.url(), ["read -P 0x11 0 4k"])


def test_qemu_img_bench_reports_a_rate(tgtd: TgtdTarget) -> None:
    require_tool("qemu-img")
    result = tools.qemu_img_bench(tgtd.url(), count=2000, depth=8, write=True)
    assert result.requests == 2000
    assert 0 < result.seconds < 60
    assert result.iops > 100
    assert tgtd.lun_paths[0].stat().st_blocks > 0  # the writes reached tgtd's backing file


def test_tshark_decodes_a_libiscsi_conversation(tgtd: TgtdTarget, tmp_path: Path) -> None:
    require_tool("tshark")
    require_tool("dumpcap")
    require_tool("iscsi-inq")
    with IscsiCapture(ports=[tgtd.port], directory=tmp_path) as capture:
        tools.iscsi_inq(tgtd.url())
    summaries = capture.summaries()
    assert summaries[0] == "Login Command"
    assert summaries[1].startswith("Login Response (Success)")
    assert any(summary.startswith("SCSI: Inquiry") for summary in summaries)
    assert summaries[-1] == "Logout Response"
    assert {pdu.opcodes[0] for pdu in capture.pdus()} >= {0x03, 0x23, 0x01, 0x25, 0x06, 0x26}
    assert capture.malformed() == []


def test_tshark_flags_a_malformed_pdu(free_port: int, tmp_path: Path) -> None:
    """Proof that `malformed()` can fail: a SCSI Command whose AHS is garbage."""
    require_tool("tshark")
    require_tool("dumpcap")
    bad_ahs_command = bytes([0x01, 0x80, 0, 0, 3, 0, 0, 0]) + bytes(40) + b"\xff" * 12
    with (
        socket.create_server(("127.0.0.1", free_port)) as server,
        IscsiCapture(ports=[free_port], directory=tmp_path) as capture,
        socket.create_connection(("127.0.0.1", free_port), timeout=5) as client,
    ):
        accepted, _ = server.accept()
        with accepted:
            client.sendall(bad_ahs_command)
            time.sleep(0.05)
    assert len(capture.malformed()) == 1


# --- iscsi-test-cu ---------------------------------------------------------------------------


def test_iscsi_test_cu_outcomes_are_counted_per_test(tgtd: TgtdTarget) -> None:
    """tgtd's known results: a skip that CUnit calls a pass, and a known failure."""
    require_tool("iscsi-test-cu")
    summary = tools.iscsi_test_cu(
        tgtd.url(), ["SCSI.Inquiry", "SCSI.Read16", "SCSI.GetLBAStatus.BeyondEol"]
    )
    assert summary.consistent, summary.output
    assert summary.outcomes["Inquiry.Standard"] == "passed"
    assert summary.outcomes["Inquiry.BlockLimits"] == "skipped"  # fully provisioned LU
    assert summary.outcomes["GetLBAStatus.BeyondEol"] == "failed"
    assert summary.exit_code == 1
    assert summary.names("failed") == ["GetLBAStatus.BeyondEol"]
    assert summary.total == 7 + 5 + 1


def test_parse_test_cu_output_counts_skips_inside_failures() -> None:
    output = """
Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
  Test: Miscompare ...    [SKIPPED] something
    [FAILED] MODESENSE6 successful but should have failed
FAILED
    1. test_x.c:70  - CU_ASSERT_EQUAL(_r,0)
Suite: Read16
  Test: Simple ...passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      2      2    n/a      0        0
               tests      3      3      2      1        0
"""
    summary = tools.parse_test_cu_output(output, exit_code=1)
    assert summary.outcomes == {
        "CompareAndWrite.Simple": "skipped",
        "CompareAndWrite.Miscompare": "failed",
        "Read16.Simple": "passed",
    }
    assert summary.consistent
    assert (summary.passed, summary.failed, summary.skipped) == (1, 1, 1)


# --- fio's libiscsi engine -------------------------------------------------------------------


def test_fio_filename_escapes_every_colon() -> None:
    assert fio_filename("iscsi://127.0.0.1:3260/iqn.2010-06.com.nutanix:vmdisk-1/0") == (
        "iscsi\\://127.0.0.1\\:3260/iqn.2010-06.com.nutanix\\:vmdisk-1/0"
    )


def test_deb_src_entry_mirrors_the_debian_sources(tmp_path: Path) -> None:
    debian_sources = tmp_path / "debian.sources"
    debian_sources.write_text(
        "Types: deb\n# a snapshot comment\nURIs: http://deb.debian.org/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    stanzas = deb_src_stanzas(debian_sources).strip().split("\n\n")
    assert stanzas[0].splitlines() == [
        "Types: deb-src",
        "URIs: http://deb.debian.org/debian",
        "Suites: bookworm bookworm-updates",
        "Components: main",
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
    ]
    assert "URIs: http://deb.debian.org/debian-security" in stanzas[1]
    assert "Types: deb-src" in deb_src_stanzas(tmp_path / "missing.sources")


@pytest.fixture(scope="session")
def fio_libiscsi() -> Path:
    """fio with the libiscsi engine; the first use may build it (about 20 s plus apt)."""
    for tool in ("apt-get", "dpkg-query"):
        require_tool(tool, why="to build fio with the libiscsi engine")
    return ensure_fio_libiscsi()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fio_libiscsi_verify_workload(fio_libiscsi: Path, tgtd: TgtdTarget) -> None:
    report = run_fio(
        tgtd.url(),
        rw="randwrite",
        block_size="4k",
        iodepth=16,
        size="8m",
        verify="crc32c",
        fio_binary=fio_libiscsi,
    )
    assert job_errors(report) == [0]
    (job,) = report["jobs"]
    assert job["write"]["io_bytes"] == 8 * MiB
    assert job["read"]["io_bytes"] == 8 * MiB  # the verify pass read everything back


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fio_verification_catches_corruption(fio_libiscsi: Path, tgtd: TgtdTarget) -> None:
    """Proof that the verify workload checks data: corrupt a block behind fio's back."""
    require_tool("qemu-io")

    def write_and_verify(options: dict[str, str | int] | None = None) -> None:
        run_fio(
            tgtd.url(),
            rw="write",
            block_size="64k",
            iodepth=4,
            size="4m",
            verify="md5",
            options=options,
            fio_binary=fio_libiscsi,
        )

    write_and_verify()
    tools.qemu_io(tgtd.url(), ["write -P 0x00 1M 64k"])
    with pytest.raises(FioError) as failure:
        write_and_verify({"verify_only": 1})
    assert "bad magic header" in str(failure.value)
