"""Node ids ``ohlcv:{exchange}:{symbol}:{timeframe}`` and ccxt timeframes.

A node id names one OHLCV series. It is *data*: storage and artifact layers never splice it
into SQL or paths. Parsing is strict so that a bad id fails here, with the bad part named,
instead of deep inside a backfill.

Grammar (decisions written down):

- ``exchange``: a ccxt exchange id, ``[a-z][a-z0-9_]*``.
- ``symbol``: a ccxt unified symbol ``BASE/QUOTE``, optionally ``:SETTLE`` for derivatives
  (``BTC/USDT:USDT``); each part is ``[A-Za-z0-9][A-Za-z0-9._-]*`` (so never ``..``). The
  settle colon is the only colon a node id may contain besides its three separators; ids
  are parsed by structure (prefix, exchange, timeframe last), never by a naive split.
- ``timeframe``: one of :data:`TIMEFRAMES`.
- At most :data:`MAX_NODE_ID_LENGTH` characters; no whitespace or control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_NODE_ID_LENGTH",
    "NODE_ID_PREFIX",
    "TIMEFRAMES",
    "WEEK_ORIGIN",
    "NodeId",
    "alignment_origin",
    "check_interval",
    "format_node_id",
    "parse_node_id",
    "seconds_to_timeframe",
    "timeframe_to_seconds",
]

NODE_ID_PREFIX = "ohlcv"
MAX_NODE_ID_LENGTH = 200

#: Supported ccxt timeframes and their length in seconds.
TIMEFRAMES: dict[str, int] = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
    "1w": 604800,
}
_SECONDS_TO_TIMEFRAME = {v: k for k, v in TIMEFRAMES.items()}

#: Weekly bars open on Monday 00:00 UTC on every major exchange; the epoch was a Thursday.
WEEK_ORIGIN = 345_600  # 1970-01-05T00:00:00Z


def alignment_origin(interval: int) -> int:
    """The instant bar open times of ``interval`` seconds are aligned to (``ts - origin``
    is a multiple of ``interval``): 0 for every timeframe but the week."""
    return WEEK_ORIGIN if interval == TIMEFRAMES["1w"] else 0


_EXCHANGE_RE = re.compile(r"[a-z][a-z0-9_]*")
_ASSET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def timeframe_to_seconds(timeframe: str) -> int:
    """Seconds in a ccxt timeframe (``"1m"`` → 60); ``ValueError`` for anything else."""
    try:
        return TIMEFRAMES[timeframe]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}"
        ) from None


def seconds_to_timeframe(seconds: int) -> str:
    """The ccxt timeframe of an interval in seconds (60 → ``"1m"``)."""
    try:
        return _SECONDS_TO_TIMEFRAME[seconds]
    except (KeyError, TypeError):
        raise ValueError(
            f"interval {seconds!r} s matches no supported timeframe "
            f"({', '.join(f'{s}' for s in _SECONDS_TO_TIMEFRAME)})"
        ) from None


@dataclass(frozen=True, slots=True)
class NodeId:
    """A parsed node id. ``str(node)`` gives back the canonical text."""

    exchange: str
    symbol: str
    timeframe: str

    def __post_init__(self) -> None:
        _check_exchange(self.exchange)
        _check_symbol(self.symbol)
        timeframe_to_seconds(self.timeframe)

    @property
    def interval(self) -> int:
        """Bar length in seconds."""
        return TIMEFRAMES[self.timeframe]

    def __str__(self) -> str:
        return f"{NODE_ID_PREFIX}:{self.exchange}:{self.symbol}:{self.timeframe}"


def _check_exchange(exchange: str) -> None:
    if not isinstance(exchange, str) or not exchange:
        raise ValueError("node id: exchange is empty")
    if not _EXCHANGE_RE.fullmatch(exchange):
        raise ValueError(
            f"node id: invalid exchange {exchange!r} (expected a ccxt id like 'binance')"
        )


def _check_symbol(symbol: str) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("node id: symbol is empty")
    pair, sep, settle = symbol.partition(":")
    base, slash, quote = pair.partition("/")
    parts_ok = (
        bool(slash)
        and bool(_ASSET_RE.fullmatch(base))
        and bool(_ASSET_RE.fullmatch(quote))
        and (not sep or bool(_ASSET_RE.fullmatch(settle)))
    )
    if not parts_ok:
        raise ValueError(
            f"node id: invalid symbol {symbol!r} (expected a ccxt unified symbol like "
            "'BTC/USDT' or 'BTC/USDT:USDT')"
        )


def parse_node_id(text: str) -> NodeId:
    """Parse ``ohlcv:{exchange}:{symbol}:{timeframe}``; ``ValueError`` names the bad part."""
    if not isinstance(text, str):
        raise ValueError(f"node id must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("node id is empty")
    if len(text) > MAX_NODE_ID_LENGTH:
        raise ValueError(f"node id is {len(text)} characters long (max {MAX_NODE_ID_LENGTH})")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError(f"node id {text!r} contains whitespace or control characters")
    parts = text.split(":")
    if len(parts) < 4:
        raise ValueError(
            f"node id {text!r} must look like 'ohlcv:{{exchange}}:{{symbol}}:{{timeframe}}'"
        )
    if len(parts) > 5:
        raise ValueError(f"node id {text!r} has extra ':' separated parts")
    prefix, exchange, *symbol_parts, timeframe = parts
    if prefix != NODE_ID_PREFIX:
        raise ValueError(f"node id {text!r}: prefix must be {NODE_ID_PREFIX!r}, got {prefix!r}")
    return NodeId(exchange=exchange, symbol=":".join(symbol_parts), timeframe=timeframe)


def format_node_id(exchange: str, symbol: str, timeframe: str) -> str:
    """Canonical node id text (validated)."""
    return str(NodeId(exchange=exchange, symbol=symbol, timeframe=timeframe))


def check_interval(node_id: str | NodeId, interval: int | None) -> NodeId:
    """Parse ``node_id`` and check that ``interval`` (seconds) matches its timeframe;
    ``None`` means "the timeframe's" (the node id already names it)."""
    node = node_id if isinstance(node_id, NodeId) else parse_node_id(node_id)
    if interval is None:
        return node
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ValueError(f"interval must be an int number of seconds, got {interval!r}")
    if interval != node.interval:
        raise ValueError(
            f"interval {interval} s does not match timeframe {node.timeframe!r} of "
            f"{node} ({node.interval} s)"
        )
    return node
