"""The event vocabulary and the metrics catalog are the spec's, verbatim."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from qmtl.runtime.sdk import events
from qmtl.runtime.sdk.events import BACKFILL_SUCCEEDED, JsonFormatter, log_event
from qmtl.runtime.sdk.metrics import SeamlessMetrics

SPEC_EVENTS = {
    "seamless.backfill.attempt", "seamless.backfill.succeeded", "seamless.backfill.retry",
    "seamless.backfill.failed", "seamless.backfill.coordinator_claimed",
    "seamless.backfill.coordinator_completed", "seamless.backfill.coordinator_failed",
    "seamless.backfill.coordinator_expired", "seamless.domain_gate.downgrade",
    "seamless.domain_gate.missing_as_of", "seamless.domain_gate.missing_artifact",
    "seamless.sla.phase_exceeded", "seamless.sla.downgrade", "seamless.rate_limit.penalty",
    "seamless.rate_limit.redis_unavailable", "seamless.rate_limit.redis_restored",
    "seamless.artifact.published", "seamless.fingerprint.preview_mismatch",
    "seamless.as_of.advanced", "seamless.coordinator.claim_failed",
}  # fmt: skip

SPEC_METRICS = {
    "seamless_storage_wait_ms", "seamless_backfill_wait_ms", "seamless_live_wait_ms",
    "seamless_total_ms", "seamless_sla_deadline_seconds", "seamless_conformance_flag_total",
    "seamless_conformance_warning_total", "seamless_backfill_rows_total",
    "backfill_completion_ratio", "coverage_ratio", "gap_repair_latency_ms",
    "seamless_rl_tokens_available", "seamless_rl_dropped_total", "seamless_rl_penalty_total",
    "seamless_rl_redis_available", "artifact_publish_latency_ms", "artifact_bytes_written",
    "fingerprint_collisions", "as_of_advancement_events", "domain_gate_holds",
    "partial_fill_returns", "live_staleness_seconds", "seamless_coordinator_leases_total",
}  # fmt: skip


#: Events beyond the contract's list, each with what it reports.
ADDED_EVENTS = {
    "seamless.live.reconnecting",  # a websocket live feed lost its connection: delay, attempt
    # a fetch or backfill crossed a seamless.observability threshold: measure, value, threshold
    "seamless.observability.threshold_crossed",
    # an archive file could not be used; its window is fetched from REST: window, kind, error
    "seamless.archive.fallback",
}


def test_every_spec_event_is_defined() -> None:
    assert set(events.EVENT_FIELDS) == SPEC_EVENTS | ADDED_EVENTS


def test_log_event_sets_fields_as_attributes(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("qmtl.test")
    fields: dict[str, Any] = dict(
        batch_id="b", node_id="n", interval=60, start=0, end=60, attempt=1, max_attempts=5,
        source="ccxt", rows=1, duration_ms=2.5,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="qmtl"):
        log_event(logger, BACKFILL_SUCCEEDED, **fields)
    (record,) = caplog.records
    assert record.getMessage() == "seamless.backfill.succeeded"
    assert record.event == BACKFILL_SUCCEEDED  # type: ignore[attr-defined]
    assert {k: getattr(record, k) for k in fields} == fields
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == BACKFILL_SUCCEEDED and line["rows"] == 1 and line["level"] == "info"


def test_log_event_refuses_unknown_events_and_missing_or_reserved_fields() -> None:
    logger = logging.getLogger("qmtl.test")
    with pytest.raises(ValueError, match="unknown log event"):
        log_event(logger, "seamless.nope")
    with pytest.raises(ValueError, match=r"lacks fields \['key'\]"):
        log_event(logger, events.RATE_LIMIT_REDIS_RESTORED)
    with pytest.raises(ValueError, match="reserved"):
        log_event(logger, events.RATE_LIMIT_REDIS_RESTORED, key="k", module="x")


def test_configure_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    events.configure_logging("json")
    try:
        log_event(logging.getLogger("qmtl.x"), events.RATE_LIMIT_REDIS_RESTORED, key="ccxt:b")
        out = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert out["event"] == "seamless.rate_limit.redis_restored" and out["key"] == "ccxt:b"
        with pytest.raises(ValueError, match="QMTL_LOG_FORMAT"):
            events.configure_logging("xml")
    finally:
        logging.getLogger("qmtl").handlers.clear()
        logging.getLogger("qmtl").propagate = True


def test_metric_catalog_names_on_a_fresh_registry() -> None:
    registry = CollectorRegistry()
    metrics = SeamlessMetrics(registry)
    metrics.backfill_rows.labels(node_id="n", interval="60").inc(3)
    metrics.fingerprint_collisions.labels(node_id="n").inc()
    metrics.storage_wait_ms.labels(node_id="n", interval="60", world_id="w").observe(4)
    families = {m.name for m in registry.collect()}
    # prometheus-client drops a trailing _total from counter family names.
    assert {re.sub(r"_total$", "", n) for n in SPEC_METRICS} == families
    exposition = generate_latest(registry).decode()
    assert 'seamless_backfill_rows_total{interval="60",node_id="n"} 3.0' in exposition
    assert "fingerprint_collisions_total" in exposition
    assert (
        registry.get_sample_value(
            "seamless_storage_wait_ms_count", {"node_id": "n", "interval": "60", "world_id": "w"}
        )
        == 1.0
    )


def test_sla_deadline_seconds_is_labelled_by_phase() -> None:
    registry = CollectorRegistry()
    metrics = SeamlessMetrics(registry)
    node = {"node_id": "n", "interval": "60", "world_id": "w"}
    metrics.sla_deadline_seconds.labels(**node, phase="total").observe(1.2)
    metrics.sla_deadline_seconds.labels(**node, phase="backfill_wait").observe(0.9)
    (family,) = (m for m in registry.collect() if m.name == "seamless_sla_deadline_seconds")
    assert family.type == "histogram"
    total = {**node, "phase": "total"}
    assert registry.get_sample_value("seamless_sla_deadline_seconds_count", total) == 1.0
    assert registry.get_sample_value("seamless_sla_deadline_seconds_sum", total) == 1.2
    backfill = {**node, "phase": "backfill_wait"}
    assert registry.get_sample_value("seamless_sla_deadline_seconds_sum", backfill) == 0.9
    # Buckets are in seconds: 1.2 s is under the 2.5 s bucket, over the 1 s one.
    bucket = "seamless_sla_deadline_seconds_bucket"
    assert registry.get_sample_value(bucket, {**total, "le": "2.5"}) == 1.0
    assert registry.get_sample_value(bucket, {**total, "le": "1.0"}) == 0.0
    with pytest.raises(ValueError, match="Incorrect label"):
        metrics.sla_deadline_seconds.labels(**node).observe(1.0)  # the phase is required
