"""Structured log events: fixed names (SPEC §12), fields as record attributes.

Each module logs through its own ``logging.getLogger(__name__)`` with :func:`log_event`; the
event name is the message and the fields travel in ``extra=`` so handlers and tests read them
as attributes (``record.node_id``). ``record.event`` holds the name and ``record.event_fields``
the field names, which is what :class:`JsonFormatter` emits. ``QMTL_LOG_FORMAT=json`` switches
:func:`configure_logging` to one JSON object per line. Required fields are checked: a missing
one is a bug and raises, so tests catch it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "ARTIFACT_PUBLISHED",
    "AS_OF_ADVANCED",
    "BACKFILL_ATTEMPT",
    "BACKFILL_FAILED",
    "BACKFILL_RETRY",
    "BACKFILL_SUCCEEDED",
    "COORDINATOR_CLAIMED",
    "COORDINATOR_CLAIM_FAILED",
    "COORDINATOR_COMPLETED",
    "COORDINATOR_EXPIRED",
    "COORDINATOR_FAILED",
    "DOMAIN_GATE_DOWNGRADE",
    "DOMAIN_GATE_MISSING_ARTIFACT",
    "DOMAIN_GATE_MISSING_AS_OF",
    "EVENT_FIELDS",
    "FINGERPRINT_PREVIEW_MISMATCH",
    "RATE_LIMIT_PENALTY",
    "RATE_LIMIT_REDIS_RESTORED",
    "RATE_LIMIT_REDIS_UNAVAILABLE",
    "SLA_DOWNGRADE",
    "SLA_PHASE_EXCEEDED",
    "JsonFormatter",
    "configure_logging",
    "log_event",
]

BACKFILL_ATTEMPT: Final = "seamless.backfill.attempt"
BACKFILL_SUCCEEDED: Final = "seamless.backfill.succeeded"
BACKFILL_RETRY: Final = "seamless.backfill.retry"
BACKFILL_FAILED: Final = "seamless.backfill.failed"
COORDINATOR_CLAIMED: Final = "seamless.backfill.coordinator_claimed"
COORDINATOR_COMPLETED: Final = "seamless.backfill.coordinator_completed"
COORDINATOR_FAILED: Final = "seamless.backfill.coordinator_failed"
COORDINATOR_EXPIRED: Final = "seamless.backfill.coordinator_expired"
COORDINATOR_CLAIM_FAILED: Final = "seamless.coordinator.claim_failed"
DOMAIN_GATE_DOWNGRADE: Final = "seamless.domain_gate.downgrade"
DOMAIN_GATE_MISSING_AS_OF: Final = "seamless.domain_gate.missing_as_of"
DOMAIN_GATE_MISSING_ARTIFACT: Final = "seamless.domain_gate.missing_artifact"
SLA_PHASE_EXCEEDED: Final = "seamless.sla.phase_exceeded"
SLA_DOWNGRADE: Final = "seamless.sla.downgrade"
RATE_LIMIT_PENALTY: Final = "seamless.rate_limit.penalty"
RATE_LIMIT_REDIS_UNAVAILABLE: Final = "seamless.rate_limit.redis_unavailable"
RATE_LIMIT_REDIS_RESTORED: Final = "seamless.rate_limit.redis_restored"
ARTIFACT_PUBLISHED: Final = "seamless.artifact.published"
FINGERPRINT_PREVIEW_MISMATCH: Final = "seamless.fingerprint.preview_mismatch"
AS_OF_ADVANCED: Final = "seamless.as_of.advanced"

_BATCH = ("batch_id", "node_id", "interval", "start", "end", "attempt", "max_attempts", "source")
_LEASE = (
    "coordinator_id", "lease_key", "node_id", "interval", "batch_start", "batch_end", "world",
    "requested_as_of", "worker", "lease_token", "lease_until_ms", "completion_ratio",
)  # fmt: skip
_DOWNGRADE = (
    "node_id", "interval", "world_id", "execution_domain", "from_mode", "to_mode", "reason",
    "dataset_fingerprint", "as_of",
)  # fmt: skip

#: Required fields of every event (SPEC §12). Extra fields are allowed.
EVENT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    BACKFILL_ATTEMPT: _BATCH,
    BACKFILL_SUCCEEDED: (*_BATCH, "rows", "duration_ms"),
    BACKFILL_RETRY: (*_BATCH, "error"),
    BACKFILL_FAILED: (*_BATCH, "error"),
    COORDINATOR_CLAIMED: _LEASE,
    COORDINATOR_COMPLETED: _LEASE,
    COORDINATOR_FAILED: (*_LEASE, "reason"),
    COORDINATOR_EXPIRED: _LEASE,
    COORDINATOR_CLAIM_FAILED: ("lease_key", "error"),
    DOMAIN_GATE_DOWNGRADE: _DOWNGRADE,
    DOMAIN_GATE_MISSING_AS_OF: ("node_id", "world_id", "execution_domain"),
    DOMAIN_GATE_MISSING_ARTIFACT: ("node_id", "world_id", "execution_domain", "as_of"),
    SLA_PHASE_EXCEEDED: ("node_id", "phase", "elapsed_ms", "budget_ms", "mode"),
    SLA_DOWNGRADE: ("node_id", "phase", "mode"),
    RATE_LIMIT_PENALTY: ("key", "status", "retry_after_ms", "penalty_ms"),
    RATE_LIMIT_REDIS_UNAVAILABLE: ("key", "error"),
    RATE_LIMIT_REDIS_RESTORED: ("key",),
    ARTIFACT_PUBLISHED: ("node_id", "dataset_fingerprint", "as_of", "rows", "bytes"),
    FINGERPRINT_PREVIEW_MISMATCH: ("node_id", "preview_fingerprint", "dataset_fingerprint"),
    AS_OF_ADVANCED: ("node_id", "world_id", "previous", "current"),
}

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log ``event`` with ``fields`` as record attributes; unknown events and missing
    required fields raise ``ValueError`` (a programming error, caught by the tests)."""
    required = EVENT_FIELDS.get(event)
    if required is None:
        raise ValueError(f"unknown log event {event!r}")
    missing = [name for name in required if name not in fields]
    if missing:
        raise ValueError(f"log event {event!r} lacks fields {missing}")
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"log event {event!r}: field names {sorted(clash)} are reserved")
    if logger.isEnabledFor(level):
        extra = {**fields, "event": event, "event_fields": tuple(fields)}
        logger.log(level, event, extra=extra)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO UTC), ``level``, ``logger``, ``event`` and the
    event's fields (non-JSON values are rendered with ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", record.getMessage()),
        }
        for name in getattr(record, "event_fields", ()):
            payload[name] = getattr(record, name, None)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, sort_keys=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{n}={getattr(record, n, None)}" for n in getattr(record, "event_fields", ())
        )
        return f"{line} {fields}" if fields else line


def configure_logging(fmt: str | None = None, *, level: int = logging.INFO) -> None:
    """Install one stderr handler on the ``qmtl`` logger: JSON when ``fmt`` (or
    ``QMTL_LOG_FORMAT``) is ``json``, else human text with ``key=value`` fields."""
    chosen = (fmt or os.environ.get("QMTL_LOG_FORMAT") or "text").lower()
    if chosen not in ("json", "text"):
        raise ValueError(f"QMTL_LOG_FORMAT must be 'json' or 'text', got {chosen!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if chosen == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("qmtl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
