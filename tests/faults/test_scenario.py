"""A scenario file reproducing a failover with faults during the failback, run through the
`stargate scenario run` CLI against a real 2-node cluster; its timeline (JSON and PNG) is
checked, and the PNG kept as an artifact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.scenario import Scenario, ScenarioError
from tests.redirector.cluster import make_spec

pytestmark = pytest.mark.slow

SCENARIO = Path(__file__).parent / "scenarios" / "failback_under_fault.toml"
ARTIFACTS = Path(os.environ.get("FAULT_ARTIFACTS", "/tmp/stargate-fault-artifacts"))


def test_scenario_file_validates() -> None:
    scenario = Scenario.load(SCENARIO)
    assert [step.at for step in scenario.steps] == sorted(step.at for step in scenario.steps)
    with pytest.raises(ScenarioError, match="unknown fault field"):
        Scenario.from_dict({"vm": [{"name": "v", "home": 1}],
                            "step": [{"at": 1, "fault": {"kind": "busy", "nope": 1}}]})  # fmt: skip
    with pytest.raises(ScenarioError, match=r"sessions_per_disk must be 1\.\.8, not 9"):
        Scenario.from_dict({"vm": [{"name": "v", "home": 1, "sessions_per_disk": 9}]})


def test_failover_then_faults_during_failback(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    make_spec(directory, 2, stable_window=4.0)  # unique loopback addresses for this test
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "scenario", "run", str(SCENARIO), "--dir",
         str(directory)],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    print(completed.stdout, completed.stderr)
    png = directory / "forensics" / "timeline.png"
    if png.exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        kept = ARTIFACTS / f"failback_under_fault-{os.getpid()}.png"
        shutil.copy(png, kept)
        print(f"timeline drawing kept at {kept}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads((directory / "forensics" / "timeline.json").read_text())
    assert png.stat().st_size > 10_000
    assert set(document["vdisks"]) == {"vm1-0", "vm1-1"}
    for vdisk, timeline in document["vdisks"].items():
        assert timeline["failovers"] and timeline["failovers"][0]["to_node"] == 2, vdisk
        assert timeline["failbacks"] and timeline["failbacks"][-1]["to_node"] == 1, vdisk
        assert [segment["node"] for segment in timeline["serving"]][:3] == [1, 2, 1], vdisk
        # The kill resets the connections: the initiator re-logs in through the redirector
        # at once, and the stall is measured from the stargates' own I/O records.
        kill = [d for d in timeline["disruptions"] if any("kill" in c for c in d["causes"])]
        assert kill and kill[0]["gap_s"] is not None and 0 < kill[0]["gap_s"] < 10, kill
        failback = [d for d in timeline["disruptions"]
                    if any("moved from node 2 to 1" in c for c in d["causes"])]  # fmt: skip
        assert failback and failback[0]["gap_s"] is not None, timeline["disruptions"]
        fired_on_1 = {f["kind"] for f in timeline["faults"] if f["node"] == 1}
        assert fired_on_1 == {"delay", "busy"}, timeline["faults"]
        on_1 = [f for f in timeline["faults"] if f["node"] == 1]
        assert all(f["t"] >= timeline["failbacks"][0]["t"] for f in on_1)
    # The asynchronous logout on node 2 (only while failed over): logged out, back in, and
    # the stall it caused measured.
    vm1_0 = document["vdisks"]["vm1-0"]
    logout = [d for d in vm1_0["disruptions"] if any("async_logout" in c for c in d["causes"])]
    assert logout and logout[0]["gap_s"] is not None, vm1_0["disruptions"]
    asked = [e for e in vm1_0["session_ends"] if e["logout_requested_at"] is not None]
    assert asked and asked[0]["node"] == 2 and asked[0]["reason"] == "logged out", asked
    assert not [f for f in document["vdisks"]["vm1-1"]["faults"] if f["kind"] == "async_logout"]
    # `stargate timeline` rebuilds the same document from the files the processes left.
    rebuilt = subprocess.run(
        [sys.executable, "-m", "stargate", "timeline", "--dir", str(directory), "--json",
         "--png", str(tmp_path / "again.png")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    again = json.loads(rebuilt.stdout)
    assert again["vdisks"]["vm1-0"]["failbacks"] == document["vdisks"]["vm1-0"]["failbacks"]
    assert (tmp_path / "again.png").stat().st_size > 10_000
    assert all(report["mismatch_count"] == 0 for report in document["verify"].values())


def test_two_sessions_per_disk_fail_over_and_back_together(tmp_path: Path) -> None:
    """AHV Turbo in a scenario: each disk's two sessions verify their own halves through a
    kill of the home CVM and its return; nothing is lost and both sessions keep going."""
    directory = tmp_path / "cluster"
    make_spec(directory, 2, stable_window=3.0)
    scenario = tmp_path / "turbo.toml"
    scenario.write_text(TURBO_SCENARIO)
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "scenario", "run", str(scenario), "--dir",
         str(directory)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads((directory / "forensics" / "timeline.json").read_text())
    for vdisk, report in document["verify"].items():
        assert report["sessions"] == 2, (vdisk, report)
        assert report["mismatch_count"] == 0 and report["writes"] > 0, (vdisk, report)
    for vdisk, timeline in document["vdisks"].items():
        assert [segment["node"] for segment in timeline["serving"]][:3] == [1, 2, 1], vdisk


TURBO_SCENARIO = """
name = "two sessions per disk through a failover and back"
duration = 16

[cluster]
nodes = 2
stable_window = 3

[[vm]]
name = "turbo"
home = 1
disks = 2
size = "16M"
sessions_per_disk = 2

[[step]]
at = 3
cvm = "kill"
node = 1

[[step]]
at = 6
cvm = "start"
node = 1
"""
