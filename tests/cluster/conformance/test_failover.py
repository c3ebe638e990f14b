"""The failover suite: its judge on made-up records, then on a real local cluster with the
project's initiator (pass) and flawed workloads that fail what they break."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import trio

from cluster.conformance.catalogue import TESTS, ConformanceTest
from cluster.conformance.drivers import Driver, ProjectDriver, QemuDriver
from cluster.conformance.failover import CvmFailure, FailoverEvidence, Redirect
from cluster.conformance.failover_checks import failover_judged
from cluster.conformance.runner import ConformanceResult, RunOptions, run_failover_tests
from cluster.conformance.verdict import Verdict
from cluster.conformance.workloads import CHUNK_BYTES, CHUNKS, WorkloadRun, chunk_pattern
from cluster.evidence import EpochEvidence
from tests.cluster.conformance.failover_rogue import FailoverFlaw, FlawedWorkload
from tests.cluster.conftest import unique_cluster_base
from tests.conftest import require_tool

HOME, REMOTE = "127.9.1.2:3261", "127.9.2.2:3261"
KILL_TEST = next(test for test in TESTS if test.failover is CvmFailure.KILL)
FAILOVER_TESTS = [test for test in TESTS if test.failover is not None]


def _good_evidence() -> FailoverEvidence:
    """A failover as it should go: every write on the disk, both moves via the redirector."""
    data = b"".join(bytes([chunk_pattern(chunk)]) * CHUNK_BYTES for chunk in range(CHUNKS))
    run = WorkloadRun(
        0, "", 12.0, {chunk: chunk_pattern(chunk) for chunk in range(CHUNKS)}, 0.5, 900
    )
    epochs = (
        EpochEvidence("vd", 1, 1, 100.1, 50, 102.0),
        EpochEvidence("vd", 2, 2, 102.3, 80, 108.0),
        EpochEvidence("vd", 1, 3, 108.2, 40, 110.0),
    )
    redirects = (Redirect(100.1, HOME), Redirect(102.2, REMOTE), Redirect(108.1, HOME))
    return FailoverEvidence(
        CvmFailure.KILL,
        HOME,
        (REMOTE,),
        100.0,
        102.0,
        102.3,
        104.0,
        108.2,
        redirects,
        epochs,
        data,
        "",
        run,
        112.0,
        111.9,
        (),
    )


def test_the_judge_passes_a_clean_failover_with_its_timings() -> None:
    outcome = failover_judged(_good_evidence())
    assert outcome.verdict is Verdict.PASS, outcome.message
    timing = outcome.evidence[0]
    assert timing["target_write_gaps_s"] == [0.3, 0.2]
    assert timing["served_by_remote_after_s"] == 0.3
    assert timing["client_slowest_io_s"] == 0.5


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"redirects": (Redirect(100.1, HOME), Redirect(108.1, HOME))}, "to a remote CVM"),
        ({"redirects": (Redirect(100.1, HOME), Redirect(102.2, REMOTE))}, "to node 1's CVM"),
        ({"moved_at": None}, "did not log in again"),
        ({"back_at": None}, "no failback"),
        ({"back_at": None, "run_ended_at": 102.5}, "gave up 0.50 s after the kill"),
        ({"data": bytes(CHUNK_BYTES * CHUNKS)}, "chunk 0: 65536 bytes are not 0x11"),
        ({"data": None, "read_error": "TargetUnreachable: x"}, "could not be read back"),
    ],
)
def test_the_judge_fails_each_broken_part(change: dict[str, object], expected: str) -> None:
    outcome = failover_judged(replace(_good_evidence(), **change))  # type: ignore[arg-type]
    assert outcome.verdict is Verdict.FAIL
    assert expected in outcome.message


@pytest.fixture(autouse=True)
def quiet_initiator() -> Iterator[None]:
    logger = logging.getLogger("initiator")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _run_on_cluster(driver: Driver, tests: list[ConformanceTest]) -> list[ConformanceResult]:
    options = RunOptions(cluster_base=unique_cluster_base(3), failover_timeout=12.0)
    return trio.run(run_failover_tests, tests, driver, options)


@pytest.mark.slow
def test_project_initiator_rides_through_kill_and_stop() -> None:
    started = time.monotonic()
    results = _run_on_cluster(ProjectDriver(), FAILOVER_TESTS)
    for result in results:
        assert result.verdict is Verdict.PASS, (result.test.name, result.outcome.message)
        timing = result.outcome.evidence[0]
        assert timing["redirects"], result.test.name
        assert len(timing["epochs"]) == 3  # type: ignore[arg-type]
    assert time.monotonic() - started < 150


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flaw", "expected"),
    [
        (FailoverFlaw.STICKY_PORTAL, "did not log in again"),
        (FailoverFlaw.DROPS_A_WRITE, f"chunk {CHUNKS - 1}: 65536 bytes are not"),
    ],
)
def test_a_flawed_workload_fails_the_failover(flaw: FailoverFlaw, expected: str) -> None:
    (result,) = _run_on_cluster(FlawedWorkload(flaw), [KILL_TEST])
    assert result.driver_run is not None and result.driver_run.exit_status == 0
    assert result.verdict is Verdict.FAIL
    assert expected in result.outcome.message


@pytest.mark.slow
def test_qemu_io_rides_through_a_kill() -> None:
    require_tool("qemu-io")
    (result,) = _run_on_cluster(QemuDriver(), [KILL_TEST])
    assert result.verdict is Verdict.PASS, result.outcome.message
    assert result.outcome.evidence[0]["client_ios"] > 0  # type: ignore[operator]
