"""``qmtl-seamless fetch NODE_ID --start --end``: what a strategy's ``fetch`` returns.

Prints the metadata (rows, missing ranges, coverage, fingerprint) and the first and last
bars; ``--out`` writes the frame (``.parquet`` or ``.csv``), ``--json`` prints the metadata
as JSON. The exchange comes from ``--config``, or is the node's exchange (``--exchange-url``
points it at the simulator or another host).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from rich.table import Table

from qmtl.cli._common import (
    add_store_options,
    add_window_options,
    build_provider,
    console,
    print_json,
    window_from_args,
)
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import NodeId, parse_node_id
from qmtl.runtime.sdk.seamless_data_provider import DataAvailabilityStrategy, SeamlessFetchResult
from qmtl.runtime.sdk.timestamps import format_iso

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("fetch", help="fetch a range of bars, backfilling gaps")
    parser.add_argument("node_id", metavar="NODE_ID", help="e.g. ohlcv:binance:BTC/USDT:1m")
    add_window_options(parser)
    parser.add_argument(
        "--strategy",
        choices=[s.value for s in DataAvailabilityStrategy],
        default=None,
        help="data availability strategy (default: the config's, else SEAMLESS)",
    )
    parser.add_argument("--out", type=Path, help="write the frame to FILE.parquet or FILE.csv")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_store_options(parser)
    parser.set_defaults(handler=_run)


async def _fetch(
    provider: EnhancedQuestDBProvider, node: NodeId, window: Range
) -> SeamlessFetchResult:
    async with provider:
        return await provider.fetch(
            window.start, window.end, node_id=str(node), interval=node.interval
        )


def _run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {args.out.name!r}")
    node = parse_node_id(args.node_id)
    window = window_from_args(args, interval=node.interval)
    provider = build_provider(args, [args.node_id], strategy=args.strategy)
    result = asyncio.run(_fetch(provider, node, window))
    if args.out is not None:
        if args.out.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(result.to_arrow(), args.out)
        else:
            result.frame.to_csv(args.out, index=False)
    meta = result.metadata
    if args.json:
        print_json(meta.to_dict())
    else:
        summary = Table(show_header=False, title=meta.node_id)
        for key, value in (
            ("range", f"[{format_iso(meta.requested_range.start)}, "
                      f"{format_iso(meta.requested_range.end)})"),
            ("rows", f"{meta.rows:,}"),
            ("coverage", f"{meta.coverage_ratio:.2%}"),
            ("missing", ", ".join(f"[{format_iso(r.start)}, {format_iso(r.end)})"
                                  for r in meta.missing_ranges) or "none"),
            ("fingerprint", meta.dataset_fingerprint or "-"),
            ("strategy", meta.strategy + (f" ({meta.downgrade_mode})" if meta.downgraded else "")),
        ):  # fmt: skip
            summary.add_row(key, value)
        console.print(summary)
        if meta.rows:
            frame = result.frame
            shown = frame if len(frame) <= 6 else frame.iloc[[0, 1, 2, -3, -2, -1]]
            console.print(shown.to_string(index=False))
        if args.out is not None:
            console.print(f"wrote {meta.rows:,} rows to {args.out}")
    return 0 if not meta.missing_ranges else 1
