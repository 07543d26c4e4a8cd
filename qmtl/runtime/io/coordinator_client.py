"""Backfill coordinators: :class:`DistributedBackfillCoordinator`, the HTTP client of the
coordinator service, and :class:`InMemoryBackfillCoordinator` for one process.

Both implement :class:`~qmtl.runtime.sdk.backfill_coordinator.BackfillCoordinator` with the
same semantics (the in-memory one runs the service's rules,
:mod:`~qmtl.runtime.sdk.lease_rules`, on a dict):

- ``claim(key, lease_ms)`` → a :class:`Lease`, or ``None`` while another live lease holds the
  key. A malformed key or ``lease_ms`` (the service's 400), a wrong bearer token (401) or any
  other refusal is a ``ValueError`` carrying the service's error.
- ``complete`` / ``fail`` never raise for a lost lease: a stale token (the lease ran out and
  somebody re-claimed the key: 409) or a key the coordinator does not know (404) changes
  nothing and is logged as ``seamless.backfill.coordinator_expired`` at WARNING.
- ``heartbeat(lease, lease_ms)`` extends a live lease: the extended :class:`Lease`, or
  ``None`` when it was lost (logged the same way).
- The HTTP client maps connection errors, timeouts and 5xx answers to
  :class:`CoordinatorUnavailable` (``raise ... from exc``): callers fall back to in-process
  single flight.

Every transition (claimed, completed, failed) is logged with the fields of section "Structured
logs" of the docs: the key parsed by structure into node id, interval, window, world and
``as_of``; ``worker`` (the constructor's ``worker_id``, default the host name);
``lease_token`` is a digest of the token (:func:`~qmtl.runtime.sdk.lease_rules.holder_id`,
what the service shows as ``held_by``), never the token itself; ``completion_ratio`` is the
coordinator's answer (the last one seen for the node when an answer carries none).

Not thread-safe: use each instance from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from qmtl.runtime.sdk import lease_rules as rules
from qmtl.runtime.sdk.backfill_coordinator import Lease
from qmtl.runtime.sdk.clock import SystemClock
from qmtl.runtime.sdk.errors import SeamlessError
from qmtl.runtime.sdk.events import (
    COORDINATOR_CLAIMED,
    COORDINATOR_COMPLETED,
    COORDINATOR_EXPIRED,
    COORDINATOR_FAILED,
    log_event,
)

if TYPE_CHECKING:
    from types import TracebackType

    from qmtl.runtime.sdk.clock import Clock

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CoordinatorUnavailable",
    "DistributedBackfillCoordinator",
    "InMemoryBackfillCoordinator",
]

logger = logging.getLogger(__name__)

#: Seconds one request to the coordinator may take (connect included) before it counts as
#: unavailable.
DEFAULT_TIMEOUT_S: Final = 5.0


class CoordinatorUnavailable(SeamlessError):
    """The coordinator could not be reached or failed (connection error, timeout, 5xx).
    ``url`` is the coordinator's base URL."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class _Reporter:
    """Logs the lease events of one client (shared by both implementations)."""

    def __init__(self, coordinator_id: str, worker_id: str | None) -> None:
        self.coordinator_id = coordinator_id
        self.worker = worker_id or socket.gethostname()
        self._ratios: dict[str, float] = {}

    def log(
        self,
        event: str,
        lease: Lease,
        ratio: float | None = None,
        *,
        level: int = logging.INFO,
        **extra: Any,
    ) -> None:
        key = rules.parse_lease_key(lease.key)
        if ratio is None:
            ratio = self._ratios.get(key.node_id, 0.0)
        else:
            self._ratios[key.node_id] = ratio
        log_event(
            logger,
            event,
            level=level,
            coordinator_id=self.coordinator_id,
            lease_key=lease.key,
            **key.event_fields(),
            worker=self.worker,
            lease_token=rules.holder_id(lease.token),
            lease_until_ms=lease.lease_until_ms,
            completion_ratio=ratio,
            **extra,
        )

    def lost(self, lease: Lease, action: str, error: str) -> None:
        self.log(COORDINATOR_EXPIRED, lease, level=logging.WARNING, action=action, error=error)


class DistributedBackfillCoordinator:
    """The coordinator service's client (``base_url`` e.g. ``http://coordinator:8787``, the
    value of ``QMTL_SEAMLESS_COORDINATOR_URL``). ``token``: the bearer token
    (``environment.coordinator_token``). ``timeout_s``: per request, connect included. The
    HTTP session opens on the first request; ``aclose()`` (or ``async with``) closes it.
    ``clock`` is accepted for symmetry with :class:`InMemoryBackfillCoordinator`: lease times
    are the service's."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        worker_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"coordinator URL must be http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock or SystemClock()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None
        self._report = _Reporter(self.base_url, worker_id)

    @property
    def worker(self) -> str:
        return self._report.worker

    async def claim(self, key: str, lease_ms: int) -> Lease | None:
        status, body = await self._post("claim", {"key": key, "lease_ms": lease_ms})
        if status == 409:
            return None
        if status != 200:
            raise self._refused("claim", status, body)
        lease = _lease(body, self.base_url)
        self._report.log(COORDINATOR_CLAIMED, lease, _ratio(body))
        return lease

    async def complete(self, lease: Lease) -> None:
        status, body = await self._post("complete", {"key": lease.key, "token": lease.token})
        if status in (404, 409):
            self._report.lost(lease, "complete", _error(body, status))
        elif status != 200:
            raise self._refused("complete", status, body)
        else:
            self._report.log(COORDINATOR_COMPLETED, lease, _ratio(body))

    async def fail(self, lease: Lease, reason: str) -> None:
        reason = reason[: rules.MAX_REASON_LENGTH]
        status, body = await self._post(
            "fail", {"key": lease.key, "token": lease.token, "reason": reason}
        )
        if status in (404, 409):
            self._report.lost(lease, "fail", _error(body, status))
        elif status != 200:
            raise self._refused("fail", status, body)
        else:
            self._report.log(COORDINATOR_FAILED, lease, _ratio(body), reason=reason)

    async def heartbeat(self, lease: Lease, lease_ms: int) -> Lease | None:
        """Extend ``lease`` to ``lease_ms`` from now (never shortens it); ``None``: lost."""
        status, body = await self._post(
            "heartbeat", {"key": lease.key, "token": lease.token, "lease_ms": lease_ms}
        )
        if status in (404, 409):
            self._report.lost(lease, "heartbeat", _error(body, status))
            return None
        if status != 200:
            raise self._refused("heartbeat", status, body)
        return _lease(body, self.base_url)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> DistributedBackfillCoordinator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- transport ------------------------------------------------------------------------

    async def _post(self, action: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=self._headers
            )
        url = f"{self.base_url}/v1/leases/{action}"
        try:
            async with self._session.post(url, json=payload) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CoordinatorUnavailable(
                f"coordinator {self.base_url} unreachable ({action}): {type(exc).__name__}: {exc}",
                url=self.base_url,
            ) from exc
        if status >= 500:
            raise CoordinatorUnavailable(
                f"coordinator {self.base_url} failed ({action}): HTTP {status}: "
                f"{_error(body, status)}",
                url=self.base_url,
            )
        return status, body if isinstance(body, dict) else {}

    def _refused(self, action: str, status: int, body: dict[str, Any]) -> ValueError:
        return ValueError(
            f"coordinator {self.base_url} refused {action}: HTTP {status}: {_error(body, status)}"
        )


def _error(body: object, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {status}"


def _ratio(body: dict[str, Any]) -> float | None:
    value = body.get("completion_ratio")
    return float(value) if isinstance(value, int | float) else None


def _lease(body: dict[str, Any], url: str) -> Lease:
    raw = body.get("lease")
    try:
        if not isinstance(raw, dict):
            raise TypeError("lease is not an object")
        return Lease(str(raw["key"]), str(raw["token"]), int(raw["lease_until_ms"]))
    except (KeyError, TypeError, ValueError):
        raise CoordinatorUnavailable(
            f"coordinator {url} answered without a valid lease", url=url
        ) from None


class InMemoryBackfillCoordinator:
    """Leases in a dict, for one process, with the service's rules and events
    (``coordinator_id="in-memory"``). ``clock`` supplies lease times (``now()`` seconds)."""

    coordinator_id: Final = "in-memory"

    def __init__(self, *, clock: Clock | None = None, worker_id: str | None = None) -> None:
        self.clock = clock or SystemClock()
        self._records: dict[str, rules.LeaseRecord] = {}
        self._claimed: dict[str, int] = {}  # node id -> distinct keys claimed
        self._completed: dict[str, int] = {}  # node id -> of those, completed
        self._report = _Reporter(self.coordinator_id, worker_id)

    @property
    def worker(self) -> str:
        return self._report.worker

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _ratio(self, node_id: str) -> float:
        claimed = self._claimed.get(node_id, 0)
        return self._completed.get(node_id, 0) / claimed if claimed else 0.0

    def _count(self, node_id: str, *, claimed: int = 0, completed: int = 0) -> None:
        self._claimed[node_id] = self._claimed.get(node_id, 0) + claimed
        self._completed[node_id] = self._completed.get(node_id, 0) + completed

    async def claim(self, key: str, lease_ms: int) -> Lease | None:
        parsed = rules.parse_lease_key(key)
        text = str(parsed)
        previous = self._records.get(text)
        outcome = rules.claim(
            previous, parsed, now_ms=self._now_ms(), lease_ms=lease_ms, token=rules.new_token()
        )
        if isinstance(outcome, rules.Conflict):
            return None
        record = outcome.record
        self._records[text] = record
        was_completed = previous is not None and previous.state is rules.LeaseState.COMPLETED
        self._count(parsed.node_id, claimed=previous is None, completed=-int(was_completed))
        lease = Lease(record.key, record.token, record.lease_until_ms)
        self._report.log(COORDINATOR_CLAIMED, lease, self._ratio(parsed.node_id))
        return lease

    async def complete(self, lease: Lease) -> None:
        outcome = rules.complete(self._records.get(lease.key), lease.token, now_ms=self._now_ms())
        if self._lost(outcome, lease, "complete"):
            return
        if isinstance(outcome, rules.Changed):
            self._records[lease.key] = outcome.record
            self._count(outcome.record.node_id, completed=1)
        if isinstance(outcome, rules.Changed | rules.Unchanged):
            # A repeated complete is acknowledged and logged, as the service's 200 is.
            self._report.log(COORDINATOR_COMPLETED, lease, self._ratio(outcome.record.node_id))

    async def fail(self, lease: Lease, reason: str) -> None:
        reason = reason[: rules.MAX_REASON_LENGTH]
        record = self._records.get(lease.key)
        outcome = rules.fail(record, lease.token, reason, now_ms=self._now_ms())
        if self._lost(outcome, lease, "fail"):
            return
        if isinstance(outcome, rules.Changed):
            self._records[lease.key] = outcome.record
            ratio = self._ratio(outcome.record.node_id)
            self._report.log(COORDINATOR_FAILED, lease, ratio, reason=reason)

    async def heartbeat(self, lease: Lease, lease_ms: int) -> Lease | None:
        """Extend ``lease`` to ``lease_ms`` from now (never shortens it); ``None``: lost."""
        record = self._records.get(lease.key)
        outcome = rules.heartbeat(record, lease.token, now_ms=self._now_ms(), lease_ms=lease_ms)
        if self._lost(outcome, lease, "heartbeat") or not isinstance(outcome, rules.Changed):
            return None
        self._records[lease.key] = outcome.record
        return Lease(lease.key, lease.token, outcome.record.lease_until_ms)

    async def aclose(self) -> None:
        """Nothing to release (symmetry with the HTTP client)."""
        await asyncio.sleep(0)

    def _lost(self, outcome: rules.TokenOutcome, lease: Lease, action: str) -> bool:
        if isinstance(outcome, rules.Missing):
            self._report.lost(lease, action, "unknown lease key")
            return True
        if isinstance(outcome, rules.Conflict):
            self._report.lost(lease, action, outcome.reason)
            return True
        return False
