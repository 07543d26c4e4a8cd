"""Structured log events: fixed names, fields as record attributes.

Each module logs through its own ``logging.getLogger(__name__)`` with :func:`log_event`; the
event name is the message and the fields travel in ``extra=`` so handlers and tests read them
as attributes (``record.node_id``). ``record.event`` holds the name and ``record.event_fields``
the field names, which is what :class:`JsonFormatter` emits. :func:`configure_logging` installs
one stderr handler: one JSON object per line (``QMTL_LOG_FORMAT=json``, for operations) or one
human sentence per warning or error (:class:`HumanFormatter`, the reason always shown).
Required fields are checked: a missing one is a bug and raises, so tests catch it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from qmtl.runtime.sdk.timestamps import format_iso

__all__ = [
    "ARCHIVE_FALLBACK",
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
    "LIVE_RECONNECTING",
    "LOG_FORMATS",
    "RATE_LIMIT_PENALTY",
    "RATE_LIMIT_REDIS_RESTORED",
    "RATE_LIMIT_REDIS_UNAVAILABLE",
    "SLA_DOWNGRADE",
    "SLA_PHASE_EXCEEDED",
    "THRESHOLD_CROSSED",
    "HumanFormatter",
    "JsonFormatter",
    "batch_fields",
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
LIVE_RECONNECTING: Final = "seamless.live.reconnecting"
#: An archive file could not be used (missing, checksum, corrupt, unavailable): its window
#: is fetched from the REST API instead.
ARCHIVE_FALLBACK: Final = "seamless.archive.fallback"
#: A fetch or a backfill crossed one of ``seamless.observability``'s thresholds (``measure``:
#: coverage_ratio, storage_wait_ms, backfill_wait_ms or backfill_completion_ratio).
THRESHOLD_CROSSED: Final = "seamless.observability.threshold_crossed"

_BATCH = ("batch_id", "node_id", "interval", "start", "end", "attempt", "max_attempts", "source")
_LEASE = (
    "coordinator_id", "lease_key", "node_id", "interval", "batch_start", "batch_end", "world",
    "requested_as_of", "worker", "lease_token", "lease_until_ms", "completion_ratio",
)  # fmt: skip
_DOWNGRADE = (
    "node_id", "interval", "world_id", "execution_domain", "from_mode", "to_mode", "reason",
    "dataset_fingerprint", "as_of",
)  # fmt: skip

#: Required fields of every event. Extra fields are allowed.
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
    LIVE_RECONNECTING: ("node_id", "interval", "delay_ms", "attempt", "error"),
    THRESHOLD_CROSSED: ("node_id", "interval", "measure", "value", "threshold"),
    ARCHIVE_FALLBACK: ("node_id", "interval", "window", "kind", "error"),
}

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def batch_fields(
    node_id: str, interval: int, start: int, end: int, *, max_attempts: int, source: str
) -> dict[str, Any]:
    """The fields every ``seamless.backfill.*`` event of one batch carries, but ``attempt``
    (``batch_id`` is ``"{node_id}:{interval}:{start}:{end}"``)."""
    return {
        "batch_id": f"{node_id}:{interval}:{start}:{end}", "node_id": node_id,
        "interval": interval, "start": start, "end": end, "max_attempts": max_attempts,
        "source": source,
    }  # fmt: skip


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


class HumanFormatter(logging.Formatter):
    """One line per record for people at a terminal: the event said in words, with the
    reason always visible, e.g. ``backfill failed: ohlcv:binance:BTC/USDT:1m
    [2024-01-01T00:00:00Z, 2024-01-01T15:00:00Z) after 5 attempts: ExchangeUnavailableError:
    ...``. Events without a sentence of their own print as ``<event>: key=value, ...``; plain
    records as ``<level>: <message>``. An exception is summarised on the same line (its
    type and message), never as a traceback: tracebacks are for bugs, and bugs do not go
    through logging. Formatting never raises (a log line must not take a command down)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            line = self._sentence(record)
        except Exception:  # a malformed field: fall back to the generic form
            line = _generic(record)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line += f": {type(exc).__name__}: {exc}"
        return " ".join(line.splitlines())  # one line, whatever the fields held

    @staticmethod
    def _sentence(record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        if event is None:
            return f"{record.levelname.lower()}: {record.getMessage()}"
        render = _SENTENCES.get(event)
        return render(_Fields(record)) if render is not None else _generic(record)


class _Fields:
    """Attribute access to a record's event fields (``"?"`` for an absent one)."""

    def __init__(self, record: logging.LogRecord) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name, "?")

    def span(self) -> str:
        return f"[{_iso(self.start)}, {_iso(self.end)})"


def _iso(value: object) -> str:
    return format_iso(value) if isinstance(value, int | float) else str(value)


def _generic(record: logging.LogRecord) -> str:
    fields = ", ".join(
        f"{n}={getattr(record, n, None)}" for n in getattr(record, "event_fields", ())
    )
    name = str(getattr(record, "event", record.getMessage())).removeprefix("seamless.")
    return f"{name}: {fields}" if fields else name


def _backfill_failed(f: _Fields) -> str:
    if f.attempt == 0:  # the store was failing: the batch was never fetched
        return f"backfill failed: {f.node_id} {f.span()}: {f.error}"
    attempts = "1 attempt" if f.attempt == 1 else f"{f.attempt} attempts"
    return f"backfill failed: {f.node_id} {f.span()} after {attempts}: {f.error}"


_SENTENCES: Final[Mapping[str, Callable[[_Fields], str]]] = {
    BACKFILL_ATTEMPT: lambda f: (
        f"backfill attempt {f.attempt}/{f.max_attempts}: {f.node_id} {f.span()}"
    ),
    BACKFILL_SUCCEEDED: lambda f: (
        f"backfill stored {f.rows} bars: {f.node_id} {f.span()} (attempt {f.attempt})"
    ),
    BACKFILL_RETRY: lambda f: (
        f"backfill retry: {f.node_id} {f.span()} attempt {f.attempt}/{f.max_attempts} "
        f"failed: {f.error}"
    ),
    BACKFILL_FAILED: _backfill_failed,
    COORDINATOR_FAILED: lambda f: f"coordinator lease {f.lease_key} failed: {f.reason}",
    COORDINATOR_CLAIM_FAILED: lambda f: f"coordinator claim of {f.lease_key} failed: {f.error}",
    SLA_PHASE_EXCEEDED: lambda f: (
        f"SLA phase {f.phase} over budget for {f.node_id}: {f.elapsed_ms:.0f} ms > "
        f"{f.budget_ms:.0f} ms (on violation: {f.mode})"
    ),
    SLA_DOWNGRADE: lambda f: f"SLA downgrade: {f.node_id} served {f.mode} after {f.phase}",
    DOMAIN_GATE_DOWNGRADE: lambda f: (
        f"domain gate: {f.node_id} downgraded {f.from_mode} -> {f.to_mode}: {f.reason}"
    ),
    RATE_LIMIT_PENALTY: lambda f: (
        f"rate limit: {f.key} got HTTP {f.status}, pausing the key {f.penalty_ms} ms"
    ),
    RATE_LIMIT_REDIS_UNAVAILABLE: lambda f: (
        f"rate limiter: Redis unavailable for {f.key}, using a local bucket: {f.error}"
    ),
    RATE_LIMIT_REDIS_RESTORED: lambda f: f"rate limiter: Redis answers again for {f.key}",
}

#: The formats :func:`configure_logging` accepts (``seamless.observability.log_format``).
LOG_FORMATS: Final = ("text", "json")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of
    the moment it was built: a progress display (rich) and test capture replace
    ``sys.stderr`` for a while, and log lines must go through their replacement."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(fmt: str | None = None, *, level: int | None = None) -> None:
    """Install one stderr handler on the ``qmtl`` logger (replacing any earlier one).

    ``fmt="json"``: :class:`JsonFormatter`, every event from INFO up (for operations);
    ``"text"``: :class:`HumanFormatter`, warnings and errors only (for people). ``None``
    takes ``seamless.observability.log_format`` as the configuration loader resolves it
    (``QMTL_LOG_FORMAT``), so the environment is read in one place only. ``level``
    overrides the level of the chosen format."""
    if fmt is None:
        from qmtl.runtime.sdk.config import load_config

        fmt = load_config({}).seamless.observability.log_format
    chosen = fmt.lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(
            f"log format (QMTL_LOG_FORMAT, seamless.observability.log_format) must be "
            f"'json' or 'text', got {fmt!r}"
        )
    handler = _StderrHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
        chosen_level = logging.INFO if level is None else level
    else:
        handler.setFormatter(HumanFormatter())
        chosen_level = logging.WARNING if level is None else level
    # On the handler too: a caller that lowers the logger's level for its own handler (the
    # demo counts INFO events) must not make the human output verbose.
    handler.setLevel(chosen_level)
    root = logging.getLogger("qmtl")
    root.handlers[:] = [handler]
    root.setLevel(chosen_level)
    root.propagate = False
