"""``ExchangeArchive``: the :class:`~qmtl.runtime.sdk.backfill_types.ArchiveSource` of one
ccxt exchange that publishes bulk kline archives (Binance spot and USDⓈ-M futures).

It plans with :func:`~qmtl.runtime.sdk.archive_plan.plan_archive_windows` (whole stable UTC
months, then whole stable days; monthly files only for bars of a minute or more, so one file
of 1 s bars is a day, 86,400 rows) and reads with an
:class:`~qmtl.runtime.io.binance_archive.ArchiveReader` (its own download limit; files are
verified against their CHECKSUM before a byte is parsed). The file name needs the exchange's
market id (``BTCUSDT`` for ccxt's ``BTC/USDT``), so the fetcher's markets are loaded first —
through the fetcher, charged to the REST budget once like every market load. A symbol the
exchange does not list plans nothing: the REST fetch then reports it.

Bars come back exactly as REST pages do (:func:`~qmtl.runtime.sdk.bars.block_to_frame` of
``[ts_ms, o, h, l, c, v]`` rows), so conformance, fingerprints and storage cannot tell the
sources apart; only the ledger's ``source`` says ``archive``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from qmtl.runtime.io.archive_backfill import log_fallback
from qmtl.runtime.io.binance_archive import ArchiveReader, archive_file
from qmtl.runtime.sdk.archive_plan import (
    ArchiveWindow,
    archive_prefix,
    archived_timeframe,
    plan_archive_windows,
)
from qmtl.runtime.sdk.bars import block_to_frame
from qmtl.runtime.sdk.errors import ArchiveError
from qmtl.runtime.sdk.history_coverage import Range, subtract_ranges
from qmtl.runtime.sdk.live_feed import closed_runs
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.io.ccxt_fetcher import CcxtOHLCVFetcher
    from qmtl.runtime.sdk._config_exchange import ArchiveConfig

__all__ = ["ExchangeArchive"]

#: Bars shorter than this (seconds) are read from daily files only.
_MONTHLY_MIN_INTERVAL = 60


class ExchangeArchive:
    """Archive reads for ``fetcher``'s exchange under ``config`` (``ValueError`` for an
    exchange or market type without archives)."""

    def __init__(
        self,
        fetcher: CcxtOHLCVFetcher,
        config: ArchiveConfig,
        *,
        reader: ArchiveReader | None = None,
    ) -> None:
        exchange_id, market_type = fetcher.config.exchange_id, fetcher.config.market_type
        prefix = archive_prefix(exchange_id, market_type)
        if prefix is None:
            raise ValueError(
                f"archive.enabled: {exchange_id} ({market_type}) publishes no bulk archives "
                "(Binance spot and USDⓈ-M futures do)"
            )
        self.fetcher = fetcher
        self.prefix = prefix
        self.base_url = config.base_url
        self.max_concurrent_downloads = config.max_concurrent_downloads
        self.reader = reader or ArchiveReader(
            max_concurrent_downloads=config.max_concurrent_downloads
        )

    async def archive_windows(
        self, node_id: str, interval: int, missing: Sequence[Range]
    ) -> list[ArchiveWindow]:
        node = parse_node_id(node_id)
        if node.exchange != self.fetcher.config.exchange_id or not archived_timeframe(
            node.timeframe, self.prefix
        ):
            return []
        plan = plan_archive_windows(
            missing, now=self.fetcher.clock.now(), monthly=interval >= _MONTHLY_MIN_INTERVAL
        )
        if plan and await self._market_id(node.symbol) is None:
            return []  # not listed: the REST fetch says so
        return plan

    async def read_archive(
        self, node_id: str, interval: int, window: ArchiveWindow
    ) -> pd.DataFrame:
        node = parse_node_id(node_id)
        market_id = await self._market_id(node.symbol)
        if market_id is None:
            raise ValueError(f"{node_id}: the exchange does not list {node.symbol!r}")
        file = archive_file(
            self.base_url, self.prefix, market_id, node.timeframe, window.period,
            window.window.start,
        )  # fmt: skip
        return block_to_frame(await self.reader.read(file, interval))

    async def fetch(self, window: Range, *, node_id: str, interval: int) -> pd.DataFrame:
        """The fetcher's ``fetch`` archive-first: the planned files (read at most
        ``max_concurrent_downloads`` at once), then REST pages for what they did not hold —
        the partial days, unpublished periods, a file's holes and any file that could not be
        used (logged as ``seamless.archive.fallback``). Bars sorted by open time."""
        windows = await self.archive_windows(node_id, interval, [window])
        reads = await asyncio.gather(*(self._read_or_none(node_id, interval, w) for w in windows))
        frames = [frame for frame in reads if frame is not None]
        held = [r for f in frames for r in closed_runs(f["ts"].to_numpy("int64"), interval)]
        for rest in subtract_ranges([window], held):
            page = await self.fetcher.fetch_window(
                rest.start, rest.end, node_id=node_id, interval=interval
            )
            frames.append(page.frame)
        if not frames:
            return block_to_frame(None)
        bars = pd.concat(frames, ignore_index=True)
        return bars.sort_values("ts", kind="stable", ignore_index=True)

    async def _read_or_none(
        self, node_id: str, interval: int, window: ArchiveWindow
    ) -> pd.DataFrame | None:
        try:
            return await self.read_archive(node_id, interval, window)
        except ArchiveError as exc:
            log_fallback(node_id, interval, window.window, exc)
            return None

    async def _market_id(self, symbol: str) -> str | None:
        await self.fetcher.load_markets()
        market = (getattr(self.fetcher.exchange, "markets", None) or {}).get(symbol)
        market_id = market.get("id") if isinstance(market, dict) else None
        return market_id if isinstance(market_id, str) else None

    async def aclose(self) -> None:
        await self.reader.aclose()
