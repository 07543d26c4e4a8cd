"""``qmtl-seamless exchanges [ID[:MARKET]...] [--config FILE] [--json]``: each exchange's
profile — page size, weight per page, the published limit, the default budget the README rule
gives under it, the resulting ceiling in bars per second, and whether the exchange publishes
bulk archives (``exchanges.<id>.archive``) — so a user sees the plan
before a long backfill. Without IDs: the exchanges of ``--config``, else every exchange of
the published table. ``--config`` applies each configured exchange's ``profile`` overrides,
``page_limit`` and rate limit (the ceiling then uses that budget). Reads no store and
contacts no exchange.
"""

from __future__ import annotations

import argparse
from typing import Any

from qmtl.cli._common import console, number_table, print_json
from qmtl.runtime.io.composition import fetcher_config
from qmtl.runtime.io.exchange_profiles import PUBLISHED, ExchangeProfile, profile_for
from qmtl.runtime.sdk.archive_plan import archive_prefix
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "exchanges", help="show exchange profiles: page sizes, weights, budgets, ceilings"
    )
    parser.add_argument(
        "ids", nargs="*", metavar="ID[:MARKET]", help="e.g. binance, binanceusdm:swap, okx"
    )
    parser.add_argument("--config", metavar="FILE", help="apply a configuration's exchanges")
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")
    parser.set_defaults(handler=_run)


def _profiles(args: argparse.Namespace) -> list[tuple[ExchangeProfile, RateLimiterConfig]]:
    config = load_config(args.config) if args.config else None
    wanted: list[tuple[str, str | None]] = []
    for text in args.ids:
        exchange_id, _, market = text.partition(":")
        wanted.append((exchange_id, market or None))
    if not wanted:
        if config is not None and config.exchanges:
            wanted = [(exchange_id, None) for exchange_id in config.exchanges]
        else:
            wanted = [(exchange_id, market) for exchange_id, market in PUBLISHED]
    out = []
    for exchange_id, market in wanted:
        if config is not None and exchange_id in config.exchanges:
            settings = fetcher_config(config, exchange_id)
            if market is None or market == settings.market_type:
                out.append((settings.exchange_profile(), settings.effective_rate_limiter()))
                continue
        profile = profile_for(exchange_id, market or "spot")
        out.append((profile, profile.default_budget()))
    return out


def _run(args: argparse.Namespace) -> int:
    rows = _profiles(args)
    if args.json:
        payload = []
        for profile, budget in rows:
            entry = profile.to_dict()
            entry["budget"] = {
                "tokens_per_interval": budget.tokens_per_interval,
                "interval_ms": budget.interval_ms,
                "burst_tokens": budget.burst_tokens,
            }
            entry["ceiling_bars_per_s"] = profile.ceiling_bars_per_s(budget)
            entry["archive"] = archive_prefix(profile.exchange_id, profile.market_type)
            payload.append(entry)
        print_json(payload)
        return 0
    table_rows = [
        (
            profile.exchange_id,
            profile.market_type,
            f"{profile.bars_per_page:,}",
            f"{profile.page_weight}",
            f"{profile.ceiling_bars_per_s(budget):,.0f}",
            f"{budget.tokens_per_interval:,}+{budget.burst_tokens:,}/"
            f"{_seconds(budget.interval_ms)}",
            f"{profile.limit:,}/{_seconds(profile.limit_interval_ms)}",
            "all" if profile.history_depth_bars is None else f"{profile.history_depth_bars:,}",
            profile.source,
            "yes" if archive_prefix(profile.exchange_id, profile.market_type) else "no",
        )
        for profile, budget in rows
    ]
    columns = (
        "market", "bars/page", "weight", "bars/s", "budget", "limit", "depth", "source",
        "archive",
    )  # fmt: skip
    table = number_table(
        "exchange profiles", "exchange", columns, table_rows,
        optional=("limit", "depth", "source", "archive"),
    )  # fmt: skip
    console.print(table)
    console.print(
        "weight: per page; bars/s: the ceiling the budget (refill+burst per window) allows "
        "under the exchange's published limit; archive: bulk archive files to read whole "
        "months and days from (exchanges.<id>.archive.enabled); --json for every field",
    )
    return 0


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g} s"
