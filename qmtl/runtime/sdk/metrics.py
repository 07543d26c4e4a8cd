"""The Prometheus metrics catalog, defined once, on an injectable registry.

Names are the spec's, verbatim; prometheus-client appends ``_total`` to counters in the
exposition (``fingerprint_collisions`` is exposed as ``fingerprint_collisions_total``). Label
values are bounded: node ids, worlds, reasons, phases — never timestamps or window bounds.
Durations ending in ``_ms`` are milliseconds; ``_seconds`` seconds.

Tests build ``SeamlessMetrics(CollectorRegistry())`` and read values with
``registry.get_sample_value``; production code uses :func:`default_metrics`.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["MS_BUCKETS", "SeamlessMetrics", "default_metrics"]

#: Histogram buckets for millisecond latencies (1 ms .. 2 min).
MS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)

_NODE = ("node_id", "interval")
_NODE_WORLD = ("node_id", "interval", "world_id")


class SeamlessMetrics:
    """Every metric of the catalog, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def hist(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=MS_BUCKETS)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        # SLA phases of a fetch.
        self.storage_wait_ms = hist("seamless_storage_wait_ms", "Hot-store read time", _NODE_WORLD)
        self.backfill_wait_ms = hist(
            "seamless_backfill_wait_ms", "Time waiting on synchronous backfill", _NODE_WORLD
        )
        self.live_wait_ms = hist(
            "seamless_live_wait_ms", "Time waiting on the live feed", _NODE_WORLD
        )
        self.total_ms = hist("seamless_total_ms", "Whole fetch time", _NODE_WORLD)
        # Seconds (not ms), one series per SLA phase: QMTL's dashboards read
        # {phase="total"} against total_deadline_ms and the wait phases against theirs.
        self.sla_deadline_seconds = Histogram(
            "seamless_sla_deadline_seconds",
            "Fetch time per SLA phase (storage_wait, backfill_wait, live_wait, total)",
            (*_NODE_WORLD, "phase"),
            registry=registry,
        )
        # Conformance.
        self.conformance_flags = counter(
            "seamless_conformance_flag_total",
            "Conformance flags raised, by flag type",
            (*_NODE_WORLD, "flag_type"),
        )
        self.conformance_warnings = counter(
            "seamless_conformance_warning_total", "Conformance warnings", _NODE_WORLD
        )
        # Backfill and coverage.
        self.backfill_rows = counter("seamless_backfill_rows_total", "Rows backfilled", _NODE)
        self.backfill_completion_ratio = gauge(
            "backfill_completion_ratio", "Completed / claimed backfill windows", _NODE
        )
        self.coverage_ratio = gauge("coverage_ratio", "Covered / requested bars", _NODE_WORLD)
        self.gap_repair_latency_ms = hist(
            "gap_repair_latency_ms", "From gap detection to repaired", _NODE
        )
        # Rate limiting.
        self.rl_tokens_available = gauge(
            "seamless_rl_tokens_available", "Tokens left in the bucket", ("key",)
        )
        self.rl_dropped = counter(
            "seamless_rl_dropped_total", "Requests refused by the limiter", ("key",)
        )
        self.rl_penalty = counter(
            "seamless_rl_penalty_total", "429/418 penalties applied", ("key", "status")
        )
        self.rl_redis_available = gauge(
            "seamless_rl_redis_available", "1 while the Redis limiter is reachable", ("key",)
        )
        # Artifacts and reproducibility.
        self.artifact_publish_latency_ms = hist(
            "artifact_publish_latency_ms", "Artifact publication time", ("node_id",)
        )
        self.artifact_bytes_written = counter(
            "artifact_bytes_written", "Artifact bytes written", ("node_id",)
        )
        self.fingerprint_collisions = counter(
            "fingerprint_collisions", "Same fingerprint, different bytes (refused)", ("node_id",)
        )
        self.as_of_advancement_events = counter(
            "as_of_advancement_events", "Monotonic as_of promotions", ("node_id", "world_id")
        )
        # Governance.
        self.domain_gate_holds = counter(
            "domain_gate_holds", "HOLD downgrades", ("node_id", "world_id", "reason")
        )
        self.partial_fill_returns = counter(
            "partial_fill_returns", "PARTIAL_FILL downgrades", ("node_id", "world_id", "reason")
        )
        self.live_staleness_seconds = gauge(
            "live_staleness_seconds", "Age of the newest bar served", ("node_id", "world_id")
        )
        # Coordinator.
        self.coordinator_leases = counter(
            "seamless_coordinator_leases_total", "Lease transitions", ("event",)
        )


_default: SeamlessMetrics | None = None
_lock = threading.Lock()


def default_metrics() -> SeamlessMetrics:
    """The process-wide catalog on prometheus-client's global ``REGISTRY`` (created once)."""
    global _default
    with _lock:
        if _default is None:
            _default = SeamlessMetrics(REGISTRY)
        return _default
