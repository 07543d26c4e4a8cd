"""The hot store: :class:`HistoryStorage` (the port, defined in the sdk) and its DuckDB /
PostgreSQL backends, chosen by URI with :func:`open_storage`."""

from qmtl.runtime.io.storage.base import DEFAULT_DSN, SUPPORTED_SCHEMES, open_storage
from qmtl.runtime.io.storage.duckdb import DuckDBStorage
from qmtl.runtime.io.storage.postgres import PostgresStorage
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_storage import HistoryStorage, LedgerUpdate, NodeSummary

__all__ = [
    "CANONICAL_COLUMNS",
    "DEFAULT_DSN",
    "SUPPORTED_SCHEMES",
    "DuckDBStorage",
    "HistoryStorage",
    "LedgerUpdate",
    "NodeSummary",
    "PostgresStorage",
    "StorageError",
    "open_storage",
]
