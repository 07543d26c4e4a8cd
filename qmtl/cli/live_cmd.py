"""``qmtl-seamless live NODE_ID``: closed bars as they arrive, stored as they come.

The feed is the exchange's websocket (ccxt.pro) when ``--ws-url`` is given or
``seamless.live.ws.enabled`` is set in ``--config`` (the exchange's ``urls.ws``), else a
polling feed that wakes on bar boundaries and asks the REST API (through the shared rate
limiter) for the bar that just closed. Each closed bar is printed with its **staleness** —
seconds from the bar's close to its arrival here — and stored (bars and ledger, one
transaction), so a strategy's next ``fetch`` serves it from the store. After a websocket
reconnect the span the feed missed is backfilled from REST before the feed says so
(``reconnected: backfilled [..)``): no hole is left; a span whose backfill failed is
reported missing, never dropped.

Runs until ``--bars`` closed bars arrived, ``--seconds`` passed, or Ctrl-C / SIGTERM (exit 0).
``--json`` prints one JSON object per line: ``{"event": "bar", "ts", "ts_iso", "open", "high",
"low", "close", "volume", "staleness_s"}``, ``{"event": "reconnected", "healed": [[start,
end], ...], "failed": [...]}``, and last ``{"event": "stopped", "bars", "reason"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qmtl.cli._common import (
    add_exchange_options,
    add_metrics_option,
    add_store_options,
    resolve_config,
    show_store,
    until_stopped,
)
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.sdk.live_feed import store_closed_bars
from qmtl.runtime.sdk.live_polling import PollingLiveFeed
from qmtl.runtime.sdk.metrics import default_metrics
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
    from qmtl.runtime.sdk.config import QMTLConfig
    from qmtl.runtime.sdk.history_coverage import Range
    from qmtl.runtime.sdk.live_feed import LiveDataFeed, LiveUpdate

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "live",
        help="print closed bars as they arrive (websocket or polling), storing them",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("node_id", metavar="NODE_ID", help="e.g. ohlcv:binance:BTC/USDT:1m")
    add_store_options(parser)
    add_exchange_options(parser)
    parser.add_argument(
        "--ws-url",
        metavar="URL",
        help="the exchange's websocket root (e.g. ws://127.0.0.1:8080/stream/ws): use the "
        "websocket feed (overrides exchanges.<id>.urls.ws)",
    )
    parser.add_argument("--bars", type=int, metavar="N", help="stop after N closed bars")
    parser.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_metrics_option(parser)
    parser.set_defaults(handler=_run)


class _Printer:
    """One line (or one JSON object) per event, on stdout, flushed."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.bars = 0

    def emit(self, payload: dict[str, Any], text: str) -> None:
        print(json.dumps(payload) if self.as_json else text, flush=True)

    def update(self, update: LiveUpdate) -> None:
        if update.reconnected:
            self.reconnect(update.healed, update.failed, update.interval)
        if update.forming:
            return
        bars = update.bars
        columns = [
            bars[c].to_numpy().tolist() for c in ("ts", "open", "high", "low", "close", "volume")
        ]
        for ts_value, o, h, lo, c, v in zip(*columns, strict=True):
            ts = int(ts_value)
            staleness = update.received_at - (ts + update.interval)
            self.bars += 1
            payload = {
                "event": "bar", "ts": ts, "ts_iso": format_iso(ts), "open": o, "high": h,
                "low": lo, "close": c, "volume": v, "staleness_s": round(staleness, 3),
            }  # fmt: skip
            self.emit(
                payload,
                f"{format_iso(ts)}  o {o:g}  h {h:g}  l {lo:g}  c {c:g}  v {v:g}  "
                f"staleness {staleness:.3f} s",
            )

    def reconnect(
        self, healed: tuple[Range, ...], failed: tuple[Range, ...], interval: int
    ) -> None:
        payload = {
            "event": "reconnected",
            "healed": [[r.start, r.end] for r in healed],
            "failed": [[r.start, r.end] for r in failed],
        }
        spans = ", ".join(f"{r} ({r.bars(interval)} bars)" for r in healed) or "nothing missed"
        text = f"reconnected: backfilled {spans}"
        if failed:
            text += "; STILL MISSING " + ", ".join(str(r) for r in failed)
        self.emit(payload, text)


async def _follow(
    provider: EnhancedQuestDBProvider,
    feed: LiveDataFeed,
    node_id: str,
    printer: _Printer,
    limit: int | None,
) -> str:
    interval = parse_node_id(node_id).interval
    async for update in feed.stream(node_id, interval):
        closed = update.bars if not update.forming else update.bars.iloc[:0]
        if not closed.empty:
            if limit is not None:
                closed = closed.iloc[: limit - printer.bars]
            await store_closed_bars(
                provider.storage, node_id, interval, closed, fetched_at=update.received_at
            )
            update = replace(update, bars=closed)
        printer.update(update)
        if limit is not None and printer.bars >= limit:
            return "bars"
    return "feed ended"


async def _live(config: QMTLConfig, args: argparse.Namespace, node_id: str) -> None:
    provider = build_provider(config, strategy="AUTO_BACKFILL")
    printer = _Printer(as_json=args.json)
    async with serve_metrics(args.metrics_port, default_metrics().registry), provider:
        show_store(await provider.storage.resolved_location())
        feed = provider.live_feed
        owned = feed is None
        if feed is None:
            feed = PollingLiveFeed(provider.fetcher, clock=provider.clock)
        how = "websocket" if not owned else "polling the REST API"
        print(f"live: {node_id} ({how})", file=sys.stderr, flush=True)
        try:
            how, ended = await until_stopped(
                _follow(provider, feed, node_id, printer, args.bars), timeout_s=args.seconds
            )
        finally:
            if owned:
                await feed.aclose()
        reason = {"done": ended, "stopped": "stopped", "timeout": "seconds"}[how]
        printer.emit(
            {"event": "stopped", "bars": printer.bars, "reason": reason},
            f"stopped ({reason}): {printer.bars} closed bars",
        )


def _run(args: argparse.Namespace) -> int:
    parse_node_id(args.node_id)  # a bad node id is the first thing said
    if args.ws_url is not None and not args.ws_url.startswith(("ws://", "wss://")):
        raise ValueError(f"--ws-url must be ws:// or wss://, got {args.ws_url!r}")
    if args.bars is not None and args.bars < 1:
        raise ValueError(f"--bars must be >= 1, got {args.bars}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be a finite number > 0, got {args.seconds}")
    config = resolve_config(args, (args.node_id,))  # --ws-url: the websocket feed, on
    asyncio.run(_live(config, args, args.node_id))
    return 0
