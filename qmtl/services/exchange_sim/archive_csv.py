"""Vectorised CSV encoding of kline rows as Binance's archive files hold them (pure, numpy).

A row is ``open_time,open,high,low,close,volume,close_time,quote_asset_volume,
number_of_trades,taker_buy_base_volume,taker_buy_quote_volume,ignore`` with ``ignore`` always
``0``; decimals are the REST klines' strings (``format_e8``: 8 decimals, no exponent), so a
value parses to the same float from either source. Times are epoch milliseconds, or
microseconds (``close = open + interval_us - 1``) for spot files from 2025 on.

How rows are built without a Python loop per row: every field is rendered right-aligned into
a fixed-width byte matrix ``(rows, width)`` from 4-digit groups and one ``(10000, 4)`` lookup
table, with a same-shaped mask that drops each value's leading zeros; the masked matrix read
row-major (``matrix[mask]``) is the CSV text. A 1m month (44,640 rows) takes a few tens of
milliseconds; callers encode long files in chunks (:data:`CHUNK_ROWS`) to bound memory.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import E8, Bars

__all__ = ["CHUNK_ROWS", "SPOT_COLUMNS", "USDM_HEADER", "encode_csv"]

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]

#: Rows encoded per call by file builders: about 10 MB of scratch, a 1m month in one call.
CHUNK_ROWS = 65_536
#: Column names of the spot files (which carry no header row; documentation only).
SPOT_COLUMNS = (
    "open_time,open,high,low,close,volume,close_time,quote_asset_volume,number_of_trades,"
    "taker_buy_base_volume,taker_buy_quote_volume,ignore"
)
#: The header row of USD-M files, as Binance writes it.
USDM_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    b"taker_buy_volume,taker_buy_quote_volume,ignore\n"
)

_G = 10_000
_DIGITS4: U8 = np.frombuffer(
    "".join(f"{v:04d}" for v in range(_G)).encode("ascii"), dtype=np.uint8
).reshape(_G, 4)
#: ``_DIGIT_COLUMNS[d][g]``: the ``d``-th character of ``g`` written as four digits.
_DIGIT_COLUMNS = tuple(np.ascontiguousarray(_DIGITS4[:, d]) for d in range(4))
_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)
_COMMA, _DOT = ord(","), ord(".")
_TAIL = np.frombuffer(b",0\n", dtype=np.uint8)  # the ``ignore`` column and the line end


def _digit_counts(values: I64) -> I64:
    """Decimal digits of each value (``0`` has one); values are >= 0."""
    found: I64 = np.searchsorted(_POWERS_OF_TEN, values, side="right") + 1
    return found


def _groups(values: I64, count: int) -> I64:
    """``(count, n)`` base-10000 digits of ``values``, most significant first."""
    out = np.empty((count, values.shape[0]), np.int64)
    rest = values
    for k in range(count - 1, -1, -1):
        quotient = rest // _G
        np.subtract(rest, quotient * _G, out=out[k])
        rest = quotient
    return out


class _Rows:
    """A fixed-width byte matrix being filled left to right, with its keep-mask.

    Stored transposed, ``(width, n)``: each character position of every row is one
    contiguous array, so filling a field is a few contiguous ``take``/compare calls."""

    def __init__(self, n: int, width: int) -> None:
        self.chars = np.empty((width, n), np.uint8)
        self.keep = np.ones((width, n), np.bool_)
        self.col = 0

    def literal(self, text: U8) -> None:
        self.chars[self.col : self.col + len(text)] = text[:, None]
        self.col += len(text)

    def byte(self, value: int) -> None:
        self.chars[self.col] = value
        self.col += 1

    def _digits(self, groups: I64) -> None:
        for k in range(groups.shape[0]):
            for d in range(4):
                np.take(_DIGIT_COLUMNS[d], groups[k], out=self.chars[self.col + 4 * k + d])

    def integer(self, values: I64, groups: int) -> None:
        """Right-aligned digits in ``4 * groups`` columns, leading zeros masked out."""
        width = 4 * groups
        self._digits(_groups(values, groups))
        first_kept = width - _digit_counts(values)
        for k in range(width - 1):  # the last digit is always kept
            np.less_equal(first_kept, k, out=self.keep[self.col + k])
        self.col += width

    def fraction8(self, values: I64) -> None:
        """Exactly eight digits (``values`` < 1e8), every one kept."""
        self._digits(_groups(values, 2))
        self.col += 8

    def text(self) -> bytes:
        # a boolean mask reads the (transposed) matrix row by row: the CSV text
        return self.chars.T[self.keep.T].tobytes()


def _group_count(values: I64) -> int:
    """4-digit groups needed for the largest value (at least one)."""
    top = int(values.max()) if values.size else 0
    return max(1, (len(str(top)) + 3) // 4)


def encode_csv(bars: Bars, *, microseconds: bool = False) -> bytes:
    """Bars as archive CSV rows, one ``\\n``-terminated line each, in ``bars``' order (no
    header). Values must be non-negative (times, prices, volumes, counts are).
    ``microseconds``: open/close times in µs instead of ms."""
    n = len(bars)
    if n == 0:
        return b""
    scale = 1000 if microseconds else 1
    open_time = bars.open_time * scale
    close_time = open_time + (bars.interval_ms * scale - 1)
    decimals = (bars.open, bars.high, bars.low, bars.close, bars.volume)
    extras = (bars.quote_volume, bars.taker_base, bars.taker_quote)
    wholes = [v // E8 for v in (*decimals, *extras)]
    time_groups = _group_count(close_time)
    trade_groups = _group_count(bars.trades)
    whole_groups = [_group_count(w) for w in wholes]
    # a decimal is its whole part, "." and 8 digits; ten separators; the tail ",0\n"
    width = sum(4 * g + 9 for g in whole_groups) + 8 * time_groups + 4 * trade_groups
    width += 10 + len(_TAIL)
    rows = _Rows(n, width)

    def decimal(j: int, values: I64) -> None:
        rows.integer(wholes[j], whole_groups[j])
        rows.byte(_DOT)
        rows.fraction8(values - wholes[j] * E8)

    rows.integer(open_time, time_groups)
    for j, values in enumerate(decimals):
        rows.byte(_COMMA)
        decimal(j, values)
    rows.byte(_COMMA)
    rows.integer(close_time, time_groups)
    rows.byte(_COMMA)
    decimal(5, bars.quote_volume)
    rows.byte(_COMMA)
    rows.integer(bars.trades, trade_groups)
    for j in (6, 7):
        rows.byte(_COMMA)
        decimal(j, extras[j - 5])
    rows.literal(_TAIL)
    if rows.col != width:
        raise AssertionError(f"row layout is {rows.col} bytes wide, planned {width}")
    return rows.text()
