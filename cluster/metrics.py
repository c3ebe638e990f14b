"""A CVM's counters in the Prometheus text format (`GET /metrics`), produced by
prometheus_client from the same stats document `/stats.json` serves: one collector built per
request, so the exposition is always a snapshot of the document and never a second source
of truth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from stargate.stats import LATENCY_BUCKET_BOUNDS_US

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

VDISK_COUNTERS = {
    "reads": "SCSI read commands completed",
    "writes": "SCSI write commands completed",
    "other_commands": "other SCSI commands completed",
    "bytes_read": "bytes read",
    "bytes_written": "bytes written",
    "errors": "commands ended with a status other than GOOD",
    "task_set_full": "commands refused with TASK SET FULL",
    "logins": "logins",
    "login_failures": "refused logins",
}
VDISK_GAUGES = {
    "queue_depth": "commands holding a queue slot now",
    "queued_waiting_now": "commands waiting for a queue slot now",
    "connections": "connections now",
    "sessions": "sessions now",
}
VDISK_LABELS = ("node", "vdisk")


class StatsDocumentCollector(Collector):
    """The families of one stats document (`ClusterStargate.stats_document`)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        node = str(self.document["node"])
        vdisks: dict[str, dict[str, Any]] = self.document["vdisks"]
        ordered = sorted(vdisks.items())
        for key, help_text in VDISK_COUNTERS.items():
            counter = CounterMetricFamily(f"stargate_vdisk_{key}", help_text, labels=VDISK_LABELS)
            for vdisk_id, counters in ordered:
                if key in counters:
                    counter.add_metric([node, vdisk_id], counters[key])
            yield counter
        for key, help_text in VDISK_GAUGES.items():
            gauge = GaugeMetricFamily(f"stargate_vdisk_{key}", help_text, labels=VDISK_LABELS)
            for vdisk_id, counters in ordered:
                if key in counters:
                    gauge.add_metric([node, vdisk_id], counters[key])
            yield gauge
        owned = GaugeMetricFamily(
            "stargate_vdisk_owned", "1 while this stargate serves the vDisk", labels=VDISK_LABELS
        )
        for vdisk_id, counters in ordered:
            serving = counters.get("state") == "owned" and counters.get("serving")
            owned.add_metric([node, vdisk_id], 1 if serving else 0)
        yield owned
        yield self._latency(node, ordered)
        queue = self.document["queue"]
        for name, help_text, value in (
            ("queue_in_flight", "commands holding a slot of the shared queue", queue["in_flight"]),
            ("queue_depth_limit", "slots of the shared command queue", queue["depth"]),
            ("connections", "iSCSI connections now", queue["connections"]),
            ("uptime_seconds", "seconds since the stargate started", self.document["uptime_s"]),
        ):
            gauge = GaugeMetricFamily(f"stargate_{name}", help_text, labels=("node",))
            gauge.add_metric([node], value)
            yield gauge

    @staticmethod
    def _latency(node: str, ordered: list[tuple[str, dict[str, Any]]]) -> Metric:
        histogram = HistogramMetricFamily(
            "stargate_vdisk_latency_seconds",
            "command latency, arrival to status",
            labels=VDISK_LABELS,
        )
        bounds = [f"{bound_us / 1e6:g}" for bound_us in LATENCY_BUCKET_BOUNDS_US] + ["+Inf"]
        for vdisk_id, counters in ordered:
            latency = counters.get("latency")
            if not isinstance(latency, dict):
                continue
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(bounds, latency["counts"], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            mean_us = latency.get("mean_us") or 0.0
            histogram.add_metric([node, vdisk_id], buckets, sum_value=mean_us * cumulative / 1e6)
        return histogram


def prometheus_text(document: dict[str, Any]) -> bytes:
    """The stats document in the Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsDocumentCollector(document))
    return generate_latest(registry)
