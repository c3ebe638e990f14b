"""Run conformance tests against one driver: for each, fresh listeners and a fresh memory
vDisk, the driver pointed at the entry portal, then the judge over what the target saw."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from cluster.conformance.catalogue import (
    CHAP_SECRET,
    MUTUAL_SECRET,
    Chap,
    ConformanceTest,
    RunContext,
)
from cluster.conformance.drivers import Driver, DriverJob, DriverRun, RoutedDriver
from cluster.conformance.evidence import Evidence
from cluster.conformance.failover import (
    DEFAULT_CLUSTER_BASE,
    DEFAULT_STABLE_WINDOW,
    FAILOVER_TIMEOUT,
    LocalCluster,
)
from cluster.conformance.failover_checks import failover_judged
from cluster.conformance.target import TARGET_NAME, KitAddresses, KitTarget, memory_server
from cluster.conformance.verdict import Outcome, Verdict, not_applicable
from cluster.conformance.workloads import WorkloadDriver

DEFAULT_WINDOW = 3.0  # seconds a storm or loop test watches
DEFAULT_DRIVER_TIMEOUT = 20.0  # a driver that logs in and does its I/O ends well before
SETTLE = 0.2  # after the driver ends: let the connection's last PDUs be read


@dataclass(frozen=True, slots=True)
class RunOptions:
    window: float = DEFAULT_WINDOW
    driver_timeout: float = DEFAULT_DRIVER_TIMEOUT
    addresses: KitAddresses = field(default_factory=KitAddresses)
    cluster_base: str = DEFAULT_CLUSTER_BASE  # the failover suite's cluster addresses
    stable_window: float = DEFAULT_STABLE_WINDOW  # its failback delay, seconds
    failover_timeout: float = FAILOVER_TIMEOUT  # for the initiator to reach a remote CVM


@dataclass(frozen=True, slots=True)
class ConformanceResult:
    test: ConformanceTest
    outcome: Outcome
    seconds: float
    driver_run: DriverRun | None  # None when the test did not run (not applicable)
    connections: tuple[dict[str, object], ...] = ()  # every PDU of the test, summarized

    @property
    def verdict(self) -> Verdict:
        return self.outcome.verdict


def _inapplicable(test: ConformanceTest, driver: Driver) -> str | None:
    if test.secrets is Chap.ONE_WAY and not driver.chap:
        return f"the {driver.name} driver takes no CHAP secrets"
    if test.secrets is Chap.MUTUAL and not driver.mutual_chap:
        return f"the {driver.name} driver takes no mutual CHAP secrets"
    return None


async def run_test(test: ConformanceTest, driver: Driver, options: RunOptions) -> ConformanceResult:
    started = time.monotonic()
    reason = _inapplicable(test, driver)
    if reason is not None:
        return ConformanceResult(test, not_applicable(reason), 0.0, None)
    mutual_given = test.secrets is Chap.MUTUAL
    evidence = Evidence(trio.current_time())
    server = memory_server()
    async with trio.open_nursery() as nursery:
        kit = KitTarget(test.portals, evidence, options.addresses, server)
        await kit.start(nursery)
        if isinstance(driver, RoutedDriver):
            kit.advertised = driver.route(kit.portals)
        job = DriverJob(
            kit.entry,
            TARGET_NAME,
            chap=CHAP_SECRET if test.secrets is not Chap.NONE else None,
            mutual=MUTUAL_SECRET if mutual_given else None,
        )
        watched = options.window * test.windows
        budget = watched if test.watch_window else options.driver_timeout
        run = await driver.run(job, evidence.started + budget)
        if test.watch_window:
            await trio.sleep_until(evidence.started + watched)
        else:
            await trio.sleep(SETTLE)
        nursery.cancel_scope.cancel()
    window = watched if test.watch_window else evidence.now()
    assert test.judge is not None
    outcome = test.judge(evidence, RunContext(window, mutual_given))
    connections = tuple(conn.summary() for conn in evidence.connections)
    return ConformanceResult(test, outcome, time.monotonic() - started, run, connections)


def _workload_unavailable(driver: Driver) -> str | None:
    if not isinstance(driver, WorkloadDriver):
        return f"the {driver.name} driver runs no workload"
    return driver.workload_unavailable()


async def run_failover_tests(
    tests: list[ConformanceTest], driver: Driver, options: RunOptions
) -> list[ConformanceResult]:
    """One local cluster for all the failover tests (started only if one can run)."""
    reason = _workload_unavailable(driver)
    if reason is not None or not tests:
        return [ConformanceResult(test, not_applicable(reason or ""), 0.0, None) for test in tests]
    assert isinstance(driver, WorkloadDriver)
    results = []
    async with LocalCluster.running(
        options.cluster_base, options.stable_window, options.failover_timeout
    ) as cluster:
        for test in tests:
            assert test.failover is not None
            started = time.monotonic()
            evidence = await cluster.play(test.failover, driver)
            run = evidence.run
            results.append(
                ConformanceResult(
                    test,
                    failover_judged(evidence),
                    time.monotonic() - started,
                    DriverRun(run.exit_status, run.output, run.seconds),
                )
            )
    return results


async def run_tests(
    tests: tuple[ConformanceTest, ...], driver: Driver, options: RunOptions
) -> list[ConformanceResult]:
    try:
        if isinstance(driver, RoutedDriver):
            await driver.start()
        results = [await run_test(test, driver, options) for test in tests if test.failover is None]
        on_cluster = [test for test in tests if test.failover is not None]
        return results + await run_failover_tests(on_cluster, driver, options)
    finally:
        if isinstance(driver, RoutedDriver):
            with trio.CancelScope(shield=True):
                await driver.close()
