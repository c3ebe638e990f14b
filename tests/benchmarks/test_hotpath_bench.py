"""The in-process hot-path benchmark runs every command it scripts (never how fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.hotpath_bench import Kind, main, measure


@pytest.mark.parametrize("kind", list(Kind))
def test_every_scripted_command_completes(kind: Kind, tmp_path: Path) -> None:
    result = measure(kind, queue_depth=8, batches=5, repeat=2, directory=tmp_path)
    assert (result.kind, result.commands) == (kind.value, 40)
    assert result.cpu_us_per_command > 0 and len(result.all_repeats_us) == 2
    assert not list(tmp_path.iterdir())  # the scratch vDisk is gone


def test_command_line_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hotpath.json"
    argv = ["--kind", "read", "--qd", "4", "--batches", "3", "--repeat", "1"]
    assert main([*argv, "--dir", str(tmp_path), "--json", str(out)]) == 0
    assert "read  QD4" in capsys.readouterr().out
    assert [entry["commands"] for entry in json.loads(out.read_text())] == [12]


def test_bad_arguments_get_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--qd", "0"])
    assert exit_info.value.code == 2
    assert "--qd" in capsys.readouterr().err
