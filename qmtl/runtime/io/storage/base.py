"""Shared pieces of the hot-store backends: argument checks, node keys, and
:func:`open_storage` (backend by URI). The port itself — :class:`HistoryStorage`,
:class:`LedgerUpdate` and the conventions every backend honours — is
:mod:`qmtl.runtime.sdk.history_storage`; the bar schema is :mod:`qmtl.runtime.sdk.bars`.

Both backends key rows by a surrogate ``node_key`` found through the SHA-256 of the UTF-8 id,
so an id of any length (PostgreSQL b-tree entries cannot exceed ~2.7 kB) indexes in constant
size.
"""

from __future__ import annotations

import hashlib
import importlib
import operator
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from qmtl.runtime.sdk.history_coverage import CoverageSegment
from qmtl.runtime.sdk.history_storage import HistoryStorage, LedgerUpdate
from qmtl.runtime.sdk.timestamps import InstantLike, to_epoch_seconds

__all__ = [
    "DEFAULT_DSN",
    "SUPPORTED_SCHEMES",
    "check_interval",
    "check_ledger_update",
    "check_node_id",
    "check_span",
    "node_hash",
    "open_storage",
    "segments_from_rows",
    "short_id",
]

#: Used when ``open_storage(None)``: a DuckDB file relative to the working directory.
DEFAULT_DSN = "duckdb:///.qmtl/seamless.duckdb"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_node_id(node_id: object) -> str:
    """Validate a node id at the storage boundary (see the module doc for why NUL is refused)."""
    if not isinstance(node_id, str):
        raise ValueError(f"node id must be a str, got {type(node_id).__name__}")
    if not node_id:
        raise ValueError("node id is empty")
    if "\x00" in node_id:
        raise ValueError("node id contains NUL, which storage cannot hold")
    try:
        node_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("node id is not valid Unicode (lone surrogate)") from None
    return node_id


def check_interval(interval: object) -> int:
    """A bar interval: a positive ``int`` number of seconds."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
        raise ValueError(f"interval must be a positive int number of seconds, got {interval!r}")
    return interval


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


#: scheme -> (module, class). Imported lazily so that choosing DuckDB never imports asyncpg.
_BACKENDS: dict[str, tuple[str, str]] = {
    "duckdb": ("qmtl.runtime.io.storage.duckdb", "DuckDBStorage"),
    "postgresql": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
    "postgres": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_BACKENDS)
_SCHEME_HELP = "duckdb:///relative/file.duckdb, duckdb:////abs/file.duckdb, duckdb:///:memory:, "
_SCHEME_HELP += "postgresql://user@host/db, postgres://user@host/db"


def open_storage(dsn: str | None = None) -> HistoryStorage:
    """The backend for ``dsn`` (``None``: :data:`DEFAULT_DSN`). Nothing connects yet: the
    store opens on first use or ``async with``, so this is safe to call on the event loop.

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
    backend: HistoryStorage = getattr(importlib.import_module(module_name), class_name)(dsn.strip())
    return backend
