"""OKX v5 documents: candle rows (newest first) and the instruments list (pure).

A candle row is nine strings, ``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``; for
spot ``vol`` is in the base currency and ``volCcy``/``volCcyQuote`` in the quote currency;
``confirm`` is ``"0"`` for the still-forming bar and ``"1"`` otherwise. Decimals carry no
trailing zeros (``"24341.4"``), as OKX sends them; they denote exactly the simulator's e8
values, so a client parses the same floats it gets from the Binance format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import E8, Bars, symbol_model
from qmtl.services.exchange_sim.klines import break_rows, truncate
from qmtl.services.exchange_sim.okx_params import envelope
from qmtl.services.exchange_sim.scenario import MarketScenario

__all__ = ["candle_rows", "candles_body", "instrument", "okx_decimal"]


def okx_decimal(value_e8: int) -> str:
    """``123450000`` → ``"1.2345"``; ``100000000`` → ``"1"`` (value ≥ 0)."""
    whole, frac = divmod(value_e8, E8)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:08d}".rstrip("0")


def candle_rows(bars: Bars, now_ms: int) -> list[list[Any]]:
    """Rows of ``bars`` (ascending) newest first, the bar containing ``now_ms`` unconfirmed."""
    closes = (bars.open_time + bars.interval_ms <= now_ms).tolist()
    columns = [
        bars.open.tolist(),
        bars.high.tolist(),
        bars.low.tolist(),
        bars.close.tolist(),
        bars.volume.tolist(),
    ]
    quote = bars.quote_volume.tolist()
    times = bars.open_time.tolist()
    rows: list[list[Any]] = []
    for i in range(len(bars) - 1, -1, -1):
        q = okx_decimal(quote[i])
        rows.append(
            [
                str(times[i]),
                *(okx_decimal(col[i]) for col in columns),
                q,
                q,
                "1" if closes[i] else "0",
            ]
        )
    return rows


def candles_body(bars: Bars, now_ms: int, broken: tuple[str, NDArray[np.bool_]] | None) -> bytes:
    """The candles answer for ``bars`` (ascending), broken as a malformed fault asks."""
    rows = candle_rows(bars, now_ms)
    if broken is None:
        return envelope(rows)
    kind, selected = broken
    if kind == "truncated_json":
        return truncate(envelope(rows))
    return envelope(break_rows(kind, rows, selected[::-1]))


def _state(market: MarketScenario, now_ms: int) -> str:
    now_s = now_ms / 1000
    if market.listing is not None and now_s < market.listing:
        return "preopen"
    if any(h.contains(now_s) for h in market.halts):
        return "suspend"
    return "live"


def instrument(seed: int, market: MarketScenario, code: int, now_ms: int) -> dict[str, Any]:
    """One spot instrument of ``public/instruments`` (enough for ccxt's ``parse_market``;
    the tick size is the one the bars are quantised to)."""
    tick = okx_decimal(symbol_model(seed, market.symbol).tick_e8)
    return {
        "instType": "SPOT",
        "instId": market.inst_id,
        "instIdCode": code,
        "uly": "",
        "instFamily": "",
        "baseCcy": market.base,
        "quoteCcy": market.quote,
        "settleCcy": "",
        "ctVal": "",
        "ctMult": "",
        "ctValCcy": "",
        "optType": "",
        "stk": "",
        "listTime": "" if market.listing is None else str(market.listing * 1000),
        "auctionEndTime": "",
        "contTdSwTime": "",
        "expTime": "",
        "lever": "10",
        "tickSz": tick,
        "lotSz": "0.00000001",
        "minSz": "0.00001",
        "ctType": "",
        "alias": "",
        "state": _state(market, now_ms),
        "ruleType": "normal",
        "maxLmtSz": "9999999999",
        "maxMktSz": "1000000",
        "maxLmtAmt": "20000000",
        "maxMktAmt": "1000000",
        "maxTwapSz": "9999999999",
        "maxIcebergSz": "9999999999",
        "maxTriggerSz": "9999999999",
        "maxStopSz": "1000000",
        "category": "1",
    }
