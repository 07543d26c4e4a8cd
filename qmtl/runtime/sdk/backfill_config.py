"""``BackfillConfig``: how missing ranges are cut, run concurrently and retried.

Re-exported by :mod:`qmtl.runtime.sdk.seamless_data_provider`, next to the backfiller's other
names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    from qmtl.runtime.sdk.history_coverage import Range

__all__ = ["BackfillConfig", "BackfillMode"]

BackfillMode = Literal["background", "sync"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BackfillConfig:
    """Backfill tuning. Durations are milliseconds; out-of-range values raise ``ValueError``.

    The delay before attempt *n+1* is ``retry_backoff_ms * 2**(n-1) * (1 + u)`` with ``u``
    uniform in ``[0, jitter_ratio]``, never less than the exchange's ``Retry-After``.

    ``max_range_bars`` is the longest request (in bars) a fetch or ``ensure_data_available``
    accepts: the default, 10^9, is thirty years of 1s bars; longer is refused with one clear
    line instead of planning work without end. Memory stays bounded below it: batches are
    planned lazily.
    """

    mode: BackfillMode = "background"
    """How a ``SEAMLESS`` fetch treats gaps longer than ``sla.max_sync_gap_bars``:
    ``background`` backfills them beside the fetch (it serves what is stored now);
    ``sync`` makes the fetch wait for them too, within its SLA backfill budget."""
    window_bars: int = 900
    """Bars per backfill batch (one or more exchange pages); 1 to 100000."""
    max_concurrent_requests: int = 8
    """Batches fetched at the same time; 1 to 1024."""
    single_flight_ttl_ms: int = 60_000
    """How long (ms) a window being backfilled stays claimed, so that concurrent fetches
    wait for that backfill instead of starting their own; > 0."""
    distributed_lease_ttl_ms: int = 120_000
    """How long (ms) a worker's lease on a window lasts at the coordinator before another
    worker may take the window over; > 0."""
    max_attempts: int = 5
    """Tries per batch, the first one included; 1 to 100."""
    retry_backoff_ms: int = 500
    """Delay (ms) before the second try; it doubles for each further try (plus jitter) and
    is never shorter than the exchange's ``Retry-After``; >= 0."""
    jitter_ratio: float = 0.25
    """Random extra delay of each retry, as a share of it (uniform in 0..``jitter_ratio``);
    0 to 1."""
    max_range_bars: int = 1_000_000_000
    """Longest request (bars) a fetch or backfill accepts; longer ones are refused; > 0."""

    def __post_init__(self) -> None:
        if self.mode not in ("background", "sync"):
            raise ValueError(f"mode: must be 'background' or 'sync', got {self.mode!r}")
        _positive_int("window_bars", self.window_bars, maximum=100_000)
        _positive_int("max_concurrent_requests", self.max_concurrent_requests, maximum=1024)
        _positive_int("single_flight_ttl_ms", self.single_flight_ttl_ms)
        _positive_int("distributed_lease_ttl_ms", self.distributed_lease_ttl_ms)
        _positive_int("max_attempts", self.max_attempts, maximum=100)
        _non_negative_int("retry_backoff_ms", self.retry_backoff_ms)
        _positive_int("max_range_bars", self.max_range_bars)
        if isinstance(self.jitter_ratio, bool) or not isinstance(self.jitter_ratio, int | float):
            raise ValueError(f"jitter_ratio: must be a number, got {self.jitter_ratio!r}")
        if not 0.0 <= float(self.jitter_ratio) <= 1.0:
            raise ValueError(f"jitter_ratio: must be within [0, 1], got {self.jitter_ratio!r}")

    def check_range_bars(self, window: Range, interval: int, *, of: str) -> None:
        """``ValueError`` (one line) when ``window`` holds more than ``max_range_bars`` bars
        of ``interval`` seconds; ``of`` names what they are bars of (a node, an interval)."""
        bars = window.bars(interval)
        if bars > self.max_range_bars:
            raise ValueError(
                f"[{format_iso(window.start)}, {format_iso(window.end)}) is {bars:,} bars of "
                f"{of}, more than backfill.max_range_bars ({self.max_range_bars:,}): ask for "
                "less, or raise the limit"
            )


def _positive_int(name: str, value: object, *, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")


def _non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
