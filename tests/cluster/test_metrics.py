"""A CVM's /metrics body, read back with prometheus_client's own parser of the text format."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster.metrics import prometheus_text
from stargate.stats import LATENCY_BUCKET_BOUNDS_US


def document() -> dict[str, Any]:
    counts = [0] * (len(LATENCY_BUCKET_BOUNDS_US) + 1)
    counts[3], counts[-1] = 4, 1  # four fast commands, one slower than every bound
    return {
        "node": 2,
        "uptime_s": 12.5,
        "queue": {"in_flight": 3, "depth": 128, "connections": 2},
        "vdisks": {
            'odd"name\\x': {
                "reads": 7,
                "writes": 5,
                "state": "owned",
                "serving": True,
                "latency": {"counts": counts, "mean_us": 200.0},
            },
            "moved": {"reads": 1, "state": "released", "serving": False},
        },
    }


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = prometheus_text(document()).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_gauges_and_labels_survive_a_round_trip() -> None:
    read = samples()
    odd = (("node", "2"), ("vdisk", 'odd"name\\x'))
    moved = (("node", "2"), ("vdisk", "moved"))
    assert read["stargate_vdisk_reads_total", odd] == 7
    assert read["stargate_vdisk_writes_total", odd] == 5
    assert read["stargate_vdisk_reads_total", moved] == 1
    assert ("stargate_vdisk_writes_total", moved) not in read  # absent, not zero
    assert read["stargate_vdisk_owned", odd] == 1 and read["stargate_vdisk_owned", moved] == 0
    assert read["stargate_queue_in_flight", (("node", "2"),)] == 3
    assert read["stargate_queue_depth_limit", (("node", "2"),)] == 128
    assert read["stargate_uptime_seconds", (("node", "2"),)] == 12.5


def test_latency_is_a_cumulative_histogram_in_seconds() -> None:
    read = samples()
    odd = (("node", "2"), ("vdisk", 'odd"name\\x'))
    bucket = {
        dict(labels)["le"]: value
        for (name, labels), value in read.items()
        if name == "stargate_vdisk_latency_seconds_bucket" and dict(labels)["vdisk"] != "moved"
    }
    fourth = f"{LATENCY_BUCKET_BOUNDS_US[3] / 1e6:g}"
    third = f"{LATENCY_BUCKET_BOUNDS_US[2] / 1e6:g}"
    assert (bucket[third], bucket[fourth], bucket["+Inf"]) == (0, 4, 5)
    assert read["stargate_vdisk_latency_seconds_count", odd] == 5
    assert abs(read["stargate_vdisk_latency_seconds_sum", odd] - 5 * 200e-6) < 1e-12
