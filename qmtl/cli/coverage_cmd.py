"""``qmtl-seamless coverage NODE_ID``: what the hot store holds for one node.

Reads only the store's coverage ledger (no exchange access): stored (DATA) and known-empty
(EMPTY) segments, the missing ranges between them (or inside ``--start/--end``) and the
coverage ratio; ``--plot FILE.png`` also draws them (:mod:`qmtl.cli.coverage_plot`). The
store is ``--dsn``, else the ``--config`` file's, else the default; it is opened read-only, so
a mistyped path is reported ("no store at ...", exit 2) instead of creating an empty store
there. Exit 0 when nothing is missing, 1 when something is (or nothing is stored for the node
at all) — the CLI's exit codes, so scripts can ask "is this range complete?". ``--plot``
changes neither the report nor the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from qmtl.cli._common import (
    add_store_options,
    add_window_options,
    console,
    coverage_table,
    err_console,
    open_read_only,
    print_json,
    segment_lines,
    show_store,
    store_dsn,
    window_bounds,
)
from qmtl.cli.coverage_plot import check_plot_path, plot_coverage
from qmtl.runtime.sdk.coverage_report import CoverageReport, build_coverage_report
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import parse_node_id

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("coverage", help="show stored, known-empty and missing ranges")
    parser.add_argument("node_id", metavar="NODE_ID", help="e.g. ohlcv:binance:BTC/USDT:1m")
    add_window_options(parser, open_start="from the first stored bar")
    add_store_options(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the ranges as a timeline PNG (needs pip install 'qmtl-seamless[plot]')",
    )
    parser.set_defaults(handler=_run)


async def _report(
    dsn: str, node_id: str, interval: int, bounds: tuple[int | None, int] | None
) -> tuple[CoverageReport, str]:
    async with open_read_only(dsn) as (storage, location):
        ledger = await storage.read_ledger(node_id, interval)
    window = None
    if bounds is not None:
        start, end = bounds
        if start is None:  # --timerange -END: from the first stored bar
            start = min(ledger[0].start, end) if ledger else end
        window = Range(start, end)
    return build_coverage_report(node_id, ledger, window), location


def _run(args: argparse.Namespace) -> int:
    node = parse_node_id(args.node_id)
    clipped = any(getattr(args, name) is not None for name in ("start", "timerange", "days"))
    bounds = window_bounds(args, interval=node.interval) if clipped else None
    plot = None if args.plot is None else check_plot_path(args.plot)  # before the store opens
    dsn = store_dsn(args)
    report, location = asyncio.run(_report(dsn, args.node_id, node.interval, bounds))
    code = 0 if report.complete else 1
    if args.json:
        print_json({**report.to_dict(), "store": location})
    else:
        _print(report, location)
    if plot is not None:  # the report and the exit code are the same with or without it
        plot_coverage([report], plot)  # no event loop runs here: render in this thread
        # With --json, stdout holds the JSON document alone.
        (err_console if args.json else console).print(
            f"plot written to {args.plot}", markup=False, soft_wrap=True
        )
    return code


def _print(report: CoverageReport, location: str) -> None:
    show_store(location)
    if not report.segments and not report.missing:
        console.print(f"{report.node_id}: nothing stored yet")
        return
    console.print(coverage_table([report]))
    for line in segment_lines(report):
        console.print(f"  {line}")
