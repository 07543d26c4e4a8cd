"""``qmtl-seamless coverage NODE_ID``: what the hot store holds for one node.

Reads only the store's coverage ledger (no exchange access): stored (DATA) and known-empty
(EMPTY) segments, the missing ranges between them (or inside ``--start/--end``) and the
coverage ratio.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from qmtl.cli._common import (
    CoverageReport,
    console,
    coverage_report,
    coverage_table,
    print_json,
    segment_lines,
    window_from_args,
)
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.node_id import parse_node_id

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("coverage", help="show stored, known-empty and missing ranges")
    parser.add_argument("node_id", metavar="NODE_ID")
    parser.add_argument("--start", help="clip to this start (ISO-8601 or epoch s)")
    parser.add_argument("--end", help="clip to this end (default: now when --start is given)")
    parser.add_argument("--days", type=float, help="instead of --start: the last N days")
    parser.add_argument("--dsn", help="hot store DSN (default: duckdb:///.qmtl/seamless.duckdb)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run)


async def _report(args: argparse.Namespace) -> CoverageReport:
    node = parse_node_id(args.node_id)
    window = window_from_args(args) if (args.start or args.days) else None
    async with open_storage(args.dsn) as storage:
        ledger = await storage.read_ledger(args.node_id, node.interval)
    return coverage_report(args.node_id, ledger, window)


def _run(args: argparse.Namespace) -> int:
    report = asyncio.run(_report(args))
    if args.json:
        print_json(report.to_dict())
        return 0
    if not report.segments and not report.missing:
        console.print(f"{args.node_id}: nothing stored yet")
        return 0
    console.print(coverage_table([report]))
    for line in segment_lines(report):
        console.print(f"  {line}")
    return 0
