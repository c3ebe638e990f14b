"""A tiny real run: stargate and tgtd side by side, fio and the project's initiator, one
short workload, then the reports. Checks what the runner records, never how fast it was."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.clients import FioClient, InitiatorClient
from benchmarks.machine import machine_description
from benchmarks.report import write_reports
from benchmarks.settings import Settings
from benchmarks.standard import Client, run_standard
from benchmarks.targets import MiB
from benchmarks.workloads import RANDREAD_QD1
from tests.conftest import require_tool


def test_standard_section_and_reports(tmp_path: Path) -> None:
    require_tool("tgtd")
    settings = Settings(runs=1, seconds=0.5, disk_size=16 * MiB, quick=True)
    clients: list[Client] = [FioClient(), InitiatorClient()]
    standard = run_standard(settings, clients, [RANDREAD_QD1], log=lambda line: None)

    assert [entry["client"] for entry in standard] == ["fio", "initiator"]
    for entry in standard:
        assert not entry["errors"]
        for target in ("stargate", "tgtd"):
            (run,) = entry["runs"][target]
            assert run["ios"] > 0 and run["seconds"] > 0
            assert run["target_cpu_us_per_io"] is not None
        assert entry["ratio"]["iops"] is not None

    results = {
        "machine": machine_description(),
        "settings": {**settings.__dict__},
        "sections": {"standard": standard},
        "errors": {},
    }
    paths = write_reports(results, tmp_path)
    assert {path.name for path in paths} == {"results.json", "results.md", "standard.png"}
    markdown = (tmp_path / "results.md").read_text()
    assert "4 KiB randread QD1 | fio |" in markdown
    assert "4 KiB randread QD32 IOPS vs tgtd | >= 1.5x | - | **not measured**" in markdown
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["goals"][0]["verdict"] == "not measured"
