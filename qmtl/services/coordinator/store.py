"""Where lease rows live: the :class:`LeaseStore` protocol
(:mod:`~qmtl.services.coordinator.lease_rows`) and its two implementations, picked from a
DSN by :func:`open_lease_store`:

- :class:`SQLiteLeaseStore` — one machine (:mod:`~qmtl.services.coordinator.sqlite_store`);
- :class:`PostgresLeaseStore` — restarts and several replicas on one database
  (:mod:`~qmtl.services.coordinator.postgres_store`).
"""

from __future__ import annotations

from typing import Final

from qmtl.services.coordinator.lease_rows import LeaseStore
from qmtl.services.coordinator.postgres_store import PostgresLeaseStore
from qmtl.services.coordinator.sqlite_store import SQLiteLeaseStore

__all__ = ["DEFAULT_DSN", "open_lease_store"]

DEFAULT_DSN: Final = "sqlite:///.qmtl/leases.db"


def open_lease_store(dsn: str) -> LeaseStore:
    """The store for ``dsn`` (not yet opened): ``sqlite:///relative/path.db``,
    ``sqlite:////absolute/path.db``, or ``postgresql://…`` (``postgres://``)."""
    scheme, sep, rest = dsn.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ValueError(f"lease store DSN {dsn!r} names no file (sqlite:///path/leases.db)")
        return SQLiteLeaseStore(path)
    if sep and scheme in ("postgresql", "postgres"):
        return PostgresLeaseStore(dsn)
    raise ValueError(
        f"unsupported lease store DSN {dsn.split('@')[-1]!r}; supported schemes: "
        "sqlite:///path, postgresql://"
    )
