"""The ``exchangeInfo`` documents of Binance spot and USD-M futures for a scenario (pure).

Just enough of Binance's shapes for ccxt's ``load_markets`` to build the markets: symbol,
assets, precisions, order types and filters (the tick size is the one the bars are
quantised to). Spot (``/api/v3/exchangeInfo``): permission sets and PRICE_FILTER /
LOT_SIZE / NOTIONAL; ``status`` is ``TRADING``, or ``BREAK`` while "now" is before the
listing or inside a halt. Futures (``/fapi/v1/exchangeInfo``): ``contractType: PERPETUAL``
with ``marginAsset`` (what makes ccxt build ``BTC/USDT:USDT``, a linear swap) and Binance's
futures statuses: ``PENDING_TRADING`` before the listing, ``SETTLING`` in a halt.
"""

from __future__ import annotations

from typing import Any

from qmtl.services.exchange_sim.bars import format_e8, symbol_model
from qmtl.services.exchange_sim.scenario import MarketScenario, Scenario
from qmtl.services.exchange_sim.weights import WeightLimiter

__all__ = ["exchange_info", "futures_exchange_info", "market_status"]

#: Binance's ``deliveryDate`` of perpetual contracts (2100-12-25).
_PERPETUAL_DELIVERY_MS = 4_133_404_800_000


def market_status(
    market: MarketScenario, now_ms: int, *, unlisted: str = "BREAK", halted: str = "BREAK"
) -> str:
    now_s = now_ms / 1000
    if market.listing is not None and now_s < market.listing:
        return unlisted
    if any(h.contains(now_s) for h in market.halts):
        return halted
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


def _futures_entry(scenario: Scenario, market: MarketScenario, now_ms: int) -> dict[str, Any]:
    model = symbol_model(scenario.seed, market.symbol)
    tick = format_e8(model.tick_e8)
    return {
        "symbol": market.exchange_symbol,
        "pair": market.exchange_symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": _PERPETUAL_DELIVERY_MS,
        "onboardDate": (market.listing or 0) * 1000,
        "status": market_status(market, now_ms, unlisted="PENDING_TRADING", halted="SETTLING"),
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": market.base,
        "quoteAsset": market.quote,
        "marginAsset": market.settle,
        "pricePrecision": model.price_decimals,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "4529764.00000000",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": "0.001",
                "maxQty": "120",
                "minQty": "0.001",
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }


def futures_exchange_info(
    scenario: Scenario, now_ms: int, limiter: WeightLimiter, markets: list[MarketScenario]
) -> dict[str, Any]:
    """The ``/fapi/v1/exchangeInfo`` document for ``markets`` (USD-M perpetuals)."""
    settles = sorted({m.settle for m in markets if m.settle is not None})
    return {
        "timezone": "UTC",
        "serverTime": now_ms,
        "futuresType": "U_MARGINED",
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": limiter.limit_per_minute,
            },
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [
            {"asset": a, "marginAvailable": True, "autoAssetExchange": "-10000"} for a in settles
        ],
        "symbols": [_futures_entry(scenario, m, now_ms) for m in markets],
    }
