"""What a fetch emits to Prometheus: the SLA phase histograms, the deadline by
phase, conformance flags and warnings, coverage, downgrades, staleness — all derived from the
fetch's metadata and conformance report, so metrics and the returned value never disagree —
and the warnings of ``seamless.observability``'s thresholds it crossed (the same thresholds
the shipped Prometheus alerts use, for whoever reads logs rather than dashboards)."""

from __future__ import annotations

import logging

from qmtl.runtime.sdk._config_models import ObservabilityConfig
from qmtl.runtime.sdk.conformance import ConformanceReport
from qmtl.runtime.sdk.events import THRESHOLD_CROSSED, log_event
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata
from qmtl.runtime.sdk.metrics import SeamlessMetrics

__all__ = ["crossed_thresholds", "observe_fetch"]

logger = logging.getLogger(__name__)


def crossed_thresholds(
    meta: SeamlessFetchMetadata, thresholds: ObservabilityConfig
) -> list[tuple[str, float, float]]:
    """``(measure, value, threshold)`` for each threshold the fetch crossed: it served less
    than ``coverage_ratio_threshold`` of its range, or its storage read or backfill wait
    took longer than the ``*_warn_ms`` durations (milliseconds)."""
    crossed: list[tuple[str, float, float]] = []
    if meta.coverage_ratio < thresholds.coverage_ratio_threshold:
        crossed.append(("coverage_ratio", meta.coverage_ratio, thresholds.coverage_ratio_threshold))
    for measure, phase, limit in (
        ("storage_wait_ms", "storage_wait", thresholds.storage_wait_warn_ms),
        ("backfill_wait_ms", "backfill_wait", thresholds.backfill_wait_warn_ms),
    ):
        elapsed = meta.sla_phases_ms.get(phase)
        if elapsed is not None and elapsed > limit:
            crossed.append((measure, elapsed, float(limit)))
    return crossed


def observe_fetch(
    m: SeamlessMetrics,
    meta: SeamlessFetchMetadata,
    report: ConformanceReport | None,
    thresholds: ObservabilityConfig | None = None,
) -> None:
    """Every metric one fetch feeds, from its metadata and conformance report (``None`` for
    a result served from the cache: its bars were conformed, and counted, when cached).
    Downgrades are counted by the governor, once per reason. With ``thresholds``, each one
    crossed is logged as ``seamless.observability.threshold_crossed`` (WARNING)."""
    for measure, value, limit in crossed_thresholds(meta, thresholds) if thresholds else ():
        log_event(
            logger, THRESHOLD_CROSSED, level=logging.WARNING, node_id=meta.node_id,
            interval=meta.interval, measure=measure, value=value, threshold=limit,
        )  # fmt: skip
    labels = {
        "node_id": meta.node_id,
        "interval": str(meta.interval),
        "world_id": meta.world_id or "",
    }
    phases = {
        "storage_wait": m.storage_wait_ms,
        "backfill_wait": m.backfill_wait_ms,
        "live_wait": m.live_wait_ms,
        "total": m.total_ms,
    }
    for phase, elapsed in meta.sla_phases_ms.items():
        phases[phase].labels(**labels).observe(elapsed)
    # In seconds, one series per phase: the whole fetch as phase="total", then each phase.
    phase_ms = {"total": 0.0, **meta.sla_phases_ms}
    for phase, elapsed in phase_ms.items():
        m.sla_deadline_seconds.labels(**labels, phase=phase).observe(elapsed / 1000.0)
    if report is not None:
        for flag, count in report.flags.items():
            if count:
                m.conformance_flags.labels(**labels, flag_type=flag).inc(count)
        if report.warnings:
            m.conformance_warnings.labels(**labels).inc(len(report.warnings))
    m.coverage_ratio.labels(**labels).set(meta.coverage_ratio)
    if meta.staleness_ms is not None:
        m.live_staleness_seconds.labels(node_id=meta.node_id, world_id=labels["world_id"]).set(
            meta.staleness_ms / 1000.0
        )
