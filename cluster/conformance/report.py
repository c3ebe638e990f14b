"""The conformance report: a rich table on the terminal, JSON, and JUnit XML for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.conformance.catalogue import ConformanceTest
from cluster.conformance.runner import ConformanceResult
from cluster.conformance.verdict import Verdict

_STYLE = {
    Verdict.PASS: "green",
    Verdict.FAIL: "bold red",
    Verdict.NOT_APPLICABLE: "dim",
    Verdict.INFORMATIVE: "cyan",
}


def tests_table(tests: tuple[ConformanceTest, ...]) -> Table:
    table = Table(title="Initiator conformance tests")
    for column in ("test", "suite", "RFC 7143", "checks"):
        table.add_column(column, overflow="fold")
    for test in tests:
        table.add_row(test.name, test.suite, test.rfc, test.checks)
    return table


def results_table(driver: str, results: list[ConformanceResult]) -> Table:
    table = Table(title=f"Initiator conformance: {driver}")
    for column in ("test", "verdict", "RFC 7143", "evidence"):
        table.add_column(column, overflow="fold")
    for result in results:
        verdict = result.verdict
        table.add_row(
            result.test.name,
            f"[{_STYLE[verdict]}]{verdict.value}[/]",
            result.test.rfc,
            result.outcome.message,
        )
    return table


def counts(results: list[ConformanceResult]) -> dict[str, int]:
    counted = Counter(result.verdict.value for result in results)
    return {verdict.value: counted.get(verdict.value, 0) for verdict in Verdict}


def print_results(console: Console, driver: str, results: list[ConformanceResult]) -> None:
    console.print(results_table(driver, results))
    console.print(", ".join(f"{count} {name}" for name, count in counts(results).items()))


def to_json(
    driver: str, results: list[ConformanceResult], when: datetime | None = None
) -> dict[str, Any]:
    when = when or datetime.now(UTC)
    return {
        "initiator": driver,
        "date": when.isoformat(timespec="seconds"),
        "counts": counts(results),
        "tests": [
            {
                "name": result.test.name,
                "suite": result.test.suite,
                "rfc7143": result.test.rfc,
                "checks": result.test.checks,
                "verdict": result.verdict.value,
                "message": result.outcome.message,
                "evidence": list(result.outcome.evidence),
                "seconds": round(result.seconds, 3),
                "driver": None
                if result.driver_run is None
                else {
                    "exit_status": result.driver_run.exit_status,
                    "seconds": round(result.driver_run.seconds, 3),
                    "output": result.driver_run.output,
                },
                "connections": list(result.connections),
            }
            for result in results
        ],
    }


def write_json(path: Path, driver: str, results: list[ConformanceResult]) -> None:
    path.write_text(json.dumps(to_json(driver, results), indent=2, default=str) + "\n")


def junit_xml(driver: str, results: list[ConformanceResult]) -> ET.ElementTree[ET.Element]:
    """One <testsuite> per suite; a fail is a <failure>, n/a is <skipped>, informative
    passes with its finding in <system-out>."""
    root = ET.Element("testsuites", name=f"initiator conformance: {driver}")
    for suite in dict.fromkeys(result.test.suite for result in results):
        members = [result for result in results if result.test.suite == suite]
        node = ET.SubElement(
            root,
            "testsuite",
            name=f"{driver}.{suite}",
            tests=str(len(members)),
            failures=str(sum(r.verdict is Verdict.FAIL for r in members)),
            skipped=str(sum(r.verdict is Verdict.NOT_APPLICABLE for r in members)),
            time=f"{sum(r.seconds for r in members):.3f}",
        )
        for result in members:
            case = ET.SubElement(
                node,
                "testcase",
                classname=f"{driver}.{suite}",
                name=result.test.name,
                time=f"{result.seconds:.3f}",
            )
            message = f"RFC 7143 {result.test.rfc}: {result.outcome.message}"
            evidence = json.dumps(list(result.outcome.evidence), indent=1, default=str)
            if result.verdict is Verdict.FAIL:
                ET.SubElement(case, "failure", message=message).text = evidence
            elif result.verdict is Verdict.NOT_APPLICABLE:
                ET.SubElement(case, "skipped", message=message)
            else:
                ET.SubElement(case, "system-out").text = f"{message}\n{evidence}"
    return ET.ElementTree(root)


def write_junit(path: Path, driver: str, results: list[ConformanceResult]) -> None:
    tree = junit_xml(driver, results)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
