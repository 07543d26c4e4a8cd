"""The hot store: :class:`HistoryStorage` and its DuckDB / PostgreSQL backends, chosen by URI
with :func:`open_storage`."""

from qmtl.runtime.io.storage.base import (
    CANONICAL_COLUMNS,
    DEFAULT_DSN,
    SUPPORTED_SCHEMES,
    HistoryStorage,
    LedgerUpdate,
    StorageError,
    open_storage,
)
from qmtl.runtime.io.storage.duckdb import DuckDBStorage
from qmtl.runtime.io.storage.postgres import PostgresStorage

__all__ = [
    "CANONICAL_COLUMNS",
    "DEFAULT_DSN",
    "SUPPORTED_SCHEMES",
    "DuckDBStorage",
    "HistoryStorage",
    "LedgerUpdate",
    "PostgresStorage",
    "StorageError",
    "open_storage",
]
