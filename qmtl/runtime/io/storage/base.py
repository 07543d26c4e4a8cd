"""Shared pieces of the hot-store backends: argument checks, node keys, DSN masking, the
listing queries, the schema-version plan, and :func:`open_storage` (backend by URI). The port
itself — :class:`HistoryStorage`, :class:`LedgerUpdate`, :class:`NodeSummary` and the
conventions every backend honours — is :mod:`qmtl.runtime.sdk.history_storage`; the bar
schema is :mod:`qmtl.runtime.sdk.bars`.

Both backends key rows by a surrogate ``node_key`` found through the SHA-256 of the UTF-8 id,
so an id of any length (PostgreSQL b-tree entries cannot exceed ~2.7 kB) indexes in constant
size; as-of marks are keyed the same way, by :func:`mark_key` of ``(world_id, node_id)``.

Schema versions
---------------
A store marks its layout in a key/value table ``qmtl_meta``: ``schema_version`` (an int,
:data:`SCHEMA_VERSION` for stores this release writes) and ``package_version`` (the
qmtl-seamless that created or last migrated it). Version 0 is the layout releases before
``qmtl_meta`` wrote: ``qmtl_nodes``, ``qmtl_bars``, ``qmtl_ledger`` (and DuckDB's sequence
``qmtl_node_key_seq``) with no ``qmtl_meta``. Version 1 added ``qmtl_meta``; version 2 added
``qmtl_as_of_marks`` (:data:`MARKS_TABLE`). Opening a store, :func:`plan_schema` decides
from what the database holds (:class:`SchemaState`):

- nothing of ours → a new store: the backend runs its version-0 baseline, then every migration;
- all our tables without ``qmtl_meta``, with the expected columns → version 0, migrated in
  place (tables a user added next to them are left alone);
- ``qmtl_meta`` → its ``schema_version``; older ones are migrated, newer ones refused
  (this release cannot know what they changed);
- anything else — another program's DuckDB file, a partial or foreign ``qmtl_*`` layout —
  is refused with a :class:`StorageError`: the store is never silently added to it.

Each backend keeps an ordered migration table ``{from_version: statements}`` (its dialect's
DDL) and applies the steps from the version found up to :data:`SCHEMA_VERSION` in *one*
transaction, then stamps ``qmtl_meta`` (:func:`meta_rows`). The next schema change is one
entry per backend plus ``SCHEMA_VERSION += 1``; ``qmtl_meta`` itself never changes shape,
since reading it is how every release finds the version. Baselines and migrations are
history: they stay verbatim even when the bar schema moves on (that move is a new migration).

A read-only open (``open_storage(dsn, read_only=True)``) never creates or migrates: it reads
stores from :data:`OLDEST_READABLE_VERSION` up and refuses the rest with a hint. A store older
than :data:`MARKS_SINCE_VERSION` opened read-only has no marks: ``as_of_mark`` answers ``None``.
"""

from __future__ import annotations

import hashlib
import importlib
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np

from qmtl import __version__
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import CoverageSegment
from qmtl.runtime.sdk.history_storage import (
    HistoryStorage,
    LedgerUpdate,
    NodeSummary,
    summarize_node,
)
from qmtl.runtime.sdk.timestamps import InstantLike, to_epoch_seconds

__all__ = [
    "DEFAULT_DSN",
    "LIST_LEDGER_SQL",
    "LIST_NODES_SQL",
    "MARKS_SINCE_VERSION",
    "MARKS_TABLE",
    "META_TABLE",
    "OLDEST_READABLE_VERSION",
    "SCHEMA_VERSION",
    "STORE_COLUMNS",
    "SUPPORTED_SCHEMES",
    "SchemaState",
    "check_as_of_ms",
    "check_ledger_update",
    "check_migrations",
    "check_node_id",
    "check_span",
    "check_world_id",
    "mark_key",
    "masked_dsn",
    "meta_rows",
    "migration_steps",
    "node_hash",
    "node_summaries",
    "open_storage",
    "plan_schema",
    "segments_from_rows",
    "short_id",
]

#: Used when ``open_storage(None)``: a DuckDB file relative to the working directory.
DEFAULT_DSN = "duckdb:///.qmtl/seamless.duckdb"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_node_id(node_id: object) -> str:
    """Validate a node id at the storage boundary (see :mod:`~qmtl.runtime.sdk.history_storage`
    for why NUL is refused)."""
    return _check_id(node_id, "node id", empty_ok=False)


def check_world_id(world_id: object) -> str:
    """Validate a world id like a node id, except that ``""`` ("no world") is allowed."""
    return _check_id(world_id, "world id", empty_ok=True)


def _check_id(value: object, what: str, *, empty_ok: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{what} is empty")
    if "\x00" in value:
        raise ValueError(f"{what} contains NUL, which storage cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    return value


def check_as_of_ms(as_of_ms: object) -> int:
    """Validate an as-of mark: an ``int`` (``bool`` refused) of epoch milliseconds in int64."""
    if isinstance(as_of_ms, bool) or not isinstance(as_of_ms, int):
        raise ValueError(f"as_of_ms must be an int of epoch milliseconds, got {as_of_ms!r}")
    if not _INT64_MIN <= as_of_ms <= _INT64_MAX:
        raise ValueError(f"as_of_ms {as_of_ms} is outside int64")
    return as_of_ms


def mark_key(world_id: str, node_id: str) -> bytes:
    """The 32-byte key of the as-of mark of ``(world_id, node_id)``: SHA-256 of the UTF-8 ids
    joined by NUL — unambiguous, since neither id may hold NUL."""
    return hashlib.sha256(f"{world_id}\x00{node_id}".encode()).digest()


def check_ledger_update(update: object) -> LedgerUpdate:
    """Refuse anything but a :class:`LedgerUpdate` before a transaction starts."""
    if not isinstance(update, LedgerUpdate):
        raise ValueError(f"expected a LedgerUpdate, got {type(update).__name__}")
    return update


def short_id(node_id: object) -> str:
    """A node id for error messages: ``repr``, cut to 80 characters (ids may be 10 kB)."""
    text = repr(node_id)
    return text if len(text) <= 80 else text[:77] + "..."


def node_hash(node_id: str) -> bytes:
    """The 32-byte key both backends index node ids by (SHA-256 of the UTF-8 id)."""
    return hashlib.sha256(node_id.encode("utf-8")).digest()


def masked_dsn(dsn: str) -> str:
    """``dsn`` with any password (in the user info or a ``password=`` query parameter)
    replaced by ``***``, for messages and logs."""
    parts = urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = (
        "&".join(
            f"{item.partition('=')[0]}=***"
            if unquote(item.partition("=")[0]).lower() in {"password", "sslpassword"}
            else item
            for item in parts.query.split("&")
        )
        if parts.query
        else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_span(start: InstantLike, end: InstantLike) -> tuple[int, int]:
    """Normalize read bounds to int64 epoch seconds; ``start >= end`` means an empty read."""
    s = to_epoch_seconds(_as_instant(start), name="start")
    e = to_epoch_seconds(_as_instant(end), name="end")
    for name, value in (("start", s), ("end", e)):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{name} {value} is outside int64 epoch seconds")
    return s, e


def _as_instant(value: InstantLike) -> InstantLike:
    # numpy integers are ints to a user; operator.index accepts them and nothing lossy.
    if isinstance(value, np.integer):
        return operator.index(value)
    return value


def segments_from_rows(rows: Iterable[tuple[Any, ...]]) -> list[CoverageSegment]:
    """Ledger rows ``(start, end, kind, source, fetched_at)`` to segments (O(segments))."""
    return [
        CoverageSegment(int(s), int(e), k, src, None if f is None else float(f))
        for s, e, k, src, f in rows
    ]


# -- listing (HistoryStorage.list_nodes) --------------------------------------------------------

#: Every node with its bar count and first/last bar, aggregated by the database (no bar
#: leaves it); nodes without bars come back with NULLs. No parameters: the same text runs on
#: both backends, and node ids only ever come out of it.
LIST_NODES_SQL: Final = (
    "SELECT n.node_key, n.node_id, b.first_ts, b.last_ts, b.bar_count FROM qmtl_nodes AS n"
    " LEFT JOIN (SELECT node_key, min(ts) AS first_ts, max(ts) AS last_ts,"
    " count(*) AS bar_count FROM qmtl_bars GROUP BY node_key) AS b ON b.node_key = n.node_key"
)
#: Every ledger segment, without its source (a listing does not show it); O(segments).
LIST_LEDGER_SQL: Final = (
    "SELECT node_key, interval_s, seg_start, seg_end, kind, fetched_at FROM qmtl_ledger"
    " ORDER BY node_key, interval_s, seg_start"
)


def node_summaries(
    nodes: Iterable[tuple[Any, ...]], ledger: Iterable[tuple[Any, ...]]
) -> list[NodeSummary]:
    """``list_nodes``' answer from the rows of :data:`LIST_NODES_SQL` and
    :data:`LIST_LEDGER_SQL` (O(nodes + segments)), sorted by node id — compared by code
    point in Python, since the two databases collate text differently — then interval."""
    ledgers: dict[int, dict[int, list[CoverageSegment]]] = {}
    for key, interval, start, end, kind, fetched in ledger:
        segment = CoverageSegment(int(start), int(end), kind, None, _float(fetched))
        ledgers.setdefault(int(key), {}).setdefault(int(interval), []).append(segment)
    summaries = [
        summary
        for key, node_id, first, last, count in nodes
        for summary in summarize_node(
            str(node_id),
            ledgers.get(int(key), {}),
            first_bar=None if first is None else int(first),
            last_bar=None if last is None else int(last),
            stored_bars=0 if count is None else int(count),
        )
    ]
    summaries.sort(key=lambda s: (s.node_id, s.interval))
    return summaries


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- schema versions (see the module doc) -----------------------------------------------------

#: The layout this release writes. Bump it together with one migration entry per backend.
SCHEMA_VERSION: Final = 2
#: The oldest layout this release reads as it is (read-only opens never migrate): reads touch
#: only ``qmtl_nodes``/``qmtl_bars``/``qmtl_ledger``, unchanged since version 0 (``as_of_mark``
#: answers ``None`` below :data:`MARKS_SINCE_VERSION`). Raise it when a migration changes
#: what reads touch.
OLDEST_READABLE_VERSION: Final = 0
#: The as-of marks (``HistoryStorage.advance_as_of``): ``mark_key`` (:func:`mark_key`, primary
#: key), ``world_id``, ``node_id`` (kept for people: the key alone cannot be read back) and
#: ``as_of_ms``. Not part of :data:`STORE_COLUMNS`: version-0 stores lack it.
MARKS_TABLE: Final = "qmtl_as_of_marks"
#: The schema version that added :data:`MARKS_TABLE`.
MARKS_SINCE_VERSION: Final = 2
#: The key/value table that marks a qmtl-seamless store; no migration may change its shape.
META_TABLE: Final = "qmtl_meta"
#: Our data tables and the columns this release reads and writes in each. A store without
#: ``qmtl_meta`` is adopted only if its tables have exactly these; ``qmtl_bars`` follows the
#: canonical bar schema (:mod:`qmtl.runtime.sdk.bars`), never a copy of it.
STORE_COLUMNS: Final[Mapping[str, frozenset[str]]] = {
    "qmtl_nodes": frozenset({"node_key", "node_hash", "node_id"}),
    "qmtl_bars": frozenset({"node_key", *CANONICAL_COLUMNS}),
    "qmtl_ledger": frozenset(
        {"node_key", "interval_s", "seg_start", "seg_end", "kind", "source", "fetched_at"}
    ),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SchemaState:
    """What a database holds, as far as opening a store cares (each backend inspects its own).

    ``meta``: the rows of ``qmtl_meta``, ``None`` when there is no such table. ``tables``: which
    of :data:`STORE_COLUMNS` exist, with their column names. ``foreign``: other objects whose
    presence means the database is not ours to adopt (DuckDB files; a PostgreSQL database
    legitimately holds other applications' tables, so that backend leaves it empty).
    """

    meta: Mapping[str, str] | None
    tables: Mapping[str, frozenset[str]] = field(default_factory=dict)
    foreign: Sequence[str] = ()


def plan_schema(state: SchemaState, *, where: str, read_only: bool, remedy: str) -> int | None:
    """The schema version of the store described by ``state``: ``None`` when nothing of ours is
    there yet (create it, or — read-only — nothing is stored), ``0`` for a store written before
    schema versioning, else ``qmtl_meta``'s version. Refusals are one-line
    :class:`StorageError`s naming ``where`` (the store) and, for foreign databases, ``remedy``.
    """
    if state.meta is not None:
        return _usable(_version_in(state.meta, where=where), state.meta, where, read_only)
    ours = sorted(state.tables)
    if len(ours) == len(STORE_COLUMNS):
        # Every table of ours, no qmtl_meta: an earlier release wrote it (whatever else the
        # user keeps next to it) — if the columns agree.
        for table, expected in STORE_COLUMNS.items():
            actual = state.tables[table]
            if actual != expected:
                raise StorageError(
                    f"{where} is not a qmtl-seamless store: its table {table} has columns "
                    f"{', '.join(sorted(actual))}, not {', '.join(sorted(expected))}; {remedy}"
                )
        return _usable(0, {}, where, read_only)
    if state.foreign or ours:
        holds = _describe([*state.foreign, *ours])
        raise StorageError(
            f"{where} is not a qmtl-seamless store: it holds {holds} and no {META_TABLE}; {remedy}"
        )
    return None


def _version_in(meta: Mapping[str, str], *, where: str) -> int:
    raw = meta.get("schema_version")
    if raw is not None and raw.strip().isdigit():
        return int(raw)
    raise StorageError(
        f"{where}: {META_TABLE} holds no valid schema_version ({raw!r}); the store is "
        "damaged or was not written by qmtl-seamless"
    )


def _usable(version: int, meta: Mapping[str, str], where: str, read_only: bool) -> int:
    """``version`` if this release can open the store at it (migrating when writable)."""
    if version > SCHEMA_VERSION:
        writer = meta.get("package_version", "unknown")
        raise StorageError(
            f"{where} was written by a newer qmtl-seamless (schema {version} > "
            f"{SCHEMA_VERSION}): upgrade qmtl-seamless (this is {__version__}, the store was "
            f"written by {writer})"
        )
    if read_only and version < OLDEST_READABLE_VERSION:
        raise StorageError(
            f"{where} has schema {version}, which this qmtl-seamless reads only after migrating "
            f"it to {SCHEMA_VERSION}: open it once for writing (any write command migrates it)"
        )
    return version


def _describe(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_migrations(migrations: Mapping[int, Sequence[str]]) -> None:
    """Fail at import if a backend's migration table does not lead, one step per version,
    from 0 to :data:`SCHEMA_VERSION` (a programming error, never a user's)."""
    if sorted(migrations) != list(range(SCHEMA_VERSION)):
        raise RuntimeError(
            f"migrations cover schema versions {sorted(migrations)}, "
            f"expected 0..{SCHEMA_VERSION - 1}"
        )


def migration_steps(
    baseline: Sequence[str], migrations: Mapping[int, Sequence[str]], found: int | None
) -> list[str]:
    """The statements that take a store from version ``found`` (``None``: nothing yet, so the
    version-0 ``baseline`` first) to :data:`SCHEMA_VERSION`, in order; ``[]`` when current."""
    steps = list(baseline) if found is None else []
    for version in range(found or 0, SCHEMA_VERSION):
        steps.extend(migrations[version])
    return steps


def meta_rows() -> list[tuple[str, str]]:
    """The ``qmtl_meta`` rows a store gets when it is created or migrated."""
    return [("schema_version", str(SCHEMA_VERSION)), ("package_version", __version__)]


#: scheme -> (module, class). Imported lazily so that choosing DuckDB never imports asyncpg.
_BACKENDS: dict[str, tuple[str, str]] = {
    "duckdb": ("qmtl.runtime.io.storage.duckdb", "DuckDBStorage"),
    "postgresql": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
    "postgres": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_BACKENDS)
_SCHEME_HELP = "duckdb:///relative/file.duckdb, duckdb:////abs/file.duckdb, duckdb:///:memory:, "
_SCHEME_HELP += "postgresql://user@host/db, postgres://user@host/db"


def open_storage(dsn: str | None = None, *, read_only: bool = False) -> HistoryStorage:
    """The backend for ``dsn`` (``None``: :data:`DEFAULT_DSN`). Nothing connects yet: the
    store opens on first use or ``async with``, so this is safe to call on the event loop.

    ``read_only=True`` is for commands that only look ("read commands never create a
    store"): nothing is ever created or migrated, a DuckDB file that does not exist is a
    :class:`StorageError` on first use, and every write raises :class:`StorageError`.

    Raises ``ValueError`` for an unknown scheme, listing the supported ones (the DSN itself is
    not echoed: it may hold a password).
    """
    dsn = DEFAULT_DSN if dsn is None else dsn
    if not isinstance(dsn, str) or not dsn.strip():
        raise ValueError(f"storage DSN must be a non-empty string; supported: {_SCHEME_HELP}")
    scheme = urlsplit(dsn.strip()).scheme.lower() if "://" in dsn else ""
    if scheme not in _BACKENDS:
        shown = repr(scheme) if scheme else "no scheme"
        raise ValueError(f"unsupported storage DSN scheme ({shown}); supported: {_SCHEME_HELP}")
    module_name, class_name = _BACKENDS[scheme]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: HistoryStorage = backend_class(dsn.strip(), read_only=read_only)
    return backend
