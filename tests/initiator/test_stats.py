"""Statistics: latency percentiles and the longest pause between completions."""

from __future__ import annotations

from time import monotonic

from initiator.stats import IoStats, LatencyRecorder, PauseTracker


def test_pause_counts_only_while_io_is_outstanding() -> None:
    pauses = PauseTracker()
    pauses.started(10.0)
    pauses.finished(10.5)  # 0.5 s to the first completion
    # idle from 10.5 to 20.0: not a pause, nothing was outstanding
    pauses.started(20.0)
    pauses.started(20.1)
    pauses.finished(20.2)
    pauses.finished(22.2)  # 2 s between completions with I/O outstanding
    assert pauses.longest == 2.0
    pauses.started(30.0)
    assert pauses.longest_so_far(33.5) == 3.5  # a stall still going on counts


def test_latency_percentiles() -> None:
    recorder = LatencyRecorder()
    for micros in range(1, 1001):
        recorder.add(micros / 1e6)
    points = recorder.percentiles()
    assert round(points["p50"]) == 500 and round(points["p99"]) == 990
    assert round(points["max"]) == 1000 and abs(points["mean"] - 500.5) < 1e-6


def test_snapshot_during_an_outage_uses_one_clock() -> None:
    stats = IoStats()
    stats.pauses.started(monotonic() - 1.0)  # an I/O outstanding for a second
    snapshot = stats.snapshot()
    assert 0.9 < float(snapshot["longest_pause_s"]) < 5  # type: ignore[arg-type]
