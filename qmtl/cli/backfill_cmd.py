"""``qmtl-seamless backfill --config FILE``: fill every configured node over a window.

Shows a progress line on a terminal (:mod:`qmtl.cli.progress`: bars, requests, ETA). The bar
advances only for bars the exchange vouched for; failed batches are counted beside it
("failed N batches (M bars)"), so a run in which everything fails never shows 100 %. It
ends with the gap report (stdout): what is stored, known-empty and still missing per node,
and for each missing range, in ISO times, why — the errors of the batches that failed there.

Exit codes: 0 nothing missing; 1 something still missing; 2 when a user mistake
explains it (an unknown symbol); 3 when the exchange or the store failed every batch.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from qmtl.cli._common import (
    add_exchange_options,
    add_metrics_option,
    add_store_options,
    add_window_options,
    check_window_size,
    console,
    coverage_table,
    gap_lines,
    print_json,
    resolve_config,
    show_store,
    window_from_args,
)
from qmtl.cli.batch_log import BatchLog
from qmtl.cli.main import missing_data_exit
from qmtl.cli.progress import backfill_progress, requests_made
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.coverage_report import CoverageReport
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import default_metrics

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("backfill", help="backfill every configured node")
    add_store_options(parser, config_required=True)
    add_exchange_options(parser)
    add_window_options(parser)
    parser.add_argument("--json", action="store_true", help="print the gap report as JSON")
    add_metrics_option(parser)
    parser.set_defaults(handler=_run)


async def _backfill(
    provider: EnhancedQuestDBProvider,
    nodes: tuple[str, ...],
    window: Range,
    log: BatchLog,
    *,
    quiet: bool,
    metrics_port: int | None = None,
) -> tuple[str, list[CoverageReport]]:
    async with serve_metrics(metrics_port, default_metrics().registry), provider:
        store = await provider.storage.resolved_location()
        if not quiet:
            show_store(store)
        before = [await _report(provider, n, window) for n in nodes]
        with backfill_progress(provider, log, label="backfill", quiet=quiet) as progress:
            progress.start(sum(r.missing_bars for r in before))
            try:
                async with asyncio.TaskGroup() as group:  # one failure stops the others
                    for n in nodes:
                        group.create_task(
                            provider.ensure_data_available(window.start, window.end, node_id=n)
                        )
            except BaseExceptionGroup as failed:  # report the error, not the group
                raise failed.exceptions[0] from None
        reports = [await _report(provider, n, window) for n in nodes]
    return store, reports


async def _report(provider: EnhancedQuestDBProvider, node: str, window: Range) -> CoverageReport:
    return await provider.coverage_report(node_id=node, start=window.start, end=window.end)


def _run(args: argparse.Namespace) -> int:
    window = window_from_args(args, default_days=1)
    config = resolve_config(args, ())
    nodes = config.node_ids()
    if not nodes:
        raise ValueError(f"{args.config}: no exchanges/symbols configured, nothing to backfill")
    check_window_size(window, nodes, config.seamless.backfill)
    provider = build_provider(config, strategy="AUTO_BACKFILL")  # records in default_metrics()
    log = BatchLog()
    store, reports = asyncio.run(
        _backfill(provider, nodes, window, log, quiet=args.json, metrics_port=args.metrics_port)
    )
    sources = {
        "archive_bars": log.archive_bars,
        "archive_files": log.archive_files,
        "rest_bars": log.done_bars - log.archive_bars,
        "rest_requests": requests_made(provider),
    }
    if args.json:
        print_json(
            {
                "store": store,
                "window": [window.start, window.end],
                "sources": sources,
                "nodes": [
                    {
                        **r.to_dict(),
                        "gaps": [
                            {"start": m.start, "end": m.end, "reasons": log.reasons(r.node_id, m)}
                            for m in r.missing
                        ],
                    }
                    for r in reports
                ],
            }
        )
    else:
        console.print(coverage_table(reports, title="gap report"))
        if log.archive_bars:
            console.print(
                f"sources: {sources['archive_bars']:,} bars from {sources['archive_files']:,} "
                f"archive files, {sources['rest_bars']:,} bars from {sources['rest_requests']:,} "
                "REST requests",
                markup=False, soft_wrap=True,
            )  # fmt: skip
        for rep in reports:
            for line in gap_lines(rep, log):
                console.print(f"  {line}", markup=False, soft_wrap=True)
    if all(not r.missing for r in reports):
        return 0
    return missing_data_exit("backfill", log.errors, progressed=log.succeeded > 0)
