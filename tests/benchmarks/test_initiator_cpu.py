"""The initiator CPU benchmark: a tiny real run (this tree's `initiator bench` against a real
`stargate target`, alternated with a second copy of the same tree as the baseline), and its
refusal of a baseline that has no initiator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.initiator_cpu import main

HERE = Path(__file__).resolve().parents[2]


def test_tiny_run_against_a_real_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "runs.json"
    main(
        [
            "--runs",
            "1",
            "--seconds",
            "0.5",
            "--only",
            "randread QD1",
            "--host",
            "127.15.3.1",
            "--baseline-tree",
            str(HERE),
            "--json",
            str(report),
        ]
    )
    printed = capsys.readouterr().out
    assert "4k randread QD1    baseline" in printed
    assert "4k randread QD1    this tree" in printed
    runs = json.loads(report.read_text())
    assert set(runs) == {"4k randread QD1"}
    for tree_runs in runs["4k randread QD1"].values():
        (run,) = tree_runs
        assert run["ios"] > 0 and run["errors"] == 0
        assert run["queue_depth"] == 1 and run["pattern"] == "randread"
        assert run["cpu_us_per_io"] > 0


def test_a_baseline_without_an_initiator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--baseline-tree", str(tmp_path)])
    assert exited.value.code == 2
    assert "no initiator package there" in capsys.readouterr().err
