"""Coverage and gap math over half-open ranges (pure, O(segments), never O(bars)).

Conventions (the whole system relies on them):

- A :class:`Range` is half-open ``[start, end)`` in epoch seconds (UTC). A bar with open time
  ``t`` belongs to it when ``start <= t < end``; the last bar of a range is ``end - interval``.
- Bounds are *aligned by ceiling* to the interval's bar grid (multiples of the interval since
  :func:`~qmtl.runtime.sdk.node_id.alignment_origin`: the epoch, or a Monday for weeks): the
  bars with open time in ``[s, e)`` are exactly those in ``[ceil(s), ceil(e))``, so aligning
  this way never changes which bars a request means (``10:30..12:30`` on 1h is the bars
  11:00 and 12:00). Misaligned input is therefore accepted and normalized, never rejected.
- Inputs accept ``int`` seconds, tz-aware ``datetime`` and ISO-8601 strings; naive datetimes
  are a ``ValueError`` (see :mod:`qmtl.runtime.sdk.timestamps`).
- The ledger is a list of :class:`CoverageSegment` with kind ``DATA`` (bars stored) or
  ``EMPTY`` (the exchange was asked and has none: *known-empty*, not a gap). Everything else is
  *missing*: never fetched, or the fetch failed.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from qmtl.runtime.sdk.node_id import alignment_origin
from qmtl.runtime.sdk.timestamps import InstantLike, format_iso, format_span, to_epoch_seconds

__all__ = [
    "DEFAULT_STABILIZATION_BARS",
    "CoverageSegment",
    "Range",
    "SegmentKind",
    "apply_backfill_outcome",
    "check_bar_interval",
    "compute_missing_ranges",
    "coverage_ratio",
    "iter_batches",
    "merge_ranges",
    "split_range",
    "subtract_ranges",
]

_I64 = npt.NDArray[np.int64]

#: Bars closed fewer than this many intervals ago are not final (an exchange may still
#: publish or correct them): EMPTY claims there are not recorded, artifacts not sealed. The
#: one default every component takes (``seamless.artifact.stabilization_bars``).
DEFAULT_STABILIZATION_BARS = 2
_get_bounds = operator.attrgetter("start", "end")


def check_bar_interval(interval: object) -> int:
    """A bar interval: a positive ``int`` number of seconds (``ValueError`` otherwise). The
    one check every layer uses (coverage math, the ledger update, the stores)."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
        raise ValueError(f"interval must be a positive int number of seconds, got {interval!r}")
    return interval


def _ceil(value: int, interval: int) -> int:
    origin = alignment_origin(interval)
    return origin - ((origin - value) // interval) * interval


@dataclass(frozen=True, slots=True, order=True)
class Range:
    """Half-open ``[start, end)`` in epoch seconds; ``start <= end``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"range {name} must be int epoch seconds, got {value!r}")
        if self.start > self.end:
            raise ValueError(
                f"range start {format_iso(self.start)} ({self.start}) is after end "
                f"{format_iso(self.end)} ({self.end})"
            )

    def __str__(self) -> str:
        return format_span(self.start, self.end)

    def __repr__(self) -> str:
        return f"Range({self.start}, {self.end}: {format_iso(self.start)}..{format_iso(self.end)})"

    @classmethod
    def aligned(cls, start: InstantLike, end: InstantLike, interval: int) -> Range:
        """Normalize user bounds: parse, then ceil-align both (same bars, see module doc)."""
        check_bar_interval(interval)
        s = to_epoch_seconds(start, name="start")
        e = to_epoch_seconds(end, name="end")
        if s > e:
            raise ValueError(f"start {format_iso(s)} ({s}) is after end {format_iso(e)} ({e})")
        return cls(_ceil(s, interval), _ceil(e, interval))

    def bars(self, interval: int) -> int:
        """Number of bars of ``interval`` seconds whose open time lies in the range."""
        return (_ceil(self.end, interval) - _ceil(self.start, interval)) // interval

    @property
    def empty(self) -> bool:
        return self.start >= self.end

    def intersect(self, other: Range) -> Range | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Range(start, end) if start < end else None


class SegmentKind(StrEnum):
    """``DATA``: bars are stored. ``EMPTY``: the exchange confirmed it has no bars there."""

    DATA = "data"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class CoverageSegment:
    """One ledger entry: ``[start, end)`` of ``kind``, from ``source``, fetched at
    ``fetched_at`` (epoch seconds; ``None`` when unknown)."""

    start: int
    end: int
    kind: SegmentKind
    source: str | None = None
    fetched_at: float | None = None

    def __post_init__(self) -> None:
        Range(self.start, self.end)  # validates the bounds
        object.__setattr__(self, "kind", SegmentKind(self.kind))

    @property
    def range(self) -> Range:
        return Range(self.start, self.end)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while 10^5 small objects are made or read: its generational passes
    would otherwise walk the whole ledger again and again (4x the cost). Nothing made here
    can form a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _bounds(items: Iterable[Range | CoverageSegment], interval: int) -> tuple[_I64, _I64]:
    seq = items if isinstance(items, list | tuple) else list(items)
    with _gc_paused():  # one pass over the objects: they may be scattered in memory
        flat = itertools.chain.from_iterable(map(_get_bounds, seq))
        pairs = np.fromiter(flat, dtype=np.int64, count=2 * len(seq))
    raw_starts, raw_ends = pairs[0::2], pairs[1::2]
    origin = alignment_origin(interval)
    starts = origin - ((origin - raw_starts) // interval) * interval
    ends = origin - ((origin - raw_ends) // interval) * interval
    return starts, ends


def _union(starts: _I64, ends: _I64) -> tuple[_I64, _I64]:
    """Vectorized union of ``[starts, ends)``; overlapping *or adjacent* parts coalesce."""
    keep = starts < ends
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    breaks = np.flatnonzero(starts[1:] > reach[:-1]) + 1
    group_starts = np.concatenate(([0], breaks))
    group_ends = np.concatenate((breaks - 1, [starts.size - 1]))
    return starts[group_starts], reach[group_ends]


_new_object = object.__new__
_set_start: Callable[[Range, int], None] = Range.__dict__["start"].__set__
_set_end: Callable[[Range, int], None] = Range.__dict__["end"].__set__


def _trusted_range(start: int, end: int) -> Range:
    """A Range from bounds already known to be valid ints (skips ``__post_init__``: the
    result lists of gap math can hold 10^5 ranges)."""
    r: Range = _new_object(Range)
    _set_start(r, start)
    _set_end(r, end)
    return r


def _to_ranges(starts: _I64, ends: _I64) -> list[Range]:
    with _gc_paused():
        return [_trusted_range(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def merge_ranges(ranges: Iterable[Range | CoverageSegment], interval: int) -> list[Range]:
    """Sorted, aligned union of ``ranges``: overlapping or adjacent ones coalesce."""
    check_bar_interval(interval)
    return _to_ranges(*_union(*_bounds(ranges, interval)))


def compute_missing_ranges(
    covered: Iterable[Range | CoverageSegment],
    start: InstantLike,
    end: InstantLike,
    interval: int,
) -> list[Range]:
    """The aligned, coalesced sub-ranges of ``[start, end)`` that nothing in ``covered``
    covers. DATA and EMPTY segments both count as covered; pass only the segments you trust."""
    wanted = Range.aligned(start, end, interval)
    if wanted.empty:
        return []
    starts, ends = _bounds(covered, interval)
    starts = np.clip(starts, wanted.start, wanted.end)
    ends = np.clip(ends, wanted.start, wanted.end)
    u_starts, u_ends = _union(starts, ends)
    gap_starts = np.concatenate(([wanted.start], u_ends)).astype(np.int64)
    gap_ends = np.concatenate((u_starts, [wanted.end])).astype(np.int64)
    keep = gap_starts < gap_ends
    return _to_ranges(gap_starts[keep], gap_ends[keep])


def coverage_ratio(
    covered: Iterable[Range | CoverageSegment],
    start: InstantLike,
    end: InstantLike,
    interval: int,
) -> float:
    """Covered bars ÷ requested bars, in ``[0, 1]``; an empty request is fully covered (1.0)."""
    wanted = Range.aligned(start, end, interval)
    requested = wanted.bars(interval)
    if requested == 0:
        return 1.0
    missing = sum(
        r.bars(interval) for r in compute_missing_ranges(covered, *_pair(wanted), interval)
    )
    return (requested - missing) / requested


def _pair(r: Range) -> tuple[int, int]:
    return r.start, r.end


def split_range(window: Range, interval: int, max_bars: int) -> list[Range]:
    """Cut a range into batches of at most ``max_bars`` bars on a fixed grid (the list of
    :func:`iter_batches`)."""
    return list(iter_batches(window, interval, max_bars))


def iter_batches(window: Range, interval: int, max_bars: int) -> Iterator[Range]:
    """The batches of :func:`split_range`, one at a time (a decade of 1s bars is 350,000
    batches: planning them must not hold them all).

    Cut points are the multiples of ``max_bars * interval`` since the interval's alignment
    origin, so two requests that overlap cut their common part into the *same* batches —
    which is what lets concurrent fetches share one backfill per batch (single flight).
    """
    check_bar_interval(interval)
    if isinstance(max_bars, bool) or not isinstance(max_bars, int) or max_bars <= 0:
        raise ValueError(f"max_bars must be a positive int, got {max_bars!r}")
    step = max_bars * interval
    start, end = _ceil(window.start, interval), _ceil(window.end, interval)
    origin = alignment_origin(interval)
    cut = origin + ((start - origin) // step + 1) * step
    while start < end:
        stop = min(cut, end)
        yield Range(start, stop)
        start, cut = stop, cut + step


def apply_backfill_outcome(
    ledger: Sequence[CoverageSegment],
    *,
    interval: int,
    data: Iterable[Range] = (),
    empty: Iterable[Range] = (),
    source: str | None = None,
    fetched_at: float | None = None,
    stabilization_bars: int = DEFAULT_STABILIZATION_BARS,
) -> list[CoverageSegment]:
    """The ledger after a backfill: ``data`` ranges become DATA, ``empty`` ranges EMPTY,
    failures change nothing (they stay missing — never a silent hole).

    Rules: DATA wins over EMPTY where both claim a bar (the exchange has bars there after
    all). An EMPTY claim is only final for bars that closed at least ``stabilization_bars``
    intervals before ``fetched_at``: the part after that horizon is not recorded, so it is
    asked again later. Adjacent segments of the same kind and source coalesce (keeping the
    newest ``fetched_at``), so the ledger stays O(distinct stretches).
    """
    check_bar_interval(interval)
    new_data = merge_ranges(data, interval)
    empty_ranges = merge_ranges(empty, interval)
    if fetched_at is not None:
        horizon = _ceil(int(fetched_at) - interval + 1, interval) - stabilization_bars * interval
        empty_ranges = [
            r for e in empty_ranges if (r := e.intersect(Range(e.start, max(e.start, horizon))))
        ]
    new_empty = subtract_ranges(empty_ranges, new_data)
    painted = new_data + new_empty
    kept: list[CoverageSegment] = []
    for seg in ledger:
        claims = new_data if seg.kind is SegmentKind.DATA else painted
        for part in subtract_ranges([seg.range], claims):
            kept.append(CoverageSegment(part.start, part.end, seg.kind, seg.source, seg.fetched_at))
    kept += [
        CoverageSegment(r.start, r.end, SegmentKind.DATA, source, fetched_at) for r in new_data
    ]
    kept += [
        CoverageSegment(r.start, r.end, SegmentKind.EMPTY, source, fetched_at)
        for r in subtract_ranges(new_empty, [s.range for s in kept if s.kind is SegmentKind.DATA])
    ]
    return _coalesce(kept)


def subtract_ranges(ranges: Sequence[Range], holes: Sequence[Range]) -> list[Range]:
    """``ranges`` minus the union of ``holes`` (inputs in any order; result sorted)."""
    if not holes:
        return sorted(r for r in ranges if not r.empty)
    h_starts, h_ends = _union(*_raw_bounds(holes))
    out: list[Range] = []
    for r in sorted(ranges):
        cursor = r.start
        first = int(np.searchsorted(h_ends, r.start, side="right"))
        for hs, he in zip(h_starts[first:].tolist(), h_ends[first:].tolist(), strict=True):
            if hs >= r.end:
                break
            if hs > cursor:
                out.append(Range(cursor, hs))
            cursor = max(cursor, he)
        if cursor < r.end:
            out.append(Range(cursor, r.end))
    return out


def _raw_bounds(ranges: Sequence[Range]) -> tuple[_I64, _I64]:
    arr = np.asarray([(r.start, r.end) for r in ranges], dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def _coalesce(segments: Iterable[CoverageSegment]) -> list[CoverageSegment]:
    out: list[CoverageSegment] = []
    for seg in sorted(segments, key=lambda s: (s.start, s.end)):
        if seg.start >= seg.end:
            continue
        last = out[-1] if out else None
        if last and last.end == seg.start and last.kind is seg.kind and last.source == seg.source:
            newest = max(
                (t for t in (last.fetched_at, seg.fetched_at) if t is not None), default=None
            )
            out[-1] = CoverageSegment(last.start, seg.end, seg.kind, seg.source, newest)
        else:
            out.append(seg)
    return out
