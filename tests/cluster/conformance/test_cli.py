"""`stargate conformance list|run`: the table, the reports, and bad arguments (exit 2)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.conformance.catalogue import TESTS
from tests.conftest import require_tool
from tests.helpers.net import unique_loopback_address


def test_list_names_every_test_with_its_rfc_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "list"]) == 0
    out = capsys.readouterr().out
    for test in TESTS:
        assert test.name in out
        assert test.rfc in out


def test_run_with_a_command_template_writes_json_and_junit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("iscsi-inq")
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    status = main(
        [
            "conformance",
            "run",
            "--initiator",
            "command",
            "--command",
            "iscsi-inq iscsi://{portal}/{target}/{lun}",
            "--suite",
            "redirect",
            "--window",
            "1",
            "--other-host",
            unique_loopback_address(),
            "--report",
            str(report),
            "--junit",
            str(junit),
        ]
    )
    assert status == 1  # libiscsi does not follow a permanent redirect
    out = capsys.readouterr().out
    assert "redirect.same-address-new-port" in out  # piped: whole names, no ellipsis
    document = json.loads(report.read_text())
    assert document["initiator"] == "command"
    # redirect.then-chap is n/a: the template takes no CHAP secrets.
    assert document["counts"] == {"pass": 5, "fail": 1, "n/a": 1, "info": 0}
    permanent = next(t for t in document["tests"] if t["name"] == "redirect.permanent")
    assert permanent["verdict"] == "fail"
    statuses = [pdu.get("status") for pdu in permanent["connections"][0]["pdus"]]
    assert "0x0102" in statuses  # the evidence: the redirect the initiator did not follow
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("7", "1", "1")
    failed = [case.get("name") for case in suite if case.find("failure") is not None]
    assert failed == ["redirect.permanent"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--initiator", "project", "--suite", "bogus"], "unknown suite bogus"),
        (["--initiator", "command"], "goes with --initiator command"),
        (["--initiator", "project", "--command", "true"], "goes with --initiator command"),
        (["--initiator", "command", "--command", "no-such-tool {portal}"], "not an executable"),
        (["--initiator", "project", "--other-host", "127.0.0.1"], "--other-host must differ"),
        (["--initiator", "project", "--window", "0"], "must be positive"),
        (["--initiator", "project", "--stable-window", "-1"], "must be positive"),
        (
            ["--initiator", "project", "--suite", "failover", "--cluster-base", "10.0.0.0"],
            "leaves 127.0.0.0/8",
        ),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["conformance", "run", *argv]) == 2
    assert message in capsys.readouterr().err
