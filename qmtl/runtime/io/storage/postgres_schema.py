"""How a PostgreSQL database is inspected and brought to a schema version, for
:mod:`qmtl.runtime.io.storage.postgres` (which keeps the DDL itself: its version-0 baseline and
migration table, next to the queries that depend on them).

The rules — what is adopted, migrated or refused — are :mod:`qmtl.runtime.io.storage.base`'s
(:func:`~qmtl.runtime.io.storage.base.plan_schema`); this module only says what the database
holds and applies the steps. A database legitimately holds other applications' tables: only
our ``qmtl_*`` tables, resolved through ``search_path`` as every query of the store, are
looked at.

Writable opens run in one transaction under a transaction-scoped advisory lock, so several
processes opening one database at once migrate it once; read-only opens send no DDL and take
no lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from qmtl.runtime.io.storage.base import (
    META_TABLE,
    STORE_COLUMNS,
    SchemaState,
    meta_rows,
    migration_steps,
    plan_schema,
)

__all__ = ["inspect_schema", "prepare_schema"]

#: pg_advisory_xact_lock key that serializes schema creation and migration.
_SCHEMA_LOCK: Final = 0x716D746C5F736368
_REMEDY = "use another database or schema for the store"

#: Our tables and their columns.
_COLUMNS_OF = """
SELECT t.name, array_agg(a.attname::text)
FROM unnest($1::text[]) AS t(name)
JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY t.name
"""
_META_UPSERT = (
    f"INSERT INTO {META_TABLE} (key, value) VALUES ($1, $2)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


async def prepare_schema(
    conn: Any,
    where: str,
    *,
    read_only: bool,
    baseline: Sequence[str],
    migrations: Mapping[int, Sequence[str]],
) -> int | None:
    """Create or migrate the schema to the current version on the asyncpg connection ``conn``
    (writable: one transaction under the advisory lock), or only check its version (read-only).
    Returns the version found before any migration (``None``: nothing of ours was there).
    ``where`` names the store in refusals (its DSN, password masked)."""
    if read_only:
        return plan_schema(await inspect_schema(conn), where=where, read_only=True, remedy=_REMEDY)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        state = await inspect_schema(conn)
        found = plan_schema(state, where=where, read_only=False, remedy=_REMEDY)
        steps = migration_steps(baseline, migrations, found)
        for sql in steps:
            await conn.execute(sql)
        if steps:
            await conn.executemany(_META_UPSERT, meta_rows())
    return found


async def inspect_schema(conn: Any) -> SchemaState:
    """Our tables (with their columns) and ``qmtl_meta``, as ``search_path`` resolves them."""
    names = [*STORE_COLUMNS, META_TABLE]
    found = {str(name): frozenset(cols) for name, cols in await conn.fetch(_COLUMNS_OF, names)}
    meta = None
    if META_TABLE in found:
        rows = await conn.fetch(f"SELECT key, value FROM {META_TABLE}")
        meta = {str(k): str(v) for k, v in rows}
    tables = {name: cols for name, cols in found.items() if name in STORE_COLUMNS}
    return SchemaState(meta=meta, tables=tables)
