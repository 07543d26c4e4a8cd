"""The backfill coordinator service: lease stores, the HTTP app and its server."""

from qmtl.services.coordinator.app import create_app
from qmtl.services.coordinator.server import CoordinatorServer, run_coordinator
from qmtl.services.coordinator.store import (
    DEFAULT_DSN,
    LeaseStore,
    PostgresLeaseStore,
    SQLiteLeaseStore,
    open_lease_store,
)

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
