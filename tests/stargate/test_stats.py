"""Per-vDisk counters (`stargate.stats`): the latency histogram's power-of-two buckets and
percentiles, and the counters the transport bumps per command (two-step and one-step)."""

from __future__ import annotations

from stargate.stats import LATENCY_BUCKET_BOUNDS_US, IoKind, LatencyHistogram, VDiskStats

US = 1000  # ns


def _bucket_of(latency_us: int) -> int:
    histogram = LatencyHistogram()
    histogram.record(latency_us * US)
    (index,) = [i for i, count in enumerate(histogram.counts) if count]
    return index


def test_buckets_are_powers_of_two_with_exclusive_upper_bounds() -> None:
    assert LATENCY_BUCKET_BOUNDS_US[0] == 16 and LATENCY_BUCKET_BOUNDS_US[-1] == 1 << 23
    assert _bucket_of(0) == 0 and _bucket_of(15) == 0
    assert _bucket_of(16) == 1 and _bucket_of(31) == 1 and _bucket_of(32) == 2
    for index, bound in enumerate(LATENCY_BUCKET_BOUNDS_US):
        assert _bucket_of(bound - 1) == index  # below its bound: in it
        assert _bucket_of(bound) == index + 1  # at its bound: the next one
    last = len(LATENCY_BUCKET_BOUNDS_US)
    assert _bucket_of(1 << 23) == last and _bucket_of(10**9) == last  # slower than all


def test_sub_microsecond_latencies_count_in_the_first_bucket() -> None:
    histogram = LatencyHistogram()
    histogram.record(999)  # ns
    assert histogram.counts[0] == 1 and histogram.samples == 1 and histogram.total_us == 0


def test_percentiles_are_bucket_upper_bounds() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile_us(0.5) is None
    for _ in range(98):
        histogram.record(20 * US)  # bucket [16, 32)
    histogram.record(5000 * US)  # [4096, 8192)
    histogram.record(10**10)  # ten seconds: slower than every bound
    assert histogram.percentile_us(0.5) == 32
    assert histogram.percentile_us(0.98) == 32
    assert histogram.percentile_us(0.99) == 8192
    assert histogram.percentile_us(1.0) == (1 << 23) * 2
    snapshot = histogram.snapshot()
    assert snapshot["p50_us"] == 32 and snapshot["p99_us"] == 8192
    assert snapshot["mean_us"] == (98 * 20 + 5000 + 10**7) / 100
    assert snapshot["bucket_upper_bounds_us"] == [*LATENCY_BUCKET_BOUNDS_US, None]
    assert snapshot["counts"] == histogram.counts and snapshot["counts"] is not histogram.counts


def test_started_and_finished_commands_are_counted_by_kind() -> None:
    stats = VDiskStats("vd1")
    for _ in range(3):
        stats.command_started()
    assert (stats.queue_depth, stats.max_queue_depth) == (3, 3)
    stats.command_finished(IoKind.READ, 4096, 50 * US)
    stats.command_finished(IoKind.WRITE, 8192, 70 * US, good=False)
    stats.command_finished(IoKind.OTHER, 0, 10 * US)
    assert (stats.reads, stats.writes, stats.other_commands) == (1, 1, 1)
    assert (stats.bytes_read, stats.bytes_written, stats.errors) == (4096, 8192, 1)
    assert (stats.queue_depth, stats.max_queue_depth) == (0, 3)
    assert stats.latency.samples == 3 and stats.latency.total_us == 130


def test_completed_at_once_counts_as_started_then_finished() -> None:
    two_step, one_step = VDiskStats("a"), VDiskStats("b")
    for stats in (two_step, one_step):
        stats.command_started()  # another command in flight: depth 1
    two_step.command_started()
    two_step.command_finished(IoKind.READ, 512, 40 * US, good=False)
    one_step.command_completed(IoKind.READ, 512, 40 * US, good=False)
    for field in ("reads", "bytes_read", "errors", "queue_depth", "max_queue_depth"):
        assert getattr(two_step, field) == getattr(one_step, field), field
    assert one_step.max_queue_depth == 2 and one_step.queue_depth == 1
    assert one_step.latency.counts == two_step.latency.counts
    one_step.command_completed(IoKind.WRITE, 1024, 40 * US)
    assert one_step.max_queue_depth == 2  # depth 1 + this one: not a new maximum
    assert (one_step.writes, one_step.bytes_written) == (1, 1024)


def test_snapshot_is_plain_data_of_every_counter() -> None:
    stats = VDiskStats("vd7")
    stats.command_started()
    stats.command_finished(IoKind.WRITE, 4096, 100 * US)
    stats.logins, stats.login_failures, stats.sessions, stats.connections = 3, 1, 2, 2
    snapshot = stats.snapshot()
    assert snapshot["vdisk_id"] == "vd7"
    assert (snapshot["writes"], snapshot["bytes_written"]) == (1, 4096)
    assert (snapshot["logins"], snapshot["login_failures"]) == (3, 1)
    assert (snapshot["sessions"], snapshot["connections"]) == (2, 2)
    assert snapshot["max_queue_depth"] == 1 and snapshot["queue_depth"] == 0
    assert isinstance(snapshot["uptime_s"], float) and snapshot["uptime_s"] >= 0
    latency = snapshot["latency"]
    assert isinstance(latency, dict) and latency["p50_us"] == 128
