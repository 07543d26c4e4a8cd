"""Node id grammar and timeframe table."""

from __future__ import annotations

import pytest

from qmtl.runtime.sdk.node_id import (
    TIMEFRAMES,
    NodeId,
    check_interval,
    format_node_id,
    parse_node_id,
    seconds_to_timeframe,
    timeframe_to_seconds,
)


def test_parse_and_format_round_trip() -> None:
    node = parse_node_id("ohlcv:binance:BTC/USDT:1m")
    assert node == NodeId("binance", "BTC/USDT", "1m")
    assert node.interval == 60
    assert str(node) == "ohlcv:binance:BTC/USDT:1m"
    assert format_node_id("binance", "ETH/USDT", "1h") == "ohlcv:binance:ETH/USDT:1h"


def test_derivative_symbol_with_settle_currency() -> None:
    node = parse_node_id("ohlcv:binanceusdm:BTC/USDT:USDT:4h")
    assert node.symbol == "BTC/USDT:USDT"
    assert node.interval == 4 * 3600


@pytest.mark.parametrize(("tf", "seconds"), list(TIMEFRAMES.items()))
def test_every_timeframe_round_trips(tf: str, seconds: int) -> None:
    assert timeframe_to_seconds(tf) == seconds
    assert seconds_to_timeframe(seconds) == tf


def test_timeframe_table_is_the_spec_list() -> None:
    assert list(TIMEFRAMES) == [
        "1s",
        "1m",
        "3m",
        "5m",
        "15m",
        "30m",
        "1h",
        "2h",
        "4h",
        "6h",
        "8h",
        "12h",
        "1d",
        "1w",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "node id is empty"),
        ("ohlcv:binance:BTC/USDT", "must look like"),
        ("bars:binance:BTC/USDT:1m", "prefix must be 'ohlcv'"),
        ("ohlcv::BTC/USDT:1m", "exchange is empty"),
        ("ohlcv:Binance:BTC/USDT:1m", "invalid exchange 'Binance'"),
        ("ohlcv:binance::1m", "symbol is empty"),
        ("ohlcv:binance:BTCUSDT:1m", "invalid symbol 'BTCUSDT'"),
        ("ohlcv:binance:BTC/USDT:2m", "unknown timeframe '2m'"),
        ("ohlcv:binance:BTC/USDT:1M", "unknown timeframe '1M'"),
        ("ohlcv:binance:BTC/USDT:1m:x:y", "extra ':' separated parts"),
        ("ohlcv:binance:BTC/USDT:x:1m:", "extra ':' separated parts"),
        ("ohlcv:binance:../../etc/passwd:1m", "invalid symbol"),
        ("ohlcv:binance:../..:1m", "invalid symbol"),
        ("ohlcv:binance:./.:1m", "invalid symbol"),
        ("ohlcv:binance:BTC/USDT';DROP TABLE bars;--:1m", "whitespace or control"),
        ("ohlcv:binance:BTC/US'DT:1m", "invalid symbol"),
        ("ohlcv:binance:BTC/USDT\x00:1m", "whitespace or control"),
        ("ohlcv:binance:BTC /USDT:1m", "whitespace or control"),
        ("ohlcv:binance:" + "A" * 10_000 + "/USDT:1m", "characters long"),
    ],
)
def test_bad_node_ids_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_node_id(text)


def test_non_string_node_id() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_node_id(42)  # type: ignore[arg-type]


def test_interval_must_match_timeframe() -> None:
    assert check_interval("ohlcv:binance:BTC/USDT:1m", 60).timeframe == "1m"
    with pytest.raises(ValueError, match="does not match timeframe '1m'"):
        check_interval("ohlcv:binance:BTC/USDT:1m", 300)
    with pytest.raises(ValueError, match="must be an int"):
        check_interval("ohlcv:binance:BTC/USDT:1m", 60.0)  # type: ignore[arg-type]


def test_unknown_interval_seconds() -> None:
    with pytest.raises(ValueError, match="matches no supported timeframe"):
        seconds_to_timeframe(61)
