"""``qmtl-seamless fetch NODE_ID --start --end``: what a strategy's ``fetch`` returns.

Prints the metadata (rows, missing ranges and why, coverage, fingerprint) and the first and
last bars; ``--out`` writes the frame (``.parquet`` or ``.csv``), ``--json`` prints the
metadata as JSON. The store and the exchange come from ``--config`` (or the defaults for the
node's exchange), with ``--dsn`` and ``--exchange-url`` over them. Exports carry provenance:
Parquet key-value metadata (node id, interval, range, fingerprint, ``as_of``, producer
version: :meth:`SeamlessFetchResult.provenance`); for CSV, ``--sidecar`` writes the same as
``FILE.csv.json``. On a terminal a progress line shows the backfill (bars, requests, ETA).

A one-shot command finishes its job: the strategy defaults to ``AUTO_BACKFILL``
(the library's default, ``SEAMLESS``, answers within SLA budgets and may leave work in the
background), and whatever the strategy, background backfill the fetch started is waited for
before the process exits — exiting would cancel it, and ``PARTIAL_FILL`` would store
nothing. The output then says how much of the range the store holds after that wait. The
exit code describes the frame that was served (and written to ``--out``): 0 complete,
1 served with missing data, 2/3 when the missing data is down to a user mistake (unknown
symbol) or an unreachable exchange or store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from qmtl.cli._common import (
    add_exchange_options,
    add_store_options,
    add_window_options,
    console,
    print_json,
    resolve_config,
    show_store,
    window_from_args,
)
from qmtl.cli.batch_log import BatchLog
from qmtl.cli.main import missing_data_exit
from qmtl.cli.progress import backfill_progress
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.coverage_report import CoverageReport
from qmtl.runtime.sdk.fetch_result import SeamlessFetchResult
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import NodeId, parse_node_id
from qmtl.runtime.sdk.seamless_data_provider import DataAvailabilityStrategy
from qmtl.runtime.sdk.timestamps import format_iso

__all__ = ["register"]

#: The CLI's default strategy: a one-shot command backfills everything it lacks.
DEFAULT_STRATEGY = DataAvailabilityStrategy.AUTO_BACKFILL
_OUT_SUFFIXES = (".parquet", ".csv")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("fetch", help="fetch a range of bars, backfilling gaps")
    parser.add_argument("node_id", metavar="NODE_ID", help="e.g. ohlcv:binance:BTC/USDT:1m")
    add_window_options(parser)
    parser.add_argument(
        "--strategy",
        choices=[s.value for s in DataAvailabilityStrategy],
        default=DEFAULT_STRATEGY.value,
        help="data availability strategy (default: AUTO_BACKFILL; background work is always "
        "waited for before exiting)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the frame to FILE.parquet (with provenance metadata) or FILE.csv",
    )
    parser.add_argument(
        "--sidecar",
        action="store_true",
        help="with --out FILE.csv: also write the provenance to FILE.csv.json",
    )
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_store_options(parser)
    add_exchange_options(parser)
    parser.set_defaults(handler=_run)


@dataclass(frozen=True, slots=True)
class _Fetched:
    result: SeamlessFetchResult
    store: str
    #: The store's coverage of the requested range once background work has finished.
    stored: CoverageReport
    #: Batches that finished while the command waited for background work.
    background_batches: int
    batches: BatchLog


def _check_out(out: Path | None, sidecar: bool) -> None:
    """Refuse an ``--out`` that cannot be written *before* fetching: discovering it after
    a long backfill would throw the result away."""
    if out is None:
        if sidecar:
            raise ValueError("--sidecar goes with --out FILE.csv")
        return
    if sidecar and out.suffix != ".csv":
        raise ValueError("--sidecar is for CSV: Parquet carries its provenance inside")
    if out.suffix not in _OUT_SUFFIXES:
        raise ValueError(f"--out must end in .parquet or .csv, got {out.name!r}")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"--out: directory {parent} does not exist")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out: {out} is not writable")


async def _fetch(
    provider: EnhancedQuestDBProvider, node: NodeId, window: Range, *, quiet: bool
) -> _Fetched:
    batches = BatchLog()
    async with provider:
        store = await provider.storage.resolved_location()
        if not quiet:
            show_store(store)
        with backfill_progress(provider, batches, label="fetch", quiet=quiet) as progress:
            progress.start((await _stored(provider, node, window)).missing_bars)
            result = await provider.fetch(window.start, window.end, node_id=str(node))
            finished = batches.succeeded + len(batches.errors)
            await provider.wait_background()
        background = batches.succeeded + len(batches.errors) - finished
        stored = await _stored(provider, node, window)
    return _Fetched(result, store, stored, background, batches)


async def _stored(provider: EnhancedQuestDBProvider, node: NodeId, window: Range) -> CoverageReport:
    return await provider.coverage_report(node_id=str(node), start=window.start, end=window.end)


def _run(args: argparse.Namespace) -> int:
    _check_out(args.out, args.sidecar)
    node = parse_node_id(args.node_id)
    window = window_from_args(args, interval=node.interval)
    config = resolve_config(args, [args.node_id])
    if node.exchange not in config.exchanges:
        raise ValueError(
            f"{args.config}: exchange {node.exchange!r} is not configured "
            f"(configured: {', '.join(sorted(config.exchanges)) or 'none'})"
        )
    provider = build_provider(config, strategy=args.strategy)
    fetched = asyncio.run(_fetch(provider, node, window, quiet=args.json))
    result = fetched.result
    if args.out is not None:
        _export(result, args.out, sidecar=args.sidecar)
    meta = result.metadata
    errors = [*meta.backfill_errors, *fetched.batches.errors]
    if args.json:
        print_json(
            {
                **meta.to_dict(),
                "store": fetched.store,
                "background_batches_waited_for": fetched.background_batches,
                "stored_after_wait": fetched.stored.to_dict(),
            }
        )
    else:
        _print(fetched, errors, args.out)
    if not meta.missing_ranges:
        return 0
    progressed = meta.rows > 0 or fetched.batches.succeeded > 0
    return missing_data_exit("fetch", errors, progressed=progressed)


def _export(result: SeamlessFetchResult, out: Path, *, sidecar: bool) -> None:
    if out.suffix == ".parquet":
        result.to_parquet(out)
        return
    result.frame.to_csv(out, index=False)
    if sidecar:
        sidecar_path = out.with_name(out.name + ".json")
        sidecar_path.write_text(json.dumps(result.provenance(), indent=2, sort_keys=True) + "\n")


def _ranges(ranges: tuple[Range, ...]) -> str:
    return ", ".join(f"[{format_iso(r.start)}, {format_iso(r.end)})" for r in ranges) or "none"


def _print(fetched: _Fetched, errors: list[str], out: Path | None) -> None:
    meta = fetched.result.metadata
    summary = Table(show_header=False, title=meta.node_id)
    summary.add_column("key", no_wrap=True)
    summary.add_column("value", overflow="fold")  # fingerprints and errors in full
    for key, value in (
        ("range", _ranges((meta.requested_range,))),
        ("rows", f"{meta.rows:,}"),
        ("coverage", f"{meta.coverage_ratio:.2%}"),
        ("missing", _ranges(meta.missing_ranges)),
        ("strategy", meta.strategy + (f" ({meta.downgrade_mode})" if meta.downgraded else "")),
    ):
        summary.add_row(key, value)
    if errors:
        distinct = list(dict.fromkeys(errors))
        more = f" (+{len(distinct) - 3} more)" if len(distinct) > 3 else ""
        summary.add_row("backfill errors", escape("\n".join(distinct[:3]) + more))
    console.print(summary)
    # on its own line, never folded: it is copied into notebooks and manifests
    console.print(f"fingerprint {meta.dataset_fingerprint or '-'}", markup=False, soft_wrap=True)
    if meta.rows:
        frame = fetched.result.frame
        shown = frame if len(frame) <= 6 else frame.iloc[[0, 1, 2, -3, -2, -1]]
        console.print(shown.to_string(index=False))
    if fetched.background_batches:
        stored = fetched.stored
        console.print(
            f"waited for {fetched.background_batches} background batch(es) before exiting; "
            f"the store now holds {stored.ratio:.2%} of the range (missing: "
            f"{_ranges(stored.missing)})",
            soft_wrap=True,
        )
    if out is not None:
        console.print(f"wrote {meta.rows:,} rows to {out}", markup=False, soft_wrap=True)
