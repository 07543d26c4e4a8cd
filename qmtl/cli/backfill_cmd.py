"""``qmtl-seamless backfill --config FILE``: fill every configured node over a window.

Shows a progress bar with ETA (bars done / bars missing at start) and ends with the gap
report: what is stored, known-empty and still missing per node. Exit code 1 when anything is
still missing (the report says what and why in the log events), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qmtl.cli._common import (
    CoverageReport,
    add_window_options,
    build_provider,
    console,
    coverage_report,
    coverage_table,
    print_json,
    window_from_args,
)
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.backfill_types import BatchOutcome
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.runtime.sdk.node_id import parse_node_id

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("backfill", help="backfill every configured node")
    parser.add_argument("--config", metavar="FILE", required=True, help="YAML configuration")
    parser.add_argument("--dsn", help="hot store DSN (overrides the config)")
    add_window_options(parser)
    parser.add_argument("--json", action="store_true", help="print the gap report as JSON")
    parser.set_defaults(handler=_run, exchange_url=None)


async def _backfill(
    args: argparse.Namespace, provider: EnhancedQuestDBProvider, nodes: tuple[str, ...]
) -> list[CoverageReport]:
    window = window_from_args(args, default_days=1)
    async with provider:
        total = 0
        for node in nodes:
            interval = parse_node_id(node).interval
            ledger = await provider.coverage(node_id=node, interval=interval)
            missing = compute_missing_ranges(ledger, window.start, window.end, interval)
            total += sum(r.bars(interval) for r in missing)
        with Progress(
            TextColumn("[bold]backfill"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("bars"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=args.json,
        ) as progress:
            task = progress.add_task("bars", total=max(total, 1))

            def advance(node_id: str, outcome: BatchOutcome) -> None:
                progress.advance(task, outcome.batch.bars(parse_node_id(node_id).interval))

            provider.auto_backfiller.on_batch = advance
            await asyncio.gather(
                *(
                    provider.ensure_data_available(
                        window.start, window.end, node_id=n, interval=parse_node_id(n).interval
                    )
                    for n in nodes
                )
            )
            progress.update(task, completed=max(total, 1))
        return [
            coverage_report(
                n, await provider.coverage(node_id=n, interval=parse_node_id(n).interval), window
            )
            for n in nodes
        ]


def _run(args: argparse.Namespace) -> int:
    nodes = load_config(args.config).node_ids()
    if not nodes:
        raise ValueError(f"{args.config}: no exchanges/symbols configured, nothing to backfill")
    provider = build_provider(args, nodes, strategy="AUTO_BACKFILL")
    reports = asyncio.run(_backfill(args, provider, nodes))
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        console.print(coverage_table(reports, title="gap report"))
        for rep in reports:
            for r in rep.missing:
                console.print(f"  MISSING {rep.node_id} [{r.start}, {r.end})")
    return 0 if all(not r.missing for r in reports) else 1
