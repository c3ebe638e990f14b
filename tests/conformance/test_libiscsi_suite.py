"""libiscsi's conformance suite (iscsi-test-cu) against a `stargate target` process.

Four runs, each against a fresh target: every test with data loss and SANITIZE allowed
(`--dataloss -S -t ALL`), on LUN 0 and on LUN 1 of a three-LUN target, the multipath
tests with two sessions to one vDisk (the URL twice), and the ReadOnly tests against a
`--read-only` target. The counts and the names of the skipped and failed tests are
written next to the test's tmp dir and printed.

CUnit counts a skipped test as passed; `tests.peers.tools.parse_test_cu_output` counts a
test that printed ``[SKIPPED]`` as skipped. tgtd on this kind of machine: 160 passed,
62 skipped, 8 failed (/work/shared/reference/tgtd-baseline.md).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.peers.tools import (
    ConformanceSummary,
    PeerToolError,
    iscsi_url,
    parse_test_cu_output,
    run_tool,
)
from topology.naming import target_name_for

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
TGTD_PASSED = 160  # the reference target's count on this machine
VDISK = "cu"
VDISK_SIZE = "256M"
# Sanitize.Reset waits a minute between TEST UNIT READYs without answering NOP-Ins: the
# target must not drop it for that, or libiscsi reconnects and sees a fresh unit attention
# on every try.
QUIET_NOP = ("--nop-interval", "600", "--nop-timeout", "600")
# A test's teardown may log right after its status on the same line ("passed    [FAILED]
# PRIN ..." after Reserve6.LUNReset's own unit attention): put the status on its own line.
_GLUED_STATUS = re.compile(r"^(passed|FAILED) {2,}(?=\S)", re.MULTILINE)


@dataclass(frozen=True)
class Target:
    process: ManagedProcess
    url: str


TargetFactory = Callable[..., Target]


@pytest.fixture
def start_target(process_reaper: ProcessReaper, tmp_data_dir: Path) -> Iterator[TargetFactory]:
    def start(*extra: str) -> Target:
        port = free_port()
        argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
        argv += ["--data-dir", str(tmp_data_dir), "--vdisk", f"{VDISK}:{VDISK_SIZE}"]
        argv += ["--log-level", "INFO", *QUIET_NOP, *extra]
        process = process_reaper.spawn(argv, name="stargate")
        process.wait_for_port(HOST, port, timeout=30)
        return Target(process, iscsi_url(HOST, port, target_name_for(VDISK), 0))

    yield start


def run_suite(urls: list[str], tests: str, *extra_args: str, timeout: float) -> ConformanceSummary:
    argv = ["iscsi-test-cu", "--dataloss", "-v", *extra_args, "-t", tests, *urls]
    completed = run_tool(argv, timeout=timeout, check=False)
    output = _GLUED_STATUS.sub(r"\1\n    ", completed.stdout)
    summary = parse_test_cu_output(output, completed.returncode)
    if completed.returncode not in (0, 1) or summary.cunit_ran is None:
        raise PeerToolError(
            f"{' '.join(argv)} exited with {completed.returncode}\n"
            f"stdout: {completed.stdout[-4000:]}\nstderr: {completed.stderr.strip()}"
        )
    return summary


def report(summary: ConformanceSummary, label: str, directory: Path) -> str:
    text = (
        f"iscsi-test-cu {label}: {summary.total} tests parsed (CUnit ran {summary.cunit_ran}, "
        f"failed {summary.cunit_failed}), {summary.passed} passed, "
        f"{summary.failed} failed, {summary.skipped} skipped\n"
        f"failed: {', '.join(summary.names('failed')) or '-'}\n"
        f"skipped: {', '.join(summary.names('skipped')) or '-'}\n"
    )
    (directory / f"iscsi-test-cu-{label}-counts.txt").write_text(text)
    (directory / f"iscsi-test-cu-{label}-output.txt").write_text(summary.output)
    print(text)
    return text


def test_the_whole_suite_with_sanitize_passes_more_than_tgtd_and_fails_nothing(
    require_tool: Callable[..., str], start_target: TargetFactory, tmp_path: Path
) -> None:
    require_tool("iscsi-test-cu")
    target = start_target()
    summary = run_suite([target.url], "ALL", "-S", timeout=1800)
    counts = report(summary, "all", tmp_path)
    assert target.process.is_running(), "the suite crashed the target"
    assert summary.consistent, counts  # every test parsed, as many failures as CUnit says
    assert summary.failed == 0, counts
    assert summary.passed > TGTD_PASSED, counts


def test_the_whole_suite_on_lun_1_of_a_three_lun_target_passes_as_lun_0_does(
    require_tool: Callable[..., str], start_target: TargetFactory, tmp_path: Path
) -> None:
    """The same run as the first test's, on LUN 1 (a vDisk of its own) of a target with
    three LUNs: LUN 0 and LUN 2 beside it must not change a single outcome."""
    require_tool("iscsi-test-cu")
    target = start_target("--lun", f"{VDISK}-1:{VDISK_SIZE}", "--lun", f"{VDISK}-2:64M")
    lun1 = target.url.removesuffix("/0") + "/1"
    summary = run_suite([lun1], "ALL", "-S", timeout=1800)
    counts = report(summary, "all-lun1", tmp_path)
    assert target.process.is_running(), "the suite crashed the target"
    assert summary.consistent, counts
    assert summary.failed == 0, counts
    assert summary.passed > TGTD_PASSED, counts


def test_multipath_with_two_sessions_to_one_vdisk_fails_nothing(
    require_tool: Callable[..., str], start_target: TargetFactory, tmp_path: Path
) -> None:
    require_tool("iscsi-test-cu")
    target = start_target()
    summary = run_suite([target.url, target.url], "ALL.MultipathIO", timeout=600)
    counts = report(summary, "multipath", tmp_path)
    assert summary.failed == 0, counts
    assert summary.passed == summary.total >= 4, counts  # nothing skipped with two paths


def test_read_only_target_passes_the_read_only_tests(
    require_tool: Callable[..., str], start_target: TargetFactory, tmp_path: Path
) -> None:
    require_tool("iscsi-test-cu")
    target = start_target("--read-only")
    summary = run_suite([target.url], "ALL.ReadOnly", timeout=600)
    counts = report(summary, "read-only", tmp_path)
    assert summary.failed == 0, counts
    assert summary.passed == summary.total >= 1, counts
