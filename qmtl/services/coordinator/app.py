"""The coordinator's HTTP/JSON protocol (aiohttp), over a :class:`LeaseStore`.

Routes (request and response bodies are JSON objects):

- ``POST /v1/leases/claim {key, lease_ms}`` → ``200 {lease: {key, token, lease_until_ms},
  completion_ratio}``; ``409 {held_by, lease_until_ms}`` while another live lease holds it.
- ``POST /v1/leases/complete {key, token}``, ``POST /v1/leases/fail {key, token, reason}`` →
  ``200 {completion_ratio}``; ``409 {error, held_by, lease_until_ms}`` for a stale token;
  ``404 {error}`` for a key never claimed.
- ``POST /v1/leases/heartbeat {key, token, lease_ms}`` → ``200`` like a claim (the lease
  extended), or 409 / 404 as above.
- ``GET /v1/leases/inspect?prefix=...&limit=N`` → ``200 {leases: [...], truncated}``: at most
  ``limit`` (default 100, max 1000) leases whose key starts with ``prefix``, in key order,
  each ``{key, node_id, state, held_by, lease_until_ms, updated_ms, reason}``. Tokens are
  never shown: ``held_by`` is a digest of the holder's token.
- ``POST /v1/leases/release {key, held_by, reason}`` → ``200 {completion_ratio}``: an operator
  fails a stuck lease without its token, naming it by the ``held_by`` inspect showed (16 hex
  digits), so that a lease re-claimed since is never killed: ``409 {error, held_by,
  lease_until_ms}`` when the key is not held (``"not held"``) or held by another holder
  (``"held by another holder"``, ``held_by`` the current one); 404 for a key never claimed.
  Live and expired leases alike; the row becomes ``failed`` (reason ``"released by operator:
  <reason>"``), claimable at once, and the old holder's token is stale. Counted and logged as
  a worker's fail (``event="fail"``, ``seamless.backfill.coordinator_failed``) with the
  row's reason and ``released=True``; the operator's ``reason`` is 1 .. 1 KiB of printable
  text, not blank.
- ``GET /healthz`` → ``{status: "ok"}`` (no auth); ``GET /metrics`` (Prometheus text).

Every request but ``/healthz`` needs ``Authorization: Bearer <token>`` when a token is
configured (401 otherwise). Bodies are at most :data:`MAX_BODY_BYTES` (413) and must be a JSON
object with exactly the listed fields of the right types (``lease_ms`` 1 ms .. 1 day, ``key``
at most 1024 characters and a valid lease key, ``reason`` at most 1 KiB): anything else is a
400 ``{error}`` and changes nothing. A failing store is a 503. Lease decisions are the pure
rules of :mod:`qmtl.runtime.sdk.lease_rules`; this module maps them to HTTP, logs the
coordinator events and counts ``seamless_coordinator_leases_total{event}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qmtl.runtime.sdk import lease_rules as rules
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.events import (
    COORDINATOR_CLAIMED,
    COORDINATOR_COMPLETED,
    COORDINATOR_EXPIRED,
    COORDINATOR_FAILED,
    log_event,
)
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator.lease_rows import LeaseStore

__all__ = ["MAX_BODY_BYTES", "MAX_INSPECT_LIMIT", "CoordinatorState", "create_app", "state_of"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 16 * 1024
MAX_INSPECT_LIMIT: Final = 1000
_MAX_TOKEN_LENGTH: Final = 128
_OPEN_PATHS: Final = frozenset({"/healthz"})
#: What :func:`~qmtl.runtime.sdk.lease_rules.holder_id` returns.
_HOLDER_RE: Final = re.compile(r"[0-9a-f]{16}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, kw_only=True, slots=True)
class CoordinatorState:
    """What the handlers share. ``token`` None: no auth. ``coordinator_id`` names this
    replica in log events."""

    store: LeaseStore
    metrics: SeamlessMetrics
    token: str | None
    coordinator_id: str


_STATE: Final = web.AppKey("coordinator_state", CoordinatorState)


def state_of(app: web.Application) -> CoordinatorState:
    return app[_STATE]


class _Reject(Exception):
    """A request refused with ``status`` and a JSON body (``{"error": message}`` + extra)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": message, **extra}


def _json(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(dict(body), status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Reject as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return web.json_response(exc.body, status=exc.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        return _json({"error": f"request body over {MAX_BODY_BYTES} bytes"}, 413)
    except web.HTTPException as exc:  # the router's 404 / 405
        if exc.status < 400:
            raise
        return _json({"error": exc.reason}, exc.status)
    except StorageError as exc:
        logger.warning("lease store failed: %s", exc)
        return _json({"error": "lease store unavailable"}, 503)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = state_of(request.app).token
    if expected is not None and request.path not in _OPEN_PATHS:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode()
        )
        if not ok:
            raise _Reject(401, "missing or wrong bearer token")
    return await handler(request)


# -- request validation ---------------------------------------------------------------------


async def _body(request: web.Request, fields: Mapping[str, type]) -> dict[str, Any]:
    """The JSON object body with exactly ``fields`` of their types (400 otherwise)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _Reject(413, f"request body over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Reject(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Reject(400, "request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise _Reject(400, f"unknown fields: {', '.join(repr(u)[:40] for u in unknown[:5])}")
    missing = [name for name in fields if name not in body]
    if missing:
        raise _Reject(400, f"missing fields: {', '.join(missing)}")
    for name, kind in fields.items():
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise _Reject(400, f"{name} must be a {'string' if kind is str else 'integer'}")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _key(text: str) -> rules.LeaseKey:
    try:
        return rules.parse_lease_key(text)
    except ValueError as exc:
        raise _Reject(400, str(exc)) from None


def _lease_ms(value: int) -> int:
    if not 1 <= value <= rules.MAX_LEASE_MS:
        raise _Reject(400, f"lease_ms must be within 1..{rules.MAX_LEASE_MS}")
    return value


def _token(value: str) -> str:
    if not value or len(value) > _MAX_TOKEN_LENGTH:
        raise _Reject(400, f"token must be 1..{_MAX_TOKEN_LENGTH} characters")
    return value


def _reason(value: str) -> str:
    if len(value) > rules.MAX_REASON_LENGTH:
        raise _Reject(400, f"reason is over {rules.MAX_REASON_LENGTH} characters")
    return value


def _operator_reason(value: str) -> str:
    """An operator's reason must say something, on one line (it goes into the row and logs)."""
    _reason(value)
    if not value.strip() or not value.isprintable():
        raise _Reject(400, "reason must be non-blank printable text")
    return value


def _held_by(value: str) -> str:
    if not _HOLDER_RE.fullmatch(value):
        raise _Reject(400, "held_by must be 16 lower-case hex digits (as inspect shows it)")
    return value


# -- events and responses -------------------------------------------------------------------


def _log(
    state: CoordinatorState,
    event: str,
    key: rules.LeaseKey,
    record: rules.LeaseRecord,
    ratio: float,
    **extra: Any,
) -> None:
    log_event(
        logger,
        event,
        coordinator_id=state.coordinator_id,
        lease_key=record.key,
        **key.event_fields(),
        worker=record.held_by,
        lease_token=record.held_by,  # a digest: the fencing token itself is never logged
        lease_until_ms=record.lease_until_ms,
        completion_ratio=ratio,
        **extra,
    )


def _lease_body(record: rules.LeaseRecord, ratio: float) -> dict[str, Any]:
    lease = {"key": record.key, "token": record.token, "lease_until_ms": record.lease_until_ms}
    return {"lease": lease, "completion_ratio": ratio}


def _token_refusal(outcome: rules.Conflict | rules.Missing) -> _Reject:
    if isinstance(outcome, rules.Missing):
        return _Reject(404, "unknown lease key")
    return _Reject(
        409, outcome.reason, held_by=outcome.held_by, lease_until_ms=outcome.lease_until_ms
    )


# -- handlers -------------------------------------------------------------------------------


async def _claim(request: web.Request) -> web.Response:
    state = state_of(request.app)
    body = await _body(request, {"key": str, "lease_ms": int})
    key = _key(body["key"])
    lease_ms = _lease_ms(body["lease_ms"])
    token = rules.new_token()
    applied = await state.store.apply(
        str(key),
        key.node_id,
        lambda row, now: rules.claim(row, key, now_ms=now, lease_ms=lease_ms, token=token),
    )
    outcome, ratio = applied.outcome, applied.completion_ratio
    if isinstance(outcome, rules.Conflict):
        return _json({"held_by": outcome.held_by, "lease_until_ms": outcome.lease_until_ms}, 409)
    if outcome.expired is not None:
        state.metrics.coordinator_leases.labels(event="expire").inc()
        _log(state, COORDINATOR_EXPIRED, key, outcome.expired, ratio)
    state.metrics.coordinator_leases.labels(event="claim").inc()
    _log(state, COORDINATOR_CLAIMED, key, outcome.record, ratio)
    return _json(_lease_body(outcome.record, ratio))


async def _settle(
    state: CoordinatorState,
    key: rules.LeaseKey,
    decide: Callable[[rules.LeaseRecord | None, int], rules.TokenOutcome],
    transition: str,
    event: str,
    **extra: Any,
) -> web.Response:
    """Apply a token decision (complete, fail, release) to ``key``'s row: a stale token or an
    unknown key is refused; a change is counted as ``transition`` and logged as ``event``
    (with ``extra``); the answer is the node's completion ratio."""
    applied = await state.store.apply(str(key), key.node_id, decide)
    outcome = applied.outcome
    if isinstance(outcome, rules.Conflict | rules.Missing):
        raise _token_refusal(outcome)
    if isinstance(outcome, rules.Changed):
        state.metrics.coordinator_leases.labels(event=transition).inc()
        _log(state, event, key, outcome.record, applied.completion_ratio, **extra)
    return _json({"completion_ratio": applied.completion_ratio})


async def _complete(request: web.Request) -> web.Response:
    body = await _body(request, {"key": str, "token": str})
    key = _key(body["key"])
    token = _token(body["token"])
    return await _settle(
        state_of(request.app), key, lambda row, now: rules.complete(row, token, now_ms=now),
        "complete", COORDINATOR_COMPLETED,
    )  # fmt: skip


async def _fail(request: web.Request) -> web.Response:
    body = await _body(request, {"key": str, "token": str, "reason": str})
    key = _key(body["key"])
    token = _token(body["token"])
    reason = _reason(body["reason"])
    return await _settle(
        state_of(request.app), key, lambda row, now: rules.fail(row, token, reason, now_ms=now),
        "fail", COORDINATOR_FAILED, reason=reason,
    )  # fmt: skip


async def _release(request: web.Request) -> web.Response:
    body = await _body(request, {"key": str, "held_by": str, "reason": str})
    key = _key(body["key"])
    held_by = _held_by(body["held_by"])
    reason = _operator_reason(body["reason"])
    # Logged with the row's reason ("released by operator: ..."), which says in any log
    # format what happened (release never answers Unchanged).
    return await _settle(
        state_of(request.app), key,
        lambda row, now: rules.release(row, held_by, reason, now_ms=now),
        "fail", COORDINATOR_FAILED, reason=rules.released_reason(reason), released=True,
    )  # fmt: skip


async def _heartbeat(request: web.Request) -> web.Response:
    state = state_of(request.app)
    body = await _body(request, {"key": str, "token": str, "lease_ms": int})
    key = _key(body["key"])
    token = _token(body["token"])
    lease_ms = _lease_ms(body["lease_ms"])
    applied = await state.store.apply(
        str(key),
        key.node_id,
        lambda row, now: rules.heartbeat(row, token, now_ms=now, lease_ms=lease_ms),
    )
    outcome = applied.outcome
    if isinstance(outcome, rules.Conflict | rules.Missing):
        raise _token_refusal(outcome)
    return _json(_lease_body(outcome.record, applied.completion_ratio))


async def _inspect(request: web.Request) -> web.Response:
    state = state_of(request.app)
    query = request.rel_url.query
    unknown = sorted(set(query) - {"prefix", "limit"})
    if unknown:
        raise _Reject(400, f"unknown query parameters: {', '.join(u[:40] for u in unknown[:5])}")
    prefix = query.get("prefix", "")
    if len(prefix) > rules.MAX_KEY_LENGTH or any(not ch.isprintable() for ch in prefix):
        raise _Reject(400, "prefix must be printable and at most 1024 characters")
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_INSPECT_LIMIT:
        raise _Reject(400, f"limit must be an integer within 1..{MAX_INSPECT_LIMIT}")
    limit = int(limit_text)
    records = await state.store.inspect(prefix, limit + 1)
    now_ms = int(time.time() * 1000)
    leases = [
        {
            "key": r.key,
            "node_id": r.node_id,
            "state": rules.effective_state(r, now_ms).value,
            "held_by": r.held_by,
            "lease_until_ms": r.lease_until_ms,
            "updated_ms": r.updated_ms,
            "reason": r.reason,
        }
        for r in records[:limit]
    ]
    return _json({"leases": leases, "truncated": len(records) > limit})


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    payload = generate_latest(state_of(request.app).metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    store: LeaseStore,
    *,
    metrics: SeamlessMetrics,
    token: str | None = None,
    coordinator_id: str | None = None,
) -> web.Application:
    """The coordinator application over an opened ``store``. ``token`` (None or empty: no
    auth) is compared in constant time; ``metrics`` is the catalog ``/metrics`` exposes."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY_BYTES)
    # Every transition's series exists at 0 from the start, so that an alert's increase()
    # sees the first expiry (a series born at 1 has no earlier sample to differ from).
    for event in ("claim", "complete", "fail", "expire"):
        metrics.coordinator_leases.labels(event=event)
    app[_STATE] = CoordinatorState(
        store=store,
        metrics=metrics,
        token=token or None,
        coordinator_id=coordinator_id or f"coordinator-{uuid.uuid4().hex[:8]}",
    )
    app.router.add_post("/v1/leases/claim", _claim)
    app.router.add_post("/v1/leases/complete", _complete)
    app.router.add_post("/v1/leases/fail", _fail)
    app.router.add_post("/v1/leases/heartbeat", _heartbeat)
    app.router.add_post("/v1/leases/release", _release)
    app.router.add_get("/v1/leases/inspect", _inspect)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app
