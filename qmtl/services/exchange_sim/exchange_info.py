"""The ``/api/v3/exchangeInfo`` document for a scenario (pure).

Just enough of Binance's shape for ccxt's ``load_markets`` to build spot markets: symbol,
assets, precisions, order types, permission sets and the PRICE_FILTER / LOT_SIZE /
NOTIONAL filters (the tick size is the one the bars are quantised to). ``status`` is
``TRADING``, or ``BREAK`` while "now" is before the listing or inside a halt.
"""

from __future__ import annotations

from typing import Any

from qmtl.services.exchange_sim.bars import format_e8, symbol_model
from qmtl.services.exchange_sim.scenario import MarketScenario, Scenario
from qmtl.services.exchange_sim.weights import WeightLimiter

__all__ = ["exchange_info", "market_status"]


def market_status(market: MarketScenario, now_ms: int) -> str:
    now_s = now_ms / 1000
    if market.listing is not None and now_s < market.listing:
        return "BREAK"
    if any(h.contains(now_s) for h in market.halts):
        return "BREAK"
    return "TRADING"


def _symbol_entry(scenario: Scenario, market: MarketScenario, now_ms: int) -> dict[str, Any]:
    model = symbol_model(scenario.seed, market.symbol)
    return {
        "symbol": market.exchange_symbol,
        "status": market_status(market, now_ms),
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": format_e8(model.tick_e8),
                "maxPrice": "1000000.00000000",
                "tickSize": format_e8(model.tick_e8),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def exchange_info(
    scenario: Scenario, now_ms: int, limiter: WeightLimiter, markets: list[MarketScenario]
) -> dict[str, Any]:
    """The document for ``markets`` (already resolved from the request)."""
    return {
        "timezone": "UTC",
        "serverTime": now_ms,
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": limiter.limit_per_minute,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": 61000,
            },
        ],
        "exchangeFilters": [],
        "symbols": [_symbol_entry(scenario, m, now_ms) for m in markets],
    }
