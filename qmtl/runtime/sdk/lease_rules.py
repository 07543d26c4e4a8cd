"""Backfill lease rules, sans I/O: lease keys and the state machine of one key.

A lease key names one window of one node: ``{node_id}:{interval}:{start}:{end}:{world_id}:
{as_of}``. Node ids contain colons, so keys are parsed by structure (:func:`parse_lease_key`),
never by a naive split: the node id is ``ohlcv:{exchange}:{symbol}:{timeframe}`` (five parts
when the symbol carries a settle currency, ``BTC/USDT:USDT``), then three integers, then the
world id (no colon), and everything after it is ``as_of`` (which may hold colons, e.g. an ISO
time). ``world_id`` and ``as_of`` may be empty.

One key's row (:class:`LeaseRecord`) moves through ``held`` → ``completed`` | ``failed``; a
``held`` row whose ``lease_until_ms`` has passed is *expired* (derived from ``now_ms``, never
stored). The decision functions take the row as the store read it (``None``: no row) and
``now_ms`` (epoch milliseconds, the store's clock) and return an outcome; the store writes
``outcome.record`` when the outcome is :class:`Granted` or :class:`Changed`, in the same
transaction it read the row in. Decisions written down:

- ``claim`` is granted when there is no row, or the row is expired, failed or **completed**:
  a completed window may need filling again (a gap repair, a new ``as_of``), and QMTL's
  client treats a claim of a completed key as granted; the worker checks its store's coverage
  before fetching. A live ``held`` row refuses with :class:`Conflict`. Every grant carries a
  new token (the caller supplies it, :func:`new_token`), so a previous holder's token is stale.
- ``complete`` / ``fail`` / ``heartbeat`` need the current token of a ``held`` row; any other
  token is stale: :class:`Conflict`, nothing changes. A holder may still complete or fail
  after its lease ran out as long as nobody re-claimed the key (its work is still the
  latest); ``heartbeat`` extends only a live lease. Completing twice with the same token is
  idempotent (:class:`Unchanged`). No row at all: :class:`Missing`.
- ``release`` is an operator's ``fail`` without the token (a stuck lease, by hand): it names
  the lease by its *holder id* instead, so a lease re-claimed since the operator looked
  (another holder) is refused with :class:`Conflict` and never killed. Only a ``held`` row
  is released, live or expired (an expired row nobody re-claimed still blocks nothing, but
  its holder could still complete it; a release ends that too). The row becomes ``failed``
  with its token kept, so the old holder's complete / fail / heartbeat find a stale token,
  and the key is claimable at once.
- ``completion_ratio`` of a node = completed ÷ claimed windows, counting distinct keys (a
  re-claimed completed window counts as claimed, not completed, until completed again); 0.0
  before any claim.

Tokens are secrets of their holder: what others see (409 bodies, logs, inspect) is
:func:`holder_id`, a digest of the token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from qmtl.runtime.sdk.node_id import TIMEFRAMES, parse_node_id

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LEASE_MS",
    "MAX_REASON_LENGTH",
    "RELEASE_REASON_PREFIX",
    "Changed",
    "ClaimOutcome",
    "Conflict",
    "Granted",
    "LeaseKey",
    "LeaseRecord",
    "LeaseState",
    "Missing",
    "TokenOutcome",
    "Unchanged",
    "claim",
    "complete",
    "completion_ratio",
    "effective_state",
    "fail",
    "heartbeat",
    "holder_id",
    "new_token",
    "parse_lease_key",
    "release",
    "released_reason",
]

MAX_KEY_LENGTH: Final = 1024
#: What a released row's ``reason`` starts with (the operator's reason follows).
RELEASE_REASON_PREFIX: Final = "released by operator: "
#: Longest lease (one day), in milliseconds; the shortest is 1 ms.
MAX_LEASE_MS: Final = 86_400_000
MAX_REASON_LENGTH: Final = 1024

_INT_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_WORLD_RE = re.compile(r"[A-Za-z0-9_.-]{0,128}")
_AS_OF_RE = re.compile(r"[A-Za-z0-9_.:+-]{0,128}")


@dataclass(frozen=True, slots=True)
class LeaseKey:
    """A parsed lease key: a window ``[start, end)`` (epoch seconds, half-open) of
    ``node_id`` with bars of ``interval`` seconds, for ``world_id`` at ``as_of`` (empty
    strings: none). ``str(key)`` is the canonical key text."""

    node_id: str
    interval: int
    start: int
    end: int
    world_id: str = ""
    as_of: str = ""

    def __str__(self) -> str:
        return (
            f"{self.node_id}:{self.interval}:{self.start}:{self.end}:{self.world_id}:{self.as_of}"
        )

    def event_fields(self) -> dict[str, Any]:
        """The window's fields of the coordinator log events (client's and server's)."""
        return {
            "node_id": self.node_id,
            "interval": self.interval,
            "batch_start": self.start,
            "batch_end": self.end,
            "world": self.world_id,
            "requested_as_of": self.as_of,
        }


def _int_part(name: str, text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"lease key: {name} must be a non-negative integer, got {text[:40]!r}")
    return int(text)


def parse_lease_key(text: str) -> LeaseKey:
    """Parse ``{node_id}:{interval}:{start}:{end}:{world_id}:{as_of}`` by structure;
    ``ValueError`` names the bad part. Integers are canonical (no sign, no leading zero) so
    that one window has one key text."""
    if not isinstance(text, str):
        raise ValueError(f"lease key must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("lease key is empty")
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"lease key is {len(text)} characters long (max {MAX_KEY_LENGTH})")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError("lease key contains whitespace or control characters")
    parts = text.split(":")
    # The node id ends at the first timeframe after the symbol: part 3, or part 4 when the
    # symbol has a settle currency.
    width = 4 if len(parts) > 3 and parts[3] in TIMEFRAMES else 5
    if len(parts) < width + 5:
        raise ValueError(
            f"lease key {text[:80]!r} must look like "
            "'{node_id}:{interval}:{start}:{end}:{world_id}:{as_of}'"
        )
    node_text = ":".join(parts[:width])
    try:
        node = parse_node_id(node_text)
    except ValueError as exc:
        raise ValueError(f"lease key: {exc}") from None
    interval_text, start_text, end_text, world_id, *as_of_parts = parts[width:]
    interval = _int_part("interval", interval_text)
    start = _int_part("start", start_text)
    end = _int_part("end", end_text)
    if interval <= 0:
        raise ValueError("lease key: interval must be > 0")
    if end <= start:
        raise ValueError(f"lease key: end {end} must be after start {start}")
    if not _WORLD_RE.fullmatch(world_id):
        raise ValueError(f"lease key: invalid world_id {world_id[:40]!r}")
    as_of = ":".join(as_of_parts)
    if not _AS_OF_RE.fullmatch(as_of):
        raise ValueError(f"lease key: invalid as_of {as_of[:40]!r}")
    return LeaseKey(str(node), interval, start, end, world_id, as_of)


class LeaseState(StrEnum):
    """Stored states are ``held``, ``completed`` and ``failed``; ``expired`` is what a
    ``held`` row past its ``lease_until_ms`` is (:func:`effective_state`)."""

    HELD = "held"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseRecord:
    """One key's row. ``lease_until_ms`` and ``updated_ms`` are epoch milliseconds;
    ``reason`` is the last failure's (empty otherwise)."""

    key: str
    node_id: str
    token: str
    lease_until_ms: int
    state: LeaseState
    reason: str = ""
    updated_ms: int = 0

    @property
    def held_by(self) -> str:
        return holder_id(self.token)


@dataclass(frozen=True, slots=True)
class Granted:
    """A claim was granted: write ``record``. ``expired`` is the previous lease when the
    claim took over one that had run out (the server logs and counts that)."""

    record: LeaseRecord
    expired: LeaseRecord | None = None


@dataclass(frozen=True, slots=True)
class Changed:
    """Complete, fail, heartbeat or release took effect: write ``record``."""

    record: LeaseRecord


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A repeated complete with the current token: nothing to write."""

    record: LeaseRecord


@dataclass(frozen=True, slots=True)
class Conflict:
    """Refused: another live lease holds the key, the token is stale, or (release) the
    lease is not held or held by another holder. Nothing changed. ``held_by`` and
    ``lease_until_ms`` are the row's as it stands."""

    reason: str
    held_by: str
    lease_until_ms: int


@dataclass(frozen=True, slots=True)
class Missing:
    """No lease was ever claimed under the key."""


ClaimOutcome = Granted | Conflict
TokenOutcome = Changed | Unchanged | Conflict | Missing


def new_token() -> str:
    """A fresh random fencing token (128 bits, hex)."""
    return secrets.token_hex(16)


def holder_id(token: str) -> str:
    """What others may see of a token: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def effective_state(record: LeaseRecord, now_ms: int) -> LeaseState:
    """The row's state at ``now_ms``: a ``held`` row whose lease ran out is expired."""
    if record.state is LeaseState.HELD and record.lease_until_ms <= now_ms:
        return LeaseState.EXPIRED
    return record.state


def _check_lease_ms(lease_ms: int) -> None:
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int):
        raise ValueError(f"lease_ms must be an integer, got {lease_ms!r}")
    if not 1 <= lease_ms <= MAX_LEASE_MS:
        raise ValueError(f"lease_ms must be within 1..{MAX_LEASE_MS}, got {lease_ms}")


def claim(
    record: LeaseRecord | None, key: LeaseKey, *, now_ms: int, lease_ms: int, token: str
) -> ClaimOutcome:
    """Claim ``key`` for ``lease_ms`` with the new ``token`` (see the module docstring)."""
    _check_lease_ms(lease_ms)
    state = None if record is None else effective_state(record, now_ms)
    if record is not None and state is LeaseState.HELD:
        return Conflict("held", record.held_by, record.lease_until_ms)
    granted = LeaseRecord(
        key=str(key),
        node_id=key.node_id,
        token=token,
        lease_until_ms=now_ms + lease_ms,
        state=LeaseState.HELD,
        updated_ms=now_ms,
    )
    return Granted(granted, record if state is LeaseState.EXPIRED else None)


def _stale(record: LeaseRecord) -> Conflict:
    return Conflict("stale token", record.held_by, record.lease_until_ms)


def complete(record: LeaseRecord | None, token: str, *, now_ms: int) -> TokenOutcome:
    """The holder of ``token`` filled the window."""
    if record is None:
        return Missing()
    if record.token != token:
        return _stale(record)
    if record.state is LeaseState.COMPLETED:
        return Unchanged(record)
    if record.state is not LeaseState.HELD:
        return _stale(record)
    return Changed(replace(record, state=LeaseState.COMPLETED, updated_ms=now_ms))


def fail(record: LeaseRecord | None, token: str, reason: str, *, now_ms: int) -> TokenOutcome:
    """The holder of ``token`` could not fill the window; it may be claimed again at once."""
    if record is None:
        return Missing()
    if record.token != token or record.state is not LeaseState.HELD:
        return _stale(record)
    failed = replace(
        record, state=LeaseState.FAILED, reason=reason[:MAX_REASON_LENGTH], updated_ms=now_ms
    )
    return Changed(failed)


def heartbeat(
    record: LeaseRecord | None, token: str, *, now_ms: int, lease_ms: int
) -> TokenOutcome:
    """Extend a live lease to ``now_ms + lease_ms`` (never shortens it)."""
    _check_lease_ms(lease_ms)
    if record is None:
        return Missing()
    if record.token != token or effective_state(record, now_ms) is not LeaseState.HELD:
        return _stale(record)
    until = max(record.lease_until_ms, now_ms + lease_ms)
    return Changed(replace(record, lease_until_ms=until, updated_ms=now_ms))


def release(record: LeaseRecord | None, held_by: str, reason: str, *, now_ms: int) -> TokenOutcome:
    """An operator fails the lease held by ``held_by`` (a :func:`holder_id`, as inspect shows
    it) without its token, for ``reason``. :class:`Missing`: no row; :class:`Conflict`
    ``"not held"`` (completed or failed: nothing to release) or ``"held by another holder"``
    (re-claimed since the operator looked): nothing changes. The failed row's ``reason`` is
    :data:`RELEASE_REASON_PREFIX` + ``reason``, cut to :data:`MAX_REASON_LENGTH`."""
    if record is None:
        return Missing()
    if record.state is not LeaseState.HELD:  # live or expired alike (effective_state)
        return Conflict("not held", record.held_by, record.lease_until_ms)
    if record.held_by != held_by:  # public (shown by inspect): no constant-time compare
        return Conflict("held by another holder", record.held_by, record.lease_until_ms)
    return Changed(
        replace(record, state=LeaseState.FAILED, reason=released_reason(reason), updated_ms=now_ms)
    )


def released_reason(reason: str) -> str:
    """The ``reason`` a row released by an operator keeps: :data:`RELEASE_REASON_PREFIX` +
    the operator's ``reason``, cut to :data:`MAX_REASON_LENGTH`."""
    return (RELEASE_REASON_PREFIX + reason)[:MAX_REASON_LENGTH]


def completion_ratio(records: Iterable[LeaseRecord], node_id: str) -> float:
    """Completed ÷ claimed distinct keys of ``node_id`` (0.0 when none was claimed).
    Stores compute the same in SQL; this is the reference."""
    states = {r.key: r.state for r in records if r.node_id == node_id}
    if not states:
        return 0.0
    return sum(s is LeaseState.COMPLETED for s in states.values()) / len(states)
