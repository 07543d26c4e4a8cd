"""How artifacts look to people and scripts: the artifacts table (never cutting a number or
an instant, whatever the terminal width), one artifact as JSON-ready data, and the DuckDB
one-liner that reads a store directly. Shared by ``artifacts`` and ``demo``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.sdk.artifact_catalog import ArtifactEntry

__all__ = ["artifact_table", "duckdb_command", "entry_dict", "node_label", "short_fingerprint"]

#: The node column never gets narrower than this (a wider table than the terminal, then).
_NODE_MIN: Final = 12


def short_fingerprint(fingerprint: str) -> str:
    """``sha256:`` and the first 8 hex digits, for tables (``--json`` has the whole)."""
    algo, sep, digest = fingerprint.partition(":")
    return f"{algo}:{digest[:8]}…" if sep and len(digest) > 8 else fingerprint


def entry_dict(registrar: ArtifactRegistrar, entry: ArtifactEntry) -> dict[str, Any]:
    """One artifact as JSON-ready data: bounds in epoch seconds with ISO-8601 beside them."""
    return {
        "node_id": entry.node_id,
        "interval": entry.interval,
        "kind": entry.kind,
        "start": entry.start,
        "end": entry.end,
        "start_iso": format_iso(entry.start),
        "end_iso": format_iso(entry.end),
        "rows": entry.rows,
        "as_of": entry.as_of,
        "dataset_fingerprint": entry.dataset_fingerprint,
        "data_uri": registrar.store.uri_of(entry.data_key),
        "manifest_uri": registrar.store.uri_of(entry.manifest_key),
        "bytes": entry.data_bytes,
        "sha256": entry.data_sha256,
    }


def duckdb_command(root_uri: str) -> str:
    """The shell one-liner counting every published bar of the store at ``root_uri`` with
    the DuckDB CLI (compacted copies live apart, so each bar counts once)."""
    where = root_uri.removeprefix("file://")
    files = f"{where}/exchange=*/**/*.parquet".replace("'", "''")
    sql = f"SELECT count(*) FROM read_parquet('{files}', hive_partitioning=true)"
    if any(ch in sql for ch in '"$`\\!'):
        return f"duckdb -c {shlex.quote(sql)}"
    return f'duckdb -c "{sql}"'


def artifact_table(entries: Sequence[ArtifactEntry], *, width: int) -> Table:
    """One row per artifact for a terminal ``width`` columns wide: node, kind, range
    ``[start, end)`` (UTC), rows, ``as_of`` and the short fingerprint. When one-line rows
    would cut the node id (an 80-column terminal), each row takes two lines
    (range start over end, ``as_of`` over fingerprint); numbers and instants never wrap or
    get cut, the node id folds instead."""
    labels = [node_label(e.node_id) for e in entries]
    longest = max(cell_len(label) for label in labels)
    for stacked in (False, True):
        columns = _STACKED if stacked else _FLAT
        cells = [_cells(e, stacked=stacked) for e in entries]
        fixed = [
            max(_text_width(text) for text in (header, *(row[i] for row in cells)))
            for i, (header, _) in enumerate(columns)
        ]
        room = width - sum(fixed) - len(fixed)  # the node column's, after one space each
        if room >= longest:  # one-line rows only with whole node ids
            break
    table = Table(
        title="artifacts (times UTC)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=0,
        leading=int(stacked),
    )
    node_min = min(longest, _NODE_MIN)
    table.add_column("node", overflow="fold", min_width=node_min)
    for header, numeric in columns:
        table.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for label, row in zip(labels, cells, strict=True):
        table.add_row(Text(label), *(Text(cell) for cell in row))
    if room < node_min:
        table.width = sum(fixed) + len(fixed) + node_min
    return table


#: The columns after the node id: header and whether it holds a number.
_FLAT: Final = (
    ("kind", False),
    ("range [start, end)", False),
    ("rows", True),
    ("as_of", False),
    ("fingerprint", False),
)
_STACKED: Final = (
    ("kind", False),
    ("range\n[start, end)", False),
    ("rows", True),
    ("as_of\nfingerprint", False),
)


def _cells(entry: ArtifactEntry, *, stacked: bool) -> tuple[str, ...]:
    start, end = _when(entry.start, entry.interval), _when(entry.end, entry.interval)
    rows = f"{entry.rows:,}"
    fingerprint = short_fingerprint(entry.dataset_fingerprint)
    if stacked:
        return (entry.kind, f"{start}\n{end}", rows, f"{entry.as_of}\n{fingerprint}")
    return (entry.kind, f"{start} → {end}", rows, entry.as_of, fingerprint)


def _when(epoch_seconds: int, interval: int) -> str:
    """``2024-01-01 00:00`` (UTC; seconds too for sub-minute bars)."""
    try:
        moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{epoch_seconds} s"
    return moment.strftime("%Y-%m-%d %H:%M" if interval % 60 == 0 else "%Y-%m-%d %H:%M:%S")


def node_label(node_id: str) -> str:
    """The node id as people can read it (control characters escaped)."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in node_id
    )


def _text_width(text: str) -> int:
    return max(cell_len(line) for line in text.split("\n"))
