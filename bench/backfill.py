"""Backfill throughput against the exchange's weight budget, and against plain ccxt.

    python bench/backfill.py [--days 60] [--symbols 1 10] [--latency-ms 100]

The simulator runs in its own process with Binance's default budget (6000 weight per
minute; klines weight 2 and 1000 bars each ⇒ a ceiling of 50,000 1m candles/s) and 100 ms
added to every answer. For each symbol count (default: 1, the issue's single 60-day range,
then 10, long enough for the sustained rate to dominate) two runs, each on a fresh
simulator, over the same symbols × days:

- **ours**: ``EnhancedQuestDBProvider.ensure_data_available`` for every symbol at once, into a
  fresh DuckDB store; limiter set by the README rule (``tokens_per_interval + burst_tokens``
  ≤ the exchange's limit): 5880 per minute + 100 burst; ``window_bars=1000`` (one full page
  per batch: the default 900 would cap us at 0.9 of the ceiling).
- **ccxt**: one plain ``ccxt.async_support.binance`` with its own throttle, one
  ``fetch_ohlcv(..., params={"paginate": True, "paginationCalls": 10000, "until": ...})`` per
  symbol, all at once (the usual hand-written loop).

Prints candles/s, the ratio to the ceiling (target ≥ 0.97, zero 429s) and ours ÷ ccxt
(target ≥ 1.15).

``--archive`` compares archive-first with REST-only over 1 symbol × one calendar year of 1m
bars (2025: Binance's microsecond files; 525,600 candles), each run on a fresh simulator and
a fresh store, in one process: REST-only at the weight ceiling as above, then archive-first
(``exchanges.binance.archive``: twelve monthly files, verified, parsed, stored), with every
archive response capped at ``--archive-mbit`` (100 Mbit/s) and the simulator's files built
before the clock starts (real archives are static files; ``--cold`` times the build too). It
prints both rates, archive ÷ REST, archive ÷ the REST ceiling (target ≥ 3) and the REST
requests the archive-first run still made.

``--exchange binanceusdm|okx`` runs the same against the simulator's Binance USD-M futures or
OKX v5 format, with the exchange's profile: its page size (USD-M: 499 bars for weight 2;
OKX: 100 bars a request), its published limit (USD-M 2400 weight/min; OKX history-candles 20
requests / 2 s) and the default budget the README rule gives under it. It prints the bars per
unit of weight of the profile's page against the default page a plain client would ask for,
and ours against that exchange's ceiling (no plain-ccxt run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import tempfile
import time
import urllib.request
from typing import Any

from qmtl.runtime.io.ccxt_exchange import rewrite_urls
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.config import ArchiveConfig
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, SimulatorServer

DAY = 86_400
KLINES_WEIGHT = 2
BARS_PER_PAGE = 1000


def _serve(scenario: dict[str, Any], ports: Any) -> None:
    async def main() -> None:
        server = SimulatorServer(Scenario.from_dict(scenario))
        await server.start()
        ports.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_simulator(scenario: dict[str, Any]) -> tuple[mp.Process, str]:
    ports: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_serve, args=(scenario, ports), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{ports.get(timeout=30)}"


def statuses(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url}/_sim/requests") as resp:  # loopback only
        payload: dict[str, Any] = json.load(resp)
    return {str(k): int(v) for k, v in payload["statuses"].items()}


VENUES = {  # exchange -> (market type, symbol suffix)
    "binance": ("spot", ""),
    "binanceusdm": ("swap", ":USDT"),
    "okx": ("spot", ""),
}


def requests_by_venue(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url}/_sim/requests") as resp:  # loopback only
        payload: dict[str, Any] = json.load(resp)
    return {str(k): int(v) for k, v in payload["by_venue"].items()}


async def run_ours(
    base_url: str,
    symbols: list[str],
    start: int,
    end: int,
    exchange: str = "binance",
    archive: bool = False,
) -> tuple[int, float]:
    market_type, suffix = VENUES[exchange]
    if exchange == "binance":  # the README rule with session 1's 100-weight burst
        budget = RateLimiterConfig(
            tokens_per_interval=5880, interval_ms=60_000, burst_tokens=100, local_semaphore=32
        )
    else:  # the profile's own default budget
        budget = RateLimiterConfig(local_semaphore=32)
    config = CcxtBackfillConfig(
        exchange_id=exchange, market_type=market_type, urls={"rest": base_url}, rate_limiter=budget,
        archive=ArchiveConfig(enabled=archive, base_url=base_url),
    )  # fmt: skip
    fetcher = CcxtOHLCVFetcher(config)
    page = config.exchange_profile().bars_per_page
    with tempfile.TemporaryDirectory() as tmp:
        provider = EnhancedQuestDBProvider(
            f"duckdb:///{tmp}/bench.duckdb",
            fetcher=fetcher,
            backfill_config=BackfillConfig(
                window_bars=page * max(1, 1000 // page), max_concurrent_requests=32
            ),
        )
        async with provider:
            nodes = [f"ohlcv:{exchange}:{s}{suffix}:1m" for s in symbols]
            began = time.perf_counter()
            await asyncio.gather(
                *(provider.ensure_data_available(start, end, node_id=n, interval=60) for n in nodes)
            )
            seconds = time.perf_counter() - began
            frames = [await provider.storage.read_range(n, start, end) for n in nodes]  # verify
    return sum(len(f) for f in frames), seconds


async def run_ccxt(base_url: str, symbols: list[str], start: int, end: int) -> tuple[int, float]:
    import ccxt.async_support as ccxt

    options = {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}}
    exchange = ccxt.binance({"enableRateLimit": True, "options": options})
    exchange.urls["api"] = rewrite_urls(exchange.urls["api"], base_url, "ws" + base_url[4:])
    try:
        params = {"paginate": True, "paginationCalls": 10_000, "until": end * 1000 - 1}
        began = time.perf_counter()
        pages = await asyncio.gather(
            *(exchange.fetch_ohlcv(s, "1m", start * 1000, None, params) for s in symbols)
        )
        seconds = time.perf_counter() - began
    finally:
        await exchange.close()
    return sum(len({row[0] for row in rows if row[0] < end * 1000}) for rows in pages), seconds


def venue_compare(symbol_count: int, args: argparse.Namespace) -> None:
    """``--exchange binanceusdm|okx``: ours against that exchange's ceiling."""
    from qmtl.runtime.io.exchange_profiles import profile_for

    exchange = args.exchange
    market_type, _ = VENUES[exchange]
    profile = profile_for(exchange, market_type)
    plain_page = {"binanceusdm": 500, "okx": 100}[exchange]  # what ccxt asks without a limit
    plain_weight = next(w for b, w in profile.page_tiers if plain_page <= b)
    symbols = [f"S{i:03d}/USDT" for i in range(symbol_count)]
    scenario: dict[str, Any] = {"seed": 1, "symbols": symbols, "latency_ms": args.latency_ms}
    end = int(time.time()) // DAY * DAY
    start = end - args.days * DAY
    budget = profile.default_budget()
    ceiling = profile.ceiling_bars_per_s(budget)
    print(f"-- {exchange} {market_type}: {symbol_count} symbol(s) x {args.days} days of 1m; "
          f"latency {args.latency_ms} ms; limit {profile.limit} per {profile.limit_interval_ms} "
          f"ms; budget {budget.tokens_per_interval} + {budget.burst_tokens}; ceiling "
          f"{ceiling:,.0f} candles/s")  # fmt: skip
    ours_per_weight = profile.bars_per_page / profile.page_weight
    plain_per_weight = plain_page / plain_weight
    print(f"page: {profile.bars_per_page} bars for weight {profile.page_weight} = "
          f"{ours_per_weight:.1f} bars/weight; a plain client's {plain_page}-bar page: "
          f"{plain_per_weight:.1f} bars/weight "
          f"(x{ours_per_weight / plain_per_weight:.2f})")  # fmt: skip
    ours, ours_429 = measure("ours", scenario, run_ours, symbols, start, end, exchange)
    verdict = "ok" if ours / ceiling >= 0.97 and ours_429 == 0 else "BELOW TARGET"
    print(f"ours / ceiling = {ours / ceiling:.3f} (target >= 0.97, zero 429s: {verdict})")


def measure(name: str, scenario: dict[str, Any], runner: Any, *args: Any) -> tuple[float, int]:
    proc, base_url = start_simulator(scenario)
    try:
        candles, seconds = asyncio.run(runner(base_url, *args))  # timed inside: the job only
        rejected = statuses(base_url)
    finally:
        proc.terminate()
        proc.join()
    rate = candles / seconds
    too_many = rejected.get("429", 0) + rejected.get("418", 0)
    print(f"{name:5} {candles:>10,} candles in {seconds:6.2f} s = {rate:9,.0f} candles/s; "
          f"429/418: {too_many}")  # fmt: skip
    return rate, too_many


def compare(symbol_count: int, args: argparse.Namespace) -> None:
    symbols = [f"S{i:03d}/USDT" for i in range(symbol_count)]
    scenario = {
        "seed": 1,
        "symbols": symbols,
        "latency_ms": args.latency_ms,
        "weight_limit_per_minute": args.weight_limit,
    }
    end = int(time.time()) // DAY * DAY
    start = end - args.days * DAY
    ceiling = args.weight_limit / 60 / KLINES_WEIGHT * BARS_PER_PAGE
    print(f"-- {symbol_count} symbol(s) x {args.days} days of 1m bars; latency "
          f"{args.latency_ms} ms; ceiling {ceiling:,.0f} candles/s "
          f"({args.weight_limit} weight/min)")  # fmt: skip
    ours, ours_429 = measure("ours", scenario, run_ours, symbols, start, end)
    plain, _ = measure("ccxt", scenario, run_ccxt, symbols, start, end)
    verdict = "ok" if ours / ceiling >= 0.97 and ours_429 == 0 else "BELOW TARGET"
    print(f"ours / ceiling = {ours / ceiling:.3f} (target >= 0.97, zero 429s: {verdict})")
    print(f"ccxt / ceiling = {plain / ceiling:.3f}")
    print(f"ours / ccxt    = {ours / plain:.2f} (target >= 1.15)")


def warm_archive(base_url: str, symbol: str, start: int, end: int) -> None:
    """Have the simulator build every monthly file of the range once (it keeps them)."""
    from datetime import UTC, datetime

    month = datetime.fromtimestamp(start, UTC)
    market = symbol.replace("/", "")
    while month.timestamp() < end:
        name = f"{market}-1m-{month:%Y-%m}.zip"
        url = f"{base_url}/data/spot/monthly/klines/{market}/1m/{name}"
        with urllib.request.urlopen(url) as resp:  # loopback only
            resp.read()
        month = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def archive_compare(args: argparse.Namespace) -> None:
    """``--archive``: archive-first against REST-only, one symbol, one calendar year."""
    from datetime import UTC, datetime

    symbol = "BTC/USDT"
    start = int(datetime(args.year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(args.year + 1, 1, 1, tzinfo=UTC).timestamp())
    ceiling = args.weight_limit / 60 / KLINES_WEIGHT * BARS_PER_PAGE
    cap = int(args.archive_mbit * 1_000_000 / 8)
    scenario: dict[str, Any] = {
        "seed": 1, "symbols": [symbol], "latency_ms": args.latency_ms,
        "weight_limit_per_minute": args.weight_limit,
        "archive": {"bandwidth_bytes_per_s": cap},
    }  # fmt: skip
    print(f"-- 1 symbol x {args.year} ({(end - start) // 60:,} 1m candles); REST latency "
          f"{args.latency_ms} ms, ceiling {ceiling:,.0f} candles/s; archive responses capped at "
          f"{args.archive_mbit:g} Mbit/s; simulator files {'cold' if args.cold else 'pre-built'}"
          )  # fmt: skip
    rest, rest_429 = measure("rest", scenario, run_ours, [symbol], start, end)
    proc, base_url = start_simulator(scenario)
    try:
        if not args.cold:
            warm_archive(base_url, symbol, start, end)
        before = requests_by_venue(base_url)
        candles, seconds = asyncio.run(run_ours(base_url, [symbol], start, end, "binance", True))
        after = requests_by_venue(base_url)
    finally:
        proc.terminate()
        proc.join()
    archived = candles / seconds
    rest_requests = after.get("binance", 0) - before.get("binance", 0)
    archive_requests = after.get("archive", 0) - before.get("archive", 0)
    print(f"archive {candles:>10,} candles in {seconds:6.2f} s = {archived:9,.0f} candles/s; "
          f"archive requests {archive_requests}, REST requests {rest_requests}")  # fmt: skip
    verdict = "ok" if archived / ceiling >= 3 and rest_429 == 0 else "BELOW TARGET"
    print(f"archive / rest    = {archived / rest:.2f}")
    print(f"archive / ceiling = {archived / ceiling:.2f} (target >= 3: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument(
        "--symbols",
        type=int,
        nargs="+",
        default=[1, 10],
        help="symbol counts to run: 1 is the issue's setup (one 60-day range, short enough to "
        "ride the burst); 10 runs ~18 s, long enough for the sustained rate to dominate",
    )
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument("--exchange", choices=sorted(VENUES), default="binance")
    parser.add_argument("--archive", action="store_true", help="archive-first vs REST-only")
    parser.add_argument("--year", type=int, default=2025, help="--archive: the calendar year")
    parser.add_argument("--archive-mbit", type=float, default=100.0, help="--archive: cap")
    parser.add_argument("--cold", action="store_true", help="--archive: time the file builds")
    args = parser.parse_args()
    if args.archive:
        archive_compare(args)
        return
    for count in args.symbols:
        (compare if args.exchange == "binance" else venue_compare)(count, args)


if __name__ == "__main__":
    main()
