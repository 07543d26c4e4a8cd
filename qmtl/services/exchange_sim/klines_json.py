"""Vectorised JSON encoding of kline rows: the simulator's hot path.

Formatting 8,000 decimal strings per 1000-row page in Python costs milliseconds. Here a page
is assembled from 4-byte *units* (``uint32``): numbers are split into 4-digit groups by scalar
division, each group picks a pre-rendered unit from one lookup table, and the units are stacked
into rows — a few dozen numpy passes, no Python per-row loop.

Working in 4-byte units needs padding, which goes where JSON allows whitespace: before a
value's opening quote or first digit, after a comma, before a row's ``[``. The body therefore
parses (``json.loads``, orjson, ccxt) to exactly the values of Binance's compact form; only
the whitespace differs. Values must be non-negative (times, prices, volumes, counts are).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import E8, Bars

__all__ = ["encode_klines"]

U32 = NDArray[np.uint32]
U16 = NDArray[np.uint16]
I64 = NDArray[np.int64]
_G = 10_000  # one 4-digit group


def _units(texts: list[str]) -> U32:
    raw = "".join(texts).encode("ascii")
    if len(raw) != 4 * len(texts):
        raise AssertionError("every unit must be 4 ASCII bytes")
    return np.frombuffer(raw, dtype="<u4").copy()


# Regions of the unit table, each indexed by a group value 0..9999, then single units.
_SPACES, _SQUOTE, _QPAD, _PAD4, _DIG4 = (i * _G for i in range(5))
_FRAC_A = 5 * _G  # ".123": the first 3 of the 8 decimals
_FRAC_C = _FRAC_A + 1000  # '7", ': last decimal, closing quote, comma, space
_ROW_HEAD, _COMMA, _ROW_END, _SEPARATOR, _BODY_HEAD, _BODY_END = range(_FRAC_C + 10, _FRAC_C + 16)
_TABLE: U32 = _units(
    ["    "] * _G
    + ['   "'] * _G  # the quote displaced by a 4-digit leading group
    + [(f'"{v}').rjust(4) if v < 1000 else f"{v:4d}" for v in range(_G)]
    + [f"{v:4d}" for v in range(_G)]
    + [f"{v:04d}" for v in range(_G)]
    + [f".{v:03d}" for v in range(1000)]
    + [f'{v}", ' for v in range(10)]
    + ["   [", ",   ", '"0"]', ",   ", "[  [", "   ]"]
)
_LAYOUT = (
    ("i", 0),
    ("d", 0),
    ("d", 1),
    ("d", 2),
    ("d", 3),
    ("d", 4),
    ("i", 1),
    ("d", 5),
    ("i", 2),
    ("d", 6),
    ("d", 7),
)  # t o h l c v T q n V Q


_POW = _G ** np.arange(5, dtype=np.int64)
# unit region by state: 0 blank, 1 displaced quote, 2 leading group, 3 inner group
_DEC_REGIONS = np.array([_SPACES, _SQUOTE, _QPAD, _DIG4], np.uint16)
_INT_REGIONS = np.array([_SPACES, _SPACES, _PAD4, _DIG4], np.uint16)


def _grouped(x: I64, spare: int) -> tuple[U16, I64, I64]:
    """Groups of ``x`` stacked on axis 0 (most significant first, ``spare`` zero groups in
    front), the position of each value's leading group, and that group's value.

    Small dtypes on purpose: temporaries stay under glibc's mmap threshold, so they are not
    page-faulted in afresh on every call (that cost more than the arithmetic)."""
    top_value = int(x.max()) if x.size else 0
    count = max(1, (len(str(top_value)) + 3) // 4)
    groups = np.zeros((spare + count, *x.shape), np.uint16)
    rest = x
    for k in range(spare + count - 1, spare - 1, -1):
        quotient = rest // _G
        groups[k] = rest - quotient * _G
        rest = quotient
    needed = np.ones(x.shape, np.int64)
    for k in range(1, count):
        needed += x >= _G**k
    return groups, spare + count - needed, x // _POW.take(needed - 1)


def _unit_index(groups: U16, lead: I64, wide: NDArray[np.bool_] | None, regions: U16) -> U16:
    """Groups above the leading one are 0, so ``_SPACES + 0`` renders them blank; groups
    after it are zero-padded; the leading one is space-padded (with its quote)."""
    pos = np.arange(groups.shape[0]).reshape(-1, *([1] * lead.ndim))
    state = (pos >= lead).view(np.uint8) * np.uint8(2) + (pos > lead).view(np.uint8)
    if wide is not None:
        state += ((pos == lead - 1) & wide).view(np.uint8)
    idx: U16 = regions.take(state) + groups
    return idx


def _decimal_units(x_e8: I64) -> tuple[U16, I64]:
    """Unit indices of ``"<int>.<8 decimals>", `` per value (axis 0), and the first unit
    that is not blank."""
    whole = x_e8 // E8
    frac = x_e8 - whole * E8
    groups, lead, lead_value = _grouped(whole, spare=1)
    # a 4-digit leading group leaves no room for its quote: it goes in the unit before
    wide = lead_value >= 1000
    idx = np.empty((groups.shape[0] + 3, *x_e8.shape), np.uint16)
    idx[:-3] = _unit_index(groups, lead, wide, _DEC_REGIONS)
    hi = frac // 100_000
    idx[-3] = _FRAC_A + hi
    mid = frac // 10
    idx[-2] = _DIG4 + mid - hi * _G
    idx[-1] = _FRAC_C + frac - mid * 10
    return idx, lead - wide


def _integer_units(x: I64) -> tuple[U16, I64]:
    groups, lead, _ = _grouped(x, spare=0)
    return _unit_index(groups, lead, None, _INT_REGIONS), lead


def encode_klines(bars: Bars) -> bytes:
    """Binance kline rows ``[openTime,"o","h","l","c","v",closeTime,"q",n,"V","Q","0"]``."""
    n = len(bars)
    if n == 0:
        return b"[]"
    dec_cols = (
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        bars.volume,
        bars.quote_volume,
        bars.taker_base,
        bars.taker_quote,
    )
    dec, dec_first = _decimal_units(np.stack(dec_cols))
    ints, int_first = _integer_units(np.stack([bars.open_time, bars.close_time, bars.trades]))
    dec_start = dec_first.min(axis=1).tolist()  # units blank in every row are dropped
    int_start = int_first.min(axis=1).tolist()
    blocks: list[U16 | int] = [_ROW_HEAD]
    for kind, j in _LAYOUT:  # decimal units end with their own comma; integers need one
        if kind == "i":
            blocks += [ints[int_start[j] :, j], _COMMA]
        else:
            blocks.append(dec[dec_start[j] :, j])
    blocks += [_ROW_END, _SEPARATOR]
    height = sum(1 if isinstance(b, int) else b.shape[0] for b in blocks)
    index = np.empty((height, n), np.uint16)  # unit-major: every copy below is contiguous
    row = 0
    for block in blocks:
        size = 1 if isinstance(block, int) else block.shape[0]
        index[row : row + size] = block
        row += size
    index[0, 0] = _BODY_HEAD  # "[  [": the page's bracket and the first row's
    index[-1, -1] = _BODY_END  # the last separator closes the page instead
    return _TABLE.take(index.T).tobytes()
