"""Shared pieces of the data commands: store/exchange options, time windows, reports."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from qmtl.runtime.sdk.history_coverage import (
    CoverageSegment,
    Range,
    SegmentKind,
    compute_missing_ranges,
)
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso, to_epoch_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider

__all__ = [
    "CoverageReport",
    "add_store_options",
    "add_window_options",
    "build_provider",
    "console",
    "coverage_report",
    "coverage_table",
    "print_json",
    "segment_lines",
    "usage_handler",
    "window_from_args",
]

console = Console(highlight=False)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (SPEC §13)")
    parser.add_argument(
        "--dsn", help="hot store: duckdb:///path.duckdb or postgresql://... (overrides config)"
    )
    parser.add_argument(
        "--exchange-url",
        metavar="URL",
        help="REST root replacing the exchange's hosts, e.g. the simulator http://127.0.0.1:8080",
    )


def add_window_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--start", help="range start: ISO-8601 with offset, date, or epoch s")
    parser.add_argument("--end", help="range end (exclusive); default: now")
    parser.add_argument("--days", type=float, help="instead of --start: the last N days")


def _instant(text: str, name: str) -> int:
    value: int | str = int(text) if text.lstrip("-").isdigit() else text
    return to_epoch_seconds(value, name=name)


def window_from_args(
    args: argparse.Namespace, *, default_days: float | None = None, interval: int = 60
) -> Range:
    """The half-open request window from ``--start/--end/--days``; ``--end`` defaults to the
    open of the still-forming bar of ``interval`` (so the window holds closed bars only)."""
    now = int(time.time())
    end = _instant(args.end, "--end") if args.end else now - now % interval
    if args.start and args.days is not None:
        raise ValueError("give --start or --days, not both")
    if args.start:
        start = _instant(args.start, "--start")
    elif args.days is not None or default_days is not None:
        days = args.days if args.days is not None else default_days
        assert days is not None
        if days <= 0:
            raise ValueError(f"--days must be > 0, got {days}")
        start = end - int(days * 86_400)
    else:
        raise ValueError("give --start (or --days)")
    if start >= end:
        raise ValueError(f"--start {format_iso(start)} is not before --end {format_iso(end)}")
    return Range(start, end)


def build_provider(
    args: argparse.Namespace, node_ids: Sequence[str], *, strategy: str | None = None
) -> EnhancedQuestDBProvider:
    """A provider from ``--config`` (and ``--dsn``), or for the nodes' exchange directly.

    Call it before ``asyncio.run``: it reads the config file (blocking I/O) and connects
    nothing; the provider opens its store and exchange on first use."""
    from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider, ExchangeRouter
    from qmtl.runtime.sdk.config import load_config

    if args.config:
        overrides: dict[str, object] = {}
        if args.dsn:
            overrides["seamless.storage.dsn"] = args.dsn
        config = load_config(args.config, overrides=overrides)
        return EnhancedQuestDBProvider.from_config(config, strategy=strategy)
    exchanges = sorted({parse_node_id(n).exchange for n in node_ids})
    urls = {"rest": args.exchange_url} if args.exchange_url else None
    fetchers = {
        ex: CcxtOHLCVFetcher(CcxtBackfillConfig(exchange_id=ex, urls=urls)) for ex in exchanges
    }
    return EnhancedQuestDBProvider(
        args.dsn, fetcher=ExchangeRouter(fetchers), strategy=strategy or "SEAMLESS"
    )


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Coverage of one node over ``window``: bars by kind and the missing ranges."""

    node_id: str
    window: Range
    data_bars: int
    empty_bars: int
    missing: tuple[Range, ...]
    segments: tuple[CoverageSegment, ...]

    @property
    def ratio(self) -> float:
        total = self.window.bars(parse_node_id(self.node_id).interval)
        return 1.0 if total == 0 else (total - self.missing_bars) / total

    @property
    def missing_bars(self) -> int:
        interval = parse_node_id(self.node_id).interval
        return sum(r.bars(interval) for r in self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "window": [self.window.start, self.window.end],
            "data_bars": self.data_bars,
            "known_empty_bars": self.empty_bars,
            "missing_bars": self.missing_bars,
            "missing": [[r.start, r.end] for r in self.missing],
            "coverage_ratio": self.ratio,
            "segments": [
                {
                    "start": s.start,
                    "end": s.end,
                    "kind": s.kind.value,
                    "source": s.source,
                    "fetched_at": s.fetched_at,
                }
                for s in self.segments
            ],
        }


def coverage_report(
    node_id: str, ledger: Sequence[CoverageSegment], window: Range | None
) -> CoverageReport:
    """Clip ``ledger`` to ``window`` (default: first to last segment) and count."""
    interval = parse_node_id(node_id).interval
    if window is None:
        window = Range(ledger[0].start, ledger[-1].end) if ledger else Range(0, 0)
    clipped = [
        CoverageSegment(r.start, r.end, s.kind, s.source, s.fetched_at)
        for s in ledger
        if (r := s.range.intersect(window)) is not None
    ]
    bars = {
        kind: sum(s.range.bars(interval) for s in clipped if s.kind is kind) for kind in SegmentKind
    }
    missing = compute_missing_ranges(clipped, window.start, window.end, interval)
    return CoverageReport(
        node_id,
        window,
        bars[SegmentKind.DATA],
        bars[SegmentKind.EMPTY],
        tuple(missing),
        tuple(clipped),
    )


def coverage_table(reports: Sequence[CoverageReport], *, title: str = "coverage") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("node", no_wrap=True)
    for column in ("stored", "known-empty", "missing", "gaps", "coverage"):
        table.add_column(column, justify="right", no_wrap=True)
    for rep in reports:
        table.add_row(
            rep.node_id,
            f"{rep.data_bars:,}",
            f"{rep.empty_bars:,}",
            f"{rep.missing_bars:,}",
            f"{len(rep.missing)}",
            f"{rep.ratio:.2%}",
        )
    return table


def segment_lines(rep: CoverageReport) -> list[str]:
    """One human line per segment and per missing range, in time order."""
    interval = parse_node_id(rep.node_id).interval
    items: list[tuple[int, str]] = [
        (s.start, f"{s.kind.value.upper():7} {_span(s.range, interval)}") for s in rep.segments
    ]
    items += [(r.start, f"MISSING {_span(r, interval)}") for r in rep.missing]
    return [line for _, line in sorted(items)]


def _span(r: Range, interval: int) -> str:
    return f"[{format_iso(r.start)}, {format_iso(r.end)})  {r.bars(interval):,} bars"


def usage_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The handler of a command group called without a sub-command: its help, exit 2."""

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
