"""Which bars a klines request gets, and how scenario faults alter the page (pure).

Binance semantics: ``startTime``/``endTime`` are inclusive epoch ms bounds on the *open*
time; with ``startTime`` the page holds the oldest ``limit`` bars at or after it, without it
the newest ``limit`` bars up to ``endTime`` (or now); pages are oldest first. Bars that do not
exist are skipped, so a page after a gap starts later than asked.

Bar ``i`` of an interval opens at ``origin + i * interval`` with ``origin =
alignment_origin(interval)``: the epoch, or Monday 1970-01-05 for ``1w`` (weekly bars open on
Mondays, as on Binance); ``i >= 0``. Which bars exist (per symbol, the same rule for every
interval):

- the first bar is the one *containing* the listing instant (as on Binance);
- a halt ``[s, e)`` removes the bars lying entirely inside it (a 1d bar with a one-hour halt
  still exists);
- the newest bar is the one containing "now"; it is still forming (:func:`build_page`);
- with ``history_depth_bars = N`` (or a venue's ``recent_bars`` window) bars older than the
  N closed bars before the forming one are not served. A forward page asked from before that
  floor covers only its own ``limit`` slots (empty when they are all older): a shallow
  exchange does not skip ahead to its oldest bar the way it skips a listing gap, so an
  answer never makes unserved history look like known-empty history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qmtl.runtime.sdk.node_id import alignment_origin
from qmtl.services.exchange_sim.bars import Bars, forming_bar, generate_bars
from qmtl.services.exchange_sim.klines_json import encode_klines
from qmtl.services.exchange_sim.scenario import MalformedWindow, MarketScenario, PageFault

__all__ = [
    "FaultCounters",
    "FaultedBars",
    "Page",
    "apply_page_faults",
    "asked_window",
    "break_rows",
    "build_page",
    "fault_bars",
    "select_open_times",
    "take_empty_page",
    "truncate",
]

I64 = NDArray[np.int64]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _runs(
    market: MarketScenario, origin_ms: int, interval_ms: int, lo: int, hi: int
) -> list[tuple[int, int]]:
    """Existing bar indices within ``[lo, hi]`` as half-open runs ``[a, b)``."""
    if market.listing is not None:
        lo = max(lo, (market.listing * 1000 - origin_ms) // interval_ms)
    if not market.halts:
        return [(lo, hi + 1)] if lo <= hi else []
    holes = sorted(
        (
            _ceil_div(h.start * 1000 - origin_ms, interval_ms),
            (h.end * 1000 - origin_ms) // interval_ms,
        )
        for h in market.halts
    )
    runs: list[tuple[int, int]] = []
    cursor = lo
    for a, b in holes:
        if b <= a or b <= cursor:
            continue
        if a > hi:
            break
        if a > cursor:
            runs.append((cursor, a))
        cursor = b
    if cursor <= hi:
        runs.append((cursor, hi + 1))
    return runs


def _slot_bounds(
    interval_s: int, start_time: int | None, end_time: int | None, now_ms: int
) -> tuple[int, int, int, int]:
    """``(origin_ms, interval_ms, lo, hi)``: the bar indices ``[lo, hi]`` a request may
    reach — open at or after ``startTime``, at or before ``endTime`` and "now" (``hi < lo``
    when none can), whether or not the bars exist."""
    interval_ms = interval_s * 1000
    origin_ms = alignment_origin(interval_s) * 1000
    upper = now_ms if end_time is None else min(end_time, now_ms)
    lo = 0 if start_time is None else max(0, _ceil_div(start_time - origin_ms, interval_ms))
    hi = (upper - origin_ms) // interval_ms  # negative before the first bar
    return origin_ms, interval_ms, lo, hi


def asked_window(
    interval_s: int, *, start_time: int | None, end_time: int | None, limit: int, now_ms: int
) -> tuple[int, int] | None:
    """The bar time (epoch ms, half-open) a klines request asks about: its ``limit`` bar
    slots from ``startTime`` forward, or back from ``endTime``/now without one, whether or
    not bars exist there; ``None`` when it asks for nothing (the future, before the first
    bar). ``empty_pages`` faults match on this, not on the bars served, because they answer
    before any bar is chosen."""
    origin_ms, interval_ms, lo, hi = _slot_bounds(interval_s, start_time, end_time, now_ms)
    if start_time is not None:
        hi = min(hi, lo + limit - 1)
    else:
        lo = max(lo, hi - limit + 1)
    if hi < lo:
        return None
    return origin_ms + lo * interval_ms, origin_ms + (hi + 1) * interval_ms


def _floor_index(
    market: MarketScenario, origin_ms: int, interval_ms: int, now_ms: int, recent_bars: int | None
) -> int | None:
    """Index of the oldest bar served under the market's depth and ``recent_bars``."""
    now_index = (now_ms - origin_ms) // interval_ms
    floors = []
    if market.history_depth_bars is not None:
        floors.append(now_index - market.history_depth_bars)
    if recent_bars is not None:
        floors.append(now_index - recent_bars + 1)
    return max(floors) if floors else None


def select_open_times(
    market: MarketScenario,
    interval_s: int,
    *,
    start_time: int | None,
    end_time: int | None,
    limit: int,
    now_ms: int,
    recent_bars: int | None = None,
) -> I64:
    """Open times (epoch ms, ascending) of the bars a klines request returns.

    ``recent_bars`` limits the answer to the newest that many bar slots, the forming one
    included (OKX's ``market/candles`` serves 1440), on top of the market's
    ``history_depth_bars``."""
    origin_ms, interval_ms, lo, hi = _slot_bounds(interval_s, start_time, end_time, now_ms)
    if recent_bars is not None or market.history_depth_bars is not None:
        floor = _floor_index(market, origin_ms, interval_ms, now_ms, recent_bars)
        if floor is not None and lo < floor:
            if start_time is not None:
                hi = min(hi, lo + limit - 1)  # only the slots asked for, no skipping ahead
            lo = floor
    if hi < lo:
        return np.empty(0, np.int64)
    runs = _runs(market, origin_ms, interval_ms, lo, hi)
    forward = start_time is not None
    picked: list[tuple[int, int]] = []
    remaining = limit
    for a, b in runs if forward else reversed(runs):
        if remaining <= 0:
            break
        take = min(remaining, b - a)
        picked.append((a, a + take) if forward else (b - take, b))
        remaining -= take
    if not forward:
        picked.reverse()
    if len(picked) == 1:  # the usual page: one arange, no concatenation
        a, b = picked[0]
        first, stop = origin_ms + a * interval_ms, origin_ms + b * interval_ms
        return np.arange(first, stop, interval_ms, dtype=np.int64)
    if not picked:
        return np.empty(0, np.int64)
    index = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in picked])
    return index * interval_ms + origin_ms


def build_page(seed: int, symbol: str, interval_s: int, open_times: I64, now_ms: int) -> Bars:
    """Bars for ``open_times``; the newest is forming when it contains ``now_ms``."""
    interval_ms = interval_s * 1000
    if len(open_times) and int(open_times[-1]) + interval_ms > now_ms:
        closed = generate_bars(seed, symbol, interval_s, open_times[:-1])
        live = forming_bar(seed, symbol, interval_s, int(open_times[-1]), now_ms)
        return Bars.concat([closed, live], interval_ms)
    return generate_bars(seed, symbol, interval_s, open_times)


@dataclass
class FaultCounters:
    """How many requests each counted fault has hit (mutable; lives in the server state)."""

    hits: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def take(self, key: tuple[str, str, int], allowed: int | None) -> bool:
        """Count one hit; ``False`` once the fault has used up its ``allowed`` requests."""
        used = self.hits.get(key, 0)
        if allowed is not None and used >= allowed:
            return False
        self.hits[key] = used + 1
        return True


@dataclass(frozen=True, slots=True)
class Page:
    """The answer body, the open times (ms) of the rows in it, and the faults applied."""

    body: bytes
    open_times: I64
    fault: str | None = None


def _hits(fault: PageFault, bars: Bars) -> NDArray[np.bool_]:
    """Which rows of the page lie in the fault's bar-time span."""
    start_ms, end_ms = fault.span.start * 1000, fault.span.end * 1000
    return (bars.open_time + bars.interval_ms > start_ms) & (bars.open_time < end_ms)


def take_empty_page(
    market: MarketScenario, window: tuple[int, int] | None, counters: FaultCounters
) -> PageFault | None:
    """The ``empty_pages`` fault that turns this request's answer into ``[]``, if any
    (``window`` from :func:`asked_window`; counts the hit against the fault's
    ``requests``)."""
    if window is None:
        return None
    first_ms, end_ms = window
    for i, fault in enumerate(market.empty_pages):
        hit = fault.span.start * 1000 < end_ms and first_ms < fault.span.end * 1000
        if hit and counters.take((market.exchange_symbol, "empty", i), fault.requests):
            return fault
    return None


def _first_matching(
    faults: tuple[PageFault, ...],
    kind: str,
    market: MarketScenario,
    bars: Bars,
    counters: FaultCounters,
) -> tuple[PageFault, NDArray[np.bool_]] | None:
    for i, fault in enumerate(faults):
        rows = _hits(fault, bars)
        if rows.any() and counters.take((market.exchange_symbol, kind, i), fault.requests):
            return fault, rows
    return None


def break_rows(kind: str, wire: list[Any], rows: NDArray[np.bool_]) -> list[Any]:
    """``wire`` rows (any venue's: columns 0..4 are time, open, high, low, close) with the
    rows selected by ``rows`` broken as ``nan_strings`` or ``wrong_types`` (in place)."""
    selected = np.flatnonzero(rows).tolist()
    for n, i in enumerate(selected):
        row = wire[i]
        if kind == "nan_strings":
            row[1:5] = ["NaN"] * 4
        elif n % 2 == 0:  # wrong_types: an object where an array belongs ...
            wire[i] = {"t": row[0], "o": row[1], "h": row[2], "l": row[3], "c": row[4]}
        else:  # ... or a list where a number belongs
            row[1] = [row[1]]
    return wire


def truncate(body: bytes) -> bytes:
    """A body cut in half (never empty): not parseable, as a dropped connection leaves it."""
    return body[: max(1, len(body) // 2)]


def _broken_body(kind: str, bars: Bars, rows: NDArray[np.bool_]) -> bytes:
    if kind == "truncated_json":
        return truncate(encode_klines(bars))
    wire: list[Any] = list(bars.wire_rows())
    return json.dumps(break_rows(kind, wire, rows), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class FaultedBars:
    """A page's bars after short-page and duplicate faults, the malformed fault still to be
    rendered (``broken``: its kind and which rows lie in its span) and the faults applied —
    shared by every venue, each rendering the result in its own wire format."""

    bars: Bars
    broken: tuple[str, NDArray[np.bool_]] | None
    applied: tuple[str, ...]

    @property
    def fault(self) -> str | None:
        return ",".join(self.applied) or None


def fault_bars(
    market: MarketScenario, bars: Bars, *, limit: int, counters: FaultCounters
) -> FaultedBars:
    """Short page, duplicate bars, then which malformed fault applies, as the scenario asks."""
    applied: list[str] = []
    if len(bars) and _first_matching(market.short_pages, "short", market, bars, counters):
        bars = bars.take(np.arange(len(bars) - 1))
        applied.append("short_page")
    dup = _first_matching(market.duplicates, "dup", market, bars, counters) if len(bars) else None
    if dup is not None:
        first = int(np.flatnonzero(dup[1])[0])
        index = np.insert(np.arange(len(bars)), first + 1, first)[:limit]
        bars = bars.take(index)
        applied.append("duplicates")
    found = _first_matching(market.malformed, "malformed", market, bars, counters)
    if found is None:
        return FaultedBars(bars, None, tuple(applied))
    fault, rows = found
    kind = fault.kind if isinstance(fault, MalformedWindow) else "truncated_json"
    return FaultedBars(bars, (kind, rows), (*applied, kind))


def apply_page_faults(
    market: MarketScenario, bars: Bars, *, limit: int, counters: FaultCounters
) -> Page:
    """:func:`fault_bars`, rendered as Binance klines."""
    faulted = fault_bars(market, bars, limit=limit, counters=counters)
    if faulted.broken is not None:
        kind, rows = faulted.broken
        body = _broken_body(kind, faulted.bars, rows)
    else:
        body = encode_klines(faulted.bars)
    return Page(body, faulted.bars.open_time, faulted.fault)
