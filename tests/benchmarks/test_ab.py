"""The A/B benchmark: the temporary worktree, the import check, the pair arithmetic, and tiny
real runs (HEAD against this tree) through fio and through the project's initiator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import clients
from benchmarks.ab import (
    TOLERANCE,
    AbSettings,
    Arm,
    PairedRun,
    choose_client,
    main,
    workload_summary,
)
from benchmarks.ab_report import render_ab_markdown, within_tolerance
from benchmarks.clients import ClientKind
from benchmarks.initiator_driver import combined
from benchmarks.trees import (
    THIS_TREE,
    SourceTree,
    TreeError,
    check_imports_from,
    checked_out,
    git,
    resolve_commit,
)
from benchmarks.workloads import Measurement
from tests.conftest import require_tool
from tests.peers.fio import FioError


def registered_worktrees() -> set[str]:
    listing = git(["worktree", "list", "--porcelain"], THIS_TREE)
    return {
        line.removeprefix("worktree ")
        for line in listing.splitlines()
        if line.startswith("worktree ")
    }


def test_checkout_is_removed_also_on_error() -> None:
    require_tool("git")
    with pytest.raises(RuntimeError, match="boom"), checked_out("HEAD") as tree:
        assert (tree.path / "stargate" / "__main__.py").is_file()
        assert tree.commit == resolve_commit("HEAD")
        assert str(tree.path) in registered_worktrees()
        raise RuntimeError("boom")
    assert not tree.path.exists() and not tree.path.parent.exists()
    assert str(tree.path) not in registered_worktrees()


def test_unknown_revision() -> None:
    require_tool("git")
    with pytest.raises(TreeError, match="names no commit"), checked_out("no-such-rev-xyz"):
        pass


def test_command_line_refuses_an_unknown_baseline(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks", "ab", "--baseline", "no-such-rev-xyz"]
    argv += ["--client", "initiator", "--out", str(tmp_path)]
    completed = subprocess.run(
        argv, cwd=THIS_TREE, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 2, completed.stderr
    assert "cannot compare: 'no-such-rev-xyz' names no commit" in completed.stderr
    assert not list(tmp_path.iterdir())


def test_import_check_refuses_a_tree_that_would_run_other_code(tmp_path: Path) -> None:
    empty = SourceTree("empty", tmp_path, "unknown")
    with pytest.raises(TreeError, match=r"stargate .* imports .* instead"):  # the venv's
        check_imports_from(empty)
    (tmp_path / "stargate").mkdir()
    with pytest.raises(TreeError, match=r"stargate .* no regular package"):
        check_imports_from(empty)
    (tmp_path / "stargate" / "__init__.py").write_text("")
    with pytest.raises(TreeError, match=r"iscsicore .* imports .* instead"):
        check_imports_from(empty)
    imported = check_imports_from(SourceTree("this", THIS_TREE, "unknown"))
    assert imported == {
        "stargate": THIS_TREE / "stargate" / "__init__.py",
        "iscsicore": THIS_TREE / "iscsicore" / "__init__.py",
    }


def measurement(iops: float, cpu_us_per_io: float) -> Measurement:
    ios = int(iops)
    return Measurement(ios, ios * 4096, 1.0, 100.0, target_cpu_seconds=ios * cpu_us_per_io / 1e6)


def paired(baseline: Measurement | None, candidate: Measurement | None) -> PairedRun:
    measured = {Arm.BASELINE: baseline, Arm.CANDIDATE: candidate}
    return PairedRun((Arm.BASELINE, Arm.CANDIDATE), measured, load_average=1.0)


def test_ratios_per_pair_their_spread_and_the_verdict() -> None:
    (qd32, _) = AbSettings().workloads()
    pairs = [
        paired(measurement(1000, 10.0), measurement(1010, 10.0)),
        paired(measurement(2000, 10.0), measurement(1900, 11.0)),
        paired(measurement(1000, 10.0), measurement(1020, 9.0)),
        paired(measurement(5000, 10.0), None),  # a failed run: no pair, no ratio
    ]
    summary = workload_summary(qd32, pairs, ["run 4 candidate: failed"])
    iops = summary["ratio"]["iops"]
    assert iops["minimum"] == pytest.approx(0.95)
    assert iops["median"] == pytest.approx(1.01)
    assert iops["maximum"] == pytest.approx(1.02)
    assert summary["ratio"]["target_cpu_us_per_io"]["maximum"] == pytest.approx(1.1)
    assert summary["within_tolerance"] is True
    assert summary["pairs_outside_tolerance"] == 1  # the 0.95 pair
    assert summary["median"]["baseline"]["iops"] == pytest.approx(1500)  # all four runs
    assert summary["median"]["candidate"]["iops"] == pytest.approx(1020)

    slower = [paired(measurement(1000, 10.0), measurement(1000 * (1 - 2 * TOLERANCE), 10.0))]
    assert workload_summary(qd32, slower, [])["within_tolerance"] is False
    assert workload_summary(qd32, [paired(None, None)], [])["within_tolerance"] is None


def test_initiator_driver_aggregate_of_several_devices() -> None:
    def report(ios: int, seconds: float, p99: float) -> dict[str, Any]:
        return {"ios": ios, "reads": ios, "writes": 0, "bytes": ios * 4096, "errors": 0,
                "reconnects": 0, "seconds": seconds, "longest_pause_s": 0.01,
                "cpu_us_per_io": 50.0, "latency_us": {"p99": p99, "max": 2 * p99},
                "last_error": "", "block_size": 4096}  # fmt: skip

    total = combined([report(100, 1.0, 200.0), report(300, 2.0, 100.0)])
    assert total["ios"] == 400 and total["bytes"] == 400 * 4096
    assert total["seconds"] == 2.0 and total["iops"] == 200.0
    assert total["latency_us"] == {"p99": 200.0, "max": 400.0}
    assert total["devices"] == 2
    assert combined([report(100, 1.0, 200.0)]) == report(100, 1.0, 200.0)


def test_without_fio_the_initiator_measures_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fio() -> Path:
        raise FioError("apt-get source fio failed\nE: no deb-src entry")

    monkeypatch.setattr(clients, "ensure_fio_libiscsi", no_fio)
    client, note = choose_client("auto")
    assert client.kind is ClientKind.INITIATOR
    assert note == "the project's initiator (no fio libiscsi engine: apt-get source fio failed)"
    with pytest.raises(FioError):
        choose_client("fio")


def tiny_run(tmp_path: Path, client: str, disks: int) -> dict[str, Any]:
    require_tool("git")
    argv = ["--baseline", "HEAD", "--runs", "1", "--seconds", "1", "--warmup", "0"]
    argv += ["--disks", str(disks), "--client", client, "--out", str(tmp_path)]
    assert main(argv) == 0
    results: dict[str, Any] = json.loads((tmp_path / "ab.json").read_text())
    assert render_ab_markdown(results) == (tmp_path / "ab.md").read_text()
    return results


def check_both_arms_measured(results: dict[str, Any], disks: int) -> None:
    baseline, candidate = results["arms"]["baseline"], results["arms"]["candidate"]
    assert baseline["commit"] == resolve_commit("HEAD")
    assert Path(candidate["imports"]["stargate"]) == THIS_TREE / "stargate" / "__init__.py"
    for path in baseline["imports"].values():
        assert Path(path).is_relative_to(baseline["path"])
    assert not Path(baseline["path"]).exists()  # the baseline's worktree is gone
    assert baseline["path"] not in registered_worktrees()
    assert [w["disks"] for w in results["workloads"]] == [1, disks]
    assert [w["queue_depth_per_disk"] for w in results["workloads"]] == [32, 1]
    for workload in results["workloads"]:
        assert not workload["errors"]
        (run,) = workload["runs"]
        for arm in ("baseline", "candidate"):
            assert run[arm]["ios"] > 0
            assert 0.5 < run[arm]["seconds"] < 5
            assert run[arm]["target_cpu_us_per_io"] > 0
        iops = workload["ratio"]["iops"]
        assert 0.1 < iops["minimum"] == iops["median"] == iops["maximum"] < 10
        assert workload["within_tolerance"] in (True, False)
    assert within_tolerance(results) in (True, False)
    markdown = render_ab_markdown(results)
    assert "| 4 KiB randread QD32, 1 vDisk |" in markdown
    assert "Both workloads' median IOPS ratio within 3% of 1: " in markdown
    assert f"| 4 KiB randread QD1 on each of {disks} vDisks (aggregate) |" in markdown
    assert results["machine"]["cpu_model"] and results["machine"]["kernel"]


def test_tiny_run_with_fio(tmp_path: Path) -> None:
    results = tiny_run(tmp_path, "fio", disks=4)
    assert results["client"] == "fio"
    check_both_arms_measured(results, disks=4)


def test_tiny_run_with_the_initiator(tmp_path: Path) -> None:
    results = tiny_run(tmp_path, "initiator", disks=2)
    assert results["client"] == "initiator"
    assert "initiator" in results["client_note"]
    check_both_arms_measured(results, disks=2)
