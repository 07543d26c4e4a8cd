"""``qmtl-seamless list``: every node the hot store holds, with its time range and gaps.

One row per node (and interval, see :class:`~qmtl.runtime.sdk.history_storage.NodeSummary`):
the open times of the first and last stored bars, how many bars are stored, known-empty and
missing, and when the ledger was last written by a fetch. *Missing* counts only the gaps
between the node's first and last ledger segments — whether history should reach further
back, or up to now, is a question for ``coverage NODE_ID --start ...``.

The store is ``--dsn``, else the ``--config`` file's, else the default, opened read-only: a
mistyped path is reported ("no store at ...", exit 2) instead of creating an empty store.
The database aggregates the bars, so listing a large store loads none of them.

Exit 0 whenever the store could be read — empty, complete or with missing bars alike: this
is an inventory, not a check (ask ``coverage`` for an exit code that says "complete?").

The table keeps every digit and date at any width: numbers and dates never wrap or get cut,
the node id folds instead. When one-line dates leave the node id too little room (an
80-column terminal), each date shows as two lines, day over time; ``--json`` gives the
exact epochs and ISO-8601 texts.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from qmtl.cli._common import (
    add_store_options,
    console,
    open_read_only,
    print_json,
    show_store,
    store_dsn,
)
from qmtl.runtime.sdk.history_storage import NodeSummary
from qmtl.runtime.sdk.node_id import parse_node_id, seconds_to_timeframe

__all__ = ["node_table", "register"]

#: Below this, one-line dates give way to two-line ones so the node id keeps some room.
_NODE_ROOM: Final = 24
#: The node column never gets narrower than this (a wider table than the terminal, then).
_NODE_MIN: Final = 12
_NONE = "-"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "list", help="list the stored nodes: time range, bars stored, known-empty and missing"
    )
    add_store_options(parser)
    parser.add_argument("--json", action="store_true", help="print the nodes as JSON")
    parser.set_defaults(handler=_run)


async def _list(dsn: str) -> tuple[list[NodeSummary], str]:
    async with open_read_only(dsn) as (storage, location):
        return await storage.list_nodes(), location


def _run(args: argparse.Namespace) -> int:
    nodes, location = asyncio.run(_list(store_dsn(args)))
    if args.json:
        print_json({"store": location, "nodes": [node.to_dict() for node in nodes]})
        return 0
    show_store(location)
    if not nodes:
        console.print("no nodes stored yet")
        return 0
    table = node_table(nodes, width=console.width)
    console.print(table, crop=False)  # a table wider than the terminal wraps, never cut
    return 0


def node_table(nodes: Sequence[NodeSummary], *, width: int) -> Table:
    """The human table of ``nodes`` for a terminal ``width`` columns wide: one-line dates
    when the node id keeps enough room, else two-line ones; if even that leaves the node
    column under its minimum, the table is made wider than ``width`` rather than cut."""
    labels = [_label(node) for node in nodes]
    longest = max(cell_len(label) for label in labels)
    for stacked in (False, True):
        headers = [header if stacked else header.replace("\n", "") for header, _ in _COLUMNS]
        cells = [_cells(node, stacked=stacked) for node in nodes]
        fixed = [
            max(_text_width(text) for text in (header, *(row[i] for row in cells)))
            for i, header in enumerate(headers)
        ]
        room = width - sum(fixed) - len(fixed)  # the node column's, after one space per column
        if room >= min(longest, _NODE_ROOM):
            break
    table = Table(
        title="stored nodes (times UTC)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=0,
        leading=int(stacked),  # two-line rows read better apart
    )
    node_min = min(longest, _NODE_MIN)
    table.add_column("node", overflow="fold", min_width=node_min)
    for header, (_, numeric) in zip(headers, _COLUMNS, strict=True):
        table.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for label, row in zip(labels, cells, strict=True):
        table.add_row(Text(label), *row)
    if room < node_min:
        table.width = sum(fixed) + len(fixed) + node_min
    return table


#: The columns after the node id: header (its line break used only by two-line dates, when
#: room is short) and whether it holds a number.
_COLUMNS: Final = (
    ("first bar", False),
    ("last bar", False),
    ("stored", True),
    ("known-\nempty", True),
    ("missing", True),
    ("last fetch", False),
)


def _cells(node: NodeSummary, *, stacked: bool) -> tuple[str, ...]:
    return (
        _when(node.first_bar, stacked),
        _when(node.last_bar, stacked),
        f"{node.stored_bars:,}",
        f"{node.known_empty_bars:,}",
        f"{node.missing_bars:,}",
        _when(node.last_fetched_at, stacked),
    )


def _when(epoch_seconds: float | None, stacked: bool) -> str:
    """``2024-01-01 00:00`` (UTC, minutes), or day over time when ``stacked``."""
    if epoch_seconds is None:
        return _NONE
    try:
        moment = datetime.fromtimestamp(int(epoch_seconds), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{int(epoch_seconds)} s"
    return moment.strftime("%Y-%m-%d\n%H:%M" if stacked else "%Y-%m-%d %H:%M")


def _label(node: NodeSummary) -> str:
    """The node id as people can read it (control characters escaped), with the interval
    when the id does not name it."""
    text = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in node.node_id
    )
    if node.interval and _named_interval(node.node_id) != node.interval:
        try:
            text += f" ({seconds_to_timeframe(node.interval)})"
        except ValueError:
            text += f" ({node.interval} s)"
    return text


def _named_interval(node_id: str) -> int | None:
    try:
        return parse_node_id(node_id).interval
    except ValueError:
        return None


def _text_width(text: str) -> int:
    return max(cell_len(line) for line in text.split("\n"))
