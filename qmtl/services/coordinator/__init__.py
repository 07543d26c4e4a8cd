"""The backfill coordinator service: lease stores, the HTTP app and its server."""

from qmtl.services.coordinator.app import create_app
from qmtl.services.coordinator.lease_rows import LeaseStore
from qmtl.services.coordinator.postgres_store import PostgresLeaseStore
from qmtl.services.coordinator.server import CoordinatorServer, run_coordinator
from qmtl.services.coordinator.sqlite_store import SQLiteLeaseStore
from qmtl.services.coordinator.store import DEFAULT_DSN, open_lease_store

__all__ = [
    "DEFAULT_DSN",
    "CoordinatorServer",
    "LeaseStore",
    "PostgresLeaseStore",
    "SQLiteLeaseStore",
    "create_app",
    "open_lease_store",
    "run_coordinator",
]
